"""LoRA adapters with random weights, written by the training stage's exporter (tests that need a real
adapter GGUF for the embedded model without training one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = ATTENTION + ("gate_proj", "up_proj", "down_proj")


def random_lora(base_gguf: Path, out: Path, std: float = 0.05, seed: int = 0, r: int = 8,
                modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A rank-`r` LoRA with A and B drawn from N(0, std) on `modules` of every layer of `base_gguf`."""
    from panza_local import gguf_header
    from panza_local.train import export

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
