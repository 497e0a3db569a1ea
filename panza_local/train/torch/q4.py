"""A frozen 4-bit linear layer that keeps GGUF Q4_0/Q4_1 blocks as they are and dequantizes per use.

Why: QLoRA in its exact sense trains against the very bits that serve. GGUF Q4_0 stores each row in
blocks of 32 weights: an fp16 scale `d` and 16 bytes of nibbles (byte j: weight j in the low nibble,
weight j+16 in the high one), value = (q - 8) * d; Q4_1 adds an fp16 minimum `m`, value = q * d + m.
Here those blocks live in torch tensors (uint8 nibbles + fp16 scales, ~4.5 bits a weight) and
`q4_linear` dequantizes them inside forward and again inside backward, so the full-precision weight
never stays in memory. On CUDA the dequantization is compiled into one fused kernel (torch.compile)
when that works, else it runs as a few eager tensor ops (CPU, tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32


@dataclass
class Q4Weight:
    """A frozen [out, in] weight as Q4 blocks: `qs` uint8 [out, in/32, 16], `d` (and `m`) fp16 [out, in/32, 1]."""

    qs: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qs, self.d, self.m) if t is not None)

    def to(self, device) -> Q4Weight:
        m = self.m.to(device) if self.m is not None else None
        return Q4Weight(self.qs.to(device), self.d.to(device), m, self.shape)


def _dequant(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    q = torch.cat([qs & 0x0F, qs >> 4], dim=-1).to(dtype)  # [out, nblk, 32], GGUF element order
    if m is None:
        w = (q - 8) * d.to(dtype)
    else:
        w = q * d.to(dtype) + m.to(dtype)
    return w.reshape(qs.shape[0], -1)


_COMPILED: dict = {}


def dequantize(w: Q4Weight, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The dense [out, in] weight of `w` in `dtype` (a fused compiled kernel on CUDA when available)."""
    if w.qs.is_cuda:
        fn = _COMPILED.get("fn")
        if fn is None:
            try:
                fn = torch.compile(_dequant, dynamic=False, fullgraph=True)
            except Exception:  # noqa: BLE001 - no compiler: the eager ops give the same numbers, slower
                fn = _dequant
            _COMPILED["fn"] = fn
        try:
            return fn(w.qs, w.d, w.m, dtype)
        except Exception:  # noqa: BLE001 - a compile failure at first call: fall back for good
            _COMPILED["fn"] = _dequant
            return _dequant(w.qs, w.d, w.m, dtype)
    return _dequant(w.qs, w.d, w.m, dtype)


class _Q4Linear(torch.autograd.Function):
    """y = x @ W.T with W frozen in Q4 blocks: saves only the blocks, dequantizes again for grad_x."""

    @staticmethod
    def forward(ctx, x, qs, d, m, shape):
        w = dequantize(Q4Weight(qs, d, m, shape), x.dtype)
        ctx.save_for_backward(qs, d, m)
        ctx.shape = shape
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad_y):
        qs, d, m = ctx.saved_tensors
        w = dequantize(Q4Weight(qs, d, m, ctx.shape), grad_y.dtype)
        return grad_y @ w, None, None, None, None


def q4_linear(x: torch.Tensor, w: Q4Weight) -> torch.Tensor:
    """x @ W.T for a frozen Q4 weight (gradients flow to x only)."""
    return _Q4Linear.apply(x, w.qs, w.d, w.m, w.shape)


def q4_embedding(ids: torch.Tensor, w: Q4Weight, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of a Q4 embedding table, dequantized (only the rows asked for)."""
    return _dequant(w.qs[ids], w.d[ids], w.m[ids] if w.m is not None else None, dtype)


def from_gguf_blocks(raw, qtype: str, shape: tuple[int, int]) -> Q4Weight:
    """A Q4Weight viewing a GGUF tensor's raw bytes (numpy uint8 [out, nblk * block_bytes])."""
    t = torch.from_numpy(raw.copy()).view(torch.uint8)
    out, inn = shape
    nblk = inn // BLOCK
    if qtype == "Q4_0":
        b = t.reshape(out, nblk, 18)
        return Q4Weight(b[..., 2:].contiguous(), b[..., :2].contiguous().view(torch.float16), None, shape)
    if qtype == "Q4_1":
        b = t.reshape(out, nblk, 20)
        return Q4Weight(b[..., 4:].contiguous(), b[..., :2].contiguous().view(torch.float16),
                        b[..., 2:4].contiguous().view(torch.float16), shape)
    raise ValueError(f"not a Q4 block type: {qtype}")


def quantize_q4_0(w: torch.Tensor) -> Q4Weight:
    """Quantize a dense [out, in] weight into Q4_0 blocks (llama.cpp's reference rounding)."""
    out, inn = w.shape
    blocks = w.float().reshape(out, inn // BLOCK, BLOCK)
    idx = blocks.abs().argmax(dim=-1, keepdim=True)
    mx = torch.gather(blocks, -1, idx)
    d = mx / -8
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.clamp((blocks * inv + 8.5).to(torch.int32), 0, 15).to(torch.uint8)
    qs = q[..., :16] | (q[..., 16:] << 4)
    return Q4Weight(qs.contiguous(), d.to(torch.float16), None, (out, inn))


def random_q4(out: int, inn: int, device, scale: float = 0.02, generator=None) -> Q4Weight:
    """Random Q4_0 blocks of a given shape straight on `device` (benchmarks: speed ignores the values)."""
    nblk = inn // BLOCK
    qs = torch.randint(0, 256, (out, nblk, 16), dtype=torch.uint8, device=device, generator=generator)
    d = torch.full((out, nblk, 1), scale / 8, dtype=torch.float16, device=device)
    return Q4Weight(qs, d, None, (out, inn))
