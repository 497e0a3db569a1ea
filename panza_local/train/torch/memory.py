"""Memory pre-flight for a torch training run: estimate what the run will hold, refuse before it starts if the
machine does not have it (an OOM kill mid-run loses the work and says nothing useful).

The estimate, for a GGUF, a sequence length and the LoRA settings:
- weights: the file's tensor bytes (blocks.py keeps them as they are; llama's q/k rows are a copy), or fp32
  / fp16 dense where the run expands them (`keep_q4=False`, MPS);
- LoRA: its parameters, their gradients and AdamW's two moments, fp32: 16 bytes a parameter;
- activations: what a layer keeps for backward, per token (ACT_PER_TOKEN x the layer's widths), times the
  layers (one layer and the layer inputs with checkpointing);
- scratch: one dequantized slice of a weight, the vocabulary slice's logits, the int8 group of the int8 path;
- the runtime: Python, torch and llama.cpp's libraries (RUNTIME).
Calibrated on the fp32 path at seq 512 with `lean_heap` (the int8 path keeps less: the estimate errs high there):
SmolLM2-135M measured 1168 MB peak RSS, estimated 1266 MB; Qwen2.5-0.5B's Q4_K_M layout
(bench/results/train_cpu_qwen2.5-0.5b) measured 1848 MB, estimated 1993 MB; with checkpointing 975 MB, 1127 MB.
Free memory is psutil's `available` (RAM) or CUDA's free memory; PANZA_MEM_AVAILABLE_MB overrides it (tests,
or a container whose limit psutil cannot see).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import AdapterError

RUNTIME = 450 * 2**20
# fp32 values a layer keeps per token, in units of (dim, q width, kv width, ffn): the norm inputs and outputs
# (the LoRA's inputs), q after RoPE and the attention output, k and v, gate|up and the SwiGLU output
ACT = (4, 2, 2, 3)
MIN_SEQ = 128


def estimate(gguf_path: str | Path, seq_len: int, rank: int = 8, targets=None, device: str = "cpu",
             int8: bool = False, grad_ckpt: bool = False, dense: bool = False) -> dict:
    """Bytes by part ({weights, lora, activations, scratch, runtime, total}) of training on `gguf_path`."""
    from . import backend, blocks, gguf_tensors

    meta, tensors = gguf_tensors.read(gguf_path)
    cfg = backend.read_config(meta)
    targets = tuple(targets or backend.ALL_TARGETS)
    weights = 0
    for t in tensors.values():
        n = 1
        for d in t.shape:
            n *= d
        if dense or device == "mps":
            weights += n * (2 if device == "mps" else 4)
        else:
            weights += t.raw.nbytes
            if cfg.arch in backend.PERMUTED and t.name.split(".")[-2] in ("attn_q", "attn_k"):
                weights += t.raw.nbytes  # un-permuted rows: a copy
    nq, nkv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = {"q_proj": (cfg.dim, nq), "k_proj": (cfg.dim, nkv), "v_proj": (cfg.dim, nkv), "o_proj": (nq, cfg.dim),
              "gate_proj": (cfg.dim, cfg.ffn), "up_proj": (cfg.dim, cfg.ffn), "down_proj": (cfg.ffn, cfg.dim)}
    lora_params = cfg.n_layers * sum(rank * (i + o) for h, (i, o) in shapes.items() if h in targets)
    lora = 16 * lora_params
    per_token = 4 * (ACT[0] * cfg.dim + ACT[1] * nq + ACT[2] * nkv + ACT[3] * cfg.ffn)
    layers = 1 if grad_ckpt else cfg.n_layers
    activations = seq_len * (per_token * layers + (4 * cfg.dim * cfg.n_layers if grad_ckpt else 0))
    vocab = cfg.vocab or tensors["token_embd.weight"].shape[0]
    slice_rows = max(1, blocks.SLICE_ELEMS // cfg.dim)
    scratch = 3 * 4 * blocks.SLICE_ELEMS + 3 * 4 * seq_len * min(vocab, slice_rows) + 8 * seq_len * cfg.dim
    if int8:
        scratch += 2 * cfg.ffn * cfg.dim + 4 * seq_len * 2 * cfg.ffn
    total = weights + lora + activations + scratch + RUNTIME
    return {"weights": weights, "lora": lora, "activations": activations, "scratch": scratch, "runtime": RUNTIME,
            "total": total, "per_seq_token": activations / max(seq_len, 1) + 3 * 4 * min(vocab, slice_rows)}


def available(device: str = "cpu") -> int:
    """Free memory in bytes: PANZA_MEM_AVAILABLE_MB if set, else CUDA's free memory or psutil's available RAM."""
    env = os.environ.get("PANZA_MEM_AVAILABLE_MB")
    if env:
        return int(float(env) * 2**20)
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check(gguf_path: str | Path, seq_len: int, rank: int = 8, targets=None, device: str = "cpu",
          int8: bool = False, grad_ckpt: bool = False, dense: bool = False) -> dict:
    """The estimate, or AdapterError when it does not fit in what is free, with the fixes that would fit."""
    est = estimate(gguf_path, seq_len, rank, targets, device, int8, grad_ckpt, dense)
    free = available(device)
    est["available"] = free
    if est["total"] <= free:
        return est
    fixed = est["total"] - est["per_seq_token"] * seq_len  # what does not grow with the sequence
    fits = int((free - fixed) // max(est["per_seq_token"], 1))
    fixes = []
    if fits >= MIN_SEQ:
        fixes.append(f"train on shorter sequences: `panza train --seq-len {min(fits, seq_len - 1) // 64 * 64}`")
    if not grad_ckpt:
        ck = estimate(gguf_path, seq_len, rank, targets, device, int8, True, dense)
        if ck["total"] <= free:
            fixes.append("train with gradient checkpointing (`panza train --grad-ckpt`: slower, far fewer "
                         "activations kept)")
    fixes.append("pick a smaller model (`panza models list`, then `panza models use NAME`)")
    fixes.append("or close other programs to free memory")
    where = "GPU memory" if device == "cuda" else "memory"
    raise AdapterError(
        f"training {Path(gguf_path).name} at sequence length {seq_len} needs about {_gb(est['total'])} of {where} "
        f"(weights {_gb(est['weights'])}, LoRA and optimizer {_gb(est['lora'])}, activations "
        f"{_gb(est['activations'])}, working buffers and runtime {_gb(est['scratch'] + est['runtime'])}); "
        f"{_gb(free)} is free", fix="; ".join(fixes))


M_MMAP_THRESHOLD = -3
HEAP_MMAP_BYTES = 1 << 20


def lean_heap() -> bool:
    """Have glibc serve every allocation from 1 MB up with its own mmap, returned to the system when freed.

    Why: by default glibc raises that threshold to the size of each large block freed (up to 32 MB), so a
    training step's [tokens, ffn] temporaries come from the heap, and the holes they leave between longer-lived
    tensors stay resident. Measured on 4 layers of Qwen2.5-0.5B's shape at seq 512: peak RSS 1332 MB with the
    default, 672 MB with the threshold fixed (965 -> 632 MB with checkpointing). False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_BYTES))
    except (OSError, AttributeError):  # macOS, musl, Windows
        return False
