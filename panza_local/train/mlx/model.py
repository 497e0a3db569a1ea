"""An mlx-lm model built from a GGUF file, on the GGUF's own quantized bits, with a packing-aware forward.

Weights: `mx.load(path.gguf)` returns Q4_0/Q4_1/Q8_0 tensors as MLX affine-quantized weights (group 32),
bit-exact, so training runs on the same numbers llama.cpp serves. When `mx.load` cannot read a file (its
reader has no Q5_0, for example, which Q4_K_M files use for some tensors), the tensors are read with gguf-py:
Q4_0/Q4_1/Q8_0 blocks are repacked into MLX's layout bit-exactly, and every other quantized type (K-quants,
Q5_x, IQ*) is dequantized and re-quantized to MLX affine with at least as many bits as the source had
(`requant_bits`). Why re-quantize rather than refuse: Q4_K_M is the most common GGUF in the wild, and
at >= the source's bits the re-quantization error is small next to the source's own (measured in the tests
as base-logit agreement with llama.cpp); why not keep them dense: an 8B model would need 16 GB.

Names: GGUF tensor names are mapped to the module paths of mlx-lm's model classes (which are the Hugging
Face names), and for llama-family models the rows of attn_q/attn_k are un-permuted as transformers does,
so the LoRA's tensors come out in PEFT naming and layout and `export.write_gguf_lora` treats them exactly
like the torch backend's.

Forward: `forward(model, ids, positions, segments)` runs mlx-lm's modules with per-token rotary positions
and a block-diagonal causal mask, so rows packed by `data.pack` attend only within their own example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import NotAGGUF

GROUP = 32
NATIVE = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # what mx.load keeps quantized, and what we repack exactly
DENSE = {"F32", "F16", "BF16"}
LLAMA_LIKE = {"llama", "mistral", "granite", "qwen2", "qwen3"}
SUPPORTED = LLAMA_LIKE | {"gemma3"}
PERMUTED = {"llama", "mistral", "granite"}  # converter permutes q/k rows (see export.PERMUTED_ARCHS)

_BLOCK = {  # GGUF name inside blk.N -> mlx-lm module path inside model.layers.N
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_BLOCK_LLAMA = {"ffn_norm": "post_attention_layernorm"}
_BLOCK_GEMMA = {"ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass
class Loaded:
    """A model ready to train: the mlx-lm module tree plus what the forward and the export need."""

    model: object
    arch: str
    path: Path
    n_head: int
    n_head_kv: int
    head_dim: int
    inv_freq: object  # mx.array (head_dim/2,): rotary angular frequencies, llama.cpp's
    local_inv_freq: object = None  # gemma3 sliding-window layers' rotary frequencies
    sliding_window: int = 0
    embed_scale: float = 1.0
    tensor_types: dict[str, str] = field(default_factory=dict)
    requantized: dict[str, int] = field(default_factory=dict)
    """GGUF tensors that were not natively MLX-quantizable and were re-quantized (name -> bits)."""
    reader: str = "mx.load"


def _meta(path: Path) -> dict:
    from ... import gguf_header

    return gguf_header.read_header(path)["metadata"]


def tensor_types(path: Path) -> dict[str, str]:
    """GGUF tensor name -> ggml type name (Q4_1, Q6_K, F32, ...), read from the header."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def _requant_bits(qtype: str, requant_bits: int | None) -> int:
    if requant_bits:
        return requant_bits
    # at least the source's bits per weight: Q2_K..Q4_K and IQ1-4 -> 4; Q5_x, Q6_K -> 6; anything else -> 8
    if qtype.startswith(("Q2", "Q3", "Q4", "IQ1", "IQ2", "IQ3", "IQ4", "TQ")):
        return 4
    if qtype.startswith(("Q5", "Q6")):
        return 6
    return 8


def _repack_exact(raw: np.ndarray, qtype: str, rows: int, cols: int) -> dict[str, np.ndarray]:
    """Q4_0/Q4_1/Q8_0 blocks -> MLX affine (weight uint32, scales, biases), bit-exact."""
    blocks = raw.reshape(rows, cols // GROUP, -1)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    if qtype == "Q8_0":
        q = (blocks[..., 2:34].copy().view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        bias = (-128.0 * d.astype(np.float32)).astype(np.float16)
        packed = q.reshape(rows, cols)
    else:
        off = 4 if qtype == "Q4_1" else 2
        qs = blocks[..., off:off + 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)  # ggml: low nibbles first
        bias = blocks[..., 2:4].copy().view(np.float16)[..., 0] if qtype == "Q4_1" else \
            (-8.0 * d.astype(np.float32)).astype(np.float16)
        packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)  # MLX: element i at bits 4*(i%8)
    return {"weight": np.ascontiguousarray(packed).view(np.uint32), "scales": d, "biases": bias}


def read_tensors(path: Path, types: dict[str, str], requant_bits: int | None = None):
    """GGUF name -> mx.array (quantized tensors as `name.weight/.scales/.biases`), and what was re-quantized."""
    import mlx.core as mx

    try:
        weights = mx.load(str(path))
        requantized: dict[str, int] = {}
        for name, qtype in types.items():
            if qtype in NATIVE or qtype in DENSE or name not in weights or weights[name].ndim != 2:
                continue
            bits = _requant_bits(qtype, requant_bits)  # mx.load dequantized it to float16
            base = name.removesuffix(".weight")
            w, s, b = mx.quantize(weights[name].astype(mx.float32), group_size=GROUP, bits=bits)
            weights.update({f"{base}.weight": w, f"{base}.scales": s, f"{base}.biases": b})
            requantized[name] = bits
        return weights, requantized, "mx.load"
    except RuntimeError:
        pass  # e.g. "[load_gguf] gguf_tensor_to_f16 failed" on Q5_0: read it with gguf-py instead
    from gguf import GGUFReader
    from gguf.quants import dequantize

    weights, requantized = {}, {}
    for t in GGUFReader(str(path)).tensors:
        qtype = t.tensor_type.name
        shape = [int(x) for x in reversed(t.shape.tolist())]
        if qtype in DENSE:
            arr = np.asarray(t.data)
            weights[t.name] = mx.array(arr.astype(np.float32) if qtype == "BF16" else arr).reshape(shape)
            continue
        base = t.name.removesuffix(".weight")
        rows, cols = int(np.prod(shape[:-1])), shape[-1]
        if qtype in NATIVE and cols % GROUP == 0:
            for k, v in _repack_exact(np.asarray(t.data), qtype, rows, cols).items():
                weights[f"{base}.{k}"] = mx.array(v)
            continue
        dense = dequantize(np.asarray(t.data), t.tensor_type).reshape(rows, cols).astype(np.float32)
        bits = _requant_bits(qtype, requant_bits)
        w, s, b = mx.quantize(mx.array(dense), group_size=GROUP, bits=bits)
        weights.update({f"{base}.weight": w, f"{base}.scales": s, f"{base}.biases": b})
        requantized[t.name] = bits
    return weights, requantized, "gguf-py"


def _unpermute(w, n_head: int):
    """Inverse of the converter's q/k row permutation (transformers' reverse_permute), on rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _mlx_name(gguf_name: str, arch: str) -> str | None:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        table = {**_BLOCK, **(_BLOCK_GEMMA if arch == "gemma3" else _BLOCK_LLAMA)}
        mod = table.get(parts[2])
        return f"model.layers.{parts[1]}.{mod}.{'.'.join(parts[3:])}" if mod else None
    mod = _TOP.get(parts[0])
    return f"{mod}.{'.'.join(parts[1:])}" if mod else None


def _args(meta: dict, arch: str, vocab: int, tied: bool) -> dict:
    def g(key, default=None):
        v = meta.get(f"{arch}.{key}", default)
        return v

    n_head = int(g("attention.head_count"))
    hidden = int(g("embedding_length"))
    head_dim = int(g("attention.key_length", 0) or hidden // n_head)
    args = {"model_type": arch, "hidden_size": hidden, "num_hidden_layers": int(g("block_count")),
                "intermediate_size": int(g("feed_forward_length")), "num_attention_heads": n_head,
                "num_key_value_heads": int(g("attention.head_count_kv", n_head)), "head_dim": head_dim,
                "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)), "vocab_size": vocab,
                "rope_theta": float(g("rope.freq_base", 10000.0)), "tie_word_embeddings": tied,
                "max_position_embeddings": int(g("context_length", 4096))}
    if arch == "gemma3":
        args.pop("tie_word_embeddings")
        args.update(query_pre_attn_scalar=head_dim, sliding_window=int(g("attention.sliding_window", 512)),
                    sliding_window_pattern=6, rope_local_base_freq=10000.0)
    elif arch in ("qwen2",):
        args["attention_bias"] = True
    return args


def _module_class(arch: str):
    if arch == "gemma3":
        from mlx_lm.models import gemma3_text as mod
    elif arch == "qwen2":
        from mlx_lm.models import qwen2 as mod
    elif arch == "qwen3":
        from mlx_lm.models import qwen3 as mod
    else:
        from mlx_lm.models import llama as mod
    return mod


def load(path: str | Path, requant_bits: int | None = None) -> Loaded:
    """Build the mlx-lm model of a GGUF file, quantized weights kept (see the module docstring)."""
    import mlx.core as mx
    from mlx import nn

    path = Path(path)
    meta = _meta(path)
    arch = meta.get("general.architecture")
    if meta.get("general.type") == "adapter":
        raise NotAGGUF(f"{path} is a LoRA adapter, not a base model", fix="give the base model's GGUF")
    if arch not in SUPPORTED:
        raise NotAGGUF(f"{path}: the mlx backend has no model for architecture {arch!r}",
                       fix=f"train with `--backend torch`, or use a model of: {', '.join(sorted(SUPPORTED))}")
    types = tensor_types(path)
    raw, requantized, reader = read_tensors(path, types, requant_bits)
    n_head = int(meta[f"{arch}.attention.head_count"])
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    tied = "output.weight" not in types
    vocab = int(raw["token_embd.weight"].shape[0])
    args = _args(meta, arch, vocab, tied)
    mod = _module_class(arch)
    model = mod.Model(mod.ModelArgs.from_dict(args))

    weights = {}
    for name, arr in raw.items():
        if name == "rope_freqs.weight":
            continue
        target = _mlx_name(name, arch)
        if target is None:
            raise NotAGGUF(f"{path}: tensor {name} has no place in the mlx {arch} model",
                           fix="train this model with `--backend torch`")
        if arch in PERMUTED and (".attn_q." in name or ".attn_k." in name):
            arr = _unpermute(arr, n_head if ".attn_q." in name else n_head_kv)
        if arch == "gemma3" and name.endswith("norm.weight"):
            arr = arr - 1.0  # the converter stores Gemma's (1 + w) norm weights; mlx-lm adds the 1 back
        if name.endswith((".scales", ".biases")):
            # float32, not the file's float16: Q8_0/Q4_0 store bias = -128*d / -8*d, and dequantizing
            # scale*q + bias in float16 cancels catastrophically (5% errors); in float32 it is exact
            arr = arr.astype(mx.float32)
        weights[target] = arr

    def quant_params(p, m):
        if f"{p}.scales" not in weights:
            return False
        bits = weights[f"{p}.weight"].shape[-1] * 32 // (weights[f"{p}.scales"].shape[-1] * GROUP)
        return {"group_size": GROUP, "bits": int(bits), "mode": "affine"}

    nn.quantize(model, class_predicate=quant_params)
    if arch == "gemma3":
        model.tie_word_embeddings = tied
        if tied and hasattr(model, "lm_head"):
            del model.lm_head
    model.load_weights(list(weights.items()), strict=True)
    model.freeze()
    mx.eval(model.parameters())

    head_dim = args["head_dim"]
    dims = int(meta.get(f"{arch}.rope.dimension_count", head_dim))
    inv = 1.0 / (args["rope_theta"] ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
    if "rope_freqs.weight" in raw:  # llama 3.x: per-dimension divisors instead of rope_scaling metadata
        inv = inv / np.asarray(raw["rope_freqs.weight"].astype(mx.float32), dtype=np.float64)
    out = Loaded(model=model, arch=arch, path=path, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
                 inv_freq=mx.array(inv.astype(np.float32)), tensor_types=types, requantized=requantized,
                 reader=reader)
    if arch == "gemma3":
        local = 1.0 / (10000.0 ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
        out.local_inv_freq = mx.array(local.astype(np.float32))
        out.sliding_window = args["sliding_window"]
        out.embed_scale = math.sqrt(args["hidden_size"])
    return out


def _rope(x, cos, sin):
    """Rotate-half rotary embedding (HF layout, as after un-permuting), per-token cos/sin (B,1,L,D/2)."""
    import mlx.core as mx

    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def _mask(positions, segments, window: int = 0):
    """Additive (B,1,L,L) mask: causal within an example's segment only (and within `window` if set)."""
    import mlx.core as mx

    L = positions.shape[1]
    idx = mx.arange(L)
    allowed = (idx[None, :, None] >= idx[None, None, :]) & (segments[:, :, None] == segments[:, None, :])
    if window:
        allowed = allowed & ((positions[:, :, None] - positions[:, None, :]) < window)
    return mx.where(allowed, 0.0, -1e9).astype(mx.float32)[:, None]


def _attention(attn, x, cos, sin, mask, lm: Loaded):
    import mlx.core as mx

    B, L, _ = x.shape
    q = attn.q_proj(x).reshape(B, L, lm.n_head, -1).transpose(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(B, L, lm.n_head_kv, -1).transpose(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(B, L, lm.n_head_kv, -1).transpose(0, 2, 1, 3)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    o = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask.astype(q.dtype))
    return attn.o_proj(o.transpose(0, 2, 1, 3).reshape(B, L, -1))


def _checkpointed(layer, block):
    """`block(h, *arrays)` for one layer with its activations recomputed in backward (mx.checkpoint): the
    layer's trainable parameters go in as an argument, so their gradients still flow."""
    import mlx.core as mx

    def inner(params, *args):
        layer.update(params)
        return block(*args)

    return lambda *args: mx.checkpoint(inner)(layer.trainable_parameters(), *args)


def hidden(lm: Loaded, ids, positions=None, segments=None, grad_ckpt: bool = False):
    """Final-norm hidden states (B, L, D) for token ids (B, L); `positions`/`segments` as `data.pack` makes.

    `grad_ckpt` keeps one layer's activations at a time and recomputes them in backward (less memory, ~1/3
    more compute), as the torch backend's gradient checkpointing does."""
    import mlx.core as mx

    B, L = ids.shape
    if positions is None:
        positions = mx.broadcast_to(mx.arange(L)[None], (B, L))
    if segments is None:
        segments = mx.zeros((B, L), dtype=mx.int32)
    inner = lm.model.model
    h = inner.embed_tokens(ids).astype(mx.float32)  # float16 activations are far slower on CPU

    def angles(inv):
        a = positions.astype(mx.float32)[:, None, :, None] * inv[None, None, None, :]
        return mx.cos(a), mx.sin(a)

    cos, sin = angles(lm.inv_freq)
    mask = _mask(positions, segments)
    if lm.arch == "gemma3":
        h = h * lm.embed_scale
        lcos, lsin = angles(lm.local_inv_freq)
        lmask = _mask(positions, segments, lm.sliding_window)
        for layer in inner.layers:
            def block(h, c, s, m, layer=layer):
                r = _attention(layer.self_attn, layer.input_layernorm(h), c, s, m, lm)
                h = h + layer.post_attention_layernorm(r)
                return h + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(h)))

            sliding = layer.self_attn.is_sliding
            args = (h, lcos, lsin, lmask) if sliding else (h, cos, sin, mask)
            h = (_checkpointed(layer, block) if grad_ckpt else block)(*args)
    else:
        for layer in inner.layers:
            def block(h, c, s, m, layer=layer):
                h = h + _attention(layer.self_attn, layer.input_layernorm(h), c, s, m, lm)
                return h + layer.mlp(layer.post_attention_layernorm(h))

            h = (_checkpointed(layer, block) if grad_ckpt else block)(h, cos, sin, mask)
    return inner.norm(h)


def head(lm: Loaded, h):
    """Vocabulary logits of hidden states (the tied embedding or the output matrix)."""
    model = lm.model
    tied = getattr(model, "tie_word_embeddings", getattr(model.args, "tie_word_embeddings", False))
    return model.model.embed_tokens.as_linear(h) if tied else model.lm_head(h)


def forward(lm: Loaded, ids, positions=None, segments=None):
    """Logits (B, L, vocab) for token ids (B, L)."""
    return head(lm, hidden(lm, ids, positions, segments))
