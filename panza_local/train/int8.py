"""Int8 matmuls for the frozen base on CPUs with VNNI: the forward and the input gradient in int8, LoRA in fp32.

Why: on a CPU without bf16 hardware, training time is fp32 matmuls against the frozen weights (x @ W.T
forward, grad_y @ W backward). AVX-512 VNNI / AVX-VNNI run int8 products at ~3-4x fp32's rate here
(`torch._int_mm`: 550-900 GOP/s vs 140-210 GFLOP/s on two cores), so those two products run in int8
(SwitchBack-style, Wortsman et al. 2023): each weight row is int8 with its own scale, each activation or
gradient row is quantized on the fly with its own scale, and both scales factor out of the sum:

    y[t, n]  = sx[t] * sw[n] * sum_k qx[t, k] * qw[n, k]
    gx[t, k] = sg[t] * sum_n q(g[t, n] * sw[n]) * qw[n, k]          (the same int8 weight, no second copy)

What stays exact: the LoRA matrices, their products and their gradients are fp32; the weight gradients
of A use the int8-quantized input (the input is saved as int8, a quarter of the memory). What it costs:
the frozen product carries int8 rounding (loss on real mail ~0.5-1% off the fp32 forward; the served
model is llama.cpp's, which also rounds activations to int8 blocks). Validation loss, and so early stopping
and the adapter gate, is computed on the exact fp32 path (the model in eval mode).

Also here, for both paths: `linear_cross_entropy` (the vocabulary projection and loss a chunk at a time,
never all the logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import native
from .arena import Arena, scratch, take
from .ops import swiglu_grad


@dataclass
class I8Weight:
    """A frozen [out, in] weight as int8 rows `q` with one fp32 scale per row `s` [out]."""

    q: torch.Tensor
    s: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    @property
    def nbytes(self) -> int:
        return self.q.numel() + self.s.numel() * 4


def available() -> bool:
    """True when this CPU runs int8 matmuls fast (AVX-512 VNNI, AVX-VNNI or AMX) and torch has them."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:  # macOS, Windows: no int8 path (Apple Silicon trains with mlx)
        return False
    if not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return False
    try:
        torch._int_mm(torch.ones(17, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (AttributeError, RuntimeError):  # an old torch, or one without the CPU kernel
        return False
    return True


def quant_rows(x: torch.Tensor, arena: Arena | None = None, keep: bool = True,
               col_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of x (times `col_scale` per column when given): (q int8 [rows, cols], scale
    fp32 [rows, 1]) with x ~ q * scale.

    With an arena, q and the scale are taken from it when `keep` (kept for backward), else q is scratch."""
    if keep:
        q, s = take(arena, x.shape, torch.int8), take(arena, (x.shape[0], 1))
    else:
        q, s = scratch(arena, "quant_q", x.shape, torch.int8), torch.empty((x.shape[0], 1))
    if _fused(x):
        native.quant_rows(x, q, s, col_scale)
        return q, s
    if col_scale is not None:
        x = torch.mul(x, col_scale, out=scratch(arena, "grad", x.shape))
    tmp = scratch(arena, "quant", x.shape)
    m = torch.abs(x, out=tmp).amax(dim=1, keepdim=True).clamp_min_(1e-30)
    r = torch.mul(x, 127.0 / m, out=tmp).round_()
    return q.copy_(r), torch.div(m, 127.0, out=s)


def _fused(x: torch.Tensor) -> bool:
    """Whether the fused kernels (native.py) take this fp32 CPU tensor with contiguous rows."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.stride(-1) == 1 and native.lib() is not None


def from_dense(w: torch.Tensor) -> I8Weight:
    q, s = quant_rows(w.float())
    return I8Weight(q.contiguous(), s.view(-1).contiguous())


def mm_grad(g: torch.Tensor, w: I8Weight, arena: Arena | None = None, u: torch.Tensor | None = None,
            v: torch.Tensor | None = None) -> torch.Tensor:
    """g @ W in int8 (g [T, out] -> [T, in]), fp32 out: the weight's row scales move onto g's columns.
    Plus u @ v (a LoRA's input gradient, u [T, r], v [r, in]) when given."""
    qg, sg = quant_rows(g, arena, keep=False, col_scale=w.s)
    gx32 = torch._int_mm(qg, w.q, out=scratch(arena, "i32", (g.shape[0], w.q.shape[1]), torch.int32))
    gx = torch.empty(gx32.shape)
    if _fused(gx):
        native.dequant(gx32, sg, gx, u, v)
        return gx
    gx.copy_(gx32).mul_(sg)  # (a mixed int32 * fp32 product is ~2x slower)
    return gx if u is None else gx.addmm_(u, v)


def _product(qx, sx, wq, ws, xa, scale, parts, ab, arena=None, internal: bool = False, ffn: int = 0,
             g: torch.Tensor | None = None):
    """The fused product from the quantized input (forward, and the recompute in backward); in the
    arena's scratch when `internal` (the caller uses it up before the next product).

    `ffn` > 0 (a gate|up product): silu(gate) * up of it, or with `g` the gradient of that times g."""
    t, n = qx.shape[0], wq.shape[0]
    y32 = torch._int_mm(qx, wq.t(), out=scratch(arena, "i32", (t, n), torch.int32))
    if g is not None:
        out = scratch(arena, "swiglu", (t, n))
    elif ffn:
        out = torch.empty(t, ffn)
    else:
        out = scratch(arena, "product", (t, n)) if internal else torch.empty(t, n)
    if _fused(out):
        lora = [(o.start, o.stop - o.start, r.start, (b.t() * scale).contiguous())
                for o, r, _, b in _lora_parts(parts, ab)]
        native.product(y32, sx, ws, out, xa, lora, mode=2 if g is not None else int(bool(ffn)), ffn=ffn, g=g)
        return out
    y = (scratch(arena, "product", (t, n)) if ffn else out).copy_(y32).mul_(sx).mul_(ws)
    for o, rank, _, b in _lora_parts(parts, ab):
        y[:, o].addmm_(xa[:, rank], b.t(), alpha=scale)
    if g is not None:
        return _swiglu_grad(y, ffn, g, out)
    return torch.mul(torch.nn.functional.silu(y[:, :ffn]), y[:, ffn:], out=out) if ffn else y


def _lora_parts(parts, ab):
    """(output columns, columns of x @ A_all.T, A, B) of each part that has a LoRA, as slices."""
    off, r0, j = 0, 0, 0
    for rows, has in parts:
        if has:
            a, b = ab[2 * j], ab[2 * j + 1]
            yield slice(off, off + rows), slice(r0, r0 + a.shape[0]), a, b
            r0, j = r0 + a.shape[0], j + 1
        off += rows


class _LoraI8(torch.autograd.Function):
    """y = x @ W.T (int8) + scale * (x @ A_j.T) @ B_j.T into each part j of W's rows that has a LoRA.

    `parts` lists (rows, has_lora) of the fused weight (q|k|v, gate|up, or one projection); `ab` holds
    A_j, B_j for the parts with a LoRA, in order. `ffn` > 0: the output is silu(gate) * up of a gate|up
    product instead, and backward recomputes the product from the saved int8 input rather than keeping
    it (at seq 512 that is 6 MB a layer, the largest activation of all).
    """

    @staticmethod
    def forward(ctx, x, wq, ws, scale, parts, ffn, arena, *ab):
        qx, sx = quant_rows(x, arena)
        xa = None
        if ab:
            a_all = torch.cat(ab[0::2])
            xa = torch.mm(x, a_all.t(), out=take(arena, (x.shape[0], a_all.shape[0])))
        ctx.save_for_backward(qx, sx, wq, ws, xa, *ab)
        ctx.scale, ctx.parts, ctx.ffn, ctx.arena = scale, parts, ffn, arena
        return _product(qx, sx, wq, ws, xa, scale, parts, ab, arena, ffn=ffn)

    @staticmethod
    def backward(ctx, gy):
        qx, sx, wq, ws, xa, *ab = ctx.saved_tensors
        scale, parts, arena = ctx.scale, ctx.parts, ctx.arena
        gy = gy.contiguous()
        if ctx.ffn:  # the product again from the saved int8 input, straight into the SwiGLU gradient
            gy = _product(qx, sx, wq, ws, xa, scale, parts, ab, arena, ffn=ctx.ffn, g=gy)
        grads, gxa = [], []
        if ab:
            x_hat = scratch(arena, "x_hat", qx.shape)
            if _fused(x_hat):
                native.dequant(qx, sx, x_hat)
            else:
                x_hat.copy_(qx).mul_(sx)
        for out, rank, a, b in _lora_parts(parts, ab):
            g = gy[:, out]
            gxa.append((g @ b).mul_(scale))  # [T, r]
            grads += [gxa[-1].t() @ x_hat, (g.t() @ xa[:, rank]).mul_(scale)]  # dA [r, in], dB [rows, r]
        gx = None
        if ctx.needs_input_grad[0]:
            u, v = (torch.cat(gxa, dim=1), torch.cat(ab[0::2])) if ab else (None, None)
            gx = mm_grad(gy, I8Weight(wq, ws), arena, u, v)
        return (gx, None, None, None, None, None, None, *grads)


def _swiglu_grad(gu: torch.Tensor, ffn: int, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """d(silu(gate) * up) / d(gate|up) times g, for a fused [T, 2F] gate|up product (into `out` if given)."""
    out = torch.empty(gu.shape) if out is None else out
    swiglu_grad(gu[:, :ffn], gu[:, ffn:], g, out[:, :ffn], out[:, ffn:])
    return out


def lora_linear(x: torch.Tensor, w: I8Weight, scale: float, parts, ab, ffn: int = 0,
                arena: Arena | None = None) -> torch.Tensor:
    """Frozen int8 product plus the LoRA of each part; with `ffn`, silu(gate) * up of it (see `_LoraI8`).
    What backward needs is kept in `arena` when given."""
    return _LoraI8.apply(x.contiguous(), w.q, w.s, scale, tuple(parts), ffn, arena, *ab)


CE_CHUNK = 128


class _LinearCE(torch.autograd.Function):
    """Sum of cross-entropy losses of logits = h @ W.T, a chunk of rows at a time, never all the logits.

    The gradient with respect to h is computed in the forward, chunk by chunk (softmax minus one-hot, times
    W), so neither the [T, vocab] logits nor their softmax are ever kept: at seq 512 and a 49k vocabulary
    that is ~300 MB of fp32 the plain `cross_entropy(h @ W.T)` holds through the backward.
    W stays fp32 on both paths: the gradient is thousands of tiny probabilities that int8 would zero.
    """

    @staticmethod
    def forward(ctx, h, targets, w, arena):
        want_grad = ctx.needs_input_grad[0]
        total = h.new_zeros((), dtype=torch.float32)
        gh = take(arena, h.shape, device=h.device) if want_grad else None
        for s in range(0, h.shape[0], CE_CHUNK):
            hc, tc = h[s:s + CE_CHUNK], targets[s:s + CE_CHUNK]
            buf = scratch(arena, "logits", (hc.shape[0], w.shape[0]), w.dtype, h.device)
            logits = torch.mm(hc, w.t(), out=buf).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None])[:, 0]).sum()
            if want_grad:
                p = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                p[torch.arange(p.shape[0]), tc] -= 1.0
                if w.dtype == gh.dtype:
                    torch.mm(p, w, out=gh[s:s + CE_CHUNK])
                else:  # an fp16 / bf16 base (MPS): the product in its dtype, the gradient kept in fp32
                    gh[s:s + CE_CHUNK] = p.to(w.dtype) @ w
        ctx.save_for_backward(gh)
        return total

    @staticmethod
    def backward(ctx, g):
        (gh,) = ctx.saved_tensors
        return gh * g, None, None, None


def linear_cross_entropy(h: torch.Tensor, targets: torch.Tensor, w: torch.Tensor,
                         arena: Arena | None = None) -> torch.Tensor:
    """Summed cross-entropy of `h @ W.T` against `targets`, memory-lean (see `_LinearCE`)."""
    return _LinearCE.apply(h.contiguous(), targets, w, arena)
