"""A cold `panza draft` (adapter + retrieval) pays for nothing it does not use: no torch, transformers,
sentence-transformers, chromadb or scikit-learn import; the adapter applied at run time on a memory-mapped base; the
index read through Chroma's engine with the same hits as the chromadb client; OpenMP not spinning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import loras
import numpy as np
import pytest

from panza_local import engine

HEAVY = ("torch", "transformers", "sentence_transformers", "chromadb", "sklearn")


@pytest.fixture(scope="module")
def random_lora(tmp_path_factory, embedded_model) -> Path:
    """A rank-8 LoRA with random A and B on q/v of every layer, written by the training stage's exporter."""
    return loras.random_lora(embedded_model, tmp_path_factory.mktemp("lora") / "random-lora.gguf")


def _last_logits(llm, text: str = "Hi Bob, about Friday's meeting") -> np.ndarray:
    toks = llm.tokenize(text.encode(), add_bos=True)
    llm.reset()
    llm.eval(toks)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def test_adapter_applied_at_run_time_on_a_mapped_base(random_lora, embedded_model):
    lib = engine.llama_cpp()
    engine.unload_all()
    ours = engine.load(embedded_model, random_lora, n_ctx=256, threads=1, logits_all=True, flash_attn=False)
    assert ours.model_params.load_mode == lib.LLAMA_LOAD_MODE_MMAP  # the base stays mapped, not copied
    reference = lib.Llama(model_path=str(embedded_model), lora_path=str(random_lora), n_ctx=256, n_threads=1,
                          logits_all=True, verbose=False)  # llama-cpp-python's own adapter path
    base = engine.load(embedded_model, None, n_ctx=256, threads=1, logits_all=True, flash_attn=False)
    want, got, stock = _last_logits(reference), _last_logits(ours), _last_logits(base)
    assert np.abs(got - want).max() < 1e-3  # the same adapter, applied the same way
    assert np.abs(stock - want).max() > 0.1  # ... and it is applied at all
    reference.close()
    engine.unload_all()


def test_unreadable_adapter_is_a_clear_error(tmp_path, embedded_model):
    from panza_local.errors import AdapterError

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(AdapterError, match="broken.gguf"):
        engine.load(embedded_model, bad, n_ctx=256, threads=1)


def _omp_wait(env: dict) -> tuple[str, str, str]:
    """(GOMP_SPINCOUNT left in the environment after the import, and libgomp's own OMP_WAIT_POLICY and
    GOMP_SPINCOUNT as it reports them) in a fresh process that imports llama.cpp through the engine."""
    code = ("import ctypes; from panza_local import engine; engine.llama_cpp(); import os; "
            "gomp = any('libgomp' in ln for ln in open('/proc/self/maps')); "
            "print('left', os.environ.get('GOMP_SPINCOUNT'), gomp, flush=True); "
            "gomp and ctypes.CDLL('libgomp.so.1').omp_display_env(1)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    if out.stdout.split()[2] != "True":
        pytest.skip("this llama.cpp build does not use GNU OpenMP")
    shown = {ln.split("=", 1)[0].strip(): ln.split("=", 1)[1].strip(" '") for ln in out.stderr.splitlines()
             if ln.strip().startswith(("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))}
    return out.stdout.split()[1], shown["OMP_WAIT_POLICY"], shown["GOMP_SPINCOUNT"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GNU OpenMP (libgomp) is the Linux build's")
def test_openmp_spins_briefly_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    # told for llama.cpp's load, not left in the environment
    assert _omp_wait(env) == ("None", "PASSIVE", engine.OMP_ENV["GOMP_SPINCOUNT"])
    assert _omp_wait({**env, "OMP_WAIT_POLICY": "ACTIVE"})[1] == "ACTIVE"
    assert _omp_wait({**env, "GOMP_SPINCOUNT": "77"}) == ("77", "PASSIVE", "77")


@pytest.fixture
def sample_home(home, tmp_path, random_lora):
    """A home with the sample mailbox ingested and indexed, and a (random) adapter in use."""
    from panza_local import ingest, sample, store
    from panza_local.retrieval import index
    from panza_local.train import registry

    conn = store.connect()
    mbox = sample.write_sample_mailbox(tmp_path / "mail")
    ingest.ingest(conn, [str(mbox)], me=[sample.SAMPLE_ME])
    summary = index.sync(conn)
    assert summary.total > 50
    assert registry.begin(conn, "ad-cold", base_model="smollm2-135m", base_sha256="x" * 64, data_hash="d",
                          config={}) is None
    folder = registry.adapter_dir("ad-cold")
    (folder / "adapter.gguf").write_bytes(random_lora.read_bytes())
    registry.finish(conn, "ad-cold", {"val_loss_before": 2.0, "val_loss_after": 1.5})
    registry.use("ad-cold", conn)
    conn.close()
    return home


@pytest.mark.slow
def test_cold_draft_imports_nothing_heavy(sample_home, tmp_path):
    env = {**os.environ, "PANZA_HOME": str(sample_home), "PANZA_THREADS": "1"}
    modules = tmp_path / "modules.json"
    args = ["draft", "Ask Jonas to move our site visit to Friday", "--to", "jonas@example.com", "--format", "json",
            "--max-tokens", "8", "--seed", "1"]
    code = ("import atexit, json, sys\n"  # the `panza` entry point, recording what the process imported
            f"atexit.register(lambda: open({str(modules)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
            "from panza_local.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["adapter"] == "ad-cold" and result["retrieved"], result  # both paths really ran
    imported = set(json.loads(modules.read_text()))
    assert {"panza_local.retrieval.minilm", "panza_local.retrieval.chroma_read", "llama_cpp"} <= imported
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert not heavy, f"a cold draft imported {heavy[:10]}"


def test_fast_index_reader_gives_the_chromadb_clients_hits(sample_home):
    from panza_local.retrieval import chroma_store, index

    queries = [("Ask Jonas to move our site visit to Friday", "jonas@example.com"),
               ("invoice for the garden design", None), ("thanks for the photos", None)]
    chroma_store.forget_clients()
    fast = [[(h.id, round(h.score, 5)) for h in index.search(q, 4, to=to)] for q, to in queries]
    assert chroma_store._READERS and not chroma_store._CLIENTS  # the reader served them
    chroma_store.forget_clients()
    chroma_store.client("")  # a process that writes uses the full client for its searches too
    full = [[(h.id, round(h.score, 5)) for h in index.search(q, 4, to=to)] for q, to in queries]
    assert not chroma_store._READERS
    assert fast == full and all(fast)


def test_a_cold_process_starts_from_the_last_drafts_prefix(home, embedded_model):
    from panza_local import config

    settings = config.load({"n_ctx": 1024, "threads": 1, "temperature": 0.0, "seed": 1})
    system = {"role": "system", "content": "You write short emails for Maya. " * 20}
    first = [system, {"role": "user", "content": "Ask Jonas to move our site visit to Friday."}]
    second = [system, {"role": "user", "content": "Thank Priya for the permit update."}]
    kw = {"model_path": embedded_model, "max_tokens": 12, "settings": settings}

    engine.unload_all()  # a fresh process's engine: saves its context after the draft
    llm = engine.load(embedded_model, n_ctx=1024, threads=1, disk_prefix=True)
    assert llm.n_tokens == 0
    engine.chat(first, **kw)
    saved = llm._panza_prefix
    assert saved.exists() and saved.parent.parent == home / "cache"

    engine.unload_all()  # the next process: starts from the first one's prompt and evaluates only the rest
    llm = engine.load(embedded_model, n_ctx=1024, threads=1, disk_prefix=True)
    restored = llm.n_tokens
    assert restored > 100
    evaluated = []
    real_eval = llm.eval
    llm.eval = lambda toks: (evaluated.append(len(toks)), real_eval(toks))[1]
    text = engine.chat(second, **kw)
    prompt = engine.Stats()
    engine.unload_all()  # a process without the file: the whole prompt, the same greedy text
    fresh = engine.load(embedded_model, n_ctx=1024, threads=1)
    assert engine.chat(second, **kw, stats=prompt) == text
    assert evaluated and sum(evaluated) < prompt.prompt_tokens - 100 + 12  # the shared prefix was not redone

    saved.write_bytes(b"not a llama.cpp state file")  # a file llama.cpp rejects: removed, drafting goes on
    engine.unload_all()
    llm = engine.load(embedded_model, n_ctx=1024, threads=1, disk_prefix=True)
    assert llm.n_tokens == 0 and not saved.exists()
    assert engine.chat(second, **kw) == text
    del fresh
    engine.unload_all()


def test_loads_in_two_threads_leave_stdout_and_stderr_where_they_were(embedded_model):
    """llama.cpp is silenced by pointing fds 1 and 2 at /dev/null and back; a preload beside a vocab-only load
    once restored each other's /dev/null, and a cold `panza draft --format json` printed nothing."""
    import threading

    from panza_local import fit

    before = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    errors: list[BaseException] = []

    def vocab_loads() -> None:
        try:
            for _ in range(6):
                fit._VOCABS.clear()
                fit.vocab(embedded_model)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    def model_loads() -> None:
        try:
            for _ in range(3):
                engine.unload_all()
                engine.load(embedded_model, n_ctx=256, threads=1)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=vocab_loads), threading.Thread(target=model_loads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.unload_all()
    fit._VOCABS.clear()
    assert not errors, errors
    assert [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)] == before
