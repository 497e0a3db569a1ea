"""The training step's memory plumbing (train/arena.py) and its lean autograd ops (train/ops.py): the arena
never hands out memory that is still in use, and the ops give the same values and gradients as the plain
torch expressions they replace."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from panza_local.train.torch import int8, ops
from panza_local.train.torch.arena import Arena


def test_arena_regions_are_disjoint_aligned_and_reused_only_when_free():
    ar = Arena(block=4096)
    a, b = ar.take((10, 3)), ar.take((7,), torch.int8)
    c = ar.take((300, 4))  # 4800 bytes: larger than a block, gets one of its own
    assert a.shape == (10, 3) and b.dtype == torch.int8 and c.shape == (300, 4)
    assert all(t.data_ptr() % 64 == 0 for t in (a, b, c))
    a.fill_(1.0), b.fill_(2), c.fill_(3.0)
    assert a.eq(1.0).all() and b.eq(2).all() and c.eq(3.0).all()  # no overlap
    ptr_a = a.data_ptr()
    del a, b, c
    ar.reset()
    a2 = ar.take((10, 3))
    assert a2.data_ptr() == ptr_a  # nothing held the blocks: reused
    a2.fill_(5.0)
    ar.reset()  # a2 is still alive: the arena must not hand its memory out again
    a3 = ar.take((10, 3))
    a3.fill_(7.0)
    assert a3.data_ptr() != a2.data_ptr() and a2.eq(5.0).all()


def test_arena_tensors_have_their_own_version_counters():
    """Autograd checks that a kept tensor was not written after it was kept; writing a neighbour in the
    same block must not count as writing it (a view would share the counter and fail backward)."""
    ar = Arena()

    class Keep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            kept = ar.take(x.shape)
            kept.copy_(x)
            ctx.save_for_backward(kept)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            (kept,) = ctx.saved_tensors
            return g * kept

    x = torch.randn(5, requires_grad=True)
    y = Keep.apply(x)
    ar.take((5,)).fill_(0.0)  # the neighbour
    y.sum().backward()
    assert torch.equal(x.grad, x.detach())


def _qkv(t=300, nh=9, nkv=3, hd=64, seed=0):
    torch.manual_seed(seed)
    qkv = torch.randn(t, (nh + 2 * nkv) * hd, requires_grad=True)
    ang = torch.arange(t)[:, None] * torch.rand(hd // 2)[None]
    ang = torch.cat([ang, ang], -1)[:, None, :]
    return qkv, ang.cos(), ang.sin(), (nh, nkv, hd)


def _split(y, nh, nkv, hd):
    q, k, v = y.split([nh * hd, nkv * hd, nkv * hd], 1)
    return q.view(-1, nh, hd), k.view(-1, nkv, hd), v.view(-1, nkv, hd)


def test_long_example_backward_in_three_blocks_equals_sdpa():
    """From ops.SPLIT_MIN tokens forward and backward run as three block calls (A-A, B-B causal, B-A full)
    joined by log-sum-exps: SDPA's values and gradients within float rounding, an odd length included."""
    qkv, cos_, sin_, dims = _qkv(t=301)
    assert 301 >= ops.SPLIT_MIN
    q, k, v = _split(qkv, *dims)
    qr, kr = ops.rope(q, cos_, sin_).transpose(0, 1), ops.rope(k, cos_, sin_).transpose(0, 1)
    ref = F.scaled_dot_product_attention(qr[None], kr[None], v.transpose(0, 1)[None], is_causal=True,
                                         enable_gqa=True)[0].transpose(0, 1).reshape(301, -1)
    g = torch.randn_like(ref)
    ref.backward(g)
    g_ref, qkv.grad = qkv.grad, None
    out = ops.attention(*_split(qkv, *dims), cos_, sin_, [(0, 301)], Arena())
    out.backward(g)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert ((qkv.grad - g_ref).norm() / g_ref.norm()).item() < 1e-6


def test_attention_op_equals_sdpa_per_example_in_values_and_gradients():
    qkv, cos_, sin_, dims = _qkv()
    spans = [(0, 120), (120, 300)]  # two packed examples: neither may see the other
    q, k, v = _split(qkv, *dims)
    qr, kr = ops.rope(q, cos_, sin_).transpose(0, 1), ops.rope(k, cos_, sin_).transpose(0, 1)
    outs = [F.scaled_dot_product_attention(qr[None, :, s:e], kr[None, :, s:e], v.transpose(0, 1)[None, :, s:e],
                                           is_causal=True, enable_gqa=True)[0] for s, e in spans]
    ref = torch.cat(outs, 1).transpose(0, 1).reshape(300, -1)
    g = torch.randn_like(ref)
    ref.backward(g)
    g_ref, qkv.grad = qkv.grad, None
    ar = Arena()
    for _ in range(2):  # the second step reuses the arena's blocks
        ar.reset()
        out = ops.attention(*_split(qkv, *dims), cos_, sin_, spans, ar)
        out.backward(g)
        assert torch.equal(out, ref) and torch.equal(qkv.grad, g_ref)
        qkv.grad = None
    # and the examples are really separate: changing the first changes nothing in the second
    qkv2 = qkv.detach().clone()
    qkv2[:120] += 1.0
    out2 = ops.attention(*_split(qkv2, *dims), cos_, sin_, spans)
    assert torch.equal(out2[120:], ref[120:].detach()) and not torch.equal(out2[:120], ref[:120].detach())


def test_rms_norm_op_equals_plain_norm_and_its_gradient():
    torch.manual_seed(2)
    x = torch.randn(50, 96, dtype=torch.float64).float().requires_grad_()
    w = torch.rand(96) + 0.5
    g = torch.randn(50, 96)
    ref = ops.norm(x, w, 1e-5)
    ref.backward(g)
    g_ref, x.grad = x.grad, None
    out = ops.rms_norm(x, w, 1e-5, Arena())
    out.backward(g)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)  # the fused kernel sums x^2 in another order
    assert torch.allclose(x.grad, g_ref, atol=1e-6, rtol=1e-5)
    x64 = x.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.rms_norm(t, w.double(), 1e-5), (x64,))


def test_int8_products_with_arena_and_scratch_equal_plain_allocation():
    """Two stacked gate|up -> down blocks, forward then backward, with the arena's reused scratch slots and
    without: bit for bit the same (a slot overwritten while still needed would show here)."""
    torch.manual_seed(3)
    d, f = 48, 64
    wgu, wd = int8.from_dense(torch.randn(2 * f, d) * 0.1), int8.from_dense(torch.randn(d, f) * 0.1)
    ab = [torch.randn(4, d) * 0.1, torch.randn(f, 4) * 0.1, torch.randn(4, d) * 0.1, torch.randn(f, 4) * 0.1,
          torch.randn(4, f) * 0.1, torch.randn(d, 4) * 0.1]
    x0 = torch.randn(33, d)
    g = torch.randn(33, d)

    def run(arena):
        if arena is not None:
            arena.reset()
        x = x0.clone().requires_grad_()
        params = [t.clone().requires_grad_() for t in ab]
        h = x
        for _ in range(2):
            act = int8.lora_linear(h, wgu, 2.0, [(f, True), (f, True)], params[:4], ffn=f, arena=arena)
            h = h + int8.lora_linear(act, wd, 2.0, [(d, True)], params[4:], arena=arena)
        loss = int8.linear_cross_entropy(h, torch.arange(33) % 7, torch.randn(7, d, generator=torch.Generator()
                                                                            .manual_seed(0)), arena)
        (loss + (h * g).sum()).backward()
        return h.detach(), x.grad, [p.grad for p in params]

    plain = run(None)
    ar = Arena()
    for _ in range(2):
        h, gx, grads = run(ar)
        assert torch.equal(h, plain[0]) and torch.equal(gx, plain[1])
        assert all(torch.equal(a, b) for a, b in zip(grads, plain[2]))
    assert ar.slots  # the scratch slots were used


def test_swiglu_op_equals_plain_swiglu_and_its_gradient():
    torch.manual_seed(6)
    gate, up = torch.randn(40, 24, requires_grad=True), torch.randn(40, 24, requires_grad=True)
    g = torch.randn(40, 24)
    ref = F.silu(gate) * up
    ref.backward(g)
    refs = gate.grad, up.grad
    gate.grad = up.grad = None
    out = ops.swiglu(gate, up, Arena())
    out.backward(g)
    assert torch.equal(out, ref)
    assert torch.allclose(gate.grad, refs[0], atol=1e-6) and torch.allclose(up.grad, refs[1], atol=1e-6)
    pair = (torch.randn(5, 6, dtype=torch.float64, requires_grad=True), torch.randn(5, 6, dtype=torch.float64,
                                                                                   requires_grad=True))
    assert torch.autograd.gradcheck(lambda a, b: ops.swiglu(a, b), pair)
