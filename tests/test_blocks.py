"""GGUF block types kept as their bytes: dequantized bit for bit as gguf-py does, products and losses equal to the
dense layer's, and a loaded base that holds no dense copy of its projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panza_local.train.torch import backend as tb
from panza_local.train.torch import blocks, q4, synth


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("qtype", blocks.TYPES)
def test_dequantize_is_gguf_py_bit_for_bit(qtype, path, monkeypatch):
    import gguf
    from gguf.quants import dequantize

    from panza_local.train.torch import native

    if path == "torch":
        monkeypatch.setattr(native, "_lib", None)
    elif native.lib() is None:
        pytest.skip("no fused kernels here (no C compiler, or neither AVX2 nor AVX-512)")

    rng = np.random.default_rng(3)
    raw = synth.random_tensor(8, 512, qtype, 0.05, rng)
    if qtype not in ("F16", "BF16"):  # every byte random too, scale fields included (inf and nan must match)
        raw = np.concatenate([raw, rng.integers(0, 256, raw.shape, dtype=np.uint8)])
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.asarray(dequantize(raw, gguf.GGMLQuantizationType[qtype]), dtype=np.float32).reshape(-1, 512)
    w = blocks.from_raw(raw, qtype, (raw.shape[0], 512))
    ours = blocks.dequantize(w).numpy()
    assert np.array_equal(ours, ref, equal_nan=True)
    assert w.nbytes == raw.nbytes  # the same bytes, nothing expanded
    ids = torch.tensor([5, 0, 3])
    assert np.array_equal(blocks.embedding(ids, w, torch.float32).numpy(), ref[ids.numpy()], equal_nan=True)
    assert 0.03 < float(np.std(ref[:8])) < 0.08  # the synthetic blocks give the spread asked for


def _q4(rng):
    w = q4.quantize_q4_0(torch.randn(48, 64, generator=torch.Generator().manual_seed(0)))
    return w, q4.dequantize(w, torch.float32), q4.q4_linear


def _k4(rng):
    w = blocks.from_raw(synth.random_tensor(10, 256, "Q4_K", 0.05, rng), "Q4_K", (10, 256))
    return w, blocks.dequantize(w), blocks.linear


@pytest.mark.parametrize("kind,slice_elems", [("q4", 0), ("blocks", blocks.SLICE_ELEMS), ("blocks", 3 * 256)])
def test_frozen_linear_gradients_equal_the_dense_layer(monkeypatch, kind, slice_elems):
    if slice_elems:
        monkeypatch.setattr(blocks, "SLICE_ELEMS", slice_elems)  # 3 rows a slice: the sliced path too
    w, dense, linear = (_q4 if kind == "q4" else _k4)(np.random.default_rng(0))
    x = torch.randn(2, 5, dense.shape[1], requires_grad=True)
    y = linear(x, w)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(x2, dense) * g).sum().backward()
    assert torch.allclose(y, x2 @ dense.t(), atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


@pytest.mark.parametrize("slice_elems", [blocks.SLICE_ELEMS, 7 * 256])
def test_block_cross_entropy_equals_the_dense_one(monkeypatch, slice_elems):
    monkeypatch.setattr(blocks, "SLICE_ELEMS", slice_elems)
    rng = np.random.default_rng(1)
    w = blocks.from_raw(synth.random_tensor(40, 256, "Q6_K", 1.0, rng), "Q6_K", (40, 256))
    dense = blocks.dequantize(w)
    h = torch.randn(6, 256, requires_grad=True)
    tgt = torch.tensor([0, 39, 7, 7, 20, 3])
    loss = blocks.linear_cross_entropy(h, tgt, w)
    (loss * 0.5).backward()
    h2 = h.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(h2 @ dense.t(), tgt, reduction="sum")
    (ref * 0.5).backward()
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        blocks.linear_cross_entropy(h, torch.tensor([40]), w)
    # a bf16 compute dtype (the CUDA path's): the products in bf16, the sums in fp32
    hb = h.detach().to(torch.bfloat16).requires_grad_(True)
    lb = blocks.linear_cross_entropy(hb, tgt, w)
    lb.backward()
    assert hb.grad.dtype == torch.bfloat16
    assert torch.allclose(lb, ref, rtol=2e-2)
    assert torch.nn.functional.cosine_similarity(hb.grad.float().flatten(), 2 * h2.grad.flatten(), dim=0) > 0.99


def test_block_cross_entropy_with_logits_far_apart():
    """Logits hundreds apart (a random or sharply peaked model): exp() of most of them underflows; those are
    dropped to 0, never left denormal, and the loss and gradient still equal the float64 reference."""
    rng = np.random.default_rng(2)
    w = blocks.from_raw(synth.random_tensor(64, 256, "Q8_0", 1.0, rng), "Q8_0", (64, 256))
    dense = blocks.dequantize(w).double()
    h = (torch.randn(5, 256, generator=torch.Generator().manual_seed(4)) * 3).requires_grad_(True)
    tgt = torch.tensor([1, 2, 63, 0, 9])
    loss = blocks.linear_cross_entropy(h, tgt, w)
    loss.backward()
    h2 = h.detach().double().requires_grad_(True)
    logits = h2 @ dense.t()
    assert float((logits.amax(1) - logits.amin(1)).min().detach()) > 150  # the spread the case is about (e^-150: denormal)
    ref = torch.nn.functional.cross_entropy(logits, tgt, reduction="sum")
    ref.backward()
    assert torch.allclose(loss.double(), ref, rtol=1e-5)
    assert torch.allclose(h.grad.double(), h2.grad, atol=1e-4)
    p = blocks._exp_(torch.linspace(-200, 0, 4001))  # what the pass exponentiates: 0 or a normal float
    assert not bool(((p > 0) & (p < torch.finfo(torch.float32).tiny)).any())
    assert float(p[-1]) == 1.0 and float(p[0]) == 0.0


@pytest.mark.parametrize("qtype", [t for t in blocks.TYPES if t not in ("F16", "BF16")])
def test_blocks_go_to_int8_in_one_pass_bit_for_bit(qtype, monkeypatch):
    """The int8 path's per-use weight: GGUF block rows straight to int8 (one C pass a row) give exactly what
    dequantizing to fp32 and then quantizing each row gives."""
    from panza_local.train.torch import int8, native
    from panza_local.train.torch.arena import Arena

    if native.lib() is None:
        pytest.skip("no fused kernels here (no C compiler, or neither AVX2 nor AVX-512)")
    rng = np.random.default_rng(5)
    parts = [blocks.from_raw(synth.random_tensor(rows, 768, qtype, 0.05, rng), qtype, (rows, 768))
             for rows in (7, 12)]
    parts[1].raw[3] = 0  # an all-zero row: its scale is the floor, its values 0
    lazy = int8.LazyI8(parts)
    ours = lazy.get(Arena(block=0))
    q, s = ours.q.clone(), ours.s.clone()
    monkeypatch.setattr(native, "_lib", None)  # the reference: fp32 rows, then torch's per-row int8
    dense = torch.cat([blocks.dequantize(p) for p in parts])
    ref_q, ref_s = int8.quant_rows(dense, keep=False)
    assert q.shape == (19, 768)
    assert torch.equal(q, ref_q)
    assert torch.equal(s, ref_s.view(-1))
    assert torch.equal(q[7 + 3], torch.zeros(768, dtype=torch.int8))


def test_loaded_base_keeps_the_file_bytes(tmp_path):
    path = synth.write(tmp_path / "m.gguf", "llama", types=synth.Q4_K_M, n_layers=1)
    base = tb.load_base(path, keep_blocks=True)
    kept = [w for w in base.w.values() if isinstance(w, blocks.BlockWeight)]
    dense_bytes = sum(w.numel() * w.element_size() for w in base.w.values() if isinstance(w, torch.Tensor))
    assert len(kept) == 9  # 7 projections, the embedding and the output
    assert {w.qtype for w in kept} == {"Q4_K", "Q6_K"}
    assert sum(w.nbytes for w in kept) <= path.stat().st_size
    assert dense_bytes < 20_000  # norms only
    # llama's q/k rows are un-permuted as whole rows: the same blocks, in the transformers order
    q = tb.load_base(path).w["blk.0.attn_q"]
    assert torch.equal(blocks.dequantize(base.w["blk.0.attn_q"]), q)


def test_int8_path_on_blocks_keeps_no_int8_copy(tmp_path, monkeypatch):
    """On a VNNI CPU the frozen products run in int8: from blocks, each group is quantized per use (forward and
    again backward) and gives the products an int8 copy of the dense base gives (torch._int_mm runs, slowly,
    on any x86 CPU, so this runs here without VNNI)."""
    from panza_local.train.torch import int8

    monkeypatch.setattr(int8, "available", lambda: True)
    torch.set_num_threads(1)
    path = synth.write(tmp_path / "m.gguf", "qwen2", types=synth.Q4_K_M, n_layers=1, tied=True)
    lazy = tb.build(path, 4, 8.0, tb.ALL_TARGETS, "cpu", precision="int8")
    dense = tb.build(path, 4, 8.0, tb.ALL_TARGETS, "cpu", precision="int8", keep_q4=False)
    assert all(isinstance(w, int8.LazyI8) for w in lazy.i8.values() if not isinstance(w, torch.Tensor))
    assert all(isinstance(w, int8.I8Weight) for w in dense.i8.values() if not isinstance(w, torch.Tensor))
    row = {"input_ids": list(range(100, 140)), "positions": list(range(40)), "segments": [0] * 40,
           "targets": [-100] * 10 + list(range(300, 330)), "n_targets": 30}
    grads = []
    for m in (lazy, dense):
        with torch.no_grad():
            for k, p in m.lora.items():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(k))) * 0.05)
        m.train()
        loss, n = m(row)
        (loss / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.lora.values()]))
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.99, cos  # the same int8 layer products; only the vocabulary projection differs (fp32 here)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_checkpointed_step_gives_the_same_gradients(tmp_path, monkeypatch, precision):
    """Gradient checkpointing (what the pre-flight turns on when memory is short) recomputes each layer in
    backward, reusing only per-op scratch: the LoRA gradients are the plain step's."""
    from panza_local.train.torch import arena, int8

    monkeypatch.setattr(int8, "available", lambda: True)
    path = synth.write(tmp_path / "m.gguf", "qwen2", types=synth.Q4_K_M, n_layers=2, tied=True)
    row = {"input_ids": list(range(100, 148)), "positions": list(range(48)), "segments": [0] * 48,
           "targets": [-100] * 8 + list(range(300, 340)), "n_targets": 40}
    grads = []
    for ckpt in (False, True):
        m = tb.build(path, 4, 8.0, tb.ALL_TARGETS, "cpu", grad_ckpt=ckpt, precision=precision)
        assert isinstance(m.arena, arena.ScratchOnly) == ckpt
        with torch.no_grad():
            for k, p in m.lora.items():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(k))) * 0.05)
        m.train()
        for _ in range(2):  # a second step reuses the scratch the first one left
            for p in m.lora.values():
                p.grad = None
            loss, n = m(row)
            (loss / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.lora.values()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_memory_preflight_refuses_with_the_fix(tmp_path, monkeypatch):
    """A run that would not fit in the free memory stops before it loads anything, naming what fits."""
    from panza_local.errors import AdapterError
    from panza_local.train import HParams
    from panza_local.train.torch import memory

    path = synth.write(tmp_path / "m.gguf", "qwen2", types=synth.Q4_K_M, n_layers=2)
    est = memory.estimate(path, 512)
    assert est["weights"] <= path.stat().st_size  # the blocks as they are: no dense copy counted
    assert memory.estimate(path, 1024)["activations"] == 2 * est["activations"]
    assert memory.estimate(path, 512, grad_ckpt=True)["activations"] < est["activations"]
    monkeypatch.setenv("PANZA_MEM_AVAILABLE_MB", str(est["total"] / 2**20 + 10))
    assert memory.check(path, 512)["total"] == est["total"]
    # short of memory by the activations of ~300 tokens: shorter sequences fit, and the error says so
    short = est["total"] - 300 * est["per_seq_token"]
    monkeypatch.setenv("PANZA_MEM_AVAILABLE_MB", str(short / 2**20))
    with pytest.raises(AdapterError, match="sequence length 512 needs about") as exc:
        memory.check(path, 512)
    fix = exc.value.fix
    n = int(fix.split("--seq-len ")[1].split("`")[0])
    assert 128 <= n <= 212 and memory.estimate(path, n)["total"] <= short
    assert "smaller model" in fix
    # hopeless: no sequence length fits; the trainer refuses before building the model or writing anything
    monkeypatch.setenv("PANZA_MEM_AVAILABLE_MB", "1")
    rows = [{"input_ids": [1, 2, 3], "positions": [0, 1, 2], "segments": [0] * 3, "targets": [-100, 2, 3],
             "n_targets": 2}]
    with pytest.raises(AdapterError, match="0.0 GB is free") as exc:
        tb.train_lora(path, rows, rows, HParams(max_steps=1), tmp_path / "run", device="cpu", threads=1)
    assert "--seq-len" not in exc.value.fix and "smaller model" in exc.value.fix
    assert not (tmp_path / "run").exists()


def test_catalogue_says_which_architectures_train(home, tmp_path, capsys):
    from panza_local import catalogue
    from panza_local.cli import main
    from panza_local.train.mlx import model as mlx_model

    assert catalogue.TRAINABLE_BY["torch"] == tb.ARCHS and catalogue.TRAINABLE_BY["mlx"] == mlx_model.SUPPORTED
    assert catalogue.get("gemma3-270m").trainable_by == ["mlx"]
    assert catalogue.get("qwen2.5-0.5b").trainable_by == ["torch", "mlx"]
    path = synth.stub(tmp_path / "phi.gguf", "phi3")
    assert main(["models", "add", str(path), "--name", "myphi"]) == 0
    out = capsys.readouterr().out
    assert "phi3: cannot be trained by panza-local" in out
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("myphi" in ln and "(cannot be trained)" in ln for ln in lines)
    assert any("gemma3-270m" in ln and "(trains on Apple Silicon only)" in ln for ln in lines)
    assert not any("qwen2.5-0.5b " in ln and "trained" in ln for ln in lines)


def test_preflight_turns_checkpointing_on_when_only_that_fits(tmp_path, monkeypatch):
    from panza_local.train import HParams
    from panza_local.train.torch import memory

    path = synth.write(tmp_path / "m.gguf", "llama", types="Q8_0", n_layers=3, dim=256, ffn=512)
    rows = [{"input_ids": list(range(100, 164)), "positions": list(range(64)), "segments": [0] * 64,
             "targets": [-100] * 8 + list(range(300, 356)), "n_targets": 56}]
    full, ckpt = memory.estimate(path, 64), memory.estimate(path, 64, grad_ckpt=True)
    assert ckpt["total"] < full["total"]
    monkeypatch.setenv("PANZA_MEM_AVAILABLE_MB", str((full["total"] + ckpt["total"]) / 2 / 2**20))
    hp = HParams(max_steps=1, grad_accum=1, evals=1, precision="fp32")
    res = tb.train_lora(path, rows, rows, hp, tmp_path, device="cpu", threads=1)
    assert res["grad_ckpt"] is True and res["steps"] == 1
    hp.grad_ckpt = False  # asked for explicitly: refused, and the fix names checkpointing
    from panza_local.errors import AdapterError

    with pytest.raises(AdapterError) as exc:
        tb.train_lora(path, rows, rows, hp, tmp_path / "b", device="cpu", threads=1)
    assert "--grad-ckpt" in exc.value.fix


def test_dequantize_rows_honours_dtype_and_out():
    rng = np.random.default_rng(5)
    w = blocks.from_raw(synth.random_tensor(4, 256, "Q6_K", 0.05, rng), "Q6_K", (4, 256))
    ref = blocks.dequantize(w)
    assert blocks.dequantize(w, torch.bfloat16).dtype == torch.bfloat16
    for out in (torch.empty(4, 256), torch.empty(4, 256, dtype=torch.float16), torch.empty(256, 4).t()):
        got = blocks.dequantize_rows(w.raw, "Q6_K", 256, out)
        assert got.data_ptr() == out.data_ptr() and torch.allclose(got.float(), ref, atol=1e-3)


def test_train_command_passes_sequence_length_and_checkpointing():
    from panza_local.cli import build_parser
    from panza_local.cli import train as train_cli

    args = build_parser().parse_args(["train", "--seq-len", "256", "--grad-ckpt"])
    assert train_cli._overrides(args) == {"seq_len": 256, "grad_ckpt": True}
    assert train_cli._overrides(build_parser().parse_args(["train"])) is None
