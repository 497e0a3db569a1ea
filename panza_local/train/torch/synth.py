"""Random-weight GGUF models written with gguf-py's writer, for tests and benchmarks of the block trainer.

A model here has a real architecture header (llama, qwen2, qwen3), the embedded SmolLM2's real tokenizer
and random weights in any mix of block types: llama.cpp loads it like a downloaded file, so the torch
trainer's logits can be compared with llama.cpp's on exactly the same bits. Random blocks are random bytes
with their fp16 scale fields set so that every block type gives weights of about the same spread, centred
on zero (the minimum fields of Q4_1, Q5_1, Q2_K, Q4_K and Q5_K offset their quant's mean).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import blocks

# block type -> ((byte offset of each scale field, its multiple of d)); the first field is d itself
_FIELDS = {"Q4_0": ((0, 1.0),), "Q4_1": ((0, 1.0), (2, -7.5)), "Q5_0": ((0, 1.0),),
           "Q5_1": ((0, 1.0), (2, -15.5)), "Q8_0": ((0, 1.0),), "Q2_K": ((80, 1.0), (82, 1.5)),
           "Q3_K": ((108, 1.0),), "Q4_K": ((0, 1.0), (2, 7.5)), "Q5_K": ((0, 1.0), (2, 15.5)),
           "Q6_K": ((208, 1.0),)}

# llama.cpp's fallback when a row is not a whole number of 256-weight K blocks (Qwen2.5-0.5B's 896 columns)
K_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# shapes of the models the benchmark writes in their Q4_K_M layout (vocab as the real model's)
LAYOUTS = {
    "qwen2.5-0.5b": {"arch": "qwen2", "n_layers": 24, "dim": 896, "n_heads": 14, "n_kv_heads": 2, "ffn": 4864,
                     "vocab": 151936, "tied": True},
    "qwen2.5-1.5b": {"arch": "qwen2", "n_layers": 28, "dim": 1536, "n_heads": 12, "n_kv_heads": 2, "ffn": 8960,
                     "vocab": 151936, "tied": True},
    "llama-3.2-3b": {"arch": "llama", "n_layers": 28, "dim": 3072, "n_heads": 24, "n_kv_heads": 8, "ffn": 8192,
                     "vocab": 128256, "tied": True},
}


def Q4_K_M(kind: str, layer: int, n_layers: int, cols: int) -> str:
    """The block type llama.cpp's Q4_K_M gives a tensor: Q6_K for the embedding and output, Q6_K for attn_v and
    ffn_down in the first and last eighth of the layers and every third between, Q4_K for the rest; a K type on
    rows that are not whole K blocks falls back (K_FALLBACK)."""
    more_bits = layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2
    if kind in ("token_embd", "output") or (kind in ("attn_v", "ffn_down") and more_bits):
        qtype = "Q6_K"
    else:
        qtype = "Q4_K"
    return qtype if cols % 256 == 0 else K_FALLBACK[qtype]


def random_tensor(rows: int, cols: int, qtype: str, std: float, rng: np.random.Generator) -> np.ndarray:
    """Random [rows, cols] weights of block type `qtype` (F32: float32; F16/BF16/quantized: their bytes)."""
    if qtype == "F32":
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)
    if qtype in ("F16", "BF16"):
        import gguf

        w = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        return np.asarray(gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype]))
    blk, nbytes = blocks.SIZES[qtype]
    if cols % blk:
        raise ValueError(f"{qtype} needs rows of a multiple of {blk} weights, not {cols}")
    raw = rng.integers(0, 256, (rows * cols // blk, nbytes), dtype=np.uint8)

    def set_fields(d: float) -> None:
        for off, mult in _FIELDS[qtype]:
            raw[:, off:off + 2] = np.full((raw.shape[0], 1), d * mult, dtype=np.float16).view(np.uint8)

    set_fields(1.0)
    import torch

    spread = float(blocks.dequantize_rows(torch.from_numpy(raw[:256]), qtype, blk).std())
    set_fields(std / spread)
    return raw.reshape(rows, -1)


def stub(path: str | Path, arch: str) -> Path:
    """A GGUF with only an architecture and one tiny tensor (header checks: `models add`, backend refusals)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_tensors_to_file, w.close):
        step()
    return Path(path)


def tokenizer_meta() -> dict:
    """The embedded SmolLM2's tokenizer keys (tokenizer.*) from its GGUF header."""
    from ... import catalogue, gguf_header

    meta = gguf_header.read_header(catalogue.embedded_path("smollm2-135m"), keep_arrays=True)["metadata"]
    return {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


def write(path: str | Path, arch: str = "llama", *, n_layers: int = 2, dim: int = 256, n_heads: int = 4,
          n_kv_heads: int = 2, ffn: int = 512, types: dict | str = "Q8_0", seed: int = 0, tied: bool = False,
          head_dim: int = 0, tokenizer: dict | None = None, std: float = 0.05, vocab: int = 0) -> Path:
    """Write a random-weight GGUF; `types` maps tensor kinds (token_embd, output, attn_q, ..., ffn_down) to
    block types, or is one block type for all of them, or a recipe (kind, layer, n_layers, cols) -> type such
    as `Q4_K_M`. Norms are ~1, biases (qwen2) and q/k norms (qwen3) F32. `vocab` larger than the tokenizer's
    pads it with unused tokens (a real model's embedding size). Returns `path`."""
    import gguf

    path = Path(path)
    rng = np.random.default_rng(seed)
    tok = tokenizer if tokenizer is not None else tokenizer_meta()
    tokens, ttypes = list(tok["tokenizer.ggml.tokens"]), list(tok["tokenizer.ggml.token_type"])
    if vocab > len(tokens):
        ttypes += [5] * (vocab - len(tokens))  # unused
        tokens += [f"<unused{i}>" for i in range(vocab - len(tokens))]
    vocab = len(tokens)
    hd = head_dim or dim // n_heads
    if callable(types):
        kind_type = lambda k, i, cols: types(k, i, n_layers, cols)
    elif isinstance(types, str):
        kind_type = lambda k, i, cols: types
    else:
        kind_type = lambda k, i, cols: types.get(k, "Q8_0")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(vocab)
    if head_dim:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tok.get("tokenizer.ggml.pre", "default"))
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    if "tokenizer.ggml.merges" in tok:
        w.add_token_merges(tok["tokenizer.ggml.merges"])
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("unknown_token_id", w.add_unk_token_id), ("padding_token_id", w.add_pad_token_id)):
        if f"tokenizer.ggml.{key}" in tok:
            add(int(tok[f"tokenizer.ggml.{key}"]))
    w.add_add_bos_token(bool(tok.get("tokenizer.ggml.add_bos_token", False)))
    if "tokenizer.chat_template" in tok:
        w.add_chat_template(tok["tokenizer.chat_template"])

    def add(name: str, rows: int, cols: int, kind: str, std_: float = std) -> None:
        qtype = kind_type(kind, int(name.split(".")[1]) if name.startswith("blk.") else 0, cols)
        arr = random_tensor(rows, cols, qtype, std_, rng)
        raw_dtype = None if qtype == "F32" else gguf.GGMLQuantizationType[qtype]
        w.add_tensor(name, arr, raw_dtype=raw_dtype)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    add("token_embd.weight", vocab, dim, "token_embd", 1.0)
    norm("output_norm.weight", dim)
    if not tied:
        add("output.weight", vocab, dim, "output", 1.0 / np.sqrt(dim))
    for i in range(n_layers):
        b = f"blk.{i}"
        norm(f"{b}.attn_norm.weight", dim)
        norm(f"{b}.ffn_norm.weight", dim)
        add(f"{b}.attn_q.weight", n_heads * hd, dim, "attn_q")
        add(f"{b}.attn_k.weight", n_kv_heads * hd, dim, "attn_k")
        add(f"{b}.attn_v.weight", n_kv_heads * hd, dim, "attn_v")
        add(f"{b}.attn_output.weight", dim, n_heads * hd, "attn_output")
        add(f"{b}.ffn_gate.weight", ffn, dim, "ffn_gate")
        add(f"{b}.ffn_up.weight", ffn, dim, "ffn_up")
        add(f"{b}.ffn_down.weight", dim, ffn, "ffn_down")
        if arch == "qwen2":
            for kind, n in (("attn_q", n_heads * hd), ("attn_k", n_kv_heads * hd), ("attn_v", n_kv_heads * hd)):
                w.add_tensor(f"{b}.{kind}.bias", (0.1 * rng.standard_normal(n)).astype(np.float32))
        if arch == "qwen3":
            norm(f"{b}.attn_q_norm.weight", hd)
            norm(f"{b}.attn_k_norm.weight", hd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- LoRA adapters ----------------------------------------------------------------------------------------------

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")


def random_lora(base_gguf: Path, out: Path, std: float = 0.05, seed: int = 0, r: int = 8,
                modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A rank-`r` LoRA with A and B drawn from N(0, std) on `modules` of every layer of `base_gguf`."""
    from ... import gguf_header
    from .. import export

    meta = gguf_header.read_header(base_gguf)["metadata"]
    arch = meta["general.architecture"]
    d, heads, kv, ffn = (int(meta[f"{arch}.{k}"]) for k in ("embedding_length", "attention.head_count",
                                                             "attention.head_count_kv", "feed_forward_length"))
    kv_dim = d // heads * kv
    shapes = {"q_proj": (d, d), "k_proj": (kv_dim, d), "v_proj": (kv_dim, d), "o_proj": (d, d),
              "gate_proj": (ffn, d), "up_proj": (ffn, d), "down_proj": (d, ffn)}  # (out, in)
    rng, tensors = np.random.default_rng(seed), {}
    for layer in range(int(meta[f"{arch}.block_count"])):
        for mod in modules:
            rows, cols = shapes[mod]
            pre = f"base_model.model.model.layers.{layer}.{'self_attn' if mod in ATTENTION else 'mlp'}.{mod}"
            tensors[f"{pre}.lora_A.weight"] = rng.normal(0, std, (r, cols)).astype("float32")
            tensors[f"{pre}.lora_B.weight"] = rng.normal(0, std, (rows, r)).astype("float32")
    return export.write_gguf_lora(tensors, alpha=16, rank=r, base_gguf_path=base_gguf, out_path=out)
