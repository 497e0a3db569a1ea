"""The training step's RMSNorm and attention as autograd functions that keep the least for backward.

They give the plain torch expressions' forward values (tests compare them: bit for bit, or within float
rounding where a fused kernel from native.py sums in another order), and they put what they keep for
backward in the step's `Arena` when there is one (see arena.py):

- `rms_norm` keeps its input and one scale per row (plain autograd keeps the input, the normalized input
  and the scale: twice the memory, and more passes over it in backward).
- `swiglu` keeps gate and up (plain autograd also keeps silu(gate)).
- `attention` applies RoPE, runs causal attention once per packed example with torch's CPU flash kernel
  (a long example as three blocks, see `_flash_backward`) and keeps q, k, v (after RoPE), the output
  (token-major: the same tensor the next projection reads) and the log-sum-exp, the tensors SDPA keeps,
  but in the arena; backward is the kernel's own backward followed by the inverse rotation.
"""

from __future__ import annotations

import torch

from . import native
from .arena import Arena, take

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (the forward of `rms_norm`, for evaluation)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps, arena):
        kept_x = take(arena, x.shape, x.dtype, x.device)
        kept_r = take(arena, (*x.shape[:-1], 1), x.dtype, x.device)
        if native.usable(x, w) and x.is_contiguous():  # one pass: the norm, its copy of x, rstd
            out = torch.empty_like(x)
            native.rms_norm(x, w, eps, out, kept_x, kept_r)
        else:
            rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            out = x * rstd * w
            kept_x.copy_(x)
            kept_r.copy_(rstd)
        ctx.save_for_backward(kept_x, kept_r, w)
        return out

    @staticmethod
    def backward(ctx, g):
        x, rstd, w = ctx.saved_tensors
        if native.usable(g) and g.is_contiguous():
            gx = torch.empty_like(x)
            native.rms_norm_grad(x, rstd, w, g, gx)
            return gx, None, None, None
        gw = g * w
        # d/dx of x * r(x) * w with r = (mean(x^2) + eps)^-1/2:  r * gw - x * r^3 * mean(gw * x)
        coef = (gw * x).sum(-1, keepdim=True).mul_(rstd.pow(3)).div_(x.shape[-1])
        return gw.mul_(rstd).addcmul_(x, coef, value=-1.0), None, None, None


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, arena: Arena | None = None) -> torch.Tensor:
    """RMSNorm that keeps only x and one scale per row for backward (fp32 inputs)."""
    return _RMSNorm.apply(x, w, eps, arena)


def swiglu_grad(gate, up, g, d_gate: torch.Tensor, d_up: torch.Tensor) -> None:
    """The gradients of silu(gate) * up given g, written into d_gate and d_up."""
    sig = torch.sigmoid(gate, out=d_gate)
    torch.mul(gate, sig, out=d_up).mul_(g)  # d up = silu(gate) * g
    # d gate = silu'(gate) * up * g, silu'(x) = s(x) * (1 + x * (1 - s(x)))
    sig.mul_(torch.rsub(sig, 1).mul_(gate).add_(1)).mul_(g).mul_(up)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, arena):
        kept = [take(arena, t.shape, t.dtype, t.device).copy_(t) for t in (gate, up)]
        ctx.save_for_backward(*kept)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, g):
        gate, up = ctx.saved_tensors
        d_gate, d_up = torch.empty_like(gate), torch.empty_like(up)
        swiglu_grad(gate, up, g, d_gate, d_up)
        return d_gate, d_up, None


def swiglu(gate: torch.Tensor, up: torch.Tensor, arena: Arena | None = None) -> torch.Tensor:
    """silu(gate) * up keeping only gate and up for backward (in the arena when given)."""
    return _SwiGLU.apply(gate, up, arena)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, half-split layout: x * cos + rotate(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _rope_t(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The adjoint of `rope` (its backward): g * cos + rotate^T(g * sin)."""
    half = g.shape[-1] // 2
    gs = g * sin
    return g * cos + torch.cat([gs[..., half:], -gs[..., :half]], dim=-1)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cos, sin, spans, arena):
        t, nh, hd = q.shape
        nkv = k.shape[1]
        qr, kr, vv = take(arena, (nh, t, hd)), take(arena, (nkv, t, hd)), take(arena, (nkv, t, hd))
        if native.usable(q, k, cos):  # the rotation straight into the kept head-major copies
            native.rope(q, cos, sin, qr.transpose(0, 1))
            native.rope(k, cos, sin, kr.transpose(0, 1))
        else:
            qr.copy_(rope(q, cos, sin).transpose(0, 1))
            kr.copy_(rope(k, cos, sin).transpose(0, 1))
        vv.copy_(v.transpose(0, 1))
        # The output token-major: the next projection's input, and kept as the kernel's `out` for backward
        # (it takes either layout at the same speed), one copy instead of a head-major one and a transpose.
        att = take(arena, (t, nh, hd))
        lse = take(arena, (t, nh))  # the kernel's own layout: heads fastest
        for s, e in spans:
            for rows, o, l_ in _flash(qr[:, s:e], kr[:, s:e], vv[:, s:e]):
                rows = slice(s + rows.start, s + rows.stop)
                att[rows] = o.transpose(0, 1)
                lse[rows] = l_.t()
        ctx.save_for_backward(qr, kr, vv, att, lse, cos, sin)
        ctx.spans = spans
        return att.view(t, nh * hd)

    @staticmethod
    def backward(ctx, g_att):
        qr, kr, vv, att, lse, cos, sin = ctx.saved_tensors
        nh, t, hd = qr.shape
        g = g_att.contiguous().view(t, nh, hd)
        gq, gk, gv = torch.empty(t, nh, hd), torch.empty(t, kr.shape[0], hd), torch.empty(t, kr.shape[0], hd)
        fused = native.usable(gq, cos)
        for s, e in ctx.spans:
            blocks = _flash_backward(g[s:e].transpose(0, 1), qr[:, s:e], kr[:, s:e], vv[:, s:e],
                                     att[s:e].transpose(0, 1), lse[s:e].t())
            for rows, a, b, c in blocks:  # [heads, rows, D] views of the kernel's token-major gradients
                rows = slice(s + rows.start, s + rows.stop)
                gv[rows] = c.transpose(0, 1)
                if fused:  # the inverse rotation on the way back to token-major
                    native.rope(a.transpose(0, 1), cos[rows], sin[rows], gq[rows], inverse=True)
                    native.rope(b.transpose(0, 1), cos[rows], sin[rows], gk[rows], inverse=True)
                else:
                    gq[rows], gk[rows] = a.transpose(0, 1), b.transpose(0, 1)
        if not fused:
            gq, gk = _rope_t(gq, cos, sin), _rope_t(gk, cos, sin)
        return gq, gk, gv, None, None, None, None


SPLIT_MIN = 256


def _flash(q, k, v):
    """Causal flash attention of one example ([heads, T, D] each), as blocks of its rows: a list of (rows,
    output [heads, rows, D], lse [heads, rows]).

    From SPLIT_MIN tokens in halves A, B (see `_flash_backward`): A-A and B-B causal, B-A full, and B's two
    partial results merged by their log-sum-exps, 3/4 of the kernel's work."""
    t = q.shape[1]

    def call(qs, ks, causal):
        o, l_ = FLASH(q[None, :, qs], k[None, :, ks], v[None, :, ks], 0.0, causal)[:2]
        return o[0], l_[0]

    if t < SPLIT_MIN:
        return [(slice(0, t), *call(slice(0, t), slice(0, t), True))]
    A, B = slice(0, t // 2), slice(t // 2, t)
    (oa, la), (obb, lbb), (oba, lba) = call(A, A, True), call(B, B, True), call(B, A, False)
    lb = torch.logaddexp(lbb, lba)
    ob = obb.mul_(torch.exp(lbb - lb)[..., None]).add_(oba.mul_(torch.exp(lba - lb)[..., None]))
    return [(A, oa, la), (B, ob, lb)]


def _flash_backward(g, q, k, v, out, lse):
    """The flash kernel's backward for one causal example ([heads, T, D] each, any strides with contiguous
    D; lse [heads, T]), as blocks of its rows: a list of (rows, dq, dk, dv), each [heads, rows, D].

    Torch's CPU kernel computes every query block against all keys up to the block's end in one key block,
    so a causal backward costs about a full T x T one (the forward likewise). From SPLIT_MIN tokens the
    example is cut in halves A, B and run as three calls: A-A and B-B causal, B-A full, with the forward's
    log-sum-exp and output (which give each block's softmax and its row sums exactly): 3/4 of the work,
    the same gradients within float rounding (tests/test_arena_ops.py)."""
    t = q.shape[1]

    def call(qs, ks, causal):
        grads = FLASH_BACKWARD(g[None, :, qs], q[None, :, qs], k[None, :, ks], v[None, :, ks], out[None, :, qs],
                               lse[None, :, qs], 0.0, causal)
        return [x[0] for x in grads[:3]]

    if t < SPLIT_MIN:
        return [(slice(0, t), *call(slice(0, t), slice(0, t), True))]
    A, B = slice(0, t // 2), slice(t // 2, t)
    ga, gb, gba = call(A, A, True), call(B, B, True), call(B, A, False)
    return [(A, ga[0], ga[1].add_(gba[1]), ga[2].add_(gba[2])), (B, gb[0].add_(gba[0]), gb[1], gb[2])]


def attention(q, k, v, cos, sin, spans, arena: Arena | None = None) -> torch.Tensor:
    """Causal attention per packed example with RoPE applied first: q [T, H, D], k and v [T, H_kv, D]
    (H a multiple of H_kv, heads shared in the kernel) -> [T, H * D]. CPU tensors."""
    return _Attention.apply(q, k, v, cos, sin, tuple(spans), arena)
