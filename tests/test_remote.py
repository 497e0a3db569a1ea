"""Generation on an existing OpenAI-compatible server (`engine_url`): a real llama.cpp server
(`python -m llama_cpp.server`, llama-cpp-python's own) started by the test on the embedded model with an
exported GGUF LoRA, and `panza draft` pointed at it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import loras
import pytest

INSTRUCTION = "Ask Bob to move our meeting to Friday"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextlib.contextmanager
def llama_server(model: Path, log: Path, lora: Path | None = None, threads: int = 2, n_ctx: int = 4096):
    """A llama.cpp server on a free loopback port; yields its URL once it answers /v1/models."""
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--n_ctx", str(n_ctx), "--verbose", "False", "--flash_attn", "True"]  # as the local engine
    if lora:
        cmd += ["--lora_path", str(lora)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:  # wait for the server to answer (or to die), not for a fixed time
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _panza(home: Path, *args: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PANZA_HOME": str(home), "PANZA_THREADS": "2", **env}
    return subprocess.run([sys.executable, "-m", "panza_local", *args], check=False, capture_output=True, text=True, env=full,
                          timeout=900)


@pytest.mark.slow
def test_draft_through_a_llama_cpp_server_matches_local_and_uses_the_adapter(home, tmp_path, embedded_model):
    from panza_local import config, draft, engine

    # all-linear, small enough that the model still writes words, large enough that greedy drafts change
    adapter = loras.random_lora(embedded_model, tmp_path / "adapter.gguf", std=0.05, seed=7, modules=loras.ALL_LINEAR)
    with llama_server(embedded_model, tmp_path / "server.log", lora=adapter) as url:
        r = _panza(home, "draft", INSTRUCTION, "--format", "json", "--max-tokens", "24", "--temperature", "0",
                   "--no-rag", PANZA_ENGINE_URL=url)
        assert r.returncode == 0, r.stderr
        remote = json.loads(r.stdout)
        d = _panza(home, "doctor", "--json", PANZA_ENGINE_URL=url)
        doctor = json.loads(d.stdout)["engine"]
    assert remote["text"].strip() and "Traceback" not in r.stderr
    assert remote["stats"]["completion_tokens"] > 0
    assert doctor["kind"] == "remote" and doctor["url"] == url and doctor["reachable"] and doctor["models"]

    # the server applies the adapter at run time; so does the local engine here (not the merged serving copy,
    # whose Q8_0 rounding may pick other greedy tokens: tests/test_serving.py)
    settings = config.load({"temperature": 0, "max_tokens": 24, "threads": 2, "merge_adapter": False})
    local_lora = draft.draft(INSTRUCTION, use_rag=False, use_adapter=adapter, settings=settings)
    base_plan = draft.prepare(INSTRUCTION, use_rag=False, use_adapter=adapter, settings=settings)
    base_plan.lora_path = None  # the same prompt (shaped for an adapter), the base model alone
    for _ in draft.stream(base_plan):
        pass
    local_base = draft.finish(base_plan, record=False)
    engine.unload_all()
    assert remote["text"] == local_lora.text  # same prompt, same clean-up, same greedy tokens
    print("remote:", repr(remote["text"]), "base:", repr(local_base.text))
    assert remote["text"] != local_base.text  # so the server applied the adapter


def test_a_server_that_is_away_gives_a_clear_error(home):
    url = f"http://127.0.0.1:{_free_port()}"
    r = _panza(home, "draft", INSTRUCTION, "--no-rag", PANZA_ENGINE_URL=url)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot be reached" in r.stderr and "engine_url" in r.stderr
    d = _panza(home, "doctor", "--json", PANZA_ENGINE_URL=url)
    engine_line = json.loads(d.stdout)["engine"]
    assert engine_line["kind"] == "remote" and engine_line["reachable"] is False
    d = _panza(home, "doctor")
    assert "llama.cpp in this process" in d.stdout
    assert json.loads(_panza(home, "doctor", "--json").stdout)["engine"]["kind"] == "local"


def test_a_bad_engine_url_is_a_config_error(home):
    r = _panza(home, "draft", INSTRUCTION, "--no-rag", PANZA_ENGINE_URL="gpu-box:8080")
    assert r.returncode == 1 and "not an http(s) URL" in r.stderr and "Traceback" not in r.stderr
