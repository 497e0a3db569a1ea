"""The block trainer against llama.cpp on the same random-weight GGUFs: base logits, and an adapter trained for a
few steps by the trainer's own CPU path and exported as a GGUF LoRA.

Each fixture is written here with gguf-py's writer (synth.py): two layers, width 256, SmolLM2's real tokenizer,
and every block type the trainer reads spread over its tensors, so one file per architecture covers them all
(bit-exactness per type is test_blocks.py's). Measured on these files: base logits cosine 0.99985-0.99991 at
the worst position; after 4 steps at lr 5e-3 the adapter moves the logits by 18-91% of their norm, and its
change agrees at cosine 0.9975-0.9998 (llama.cpp rounds activations to 8 bits for quantized products, so a
much smaller change would drown in that noise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panza_local import engine
from panza_local.train import export
from panza_local.train.torch import backend as tb
from panza_local.train.torch import blocks, synth

pytestmark = pytest.mark.slow  # ~7 s a case (one llama.cpp load, 2 x 4 training passes)

KINDS = ("token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
TEXT = b"Dear team, the quarterly numbers are in and the meeting moves to Friday at noon."


def _types(shift: int) -> dict:
    """9 of the 12 block types, one per tensor kind, starting at `shift` (the cases together cover all 12)."""
    t = blocks.TYPES
    return {k: t[(j + shift) % len(t)] for j, k in enumerate(KINDS)}


CASES = {
    "llama": {"arch": "llama", "types": _types(0)},
    "qwen2-tied": {"arch": "qwen2", "types": _types(3), "tied": True},
    "qwen3": {"arch": "qwen3", "types": _types(6), "head_dim": 128},
    "llama-q4km": {"arch": "llama", "types": synth.Q4_K_M},
    # Qwen2.5-0.5B's case: rows of 896 are not whole K blocks, so Q5_0 / Q8_0 beside Q4_K / Q6_K ffn_down
    "qwen2-q4km-fallback": {"arch": "qwen2", "types": synth.Q4_K_M, "dim": 384, "n_heads": 6, "tied": True},
}


@pytest.fixture(scope="module")
def tokenizer():
    return synth.tokenizer_meta()


def _write(tmp_path, name, tokenizer):
    path = tmp_path / f"{name}.gguf"
    case = dict(CASES[name])
    return synth.write(path, case.pop("arch"), tokenizer=tokenizer, seed=len(name), **case)


def _cpp_logits(path, tokens, lora=None):
    llm = engine.load(path, lora, n_ctx=128, threads=1, logits_all=True)
    llm.reset()
    llm.eval(tokens)
    out = np.array(llm.scores[:llm.n_tokens], dtype=np.float32)
    return out


def _torch_logits(model, tokens):
    ids = torch.tensor(tokens)
    with torch.no_grad():
        return model.logits(model.hidden(ids, torch.arange(len(tokens)), [(0, len(tokens))])).numpy()


def _cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("name", list(CASES))
def test_base_and_adapter_logits_match_llama_cpp(tmp_path, tokenizer, name):
    torch.set_num_threads(1)
    path = _write(tmp_path, name, tokenizer)
    llm = engine.load(path, None, n_ctx=128, threads=1, logits_all=True)
    tokens = llm.tokenize(TEXT, add_bos=True, special=True)
    base_cpp = _cpp_logits(path, tokens)
    model = tb.build(path, 8, 16.0, tb.ALL_TARGETS, "cpu", precision="fp32")
    assert all(isinstance(model.base.w[k], blocks.BlockWeight) for k in ("blk.0.attn_q", "token_embd"))
    if name == "qwen2-q4km-fallback":
        assert {w.qtype for w in model.base.w.values() if isinstance(w, blocks.BlockWeight)} == {
            "Q4_K", "Q5_0", "Q6_K", "Q8_0"}  # the mix of the real Qwen2.5-0.5B Q4_K_M file
    model.eval()
    base_torch = _torch_logits(model, tokens)
    cos = _cos(base_cpp, base_torch)
    assert cos.min() >= 0.999, cos

    # a few steps of the trainer's own path (arena, block products, block cross-entropy), then the export
    model.train()
    opt = tb.optimizer(model.lora.values(), lr=5e-3)
    rng = np.random.default_rng(0)
    n = len(tokens)
    for _ in range(4):
        row = {"input_ids": tokens, "positions": list(range(n)), "segments": [0] * n,
               "targets": [-100] * 4 + rng.integers(0, 1000, n - 4).tolist(), "n_targets": n - 4}
        loss, k = model(row)
        (loss / k).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    delta_torch = _torch_logits(model, tokens) - base_torch
    out = export.write_gguf_lora(model.lora_tensors(), 16.0, 8, path, tmp_path / "lora.gguf")
    delta_cpp = _cpp_logits(path, tokens, out) - base_cpp
    engine.unload_all()
    assert np.linalg.norm(delta_torch, axis=-1).min() > 0.1 * np.linalg.norm(base_torch, axis=-1).mean()
    cos = _cos(delta_cpp, delta_torch)
    assert cos.min() >= 0.99, cos
