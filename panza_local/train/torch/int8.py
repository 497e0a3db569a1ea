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
never all the logits; on this path its logits and its gradient product in int8 too, see `_LinearCE`).

The element-wise work around these products (quantization, dequantization with the LoRA terms, SwiGLU)
runs in native.py's fused kernels where they build, else as the torch expressions below.
"""

from __future__ import annotations

import weakref
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

    def get(self, arena: Arena | None = None) -> I8Weight:
        return self


class LazyI8:
    """A fused group's int8 weight made from its frozen parts (GGUF blocks or dense rows) at each use, forward
    and again backward: no int8 copy of the model stays in memory, one group's at a time, in the arena's
    scratch when given. Block rows go straight to int8 in one pass (`native.blocks_to_i8`) where the kernels
    run, else a slice of rows at a time through fp32; each row gets its own scale either way, as `from_dense`
    gives it, and the same values."""

    def __init__(self, parts: list):
        self.parts = parts

    @property
    def shape(self) -> tuple[int, int]:
        return sum(p.shape[0] for p in self.parts), self.parts[0].shape[1]

    @property
    def nbytes(self) -> int:
        return 0

    def get(self, arena: Arena | None = None) -> I8Weight:
        from . import blocks

        rows, cols = self.shape
        q, s = scratch(arena, "lazy_q", (rows, cols), torch.int8), scratch(arena, "lazy_s", (rows,))
        off = 0
        for w in self.parts:
            n = w.shape[0]
            if isinstance(w, blocks.BlockWeight) and w.qtype in native.GGML_TYPES and native.usable(s):
                native.blocks_to_i8(w.raw, w.qtype, q[off:off + n], s[off:off + n])
                off += n
                continue
            spans = blocks.slices(w) if isinstance(w, blocks.BlockWeight) else [(0, n)]
            for a, b in spans:
                dense = blocks.dense_slice(w, a, b) if isinstance(w, blocks.BlockWeight) else w.float()
                qq, ss = quant_rows(dense, keep=False)
                q[off + a:off + b].copy_(qq)
                s[off + a:off + b].copy_(ss.view(-1))
            off += n
        return I8Weight(q, s)


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
    if native.usable(x):
        native.quant_rows(x, q, s, col_scale)
        return q, s
    if col_scale is not None:
        x = torch.mul(x, col_scale, out=scratch(arena, "grad", x.shape))
    tmp = scratch(arena, "quant", x.shape)
    m = torch.abs(x, out=tmp).amax(dim=1, keepdim=True).clamp_min_(1e-30)
    r = torch.mul(x, 127.0 / m, out=tmp).round_()
    return q.copy_(r), torch.div(m, 127.0, out=s)


def from_dense(w: torch.Tensor) -> I8Weight:
    q, s = quant_rows(w.float())
    return I8Weight(q.contiguous(), s.view(-1).contiguous())


def mm_grad(g: torch.Tensor, w: I8Weight, arena: Arena | None = None, u: torch.Tensor | None = None,
            v: torch.Tensor | None = None) -> torch.Tensor:
    """g @ W in int8 (g [T, out] -> [T, in]), fp32 out: the weight's row scales move onto g's columns.
    Plus u @ v (a LoRA's input gradient, u [T, r], v [r, in]) when given."""
    qg, sg = quant_rows(g, arena, keep=False, col_scale=w.s)
    gx32 = torch._int_mm(qg, w.q, out=scratch(arena, "i32", (g.shape[0], w.q.shape[1]), torch.int32))
    return _dequant(gx32, sg, torch.empty(gx32.shape), u, v)


def _dequant(src: torch.Tensor, s: torch.Tensor, out: torch.Tensor, u: torch.Tensor | None = None,
             v: torch.Tensor | None = None) -> torch.Tensor:
    """out = src (int32 or int8) * s per row, plus u @ v when given."""
    if native.usable(out):
        native.dequant(src, s, out, u, v)
        return out
    out.copy_(src).mul_(s)  # (a mixed int32 * fp32 product is slower)
    return out if u is None else out.addmm_(u, v)


def _product(qx, sx, wq, ws, xa, scale, parts, ab, arena=None, ffn: int = 0, keep: torch.Tensor | None = None):
    """The fused product from the quantized input, with each part's LoRA added.

    `ffn` > 0 (a gate|up product): silu(gate) * up of it, and the product itself is stored into `keep`
    (fp16, clamped to its range) for the SwiGLU gradient (`_swiglu_grad_kept`)."""
    t, n = qx.shape[0], wq.shape[0]
    y32 = torch._int_mm(qx, wq.t(), out=scratch(arena, "i32", (t, n), torch.int32))
    out = torch.empty(t, ffn or n)
    if native.usable(out):
        lora = [(o.start, o.stop - o.start, r.start, (b.t() * scale).contiguous())
                for o, r, _, b in _lora_parts(parts, ab)]
        native.product(y32, sx, ws, out, xa, lora, mode=int(bool(ffn)), ffn=ffn, keep=keep)
        return out
    y = (scratch(arena, "product", (t, n)) if ffn else out).copy_(y32).mul_(sx).mul_(ws)
    for o, rank, _, b in _lora_parts(parts, ab):
        y[:, o].addmm_(xa[:, rank], b.t(), alpha=scale)
    if not ffn:
        return y
    if keep is not None:
        keep.copy_(y.clamp(-FP16_MAX, FP16_MAX))
    return torch.mul(torch.nn.functional.silu(y[:, :ffn]), y[:, ffn:], out=out)


FP16_MAX = 65504.0


def _swiglu_grad_kept(keep: torch.Tensor, g: torch.Tensor, arena=None) -> torch.Tensor:
    """The gradient with respect to gate|up of silu(gate) * up, times g, from the fp16 product `keep`."""
    out = scratch(arena, "swiglu", keep.shape)
    if native.usable(out, g):
        native.swiglu_grad_h(keep, g, out)
        return out
    y, ffn = keep.float(), keep.shape[1] // 2
    swiglu_grad(y[:, :ffn], y[:, ffn:], g, out[:, :ffn], out[:, ffn:])
    return out


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
    product instead, and the product is kept for backward in fp16 (3 MB a layer at seq 512; recomputing
    it from the saved int8 input instead cost a fifth of the step's int8 products).
    """

    @staticmethod
    def forward(ctx, x, wsrc, scale, parts, ffn, arena, *ab):
        w = wsrc.get(arena)  # frozen: kept on ctx (an I8Weight), or made again in backward (a LazyI8)
        wq, ws = w.q, w.s
        qx, sx = quant_rows(x, arena)
        xa = None
        if ab:
            a_all = torch.cat(ab[0::2])
            xa = torch.mm(x, a_all.t(), out=take(arena, (x.shape[0], a_all.shape[0])))
        keep = take(arena, (x.shape[0], wq.shape[0]), torch.float16) if ffn else None
        ctx.save_for_backward(qx, sx, xa, keep, *ab)
        ctx.scale, ctx.parts, ctx.ffn, ctx.arena, ctx.wsrc = scale, parts, ffn, arena, wsrc
        return _product(qx, sx, wq, ws, xa, scale, parts, ab, arena, ffn=ffn, keep=keep)

    @staticmethod
    def backward(ctx, gy):
        qx, sx, xa, keep, *ab = ctx.saved_tensors
        scale, parts, arena = ctx.scale, ctx.parts, ctx.arena
        gy = gy.contiguous()
        if ctx.ffn:
            gy = _swiglu_grad_kept(keep, gy, arena)
        grads, gxa, lora = [], None, list(_lora_parts(parts, ab))
        if lora:  # each part's g @ B side by side [T, r_all], then every part's dA in one product
            gxa = torch.cat([gy[:, out] @ b for out, _, _, b in lora], dim=1).mul_(scale)
            da = gxa.t() @ _dequant(qx, sx, scratch(arena, "x_hat", qx.shape))  # [r_all, in]
            for out, rank, _, _ in lora:  # dB as (xa^T g)^T: faster than g^T xa on a column slice of gy
                grads += [da[rank], (xa[:, rank].t() @ gy[:, out]).mul_(scale).t()]
        gx = None
        if ctx.needs_input_grad[0]:
            gx = mm_grad(gy, ctx.wsrc.get(arena), arena, gxa, torch.cat(ab[0::2]) if ab else None)
        return (gx, None, None, None, None, None, *grads)


def lora_linear(x: torch.Tensor, w: I8Weight | LazyI8, scale: float, parts, ab, ffn: int = 0,
                arena: Arena | None = None) -> torch.Tensor:
    """Frozen int8 product plus the LoRA of each part; with `ffn`, silu(gate) * up of it (see `_LoraI8`).
    What backward needs is kept in `arena` when given."""
    return _LoraI8.apply(x.contiguous(), w, scale, tuple(parts), ffn, arena, *ab)


CE_CHUNK = 128
OUTLIER_COLS = 16


class _LinearCE(torch.autograd.Function):
    """Sum of cross-entropy losses of logits = h @ W.T, a chunk of rows at a time, never all the logits.

    The gradient with respect to h is computed in the forward, chunk by chunk (softmax minus one-hot, times
    W), so neither the [T, vocab] logits nor their softmax are ever kept: at seq 512 and a 49k vocabulary
    that is ~300 MB of fp32 the plain `cross_entropy(h @ W.T)` holds through the backward.

    With `w8` (W as int8 rows; training on the int8 path) the logits are an int8 product. The final norm's
    output has a few massive dimensions (|h| ~50 where the median dimension's max is ~3) that would set every
    row's scale (logits off by up to 2.2), so its OUTLIER_COLS largest columns stay fp32, a rank-16 term
    added in the same pass (logits off by <= 0.7, loss within 0.05% on real mail, LoRA gradients as close
    to fp32's as without it).

    The gradient product (softmax - one-hot) @ W is int8 as well: softmax * W's row scales in int8 times W's
    int8 rows, minus W's target rows in fp32. The probabilities are rounded stochastically (up with the
    probability of the fraction): round-to-nearest zeroes every probability under half a step (15-20% of the
    mass on real mail), a bias in the same direction for every token, and the LoRA gradients fell to cosine
    0.2-0.4 against fp32 (tests/test_int8.py has the case); stochastic rounding is unbiased, its noise
    averages out over the vocabulary (LoRA-gradient cosine 0.967 on real mail, 0.968 with an fp32 product).
    """

    @staticmethod
    def forward(ctx, h, targets, w, arena, w8=None):
        want_grad = ctx.needs_input_grad[0]
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < w.shape[0]:
            raise ValueError(f"targets outside the vocabulary [0, {w.shape[0]}): drop ignored positions first")
        total = h.new_zeros((), dtype=torch.float32)
        gh = take(arena, h.shape, device=h.device) if want_grad else None
        if w8 is not None:  # h without its outlier columns (int8), and those columns with W's (fp32)
            cols = h.abs().amax(dim=0).topk(min(OUTLIER_COLS, h.shape[1])).indices.sort().values
            h_rest = h.clone()
            h_rest[:, cols] = 0.0
            h_out, w_out = h[:, cols].contiguous(), _outlier_rows(w, cols)  # [T, k], [k, vocab]
        for s in range(0, h.shape[0], CE_CHUNK):
            hc, tc = h[s:s + CE_CHUNK], targets[s:s + CE_CHUNK]
            buf = scratch(arena, "logits", (hc.shape[0], w.shape[0]), w.dtype, h.device)
            if w8 is not None:
                logits = _logits8(h_rest[s:s + CE_CHUNK], h_out[s:s + CE_CHUNK], w8, w_out, buf, arena)
            else:
                logits = torch.mm(hc, w.t(), out=buf).float()
            if want_grad and w8 is not None:  # the gradient product in int8 too, see the docstring
                loss, qp, qs = _xent_probs8(logits, tc, w8.s, arena)
                total += loss
                gp32 = torch._int_mm(qp, w8.q, out=scratch(arena, "i32", (qp.shape[0], w8.q.shape[1]), torch.int32))
                _dequant(gp32, qs, gh[s:s + CE_CHUNK]).sub_(w.index_select(0, tc))
                continue
            total += _xent(logits, tc, want_grad)
            p = logits  # with want_grad: softmax minus one-hot, in place
            if want_grad:
                if w.dtype == gh.dtype:
                    torch.mm(p, w, out=gh[s:s + CE_CHUNK])
                else:  # an fp16 / bf16 base (MPS): the product in its dtype, the gradient kept in fp32
                    gh[s:s + CE_CHUNK] = p.to(w.dtype) @ w
        ctx.save_for_backward(gh)
        return total

    @staticmethod
    def backward(ctx, g):
        (gh,) = ctx.saved_tensors
        return gh * g, None, None, None, None


_OUTLIERS: list = [None, None, None]  # a weak reference to W, (W's version, the columns), the rows


def _outlier_rows(w: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """W's columns `cols` as contiguous rows [k, vocab]. Gathering them reads all of W (~6 ms at 49k x 576);
    the massive dimensions are the same ones step after step, so the last result is kept (for this W
    object, unchanged since)."""
    key = (w._version, tuple(cols.tolist()))
    ref, old_key, rows = _OUTLIERS
    if ref is None or ref() is not w or old_key != key:
        rows = w[:, cols].t().contiguous()
        _OUTLIERS[:] = [weakref.ref(w), key, rows]
    return rows


def _xent(logits, tc, grad: bool, quant=None) -> torch.Tensor:
    """Summed cross-entropy of the rows of `logits` against `tc`, with `native.softmax_xent`'s contract, in the
    kernel where it runs, else in torch: with `grad`, the logits become softmax minus one-hot in place, or
    with `quant` = (col_scale, q, qs, seed), q * qs receives softmax * col_scale in int8 with stochastic
    rounding (the logits left as scratch)."""
    if native.usable(logits) and tc.dtype == torch.int64:  # one kernel: loss, and its gradient in place
        rows = torch.empty(logits.shape[0])
        native.softmax_xent(logits, tc, rows, grad, quant)
        return rows.sum()
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, tc[:, None])[:, 0]).sum()
    if grad:
        p = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
        if quant is None:
            p[torch.arange(p.shape[0]), tc] -= 1.0
        else:
            cs, q, qs, seed = quant
            m = p.mul_(cs).amax(dim=1, keepdim=True).clamp_min_(1e-30)
            noise = torch.rand(p.shape, generator=torch.Generator().manual_seed(seed))
            p.mul_(127.0 / m).add_(noise).floor_().clamp_max_(127.0)  # 127 + u can round up to 128 in fp32
            q.copy_(p)
            torch.div(m, 127.0, out=qs)
    return loss


def _xent_probs8(logits, tc, cs, arena):
    """(summed cross-entropy of the rows of `logits` against `tc`, q int8, qs [rows, 1]) where q * qs is
    softmax(logits) * cs (per column) with stochastic rounding: each entry rounds up with probability equal
    to its fraction, so the expectation is exact. The logits are used as scratch."""
    qp = scratch(arena, "probs8", logits.shape, torch.int8)
    qs = torch.empty((logits.shape[0], 1))
    seed = int(torch.randint(0, 2**62, ()))  # from torch's generator: reproducible under torch.manual_seed
    return _xent(logits, tc, True, (cs, qp, qs, seed)), qp, qs


def _logits8(h_rest, h_out, w8: I8Weight, w_out, out, arena):
    """h @ W.T as the int8 product of h_rest (h without its outlier columns) plus h_out @ w_out in fp32
    (MKL's addmm: w_out is [16, vocab], 3 MB, too big for a row-at-a-time kernel to keep in cache)."""
    qh, sh = quant_rows(h_rest, arena, keep=False)
    y32 = torch._int_mm(qh, w8.q.t(), out=scratch(arena, "i32", out.shape, torch.int32))
    if native.usable(out):
        native.product(y32, sh, w8.s, out)
    else:
        out.copy_(y32).mul_(sh).mul_(w8.s)
    return out.addmm_(h_out, w_out)


def linear_cross_entropy(h: torch.Tensor, targets: torch.Tensor, w: torch.Tensor,
                         arena: Arena | None = None, w8: I8Weight | None = None) -> torch.Tensor:
    """Summed cross-entropy of `h @ W.T` against `targets`, memory-lean (see `_LinearCE`); with `w8`, W's
    int8 rows, the logits in int8."""
    return _LinearCE.apply(h.contiguous(), targets, w, arena, w8)
