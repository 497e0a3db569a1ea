"""Int8 training path (train/int8.py): the products match fp32 closely, the loss helper exactly, and on the
embedded model the int8 forward stays near the exact one while validation (eval mode) stays exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import usermail

from panza_local.train.torch import int8, ops

cos = lambda a, b: F.cosine_similarity(a.flatten(), b.flatten(), 0).item()


def _reference(x, w, scale, parts, ab):
    ys, j, off = [], 0, 0
    for rows, has in parts:
        y = x @ w[off:off + rows].t()
        if has:
            y = y + scale * (x @ ab[2 * j].t()) @ ab[2 * j + 1].t()
            j += 1
        ys.append(y)
        off += rows
    return torch.cat(ys, dim=1)


def test_fused_lora_linear_matches_fp32_values_and_gradients():
    torch.manual_seed(0)
    parts = [(64, True), (32, False), (32, True)]  # q|k|v with no LoRA on k
    w = torch.randn(128, 96) * 0.05
    x = torch.randn(37, 96, requires_grad=True)
    ab = [t.requires_grad_() for n, has in parts if has for t in (torch.randn(4, 96), torch.randn(n, 4) * 0.1)]
    y = int8.lora_linear(x, int8.from_dense(w), 2.0, parts, ab)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ab2 = [t.detach().clone().requires_grad_() for t in ab]
    y2 = _reference(x2, w, 2.0, parts, ab2)
    (y2 * g).sum().backward()
    assert cos(y, y2) > 0.999
    assert cos(x.grad, x2.grad) > 0.999
    for a, b in zip(ab, ab2):
        assert cos(a.grad, b.grad) > 0.999
    # int8 is not fp32: the test would pass a wrong scale only by accident
    assert not torch.equal(y, y2)


def test_quant_rows_roundtrip_and_zero_rows():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    q, s = int8.quant_rows(x)
    assert q.dtype == torch.int8 and q[1].abs().max() == 127
    assert torch.allclose(q.float() * s, x, atol=2.0 / 254)
    assert torch.equal(q[0], torch.zeros(3, dtype=torch.int8))  # an all-zero row stays zero, no NaN


def test_linear_cross_entropy_equals_plain_cross_entropy():
    torch.manual_seed(1)
    h = torch.randn(300, 32, requires_grad=True)  # > one chunk
    w = torch.randn(500, 32)
    t = torch.randint(0, 500, (300,))
    loss = int8.linear_cross_entropy(h, t, w)
    loss.backward()
    h2 = h.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w.t(), t, reduction="sum")
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-5)
    with torch.no_grad():  # evaluation: no gradient is computed or kept
        assert torch.allclose(int8.linear_cross_entropy(h, t, w), ref, rtol=1e-5)


def test_linear_cross_entropy_refuses_targets_outside_the_vocabulary():
    """An ignored position (-100) that was not dropped would index outside a row in the fused loss kernel:
    a clear error instead."""
    h, w = torch.randn(4, 8), torch.randn(10, 8)
    for bad in (-100, 10):
        with pytest.raises(ValueError, match="drop ignored positions first"):
            int8.linear_cross_entropy(h, torch.tensor([1, 2, bad, 3]), w)


def test_int8_vocabulary_projection_keeps_outlier_columns_exact():
    """The int8 path's loss: a hidden state with a few massive dimensions (as a final norm's output has)
    still gives the fp32 loss within 0.5% and its gradient at cosine > 0.99; without keeping those columns
    in fp32 the same int8 product is visibly worse (the test would catch losing the precaution)."""
    torch.manual_seed(6)
    h = torch.randn(300, 64)
    h[:, [3, 17, 40]] *= 25.0  # massive activations
    w = torch.randn(2000, 64) * 0.1
    t = torch.randint(0, 2000, (300,))
    h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
    loss = int8.linear_cross_entropy(h1, t, w, w8=int8.from_dense(w))
    loss.backward()
    ref = F.cross_entropy(h2 @ w.t(), t, reduction="sum")
    ref.backward()
    assert abs(loss.item() / ref.item() - 1) < 0.005
    assert cos(h1.grad, h2.grad) > 0.99
    old = int8.OUTLIER_COLS
    try:
        int8.OUTLIER_COLS = 0
        naive = int8.linear_cross_entropy(h, t, w, w8=int8.from_dense(w))
    finally:
        int8.OUTLIER_COLS = old
    assert abs(naive.item() / ref.item() - 1) > 2 * abs(loss.item() / ref.item() - 1)


def test_swiglu_gradient():
    torch.manual_seed(2)
    gu = torch.randn(7, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: ops.swiglu(z[:, :5], z[:, 5:]), (gu,))
    assert torch.allclose(ops.swiglu(gu[:, :5], gu[:, 5:]), F.silu(gu[:, :5]) * gu[:, 5:])


@pytest.fixture(scope="module")
def models(embedded_model):
    from panza_local.train.torch import backend as tb

    if not int8.available():
        pytest.skip("this CPU has no VNNI int8 matmul (the int8 path is off here; fp32 trains)")
    m8 = tb.build(embedded_model, 8, 16.0, tb.ALL_TARGETS, "cpu", precision="int8")
    m32 = tb.build(embedded_model, 8, 16.0, tb.ALL_TARGETS, "cpu", precision="fp32")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, p in m8.lora.items():
            if key.endswith("_B"):  # a trained-looking adapter: B != 0, so A gets gradients too
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
        for key, p in m32.lora.items():
            p.copy_(m8.lora[key])
    return m8, m32


def _row(embedded_model):
    from panza_local.train import data as tdata

    tok = tdata.Tokenizer(embedded_model)
    exs = [tdata.make_example(f"Tell {n} the meeting moved to Thursday at {h} and ask for the slides.",
                              f"Hi {n},\n\nThe meeting is now Thursday at {h}. Could you send me the slides "
                              f"before then?\n\nThanks,\nSam", key=str(i))
           for i, (n, h) in enumerate([("Ana", "10"), ("Raj", "2pm"), ("Lee", "noon"), ("Kim", "9:30")])]
    return tdata.pack([tdata.tokenize(e, tok, 256) for e in exs], 256)[0]


def _step(m, row) -> tuple[float, torch.Tensor]:
    """One training step's mean loss and all LoRA gradients, flattened."""
    m.train()
    m.zero_grad(set_to_none=True)
    loss, n = m(row)
    (loss / n).backward()
    return loss.item() / n, torch.cat([p.grad.flatten() for p in m.lora.values()])


def test_int8_model_close_to_fp32_and_validation_exact(models, embedded_model):
    m8, m32 = models
    assert m8.i8 is not None and m32.i8 is None
    row = _row(embedded_model)
    (l8, g8), (l32, g32) = _step(m8, row), _step(m32, row)
    assert abs(l8 - l32) < 0.08  # nats; measured 0.036 on real mail, 0.047 on this row (a wrong scale: > 1)
    assert cos(g8, g32) > 0.9  # measured ~0.96: a noisy but well-aligned gradient
    m8.eval(), m32.eval()
    with torch.no_grad():
        assert float(m8(row)[0]) == pytest.approx(float(m32(row)[0]), rel=1e-6)  # eval runs the exact path


def test_fused_gate_up_swiglu_matches_unfused():
    torch.manual_seed(4)
    parts = [(24, True), (24, True)]
    w8 = int8.from_dense(torch.randn(48, 32) * 0.1)
    x = torch.randn(9, 32, requires_grad=True)
    ab = [t.requires_grad_() for n, _ in parts for t in (torch.randn(4, 32), torch.randn(n, 4) * 0.1)]
    y = int8.lora_linear(x, w8, 2.0, parts, ab, ffn=24)  # backward uses the product kept in fp16
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ab2 = [t.detach().clone().requires_grad_() for t in ab]
    y2 = int8.lora_linear(x2, w8, 2.0, parts, ab2)  # the product kept in fp32 by autograd
    y2 = ops.swiglu(y2[:, :24], y2[:, 24:])
    (y2 * g).sum().backward()
    assert torch.allclose(y, y2, atol=1e-6)
    for a, b in zip([x] + ab, [x2] + ab2):  # within fp16's rounding of the kept product (2^-11 relative)
        assert ((a.grad - b.grad).norm() / b.grad.norm()).item() < 2e-3


def test_int8_step_keeps_its_tensors_in_a_reused_arena(models, embedded_model):
    """The training step's kept activations live in the arena, reused step after step, and give the same
    gradients, bit for bit, as plain allocation (the same torch seed: the loss's gradient product rounds
    stochastically)."""
    m8, _ = models
    row = _row(embedded_model)
    assert m8.arena is not None
    m8.train()
    runs, kept = [], m8.arena
    for arena in (kept, kept, None):
        m8.arena = arena
        m8.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss, n = m8(row)
        (loss / n).backward()
        runs.append((float(loss.detach()), torch.cat([p.grad.flatten() for p in m8.lora.values()]),
                     [b.data_ptr() for b in (arena.blocks if arena else [])]))
    m8.arena = kept
    (l1, g1, p1), (l2, g2, p2), (l3, g3, _) = runs
    assert p1 and p1 == p2  # the second step wrote into the first step's blocks
    assert l1 == l2 == l3 and torch.equal(g1, g2) and torch.equal(g1, g3)


def test_linear_cross_entropy_with_a_half_precision_base():
    """An fp16/bf16 base (the MPS path) keeps working: products in its dtype, the gradient in fp32."""
    torch.manual_seed(5)
    h = torch.randn(150, 32).bfloat16().requires_grad_()
    w = torch.randn(300, 32).bfloat16()
    t = torch.randint(0, 300, (150,))
    loss = int8.linear_cross_entropy(h, t, w)
    loss.backward()
    h2 = h.detach().float().requires_grad_()
    ref = F.cross_entropy(h2 @ w.float().t(), t, reduction="sum")
    ref.backward()
    assert torch.allclose(loss, ref, rtol=2e-2)
    assert cos(h.grad.float(), h2.grad) > 0.99


def test_int8_gradients_on_real_mail_point_where_fp32_ones_do(models, embedded_model, tmp_path):
    """On real mail (seq 512, an untrained model's spread-out predictions) the int8 step's LoRA gradient
    stays aligned with fp32's. Measured 0.97-0.98 (the same with the vocabulary projection's gradient product
    in fp32 or in int8 with stochastic rounding). That product in int8 rounded to nearest (which zeroes every
    probability under half a step: a bias the same for every token) gave 0.2-0.4 here while still 0.94 on the
    short synthetic row above; this test is the one that sees it."""
    from panza_local.train import data as tdata

    m8, m32 = models
    tok = tdata.Tokenizer(embedded_model)
    exs = tdata.examples_from_jsonl(usermail.jsonl("jeff_johnson_clean.jsonl", tmp_path), limit=12)  # or Maya's
    row = tdata.pack([tdata.tokenize(e, tok, 512) for e in exs], 512)[0]
    assert cos(_step(m8, row)[1], _step(m32, row)[1]) > 0.9
