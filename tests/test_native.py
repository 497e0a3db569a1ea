"""The fused CPU kernels (train/native.c) against the torch expressions they replace in train/int8.py.

Each kernel is compared with int8.py's own torch path on the same inputs (the kernels switched off by
clearing the loaded library), with column counts that are not multiples of 16 so the masked tails run."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from panza_local.train.torch import int8, native, synth


@pytest.fixture(autouse=True, params=native.variants_here() or [None])
def variant(request, monkeypatch):
    """Each test once per build this CPU runs (AVX-512 and AVX2 here: the AVX2 build's emulation of the
    AVX-512 intrinsics gets the same checks). Skips where the kernels cannot run (decided at test time, not
    at collection: building writes into the home, which conftest points at a temporary one only once the
    session starts)."""
    if request.param is None or native.lib() is None:
        pytest.skip("fused kernels need Linux x86-64 with AVX-512 or AVX2 + FMA + F16C, and a C compiler")
    monkeypatch.setattr(native, "_lib", native.load(request.param))
    return request.param


@pytest.fixture
def torch_path(monkeypatch):
    """A callable running f with the fused kernels off (int8.py's torch expressions)."""
    def run(f, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(native, "_lib", None)
            assert native.lib() is None
            return f(*args, **kwargs)
    return run


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cols", [100, 576, 1537])
def test_quantization_is_bit_for_bit_the_torch_expression(cols, torch_path):
    torch.manual_seed(cols)
    x = torch.randn(53, cols) ** 3  # heavy tails, like real activations
    x[7] = 0.0  # an all-zero row: scale clamped, no NaN
    cs = torch.rand(cols) + 0.5
    for kw in ({}, {"col_scale": cs}):
        q, s = int8.quant_rows(x, **kw)
        q_ref, s_ref = torch_path(int8.quant_rows, x, **kw)
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    wide = torch.randn(53, cols + 9)  # rows with a stride: a column slice
    assert torch.equal(int8.quant_rows(wide[:, 3:3 + cols])[0], torch_path(int8.quant_rows, wide[:, 3:3 + cols])[0])


def _case(n_gate=50):
    torch.manual_seed(1)
    k = 75
    parts = ((n_gate, True), (n_gate, True))
    ab = [torch.randn(8, k) * 0.1, torch.randn(n_gate, 8) * 0.1, torch.randn(5, k) * 0.1, torch.randn(n_gate, 5) * 0.1]
    qx, sx = int8.quant_rows(torch.randn(41, k))
    w = int8.from_dense(torch.randn(2 * n_gate, k) * 0.05)
    xa = torch.randn(41, 13)
    return qx, sx, w, xa, parts, ab


def test_product_dequantizes_and_adds_each_lora_part(torch_path):
    qx, sx, w, xa, _, ab = _case()
    parts = ((50, True), (20, False), (30, True))  # a part without LoRA between two with
    ab = [ab[0], ab[1], ab[2], ab[3][:30]]
    got = int8._product(qx, sx, w.q, w.s, xa, 2.0, parts, ab)
    ref = torch_path(int8._product, qx, sx, w.q, w.s, xa, 2.0, parts, ab)
    assert _rel(got, ref) < 1e-6
    assert (got[:, 50:70] == ref[:, 50:70]).all()  # no LoRA there: the same two products, same order


def test_product_swiglu_and_its_gradient_from_the_kept_fp16_product(torch_path):
    qx, sx, w, xa, parts, ab = _case()
    keep, keep_ref = torch.empty(41, 100, dtype=torch.float16), torch.empty(41, 100, dtype=torch.float16)
    got = int8._product(qx, sx, w.q, w.s, xa, 2.0, parts, ab, ffn=50, keep=keep)
    ref = torch_path(int8._product, qx, sx, w.q, w.s, xa, 2.0, parts, ab, ffn=50, keep=keep_ref)
    assert got.shape == (41, 50) and _rel(got, ref) < 1e-6
    full = torch_path(int8._product, qx, sx, w.q, w.s, xa, 2.0, parts, ab)  # the product before the SwiGLU
    assert _rel(keep.float(), keep_ref.float()) < 1e-3 and _rel(keep.float(), full) < 1e-3  # fp16 rounding
    g = torch.randn(41, 50)
    got = int8._swiglu_grad_kept(keep, g).clone()
    ref = torch_path(int8._swiglu_grad_kept, keep, g)
    assert got.shape == (41, 100) and _rel(got, ref) < 1e-6
    huge = torch.full((2, 32), 1e6)  # beyond fp16: clamped, never inf
    k2 = torch.empty(2, 32, dtype=torch.float16)
    int8._product(*int8.quant_rows(huge), torch.ones(32, 32, dtype=torch.int8), torch.ones(32), None, 1.0,
                  ((16, False), (16, False)), (), ffn=16, keep=k2)
    assert torch.isfinite(k2.float()).all()


def test_input_gradient_with_its_low_rank_term(torch_path):
    torch.manual_seed(2)
    w = int8.from_dense(torch.randn(90, 70) * 0.05)
    g, u, v = torch.randn(33, 90), torch.randn(33, 11), torch.randn(11, 70)
    got = int8.mm_grad(g, w, u=u, v=v)
    ref = torch_path(int8.mm_grad, g, w, u=u, v=v)
    assert _rel(got, ref) < 1e-6
    assert torch.equal(int8.mm_grad(g, w), torch_path(int8.mm_grad, g, w))  # no low-rank term: bit for bit


def test_a_lora_layer_trains_the_same_with_and_without_the_kernels(torch_path):
    """Forward, input gradient and LoRA gradients of one fused gate|up layer and one plain layer."""
    torch.manual_seed(3)
    x = torch.randn(45, 64)
    for ffn, parts in ((40, ((40, True), (40, True))), (0, ((30, True), (10, False)))):
        w = int8.from_dense(torch.randn(80 if ffn else 40, 64) * 0.1)
        ab = [t for rows, has in parts if has for t in (torch.randn(4, 64) * 0.1, torch.randn(rows, 4) * 0.1)]

        def run(ffn=ffn, parts=parts, w=w, ab=ab):
            xi = x.clone().requires_grad_()
            abi = [t.clone().requires_grad_() for t in ab]
            y = int8.lora_linear(xi, w, 2.0, parts, abi, ffn=ffn)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            return [y.detach(), xi.grad, *(t.grad for t in abi)]

        for got, ref in zip(run(), torch_path(run)):
            assert _rel(got, ref) < 1e-5


def test_build_is_cached_and_a_failing_compiler_is_reported(tmp_path, monkeypatch, variant):
    first = native.build(tmp_path, variant)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path, variant) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    monkeypatch.setenv("CC", "false")  # a compiler that fails: a new key, a clear error, nothing left behind
    with pytest.raises(RuntimeError, match="false failed on native.c"):
        native.build(tmp_path, variant)
    assert sorted(os.listdir(tmp_path)) == [first.name]


def test_rope_and_its_adjoint_from_and_to_any_layout(torch_path):
    from panza_local.train.torch import ops

    torch.manual_seed(4)
    t, h, d = 29, 3, 48  # half = 24: a full and a masked chunk per half
    ang = torch.randn(t, 1, d // 2)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x = torch.randn(t, 2 * h, d)[:, 1::2]  # strided heads
    out = torch.empty(h, t, d)  # head-major, as the attention keeps it
    native.rope(x, cos, sin, out.transpose(0, 1))
    assert torch.equal(out.transpose(0, 1), ops.rope(x, cos, sin))
    g = torch.empty(t, h, d)
    native.rope(out.transpose(0, 1), cos, sin, g, inverse=True)
    assert torch.equal(g, ops._rope_t(out.transpose(0, 1), cos, sin))


def test_rms_norm_forward_and_backward(torch_path):
    from panza_local.train.torch import ops

    torch.manual_seed(5)
    w = torch.rand(70) + 0.5
    x = torch.randn(33, 70) * 3

    def run():
        xi = x.clone().requires_grad_()
        y = ops.rms_norm(xi, w, 1e-5)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return y.detach(), xi.grad

    got, ref = run(), torch_path(run)
    assert _rel(got[0], ref[0]) < 1e-6 and _rel(got[1], ref[1]) < 1e-5
    assert _rel(got[0], ops.norm(x, w, 1e-5)) < 1e-6


def test_cross_entropy_kernel_and_its_in_place_gradient():
    torch.manual_seed(6)
    x = torch.randn(37, 1003) * 4  # a vocabulary that is not a multiple of 16
    t = torch.randint(0, 1003, (37,))
    ref = torch.nn.functional.cross_entropy(x, t, reduction="none")
    g_ref = torch.softmax(x, dim=1)
    g_ref[torch.arange(37), t] -= 1.0
    loss, y = torch.empty(37), x.clone()
    native.softmax_xent(y, t, loss, grad=False)
    assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-6) and torch.equal(y, x)  # no gradient asked: untouched
    native.softmax_xent(y, t, loss, grad=True)
    assert torch.allclose(loss, ref, rtol=1e-6, atol=1e-6) and _rel(y, g_ref) < 1e-6


@pytest.mark.parametrize("kernel", [True, False])
def test_probabilities_in_int8_round_stochastically_without_bias(kernel, torch_path):
    """The loss's int8 gradient product quantizes softmax * W's row scales with stochastic rounding: every
    entry lands on the step just below or just above its value, and the average over many seeds is the value
    itself, the small probabilities included (rounding to nearest would zero them: a bias). Both the kernel
    and the torch path; the kernel's stream depends on the seed only, not on the thread count."""
    torch.manual_seed(7)
    x = torch.randn(6, 1003) * 3  # a vocabulary that is not a multiple of 16
    t = torch.randint(0, 1003, (6,))
    cs = torch.rand(1003) * 0.02 + 0.01  # like W's row scales
    ref_loss = torch.nn.functional.cross_entropy(x, t, reduction="sum")
    exact = torch.softmax(x, dim=1) * cs
    run = (lambda f, *a: f(*a)) if kernel else torch_path
    total, n = torch.zeros_like(exact), 400
    for _ in range(n):
        loss, q, qs = run(int8._xent_probs8, x.clone(), t, cs, None)
        assert abs(float(loss) - float(ref_loss)) < 1e-4 * float(ref_loss)
        y = exact / qs
        assert bool(((q.float() >= y.floor() - 1e-3) & (q.float() <= y.ceil() + 1e-3)).all())
        total += q.float() * qs
    step = qs  # the same every time (a row's max sets it)
    assert float(((total / n - exact) / step).abs().max()) < 0.12  # 4.8 standard errors of a mean of 400
    small = exact < step / 4  # what round-to-nearest would have dropped
    assert bool(small.any()) and abs(float((total / n)[small].sum() / exact[small].sum()) - 1) < 0.02
    if kernel:
        torch.manual_seed(3)
        a = int8._xent_probs8(x.clone(), t, cs, None)[1].clone()
        torch.manual_seed(3)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            b = int8._xent_probs8(x.clone(), t, cs, None)[1]
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(a, b)


def test_the_avx2_build_gives_the_avx512_builds_bits():
    """Where the CPU runs both builds: every kernel's output identical, bit for bit (native_avx2.h does the
    same IEEE operation per lane, and its reductions sum in the same tree)."""
    if {"avx512", "avx2"} - set(native.variants_here()):
        pytest.skip("needs a CPU that runs both builds (AVX-512)")
    torch.manual_seed(0)
    x, cs, t = torch.randn(37, 1003) ** 3, torch.rand(1003) + 0.5, torch.randint(0, 1003, (37,))
    w = int8.from_dense(torch.randn(600, 75) * 0.05)
    qx, sx = int8.quant_rows(torch.randn(41, 75))
    y32, xa, g = torch._int_mm(qx, w.q.t()), torch.randn(41, 8), torch.randn(41, 300)
    lora = [(0, 300, 0, torch.randn(8, 300)), (300, 300, 0, torch.randn(8, 300))]
    k_raw = torch.from_numpy(synth.random_tensor(6, 512, "Q4_K", 0.05, np.random.default_rng(0)))

    def run():
        out = [*int8.quant_rows(x, col_scale=cs)]
        torch.manual_seed(5)
        out += int8._xent_probs8(x.clone(), t, cs * 0.01, None)[1:]
        prod, keep, sg = torch.empty(41, 300), torch.empty(41, 600, dtype=torch.float16), torch.empty(41, 600)
        native.product(y32, sx, w.s, prod, xa, lora, mode=1, ffn=300, keep=keep)
        native.swiglu_grad_h(keep, g, sg)
        nrm, rstd, ng = torch.empty(37, 1003), torch.empty(37), torch.empty(37, 1003)
        native.rms_norm(x, cs, 1e-5, nrm, None, rstd)
        native.rms_norm_grad(x, rstd, cs, x * 0.1, ng)
        deq = torch.empty(41, 600)
        native.dequant(y32, sx, deq, xa, torch.randn(8, 600))
        kq, ks = torch.empty(6, 512, dtype=torch.int8), torch.empty(6)
        native.blocks_to_i8(k_raw, "Q4_K", kq, ks)
        return out + [prod, keep, sg, nrm, rstd, ng, deq, kq, ks]

    got = {}
    for v in ("avx512", "avx2"):
        native._lib = native.load(v)  # the fixture restores the loaded library afterwards
        torch.manual_seed(1)
        got[v] = run()
    assert all(torch.equal(a, b) for a, b in zip(got["avx512"], got["avx2"], strict=True))


def test_doctor_reports_what_cpu_training_runs(home):
    from panza_local import doctor

    acc = doctor.accelerators(deep=True)
    assert acc["torch_device"] == "cpu"
    assert acc["cpu_int8"] == int8.available() and acc["cpu_fused_kernels"] is True  # this module runs only then


def test_the_setting_turns_the_kernels_off(home, monkeypatch):
    monkeypatch.setattr(native, "_lib", False)  # not tried yet in this process
    monkeypatch.setenv("PANZA_TRAIN_NATIVE_KERNELS", "0")
    assert native.lib() is None and not native.usable(torch.ones(2, 2))
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.delenv("PANZA_TRAIN_NATIVE_KERNELS")
    assert native.lib() is not None  # built into this test's fresh home
    assert list((home / "cache" / "native").glob("panza_native-*.so"))


def test_without_a_working_compiler_training_falls_back_with_a_warning(home, monkeypatch, caplog):
    monkeypatch.setattr(native, "_lib", False)
    monkeypatch.setenv("CC", "false")  # a fresh home has no built library, and this compiler fails
    with caplog.at_level("WARNING", logger="panza_local.train.torch.native"):
        assert native.lib() is None
    assert "fused CPU kernels unavailable" in caplog.text and "false failed on native.c" in caplog.text
    x = torch.randn(5, 40)
    q, _ = int8.quant_rows(x)  # the torch path
    assert torch.equal(q.float(), torch.round(x * (127.0 / x.abs().amax(1, keepdim=True))))
