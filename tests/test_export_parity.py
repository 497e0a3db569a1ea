"""Parity: an adapter changes llama.cpp's next-token logits the way it changes torch's.

The compared quantity is the cosine between the two logit deltas (with adapter minus without). llama.cpp
computes on the Q4_1 blocks with quantized activations, so its logits carry noise of their own (base
logits agree with torch's to cosine 0.9999): a delta much smaller than that noise cannot agree
whatever the export. Measured on this model, 3 prompts: all-linear random adapters whose delta is
13-62% of the logits' norm gave 0.997-0.9998 (deltas of 2-5% gave 0.58-0.98: noise); q/k-only ones
(deltas 7-10%) gave 0.979-0.993 exported with the rotary permutation and 0.33-0.70 without it. Hence
the thresholds: 0.99 for all-linear (the issue's bar), 0.95 for q/k-only, and a wrong (unpermuted) q/k
export must fall below 0.9: the test separates a right export from a wrong one by a wide margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panza_local import engine
from panza_local.train import data, export
from panza_local.train.torch import backend as tb

pytestmark = pytest.mark.slow

PROMPTS = ["Write to Bob about the meeting.", "Decline the dinner invitation politely.",
           "Ask Sara for the Q3 numbers by Friday."]


@pytest.fixture(scope="module")
def setup(embedded_model):
    torch.set_num_threads(2)
    tok = data.Tokenizer(embedded_model)
    base = tb.load_base(embedded_model)
    texts = [tok.render([{"role": "system", "content": "You write emails."}, {"role": "user", "content": p}])
             for p in PROMPTS]
    base_logits = [engine.next_token_logits(t, embedded_model, threads=2) for t in texts]
    return tok, base, texts, base_logits


def _cosines(setup, embedded_model, tmp_path, targets, std, seed, permute=True):
    tok, base, texts, base_logits = setup
    model = tb.LoraModel(base, 8, 16.0, targets, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for k, v in model.lora.items():
            if k.endswith("_B"):
                v.copy_(torch.randn(v.shape, generator=g) * std)
    out = tmp_path / f"lora-{len(targets)}-{seed}-{permute}.gguf"
    saved = set(export.PERMUTED_ARCHS)
    try:
        if not permute:
            export.PERMUTED_ARCHS.clear()
        export.write_gguf_lora(model.lora_tensors(), 16.0, 8, embedded_model, out)
    finally:
        export.PERMUTED_ARCHS.update(saved)
    cos = []
    for text, lb_cpp in zip(texts, base_logits):
        ids = torch.tensor(tok.encode(text))
        pos, spans = torch.arange(len(ids)), [(0, len(ids))]
        with torch.no_grad():
            with_lora = model.logits(model.hidden(ids, pos, spans)[-1:])[0].numpy()
            model.scale, scale = 0.0, model.scale
            without = model.logits(model.hidden(ids, pos, spans)[-1:])[0].numpy()
            model.scale = scale
        d_torch = with_lora - without
        d_cpp = engine.next_token_logits(text, embedded_model, out, threads=2) - lb_cpp
        cos.append(float(d_torch @ d_cpp / np.linalg.norm(d_torch) / np.linalg.norm(d_cpp)))
    engine.unload_all()
    return cos


@pytest.mark.parametrize("seed", [0, 1])
def test_all_linear_adapter_parity(setup, embedded_model, tmp_path, seed):
    cos = _cosines(setup, embedded_model, tmp_path, tb.ALL_TARGETS, 0.2, seed)
    assert min(cos) >= 0.99, cos


def test_qk_permutation_is_what_makes_parity(setup, embedded_model, tmp_path):
    right = _cosines(setup, embedded_model, tmp_path, ("q_proj", "k_proj"), 0.3, 0)
    wrong = _cosines(setup, embedded_model, tmp_path, ("q_proj", "k_proj"), 0.3, 0, permute=False)
    assert min(right) >= 0.95, right
    assert max(wrong) < 0.9 and np.mean(wrong) < np.mean(right) - 0.2, (right, wrong)
