"""Fused CPU kernels for the int8 training step, compiled on first use from `native.c`.

Why: on two cores the int8 step's element-wise work (quantizing each activation and gradient row,
dequantizing each int32 product, adding the LoRA products, SwiGLU and its gradient) is memory-bound, and
torch runs each of those as its own pass over the whole tensor: three to six passes where one will do.
`native.c` does each in one pass over a row that stays in L1.

How it is built: the first training run compiles `native.c` with the system C compiler (the one pip already
used to build llama-cpp-python) into `<home>/cache/native/`, keyed by the source's hash, the compiler and the
flags, and loads it with ctypes: for AVX-512 (F, BW, DQ, VL) where the CPU has it, else for AVX2 + FMA + F16C
(most laptops; `native_avx2.h` runs the same intrinsics as two 256-bit halves, bit for bit the same results).
Threads come from torch's own OpenMP runtime (the library links `libgomp.so.1`, which torch has already
loaded). Where there is no compiler or neither instruction set, or the build fails, or with the setting
`train_native_kernels` off (`PANZA_TRAIN_NATIVE_KERNELS=0`), `lib()` is None and the int8 path runs the same
arithmetic as torch expressions (the test suite checks the two against each other, for both builds).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
HEADERS = [Path(__file__).with_name("native_avx2.h")]
_COMMON = ["-O3", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared"]
# Each build of native.c: its compiler flags and the /proc/cpuinfo flags it needs, the first that fits wins.
VARIANTS = {
    "avx512": (["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma"],
               {"avx512f", "avx512bw", "avx512dq", "avx512vl"}),
    "avx2": (["-mavx2", "-mfma", "-mf16c", "-DPZ_AVX2"], {"avx2", "fma", "f16c"}),
}

P, L, I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
_SIGNATURES = {
    "pz_quant_rows": [P, L, L, L, P, P, L, P, I],
    "pz_product": [P, L, L, P, P, P, L, I, P, P, P, P, P, I, L, P, L, P, I],
    "pz_swiglu_grad_h": [P, L, L, P, L, P, L, I],
    "pz_dequant": [P, I, L, L, L, P, P, L, L, P, P, L, I],
    "pz_rope": [P, L, L, L, L, L, P, P, P, L, L, I, I],
    "pz_rms_norm": [P, L, L, P, ctypes.c_float, P, P, P, I],
    "pz_rms_norm_grad": [P, P, P, P, L, L, P, I],
    "pz_softmax_xent": [P, L, L, L, P, I, P, P, P, L, P, ctypes.c_uint64, I],
    "pz_dequant_blocks": [P, L, I, P, I],
    "pz_blocks_to_i8": [P, L, L, I, P, L, P, I],
}

_lib: ctypes.CDLL | None | bool = False  # False: not tried yet


def variants_here() -> list[str]:
    """The builds this CPU runs, best first ([] off Linux x86-64)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((set(line.split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return []
    return [name for name, (_, needs) in VARIANTS.items() if needs <= flags]


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(cache_dir: Path | None = None, variant: str = "avx512") -> Path:
    """Compile `native.c` for `variant` (once per source, compiler and flags) and return the shared library's
    path. Raises RuntimeError with the compiler's message when it cannot."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc) on PATH")
    flags = _COMMON + VARIANTS[variant][0]
    source = SOURCE.read_bytes() + b"".join(h.read_bytes() for h in HEADERS)
    key = hashlib.sha256(source + cc.encode() + " ".join(flags).encode()).hexdigest()[:16]
    if cache_dir is None:
        from ... import paths

        cache_dir = paths.ensure_dir(paths.home() / "cache" / "native")
    out = Path(cache_dir) / f"panza_native-{variant}-{key}.so"
    if out.exists():
        return out
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    try:
        res = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120,
                             check=False)
        if res.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}: {res.stderr.strip()[-800:]}")
        os.chmod(tmp, 0o600)  # like every file in the home (dlopen needs no execute bit)
        os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(variant: str) -> ctypes.CDLL:
    """Build (if needed) and load one variant's kernels. Raises OSError / RuntimeError when it cannot."""
    so = ctypes.CDLL(str(build(variant=variant)))
    for name, args in _SIGNATURES.items():
        getattr(so, name).argtypes, getattr(so, name).restype = args, None
    return so


def lib() -> ctypes.CDLL | None:
    """The loaded kernels (the best build this CPU runs), or None where they cannot run here (see the
    module docstring)."""
    global _lib
    if _lib is False:
        _lib = None
        from ... import config

        here = variants_here()
        if config.load().train_native_kernels and here:
            try:
                _lib = load(here[0])
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                log.warning("fused CPU kernels unavailable (%s); training uses the torch path", e)
    return _lib


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _rows(t: torch.Tensor) -> None:
    assert t.device.type == "cpu" and t.stride(-1) == 1, "native kernels take CPU tensors with contiguous rows"


def quant_rows(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, col_scale: torch.Tensor | None = None) -> None:
    """q = round(x * col_scale * 127 / m) and s = m / 127 per row (m the row's max |x * col_scale|)."""
    _rows(x)
    _rows(q)
    lib().pz_quant_rows(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), _ptr(col_scale), q.data_ptr(),
                        q.stride(0), s.data_ptr(), torch.get_num_threads())


def product(y32: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, out: torch.Tensor, xa=None, parts=(),
            mode: int = 0, ffn: int = 0, keep: torch.Tensor | None = None) -> None:
    """out = dequantized y32 (times sx per row and sw per column) plus the LoRA parts, then by mode: 0 as
    is, 1 silu(gate) * up (see native.c). `parts`: (first column, columns, xa's first column, scale * B^T
    contiguous [rank, columns]) per LoRA part. `keep`: a contiguous fp16 [rows, N] that also receives the
    product (before the SwiGLU), for `swiglu_grad_h`."""
    for t in (y32, out, xa):
        if t is not None:
            _rows(t)
    np_ = len(parts)
    longs = ctypes.c_long * max(np_, 1)
    pcol, pn = longs(*(p[0] for p in parts)), longs(*(p[1] for p in parts))
    prank, pxa = longs(*(p[3].shape[0] for p in parts)), longs(*(p[2] for p in parts))
    pbt = (ctypes.c_void_p * max(np_, 1))(*(p[3].data_ptr() for p in parts))
    lib().pz_product(y32.data_ptr(), y32.shape[0], y32.shape[1], sx.data_ptr(), sw.data_ptr(), _ptr(xa),
                     xa.stride(0) if xa is not None else 0, np_, pcol, pn, prank, pxa, pbt, mode, ffn,
                     out.data_ptr(), out.stride(0), _ptr(keep), torch.get_num_threads())


def swiglu_grad_h(yh: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
    """out = d(silu(gate) * up)/d(gate | up) times g, from `product`'s fp16 gate | up (contiguous)."""
    _rows(g)
    _rows(out)
    lib().pz_swiglu_grad_h(yh.data_ptr(), yh.shape[0], yh.shape[1] // 2, g.data_ptr(), g.stride(0), out.data_ptr(),
                           out.stride(0), torch.get_num_threads())


def dequant(src: torch.Tensor, s: torch.Tensor, out: torch.Tensor, u: torch.Tensor | None = None,
            v: torch.Tensor | None = None) -> None:
    """out = src (int32 or int8) * s per row, plus u @ v when given (u [rows, k], v [k, cols] contiguous)."""
    _rows(src)
    _rows(out)
    rk = 0 if u is None else u.shape[1]
    lib().pz_dequant(src.data_ptr(), int(src.dtype == torch.int8), src.shape[0], src.shape[1], src.stride(0),
                     s.data_ptr(), _ptr(u), u.stride(0) if u is not None else 0, rk, _ptr(v), out.data_ptr(),
                     out.stride(0), torch.get_num_threads())


def usable(*ts: torch.Tensor) -> bool:
    """Whether the kernels are here and take these tensors: fp32 on the CPU with contiguous rows."""
    return lib() is not None and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1 for t in ts)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, inverse: bool = False) -> None:
    """out[t, h] = rope(x[t, h]) (or its adjoint) for x and out [T, H, D] of any t/h strides; cos, sin [T, D]."""
    _rows(x)
    _rows(out)
    t, h, d = x.shape
    cos, sin = cos.reshape(t, d).contiguous(), sin.reshape(t, d).contiguous()
    lib().pz_rope(x.data_ptr(), t, h, d, x.stride(0), x.stride(1), cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
                  out.stride(0), out.stride(1), int(inverse), torch.get_num_threads())


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, out: torch.Tensor, kept: torch.Tensor | None,
             rstd: torch.Tensor) -> None:
    """out = RMSNorm(x) * w over rows of contiguous x; x copied into `kept` (if given), 1/rms into `rstd`."""
    lib().pz_rms_norm(x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], w.data_ptr(), eps, out.data_ptr(),
                      _ptr(kept), rstd.data_ptr(), torch.get_num_threads())


def rms_norm_grad(x: torch.Tensor, rstd: torch.Tensor, w: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> None:
    """The input gradient of `rms_norm` given the kept x and rstd (contiguous tensors)."""
    lib().pz_rms_norm_grad(x.data_ptr(), rstd.data_ptr(), w.data_ptr(), g.data_ptr(), x.numel() // x.shape[-1],
                           x.shape[-1], out.data_ptr(), torch.get_num_threads())


def softmax_xent(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor, grad: bool,
                 quant: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None) -> None:
    """loss[r] = cross-entropy of row r of `logits` (fp32, contiguous rows) against targets[r] (int64).
    With `grad`: without `quant`, the logits become softmax minus one-hot in place; with `quant` = (col_scale,
    q int8, qs, seed), q and qs receive softmax * col_scale in int8 with stochastic rounding (unbiased) and
    the logits are left as scratch (see native.c)."""
    _rows(logits)
    targets = targets.contiguous()
    cs, q, qs, seed = quant if quant is not None else (None, None, None, 0)
    if q is not None:
        _rows(q)
    lib().pz_softmax_xent(logits.data_ptr(), logits.shape[0], logits.shape[1], logits.stride(0),
                          targets.data_ptr(), int(grad), loss.data_ptr(), _ptr(cs), _ptr(q),
                          q.stride(0) if q is not None else 0, _ptr(qs), seed, torch.get_num_threads())


GGML_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13,
              "Q6_K": 14}


def dequant_blocks(raw: torch.Tensor, qtype: str, out: torch.Tensor) -> None:
    """out (fp32, contiguous) = the weights of the GGUF blocks in `raw` (uint8, contiguous), see blocks.py."""
    assert raw.is_contiguous() and out.is_contiguous() and out.dtype == torch.float32
    from .blocks import SIZES

    nblk = raw.numel() // SIZES[qtype][1]
    lib().pz_dequant_blocks(raw.data_ptr(), nblk, GGML_TYPES[qtype], out.data_ptr(), torch.get_num_threads())


def blocks_to_i8(raw: torch.Tensor, qtype: str, q: torch.Tensor, s: torch.Tensor) -> None:
    """q (int8 rows) and s (one fp32 scale per row) of the GGUF block rows `raw` (uint8 [rows, row bytes],
    contiguous rows): `dequant_blocks` then `quant_rows`, bit for bit, one row at a time."""
    assert raw.stride(-1) == 1 and raw.stride(0) == raw.shape[1] and s.is_contiguous()
    _rows(q)
    lib().pz_blocks_to_i8(raw.data_ptr(), raw.shape[0], raw.shape[1], GGML_TYPES[qtype], q.data_ptr(), q.stride(0),
                          s.data_ptr(), torch.get_num_threads())
