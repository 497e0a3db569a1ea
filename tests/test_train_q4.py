"""The Q4 frozen base: GGUF blocks read bit-exactly, dequantized per use (gradients: test_blocks.py)."""

from __future__ import annotations

import numpy as np
import torch

from panza_local.train.torch import gguf_tensors, q4


def test_blocks_match_gguf_py_dequantization(embedded_model):
    from gguf.quants import dequantize

    _, tensors = gguf_tensors.read(embedded_model)
    for name in ("blk.0.attn_v.weight", "blk.3.ffn_down.weight", "token_embd.weight", "blk.0.attn_norm.weight"):
        t = tensors[name]
        if name == "token_embd.weight":  # Q8_0: the first 512 rows are enough (and fast)
            t = gguf_tensors.TensorInfo(t.name, t.qtype, t.qname, (512, t.shape[1]), t.raw[: t.raw.nbytes // t.shape[0] * 512])
        ref = np.asarray(dequantize(np.array(t.raw).reshape(t.shape[0] if len(t.shape) > 1 else 1, -1), t.qtype),
                         dtype=np.float32).reshape(t.shape)
        ours = gguf_tensors.dequantize(t).numpy()
        assert np.allclose(ours, ref, atol=1e-6), name
        if t.qname in ("Q4_0", "Q4_1"):
            w = q4.from_gguf_blocks(np.array(t.raw), t.qname, t.shape)
            assert np.allclose(q4.dequantize(w, torch.float32).numpy(), ref, atol=1e-6)
            assert w.nbytes == t.raw.nbytes  # the same bits, nothing expanded


def test_quantize_q4_0_is_close_and_embedding_rows():
    torch.manual_seed(1)
    dense = torch.randn(16, 96)
    w = q4.quantize_q4_0(dense)
    back = q4.dequantize(w, torch.float32)
    rel = (back - dense).norm() / dense.norm()
    assert 0 < rel < 0.15  # 4-bit: lossy, but close
    ids = torch.tensor([3, 0, 15])
    assert torch.equal(q4.q4_embedding(ids, w, torch.float32), back[ids])
