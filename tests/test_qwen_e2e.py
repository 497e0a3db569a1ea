"""A real second instruct model end to end: Qwen2.5-Coder-0.5B-Instruct (qwen2, a Q4_K_M mix of Q5_0, Q8_0,
Q6_K and Q4_K blocks, installed offline from its chunk packages) through the quickstart's whole path on the
sample mailbox: ingest, playback by the 0.5B model itself, index, QLoRA training on its quantized blocks,
GGUF export, then drafts by llama.cpp with and without the adapter.

Heavy (minutes on 2 cores): `pytest -m heavy tests/test_qwen_e2e.py -s` prints the drafts.
"""

from __future__ import annotations

import contextlib

import pytest

from panza_local import catalogue, quickstart

QWEN = "qwen2.5-coder-0.5b"
# A short run: a few pairs, a few steps (what the test proves is the path, not the adapter's quality).
TRAIN = {"max_steps": 8, "grad_accum": 1, "seq_len": 256, "lr": 1e-3, "evals": 2, "max_val_rows": 4,
         "ckpt_every": 4}


@pytest.mark.heavy
def test_qwen_coder_playback_train_export_draft(home, monkeypatch):
    if catalogue.chunk_paths(catalogue.get(QWEN)) is None:
        pytest.skip(f"needs {catalogue.get(QWEN).pip!r} installed (the dev extra)")
    monkeypatch.setenv("PANZA_MODEL", QWEN)
    monkeypatch.setenv("PANZA_THREADS", "2")

    @contextlib.contextmanager
    def bar(_desc):
        yield lambda *a, **k: None

    out = quickstart.run(bar, print, limit=24, train_overrides=TRAIN,
                         instructions=quickstart.INSTRUCTIONS[:2])
    pb, tr = out["playback"], out["train"]
    assert pb["generated"] + pb["reused"] >= 20 and pb["model"] >= pb["generated"] // 2, pb  # the model's own
    assert tr["promoted"] and tr["steps"] == TRAIN["max_steps"], tr
    assert tr["val_loss_after"] < tr["val_loss_before"], tr  # it learned something of her mail
    from pathlib import Path

    assert Path(tr["gguf"]).stat().st_size > 0
    for row in out["compare"]:
        print(f"\n=== {row['instruction']}\n--- stock:\n{row['stock']}\n--- adapter:\n{row['adapter']}")
        assert row["adapter"].strip() and row["stock"].strip()
    # the adapter itself changes what the model writes: the same prompt, greedy, with and without it
    from panza_local import config, draft, engine

    settings = config.load({"temperature": 0.0})
    plan = draft.prepare(quickstart.INSTRUCTIONS[0][0], to=quickstart.INSTRUCTIONS[0][1], seed=1, settings=settings)
    assert plan.lora_path is not None and plan.model_path.name.startswith("qwen2.5-coder")
    tuned = engine.chat(plan.messages, model_path=plan.model_path, lora_path=plan.lora_path, max_tokens=40,
                        settings=settings)
    base = engine.chat(plan.messages, model_path=plan.model_path, max_tokens=40, settings=settings)
    print(f"\n--- same prompt, base:\n{base}\n--- same prompt, adapter:\n{tuned}")
    assert tuned.strip() and tuned != base
