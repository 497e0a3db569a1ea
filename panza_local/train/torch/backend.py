"""torch LoRA backend: the frozen base read straight from the GGUF, a lean forward, LoRA on every projection.

Why not transformers + peft: on a CPU the HF stack costs twice the time and memory for the same maths
(its GGUF loader keeps several copies while dequantizing; logits for every position in fp32; eager
attention). Here the frozen weights stay in the GGUF's own blocks, whatever their type (blocks.py: the file's
bytes, dequantized a slice at a time inside forward and again in backward, to fp32 on CPU, where bf16 has no
hardware support, to bf16 on CUDA; Q4_0/Q4_1 projections on CUDA through `q4.q4_linear`'s compiled kernel), no
gradient or dense copy exists for them, attention is SDPA per packed example, and the vocabulary projection
runs only where there is loss, a chunk at a time. Before a run, memory.py checks that it fits. On CPUs
with VNNI, training runs the frozen products in int8 (`int8.py`: speed and validation loss against fp32 in
bench/results/train_cpu.md and train_int8_quality.json; each group quantized from its blocks per use) while evaluation stays exact
fp32. A CPU step keeps what its backward needs in blocks reused from step to step (`arena.py`, `ops.py`), which keeps
heap fragmentation off the int8 step's peak RSS, and runs its element-wise work in fused
kernels where they build (`native.py`).
The maths is transformers' llama / qwen2 / qwen3 (tests compare the logits with llama.cpp's).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ... import failpoint
from ...errors import AdapterError
from .. import schedule
from ..data import IGNORE
from . import blocks, int8, memory, ops, q4
from .arena import Arena, ScratchOnly

ARCHS = {"llama", "mistral", "qwen2", "qwen3"}
PERMUTED = {"llama", "mistral"}
LINEARS = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
           "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
# the int8 path's fused products: one int8 weight per group of projections that share an input
FUSED = {"qkv": ("attn_q", "attn_k", "attn_v"), "o": ("attn_output",), "gu": ("ffn_gate", "ffn_up"),
         "down": ("ffn_down",)}
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Config:
    """Shapes and constants of a llama-family model (read from the GGUF header, or given by a bench)."""

    arch: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    rope_theta: float = 10000.0
    eps: float = 1e-5
    head_dim: int = 0
    qk_norm: bool = False

    def __post_init__(self):
        self.head_dim = self.head_dim or self.dim // self.n_heads


@dataclass
class Base:
    """A frozen base: config + weights by GGUF name (dense tensors, q4.Q4Weight or blocks.BlockWeight), and
    the dtype the model computes in."""

    cfg: Config
    w: dict = field(default_factory=dict)
    rope_freqs: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (GGUF layout -> transformers layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_config(meta: dict) -> Config:
    """Config from GGUF metadata (values as gguf_header returns them)."""
    arch = meta["general.architecture"]
    if arch not in ARCHS:
        raise AdapterError(f"the torch backend does not train {arch!r} models yet (it trains {sorted(ARCHS)})",
                           fix="pick a llama/qwen model (`panza models use NAME`), or `panza train --backend mlx`")
    g = lambda k, d=None: meta.get(f"{arch}.{k}", d)
    n_heads = int(g("attention.head_count"))
    return Config(arch=arch, n_layers=int(g("block_count")), dim=int(g("embedding_length")), n_heads=n_heads,
                  n_kv_heads=int(g("attention.head_count_kv", n_heads)), ffn=int(g("feed_forward_length")),
                  vocab=int(g("vocab_size", 0) or 0), rope_theta=float(g("rope.freq_base", 10000.0)),
                  eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
                  head_dim=int(g("attention.key_length", 0) or 0), qk_norm=arch == "qwen3")


def load_base(gguf_path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
              keep_q4: bool = False, keep_blocks: bool = False) -> Base:
    """Read a GGUF into a frozen Base: dequantized to `dtype`; Q4_0/Q4_1 projections as q4.Q4Weight when
    `keep_q4`; with `keep_blocks`, every other projection, the embedding and the output in their own block
    type (blocks.BlockWeight: the file's bytes, dequantized a slice at a time per use)."""
    from . import gguf_tensors

    meta, tensors = gguf_tensors.read(gguf_path)
    cfg = read_config(meta)
    base = Base(cfg, dtype=dtype)
    for t in tensors.values():
        name = t.name.removesuffix(".weight")
        kind = name.split(".")[-1] if name.startswith("blk.") else name
        heads = cfg.n_heads if kind == "attn_q" else cfg.n_kv_heads
        permuted = cfg.arch in PERMUTED and kind in ("attn_q", "attn_k")
        if keep_q4 and t.qname in ("Q4_0", "Q4_1") and kind in LINEARS:
            qw = q4.from_gguf_blocks(np.array(t.raw), t.qname, t.shape)
            if permuted:
                # blocks run along a row, so un-permuting whole rows keeps the Q4 bits exact
                idx = torch.from_numpy(_unpermute(np.arange(t.shape[0]), heads))
                qw = q4.Q4Weight(qw.qs[idx], qw.d[idx], qw.m[idx] if qw.m is not None else None, t.shape)
            base.w[name] = qw.to(device)
            continue
        if keep_blocks and t.qname in blocks.SIZES and (kind in LINEARS or name in ("token_embd", "output")):
            bw = blocks.from_raw(t.raw, t.qname, t.shape)
            if permuted:  # whole rows move: the blocks stay bit-exact
                bw = bw.rows(torch.from_numpy(_unpermute(np.arange(t.shape[0]), heads)))
            base.w[name] = bw.to(device)
            continue
        keep_fp32 = t.name.endswith("norm.weight") or t.name.endswith(".bias") or name == "rope_freqs"
        tensor = gguf_tensors.dequantize(t, torch.float32 if keep_fp32 else dtype)
        if permuted:
            idx = torch.from_numpy(_unpermute(np.arange(t.shape[0]), heads))
            tensor = tensor[idx].contiguous()
        if name == "rope_freqs":
            base.rope_freqs = tensor.to(device)
        else:
            base.w[name] = tensor.to(device)
    if not cfg.vocab:
        cfg.vocab = base.w["token_embd"].shape[0]
    return base


class LoraModel(torch.nn.Module):
    """A llama-family decoder over a frozen Base with trainable LoRA (A, B) on the chosen projections."""

    def __init__(self, base: Base, rank: int = 8, alpha: float = 16.0, targets=ALL_TARGETS,
                 lora_dtype: torch.dtype = torch.float32, grad_ckpt: bool = False, seed: int = 0,
                 int8: bool = False):
        super().__init__()
        self.base, self.cfg = base, base.cfg
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.targets, self.grad_ckpt = tuple(targets), grad_ckpt
        self.static = False  # True: loss over every position with ignore_index (capturable in a CUDA graph)
        self.lora = torch.nn.ParameterDict()
        emb = base.w["token_embd"]
        device = emb.qs.device if isinstance(emb, q4.Q4Weight) else emb.raw.device if isinstance(
            emb, blocks.BlockWeight) else emb.device
        gen = torch.Generator().manual_seed(seed)
        for i in range(self.cfg.n_layers):
            for gname, hname in LINEARS.items():
                if hname not in self.targets:
                    continue
                out, inn = _shape(base.w[f"blk.{i}.{gname}"])
                a = torch.empty(rank, inn)
                bound = 1 / math.sqrt(inn)  # peft's kaiming_uniform(a=sqrt(5)) bound
                a.uniform_(-bound, bound, generator=gen)
                self.lora[f"{i}_{hname}_A"] = torch.nn.Parameter(a.to(device, lora_dtype))
                self.lora[f"{i}_{hname}_B"] = torch.nn.Parameter(torch.zeros(out, rank, device=device,
                                                                             dtype=lora_dtype))
        hd = self.cfg.head_dim
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        if base.rope_freqs is not None:
            inv = inv / base.rope_freqs.float().cpu()
        self.register_buffer("inv_freq", inv.to(device), persistent=False)
        self.i8 = _int8_weights(base) if int8 else None
        # a CPU step keeps what its backward needs in reused blocks (arena.py): all of it on the int8 path,
        # norms and attention on the fp32 one; with checkpointing, whose recompute in backward would take
        # fresh room for every layer, only the per-op scratch is reused
        self.arena = (ScratchOnly() if grad_ckpt else Arena()) if device.type == "cpu" else None
        self._step_arena: Arena | None = None

    def _lin8(self, x, i: int, fused: str, ffn: int = 0):
        """The fused int8 product of layer i's `fused` group (see int8.py) with each part's LoRA and bias;
        with `ffn`, silu(gate) * up of it (gate|up without a bias only)."""
        w = self.i8[f"{i}.{fused}"]
        parts, ab = [], []
        for gname in FUSED[fused]:
            hname = LINEARS[gname]
            has = hname in self.targets
            parts.append((_shape(self.base.w[f"blk.{i}.{gname}"])[0], has))
            if has:
                ab += [self.lora[f"{i}_{hname}_A"], self.lora[f"{i}_{hname}_B"]]
        bias = self.i8.get(f"{i}.{fused}.bias")
        if ffn and bias is None:
            return int8.lora_linear(x, w, self.scale, parts, ab, ffn, arena=self._step_arena)
        y = int8.lora_linear(x, w, self.scale, parts, ab, arena=self._step_arena)
        y = y if bias is None else y + bias
        return ops.swiglu(y[:, :ffn], y[:, ffn:], self._step_arena) if ffn else y

    # -- pieces --------------------------------------------------------------------------------
    def _lin(self, x, i: int, gname: str):
        w = self.base.w[f"blk.{i}.{gname}"]
        y = _linear(x, w)
        bias = self.base.w.get(f"blk.{i}.{gname}.bias")
        if bias is not None:
            y = y + bias.to(y.dtype)
        hname = LINEARS[gname]
        if hname in self.targets:
            a, b = self.lora[f"{i}_{hname}_A"], self.lora[f"{i}_{hname}_B"]
            y = y + F.linear(F.linear(x.to(a.dtype), a), b).to(y.dtype) * self.scale
        return y

    def _norm(self, x, w):
        if x.requires_grad and x.dtype == torch.float32 and x.device.type == "cpu" and torch.is_grad_enabled():
            return ops.rms_norm(x, w, self.cfg.eps, self._step_arena)  # same values, half the memory kept
        return ops.norm(x, w, self.cfg.eps)

    def _layer(self, x, i: int, cos, sin, spans):
        c, w = self.cfg, self.base.w
        t = x.shape[0]
        fast = self.i8 is not None and self.training
        h = self._norm(x, w[f"blk.{i}.attn_norm"])
        if fast:
            nq, nk = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
            q, k, v = self._lin8(h, i, "qkv").split([nq, nk, nk], dim=1)
            q = q.view(t, c.n_heads, c.head_dim)
            k, v = k.view(t, c.n_kv_heads, c.head_dim), v.view(t, c.n_kv_heads, c.head_dim)
        else:
            q = self._lin(h, i, "attn_q").view(t, c.n_heads, c.head_dim)
            k = self._lin(h, i, "attn_k").view(t, c.n_kv_heads, c.head_dim)
            v = self._lin(h, i, "attn_v").view(t, c.n_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self._norm(q, w[f"blk.{i}.attn_q_norm"]), self._norm(k, w[f"blk.{i}.attn_k_norm"])
        rep = c.n_heads // c.n_kv_heads
        if (fast or self._step_arena is not None) and (rep == 1 or _SDPA_GQA):  # _sdpa's kernel, kept in the arena
            att = ops.attention(q, k, v, cos, sin, spans, self._step_arena)
        else:
            att = self._sdpa(q, k, v, cos, sin, spans, rep, x.device.type)
        if fast:
            x = x + self._lin8(att, i, "o")
            act = self._lin8(self._norm(x, w[f"blk.{i}.ffn_norm"]), i, "gu", ffn=c.ffn)
            return x + self._lin8(act, i, "down")
        x = x + self._lin(att, i, "attn_output")
        h = self._norm(x, w[f"blk.{i}.ffn_norm"])
        gate, up = self._lin(h, i, "ffn_gate"), self._lin(h, i, "ffn_up")
        act = ops.swiglu(gate, up, self._step_arena) if self._step_arena is not None else F.silu(gate) * up
        return x + self._lin(act, i, "ffn_down")

    @staticmethod
    def _sdpa(q, k, v, cos, sin, spans, rep: int, device: str):
        t = q.shape[0]
        q, k, v = ops.rope(q, cos, sin).transpose(0, 1), ops.rope(k, cos, sin).transpose(0, 1), v.transpose(0, 1)
        gqa = {}
        if rep > 1 and _SDPA_GQA and device == "cpu":  # k/v heads shared in place: no 3x copies saved
            gqa = {"enable_gqa": True}
        elif rep > 1:
            k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        # one causal attention per packed example: no token sees another example
        # 4-D inputs: a CPU build then takes its flash kernel (3-D falls back to the slower math path)
        outs = [F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, s:e], v[None, :, s:e], is_causal=True,
                                               **gqa)[0] for s, e in spans]
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).transpose(0, 1).reshape(t, -1)

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, spans) -> torch.Tensor:
        """Final-norm hidden states for one packed row (1-D tensors)."""
        emb = self.base.w["token_embd"]
        dtype = self.compute_dtype
        if isinstance(emb, q4.Q4Weight):
            x = q4.q4_embedding(input_ids, emb, dtype)
        elif isinstance(emb, blocks.BlockWeight):
            x = blocks.embedding(input_ids, emb, dtype)
        else:
            x = emb[input_ids].to(dtype)
        ang = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)[:, None, :]
        cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
        for i in range(self.cfg.n_layers):
            if self.grad_ckpt and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(self._layer, x, i, cos, sin, spans, use_reentrant=False)
            else:
                x = self._layer(x, i, cos, sin, spans)
        return self._norm(x, self.base.w["output_norm"])

    @property
    def compute_dtype(self) -> torch.dtype:
        emb = self.base.w["token_embd"]
        if isinstance(emb, blocks.BlockWeight):
            return self.base.dtype
        return torch.bfloat16 if isinstance(emb, q4.Q4Weight) else emb.dtype

    @property
    def output_weight(self):
        """The vocabulary projection's weight (the embedding when the model ties them)."""
        return self.base.w.get("output", self.base.w["token_embd"])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        out = self.output_weight
        return _linear(h, out).float()

    def forward(self, row: dict) -> tuple[torch.Tensor, int]:
        """(sum of token losses, number of loss tokens) for one packed row from `data.pack`."""
        dev = self.inv_freq.device
        ids = torch.as_tensor(row["input_ids"], device=dev)
        pos = torch.as_tensor(row["positions"], device=dev)
        tgt = torch.as_tensor(row["targets"], device=dev)
        self._step_arena = None
        if self.arena is not None and self.training and torch.is_grad_enabled():
            self.arena.reset()
            self._step_arena = self.arena
        h = self.hidden(ids, pos, spans_of(row["segments"]))
        if self.static:  # CUDA-graph capturable: no host sync, no data-dependent shapes
            return F.cross_entropy(self.logits(h), tgt, ignore_index=IGNORE, reduction="sum"), row["n_targets"]
        sel = tgt != IGNORE
        n = int(sel.sum())
        if n == 0:
            return h.sum() * 0.0, 0
        # the vocabulary projection only where there is loss: the prompt's positions need none
        out = self.output_weight
        if isinstance(out, q4.Q4Weight):
            return F.cross_entropy(self.logits(h[sel]), tgt[sel], reduction="sum"), n
        if isinstance(out, blocks.BlockWeight):  # the vocabulary a slice at a time, never dense
            return blocks.linear_cross_entropy(h[sel], tgt[sel], out), n
        w8 = self.i8.get("output") if self.i8 is not None and self.training else None
        return int8.linear_cross_entropy(h[sel], tgt[sel], out, self._step_arena, w8), n

    def lora_tensors(self) -> dict[str, np.ndarray]:
        """The adapter in PEFT naming (`model.layers.N.self_attn.q_proj.lora_A.weight`), fp32 numpy."""
        out = {}
        for key, p in self.lora.items():
            i, rest = key.split("_", 1)
            hname, ab = rest.rsplit("_", 1)
            block = "self_attn" if hname in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out[f"model.layers.{i}.{block}.{hname}.lora_{ab}.weight"] = p.detach().float().cpu().numpy()
        return out

    def load_lora_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Set the adapter from PEFT-named tensors (inverse of `lora_tensors`)."""
        import re

        with torch.no_grad():
            for key, arr in tensors.items():
                m = re.search(r"layers\.(\d+)\.\w+\.(\w+?)\.lora_([AB])", key)
                p = self.lora[f"{m.group(1)}_{m.group(2)}_{m.group(3)}"]
                p.copy_(torch.as_tensor(arr, dtype=p.dtype))


def _int8_weights(base: Base) -> dict:
    """Layer i's fused int8 weights by "i.qkv" / "i.o" / "i.gu" / "i.down" (+ ".bias"), and the vocabulary
    projection's by "output" when it is a plain tensor (see int8.linear_cross_entropy for how it is used).
    A group with GGUF blocks gets an int8.LazyI8: quantized from its blocks at each use, never kept.
    """
    head = base.w.get("output", base.w["token_embd"])
    out = {} if isinstance(head, (q4.Q4Weight, blocks.BlockWeight)) else {"output": int8.from_dense(head)}
    for i in range(base.cfg.n_layers):
        for fused, gnames in FUSED.items():
            ws = [base.w[f"blk.{i}.{g}"] for g in gnames]
            if any(isinstance(w, blocks.BlockWeight) for w in ws):  # made per use from the blocks
                out[f"{i}.{fused}"] = int8.LazyI8(ws)
            else:
                dense = [_dense(w) for w in ws]
                out[f"{i}.{fused}"] = int8.from_dense(torch.cat(dense) if len(dense) > 1 else dense[0])
            biases = [base.w.get(f"blk.{i}.{g}.bias") for g in gnames]
            if any(b is not None for b in biases):
                out[f"{i}.{fused}.bias"] = torch.cat([b if b is not None else torch.zeros(_shape(w)[0])
                                                      for b, w in zip(biases, ws)]).float()
    return out


def _dense(w) -> torch.Tensor:
    if isinstance(w, blocks.BlockWeight):
        return blocks.dequantize(w, torch.float32)
    return q4.dequantize(w, torch.float32) if isinstance(w, q4.Q4Weight) else w.float()


def _shape(w) -> tuple[int, int]:
    return tuple(w.shape)


def _linear(x: torch.Tensor, w) -> torch.Tensor:
    """x @ W.T for a frozen weight of any kind (dense, Q4 blocks, GGUF blocks)."""
    if isinstance(w, q4.Q4Weight):
        return q4.q4_linear(x, w)
    if isinstance(w, blocks.BlockWeight):
        return blocks.linear(x, w)
    return F.linear(x, w)


def spans_of(segments) -> list[tuple[int, int]]:
    """[(start, end)] of each example inside a packed row."""
    segs = list(segments)
    spans, start = [], 0
    for j in range(1, len(segs) + 1):
        if j == len(segs) or segs[j] != segs[start]:
            spans.append((start, j))
            start = j
    return spans


def pick_device(requested: str = "auto") -> str:
    """cuda, mps or cpu."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def build(gguf_path: str | Path, rank: int, alpha: float, targets=ALL_TARGETS, device: str = "auto",
          grad_ckpt: bool | None = None, seed: int = 0, keep_q4: bool | None = None,
          precision: str = "fp32") -> LoraModel:
    """The trainable model for a GGUF on the best device: Q4 blocks + fp32 compute on CPU, + bf16 on CUDA."""
    device = pick_device(device)
    if device == "cuda":
        base = load_base(gguf_path, device, torch.bfloat16, keep_q4=True, keep_blocks=True)
        lora_dtype, ckpt = torch.float32, True if grad_ckpt is None else grad_ckpt
    elif device == "mps":
        base, lora_dtype, ckpt = load_base(gguf_path, device, torch.float16), torch.float32, bool(grad_ckpt)
    else:
        memory.lean_heap()  # freed temporaries go back to the system: peak RSS is what is live, not heap holes
        # every projection, the embedding and the output stay in their file's blocks and are dequantized to
        # fp32 a slice at a time per use (blocks.py): the weights cost what the file does (a 1.5B Q4_K_M:
        # ~1 GB instead of 6); `keep_q4=False` is the dense fp32 base (bench/train.py: ours-dense)
        keep = True if keep_q4 is None else keep_q4
        base = load_base(gguf_path, "cpu", torch.float32, keep_blocks=keep)
        lora_dtype, ckpt = torch.float32, bool(grad_ckpt)
    use8 = device == "cpu" and precision in ("int8", "auto") and int8.available()
    if precision == "int8" and device == "cpu" and not use8:
        raise AdapterError("int8 training needs a CPU with VNNI (AVX-512 VNNI, AVX-VNNI or AMX) and torch's int8 "
                           "matmul", fix="train with `--precision fp32` (or auto, which picks what this CPU runs)")
    return LoraModel(base, rank, alpha, targets, lora_dtype, ckpt, seed, int8=use8)


def optimizer(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over the LoRA tensors: torch's fused kernel (one call for all of them instead of a loop over
    each tensor) where this torch and device have it."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a torch or device without the fused kernel
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _peak_mem_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


@torch.no_grad()
def evaluate(model: LoraModel, rows: list[dict]) -> float:
    """Mean loss per target token over packed rows."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    for row in rows:
        loss, k = model(row)
        total, n = total + float(loss), n + k
    model.train(was)
    return total / max(n, 1)


def _save_checkpoint(path: Path, model: LoraModel, opt, state: dict) -> None:
    """Atomic checkpoint (temp file + rename): a kill at any instant leaves the previous one whole."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"lora": {k: v.detach().cpu() for k, v in model.lora.items()}, "opt": opt.state_dict(),
                "state": state}, tmp)
    os.replace(tmp, path)


def plan_memory(gguf_path, train_rows, val_rows, hp, device: str, precision: str) -> bool:
    """Whether to checkpoint: the pre-flight (memory.check) at the run's longest row; with `grad_ckpt` unset, a
    run whose activations would not fit turns checkpointing on instead of failing. Raises AdapterError (with the
    fix) when even that does not fit: refused now rather than killed by the OOM killer at the first long row."""
    seq = max(len(r["input_ids"]) for r in list(train_rows) + list(val_rows))
    use8 = device == "cpu" and precision in ("int8", "auto") and int8.available()
    ckpt = bool(hp.grad_ckpt if hp.grad_ckpt is not None else device == "cuda")
    try:
        memory.check(gguf_path, seq, hp.rank, hp.targets, device, int8=use8, grad_ckpt=ckpt)
    except AdapterError:
        if ckpt or hp.grad_ckpt is not None:
            raise
        memory.check(gguf_path, seq, hp.rank, hp.targets, device, int8=use8, grad_ckpt=True)
        ckpt = True
    return ckpt


def train_lora(gguf_path, train_rows: list[dict], val_rows: list[dict], hp, run_dir: Path, on_progress=None,
               resume: bool = True, device: str = "auto", threads: int = 0, init: dict | None = None, pace=None) -> dict:
    """Train a LoRA on packed rows; checkpoint to `run_dir/checkpoint.pt` and resume from it.

    `init` (PEFT-named tensors of an earlier adapter of the same shape) warm-starts a fresh run.
    `pace(state)` (a budget.Pacer), called after every step, may return a new total (a time budget).

    Returns the adapter tensors (PEFT naming) of the best validation state and the run's figures.
    """
    import time

    from ... import engine

    device = pick_device(device)
    if device == "cpu":
        torch.set_num_threads(threads or engine.physical_cores())
    precision = getattr(hp, "precision", "auto")
    ckpt = plan_memory(gguf_path, train_rows, val_rows, hp, device, precision)
    torch.manual_seed(hp.seed)
    model = build(gguf_path, hp.rank, hp.alpha, hp.targets, device, ckpt, hp.seed, precision=precision)
    model.train()
    params = list(model.lora.values())
    opt = optimizer(params, hp.lr, hp.weight_decay)
    n = len(train_rows)
    total, eval_every, lr_at = schedule(hp, n)

    orders: dict[int, list[int]] = {}

    def row_at(k: int) -> dict:  # k-th micro-batch overall: the data order depends only on the seed
        epoch, j = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(hp.seed * 7919 + epoch)).tolist()
        return train_rows[orders[epoch][j]]

    ckpt = Path(run_dir) / "checkpoint.pt"
    state = {"step": 0, "history": [], "best_loss": None, "best": None, "bad": 0, "train_s": 0.0,
             "train_tokens": 0, "val_before": None, "stopped": False, "total": total}
    resumed_from = 0
    if resume and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        with torch.no_grad():
            for k, v in saved["lora"].items():
                model.lora[k].copy_(v)
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        resumed_from = state["step"]
        if state.get("total", total) != total:  # fitted to a time budget (budget.py): keep that schedule
            fitted = dataclasses.replace(hp, max_steps=state["total"], evals=state.get("evals", hp.evals))
            total, eval_every, lr_at = schedule(fitted, n)
    elif init is not None:  # warm start: a fresh run begins where the served adapter is
        model.load_lora_tensors(init)
    if state["val_before"] is None:
        state["val_before"] = evaluate(model, val_rows)
        state["best_loss"] = state["val_before"]
        state["best"] = model.lora_tensors()
    if on_progress:
        on_progress(state["step"], total, f"val loss {state['val_before']:.3f}")
    last_loss = float("nan")
    while state["step"] < total and not state["stopped"]:
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = [row_at(step * hp.grad_accum + j) for j in range(hp.grad_accum)]
        n_tgt = sum(sum(1 for t in r["targets"] if t != IGNORE) for r in batch)
        t0 = time.perf_counter()
        loss_total = 0.0
        for row in batch:
            loss, _ = model(row)
            (loss / max(n_tgt, 1)).backward()
            loss_total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        state["train_s"] += time.perf_counter() - t0
        state["train_tokens"] += sum(len(r["input_ids"]) for r in batch)
        state["step"] = step = step + 1
        if pace is not None and (fit := pace(state)) and fit != total:  # a time budget fixes the total (budget.py)
            total, eval_every, lr_at = schedule(dataclasses.replace(hp, max_steps=fit, evals=pace.evals), n)
            state["total"], state["evals"] = total, pace.evals
        last_loss = loss_total / max(n_tgt, 1)
        tps = state["train_tokens"] / max(state["train_s"], 1e-9)
        note = f"loss {last_loss:.3f} · {tps:.0f} tok/s"
        if step % eval_every == 0 or step == total:
            val = evaluate(model, val_rows)
            state["history"].append({"step": step, "train_loss": last_loss, "val_loss": val})
            if val < state["best_loss"] - 1e-4:
                state["best_loss"], state["best"], state["bad"] = val, model.lora_tensors(), 0
            else:
                state["bad"] += 1
                state["stopped"] = state["bad"] >= hp.patience  # early stop: validation stopped improving
            note += f" · val {val:.3f}"
        if step % hp.ckpt_every == 0 or step == total or state["stopped"]:
            _save_checkpoint(ckpt, model, opt, state)
            failpoint.hit("train.checkpoint")
        if on_progress:
            on_progress(step, total, note)
    return {"tensors": state["best"], "val_loss_before": state["val_before"], "val_loss_after": state["best_loss"],
            "tokens_per_s": state["train_tokens"] / max(state["train_s"], 1e-9),
            "peak_mem_mb": _peak_mem_mb(device), "steps": state["step"], "total_steps": total,
            "resumed_from": resumed_from, "early_stopped": state["stopped"], "history": state["history"],
            "device": device, "train_tokens": state["train_tokens"], "grad_ckpt": model.grad_ckpt,
            "precision": "int8" if model.i8 is not None else str(model.compute_dtype).removeprefix("torch.")}
