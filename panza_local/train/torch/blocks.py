"""Frozen GGUF weights kept in their own block format, dequantized a slice at a time inside forward and backward.

Why: a Q4_K_M file (Q4_K, Q5_0, Q6_K and Q8_0 blocks) expanded to fp32 costs several times its size; the laptops
this is for cannot hold that for a 1.5B or 3B model. Here every tensor people download (Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, F16, BF16) stays as its file bytes (a read-only memory map, or a copy
of the rows when llama's q/k rows are un-permuted), and `linear` dequantizes the weight a slice of rows at
a time into one scratch buffer shared by every layer, for the forward product and again for the input
gradient in backward: nothing dense is saved between them. The vocabulary projection (often the largest
tensor, and tied to the embedding) never exists whole either: `linear_cross_entropy` walks it in slices
with an online log-sum-exp (see `_BlockLinearCE`).

The dequantization follows ggml's block layouts (ggml-common.h; gguf-py's `gguf.quants` is the reference
the tests compare with, bit for bit): in one pass per block in C where native.py's kernels build
(`pz_dequant_blocks`, much faster than the torch ops), else as vectorised torch ops, one function per block type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .arena import Arena

QK_K = 256
# block type -> (weights per block, bytes per block)
SIZES = {"F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
         "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210)}
TYPES = tuple(SIZES)
# a slice of a weight's rows dequantized at once: ~32 MB of fp32 scratch, whatever the layer
SLICE_ELEMS = 8 * 2**20


@dataclass
class BlockWeight:
    """A frozen [out, in] weight as its GGUF bytes: `raw` uint8 [out, row_bytes] of block type `qtype`."""

    raw: torch.Tensor
    qtype: str
    shape: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    def to(self, device) -> BlockWeight:
        return BlockWeight(self.raw.to(device), self.qtype, self.shape)

    def rows(self, idx: torch.Tensor) -> BlockWeight:
        """The rows `idx` (a copy of their bytes)."""
        return BlockWeight(self.raw[idx], self.qtype, (int(idx.numel()), self.shape[1]))


def from_raw(raw, qtype: str, shape: tuple[int, int]) -> BlockWeight:
    """A BlockWeight over a GGUF tensor's bytes (numpy uint8, memory map or array: not copied)."""
    if qtype not in SIZES:
        raise ValueError(f"block type {qtype} is not one the torch trainer reads (it reads {', '.join(TYPES)})")
    arr = raw if isinstance(raw, torch.Tensor) else torch.from_numpy(np.asarray(raw))
    out = shape[0] if len(shape) > 1 else 1
    return BlockWeight(arr.view(torch.uint8).reshape(out, -1), qtype, (out, shape[-1]))


# -- one function per block type: blocks uint8 [n, bytes] -> fp32 [n, weights per block] ------------------

def _f16(b: torch.Tensor, at: int) -> torch.Tensor:
    return b[:, at:at + 2].contiguous().view(torch.float16).float()


def _shr(x: torch.Tensor, shifts, dim_shape) -> torch.Tensor:
    """x >> each of `shifts`, the shifts along a new axis shaped by `dim_shape` (a broadcastable shape)."""
    s = torch.tensor(shifts, dtype=torch.uint8, device=x.device).reshape(dim_shape)
    return torch.bitwise_right_shift(x, s)


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """The 32 bits of 4 little-endian bytes [n, 4] as [n, 32] uint8 (bit i of the uint32 at column i)."""
    return (_shr(qh[:, :, None], range(8), (1, 1, 8)) & 1).reshape(qh.shape[0], 32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] bytes -> [n, 32]: the low nibbles (weights 0-15), then the high ones (16-31)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _q4_0(b):
    return (_nibbles(b[:, 2:]).float() - 8) * _f16(b, 0)


def _q4_1(b):
    return _nibbles(b[:, 4:]).float() * _f16(b, 0) + _f16(b, 2)


def _q5_0(b):
    q = _nibbles(b[:, 6:]) | (_bits(b[:, 2:6]) << 4)
    return (q.float() - 16) * _f16(b, 0)


def _q5_1(b):
    q = _nibbles(b[:, 8:]) | (_bits(b[:, 4:8]) << 4)
    return q.float() * _f16(b, 0) + _f16(b, 2)


def _q8_0(b):
    return b[:, 2:].view(torch.int8).float() * _f16(b, 0)


def _q2_k(b):
    n = b.shape[0]
    sc, qs = b[:, :16], b[:, 16:80]
    dl = (_f16(b, 80) * (sc & 0xF).float()).reshape(n, 16, 1)
    ml = (_f16(b, 82) * (sc >> 4).float()).reshape(n, 16, 1)
    q = (_shr(qs.reshape(n, 2, 1, 32), (0, 2, 4, 6), (1, 1, 4, 1)) & 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, sc = b[:, :32], b[:, 32:96], b[:, 96:108]
    lo = (_shr(sc[:, :8].reshape(n, 1, 8), (0, 4), (1, 2, 1)) & 0x0F).reshape(n, 16)
    hi = (_shr(sc[:, 8:].reshape(n, 1, 4), (0, 2, 4, 6), (1, 4, 1)) & 0x03).reshape(n, 16)
    scales = ((lo | (hi << 4)).float() - 32)
    dl = (_f16(b, 108) * scales).reshape(n, 16, 1)
    ql = (_shr(qs.reshape(n, 2, 1, 32), (0, 2, 4, 6), (1, 1, 4, 1)) & 3).reshape(n, 16, 16)
    qh = (_shr(hmask.reshape(n, 1, 1, 32), range(8), (1, 1, 8, 1)) & 1).reshape(n, 16, 16)
    q = ql.float() - ((qh ^ 1) << 2).float()  # the high bit set means no offset of -4
    return (dl * q).reshape(n, QK_K)


def _k_scales(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K's 12 bytes of packed 6-bit scales and minima -> ([n, 8], [n, 8]) as fp32."""
    d, m, md = sc[:, 0:4], sc[:, 4:8], sc[:, 8:12]
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scale.float(), mins.float()


def _q4_k(b):
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    d, dm = (_f16(b, 0) * sc).reshape(n, 8, 1), (_f16(b, 2) * mn).reshape(n, 8, 1)
    q = (_shr(b[:, 16:].reshape(n, 4, 1, 32), (0, 4), (1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
    return (d * q.float() - dm).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    d, dm = (_f16(b, 0) * sc).reshape(n, 8, 1), (_f16(b, 2) * mn).reshape(n, 8, 1)
    ql = (_shr(b[:, 48:].reshape(n, 4, 1, 32), (0, 4), (1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
    qh = (_shr(b[:, 16:48].reshape(n, 1, 1, 32), range(8), (1, 1, 8, 1)) & 1).reshape(n, 8, 32)
    return (d * (ql | (qh << 4)).float() - dm).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, sc = b[:, :128], b[:, 128:192], b[:, 192:208]
    d = (_f16(b, 208) * sc.view(torch.int8).float()).reshape(n, 16, 1)
    lo = (_shr(ql.reshape(n, 2, 1, 64), (0, 4), (1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
    hi = (_shr(qh.reshape(n, 2, 1, 32), (0, 2, 4, 6), (1, 1, 4, 1)) & 0x03).reshape(n, 8, 32)
    q = (lo | (hi << 4)).float() - 32
    return (d * q.reshape(n, 16, 16)).reshape(n, QK_K)


_DEQUANT = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "Q2_K": _q2_k,
            "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def dequantize_rows(raw: torch.Tensor, qtype: str, cols: int, out: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense [rows, cols] weight of `raw` (uint8 [rows, row_bytes] of block type `qtype`), into `out`
    when given."""
    rows = raw.shape[0]
    if qtype in _DEQUANT and raw.device.type == "cpu" and raw.is_contiguous():
        from . import native

        dst = out if out is not None and out.dtype == torch.float32 and out.is_contiguous() else None
        dst = dst if dst is not None else torch.empty((rows, cols), dtype=torch.float32)
        if native.usable(dst):  # one pass in C (native.c), the same values bit for bit
            native.dequant_blocks(raw, qtype, dst)
            if out is None:
                return dst.to(dtype)
            return dst if dst is out else out.copy_(dst)
    if qtype in ("F16", "BF16"):
        w = raw.contiguous().view(torch.float16 if qtype == "F16" else torch.bfloat16)
    else:
        w = _DEQUANT[qtype](raw.reshape(-1, SIZES[qtype][1]))
    w = w.reshape(rows, cols)
    if out is None:
        return w.to(dtype)
    return out.copy_(w)


def dequantize(w: BlockWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The whole dense weight (tests, small tensors)."""
    return dequantize_rows(w.raw, w.qtype, w.shape[1], dtype=dtype)


# -- the frozen products --------------------------------------------------------------------------------------

_SCRATCH: dict = {}


def _scratch(shape, dtype, device) -> torch.Tensor:
    """One dense CPU buffer per dtype that every layer reuses: the slice being multiplied."""
    if str(device) != "cpu":  # the caching allocator reuses the memory already
        return torch.empty(shape, dtype=dtype, device=device)
    arena = _SCRATCH.get(dtype)
    if arena is None:
        arena = _SCRATCH[dtype] = Arena(block=0)
    return arena.scratch("w", shape, dtype)


def slices(w: BlockWeight):
    """Row ranges of `w` dequantized at once (SLICE_ELEMS weights each, whole rows)."""
    step = max(1, SLICE_ELEMS // w.shape[1])
    return [(s, min(s + step, w.shape[0])) for s in range(0, w.shape[0], step)]


def dense_slice(w: BlockWeight, s: int, e: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows s:e of `w` dense, in the shared scratch buffer (valid until the next call)."""
    return dequantize_rows(w.raw[s:e], w.qtype, w.shape[1], _scratch((e - s, w.shape[1]), dtype, w.raw.device))


class _BlockLinear(torch.autograd.Function):
    """y = x @ W.T with W frozen in blocks: saves only the blocks, dequantizes again for grad_x."""

    @staticmethod
    def forward(ctx, x, raw, qtype, shape):
        w = BlockWeight(raw, qtype, shape)
        ctx.save_for_backward(raw)
        ctx.qtype, ctx.shape = qtype, shape
        y = x.new_empty((*x.shape[:-1], shape[0]))
        x2, y2 = x.reshape(-1, shape[1]), y.view(-1, shape[0])
        parts = slices(w)
        if len(parts) == 1:
            return torch.mm(x2, dense_slice(w, 0, shape[0], x.dtype).t(), out=y2).view(y.shape)
        for s, e in parts:
            y2[:, s:e] = x2 @ dense_slice(w, s, e, x.dtype).t()
        return y

    @staticmethod
    def backward(ctx, g):
        (raw,) = ctx.saved_tensors
        w = BlockWeight(raw, ctx.qtype, ctx.shape)
        g2 = g.reshape(-1, w.shape[0])
        gx = None
        for s, e in slices(w):
            part = g2[:, s:e] @ dense_slice(w, s, e, g.dtype)
            gx = part if gx is None else gx.add_(part)
        return gx.reshape(*g.shape[:-1], w.shape[1]), None, None, None


def linear(x: torch.Tensor, w: BlockWeight) -> torch.Tensor:
    """x @ W.T for a frozen block weight (gradients flow to x only)."""
    return _BlockLinear.apply(x, w.raw, w.qtype, w.shape)


def embedding(ids: torch.Tensor, w: BlockWeight, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of a block embedding table, dequantized (only the rows asked for)."""
    return dequantize_rows(w.raw[ids], w.qtype, w.shape[1], dtype=dtype)


# Exponents under this are dropped (their exp is 0): a probability under e^-60 cannot change a sum that is at least 1
# in float32, even 150k of them, and letting it underflow instead makes denormal floats, in the exp and in the
# products that follow, which MKL runs an order of magnitude slower (the random-weight layouts of bench/train.py
# hit this on every step: their logits lie hundreds apart).
_LOG_DROP = -60.0


def _exp_(x: torch.Tensor) -> torch.Tensor:
    """exp(x) in place, 0 where x < _LOG_DROP."""
    return torch.nn.functional.threshold_(x, _LOG_DROP, -float("inf")).exp_()


class _BlockLinearCE(torch.autograd.Function):
    """Summed cross-entropy of logits = h @ W.T, W in blocks, walked a slice of vocabulary rows at a time.

    One pass: each slice's logits update a running max m and sum s of exp(logit - m) per token, and the
    running gradient sum acc = sum exp(logit - m) @ W_slice (rescaled whenever m grows). At the end
    grad_h = acc / s - W[target] and loss = log s + m - h . W[target]: each slice dequantized once, never
    all the logits, never the dense W."""

    @staticmethod
    def forward(ctx, h, targets, raw, qtype, shape):
        w = BlockWeight(raw, qtype, shape)
        want = ctx.needs_input_grad[0]
        t = h.shape[0]
        m = torch.full((t, 1), -float("inf"), dtype=torch.float32, device=h.device)
        s = torch.zeros((t, 1), dtype=torch.float32, device=h.device)
        acc = torch.zeros((t, shape[1]), dtype=torch.float32, device=h.device) if want else None
        for a, b in slices(w):
            ws = dense_slice(w, a, b, h.dtype)
            logits = (h @ ws.t()).float()
            m_new = torch.maximum(m, logits.amax(dim=1, keepdim=True))
            rescale = _exp_(m - m_new)
            p = _exp_(logits.sub_(m_new))
            s = s * rescale + p.sum(dim=1, keepdim=True)
            if want:
                acc.mul_(rescale)
                if ws.dtype == torch.float32:
                    acc.addmm_(p, ws)
                else:  # a bf16 / fp16 compute dtype (CUDA): the product in it, the running sum in fp32
                    acc.add_(p.to(ws.dtype) @ ws)
            m = m_new
        w_tgt = embedding(targets, w, torch.float32)
        hf = h.float()
        loss = (torch.log(s) + m).sum() - (hf * w_tgt).sum()
        ctx.save_for_backward(acc.div_(s).sub_(w_tgt) if want else None)
        ctx.dtype = h.dtype
        return loss

    @staticmethod
    def backward(ctx, g):
        (gh,) = ctx.saved_tensors
        return (gh * g).to(ctx.dtype), None, None, None, None


def linear_cross_entropy(h: torch.Tensor, targets: torch.Tensor, w: BlockWeight) -> torch.Tensor:
    """Summed cross-entropy of `h @ W.T` against `targets` for a block weight W (see `_BlockLinearCE`)."""
    if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < w.shape[0]:
        raise ValueError(f"targets outside the vocabulary [0, {w.shape[0]})")
    return _BlockLinearCE.apply(h.contiguous(), targets, w.raw, w.qtype, w.shape)
