"""Adapter export: GGUF LoRA (llama.cpp, llama-cpp-python, llama-server, Ollama), PEFT folder, Ollama Modelfile.

Input everywhere is one dict of LoRA tensors in Hugging Face / PEFT naming (numpy arrays, `lora_A` shaped
(rank, in), `lora_B` shaped (out, rank)), so every backend exports the same way.

Why the q/k permutation: for llama-family models llama.cpp's converter stores the rows of `attn_q` and
`attn_k` permuted (per head, the two rotary halves interleaved), and transformers un-permutes them on
load. A LoRA trained against transformers' layout must have its `lora_B` rows (the output side) permuted
the same way, or its update lands on the wrong rotary dimensions (measured: logit-delta cosine -0.88).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .. import paths
from ..errors import AdapterError

# HF module name -> GGUF tensor name (the same across llama, mistral, qwen2/3, gemma*, granite).
MODULE_TO_GGUF = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
# Architectures whose converter permutes q/k rows (LlamaModel and its subclasses).
PERMUTED_ARCHS = {"llama", "mistral", "granite"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+?)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp converter's q/k permutation, applied to the rows (output side) of `w`."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def base_info(base_gguf_path: str | Path) -> dict:
    """Architecture, head counts and layer count of a base GGUF (header only)."""
    from .. import gguf_header

    meta = gguf_header.read_header(base_gguf_path)["metadata"]
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise AdapterError(f"{base_gguf_path} has no general.architecture", fix="pick a base model GGUF")
    n_head = int(meta.get(f"{arch}.attention.head_count", 0) or 0)
    return {"arch": arch, "n_head": n_head,
            "n_head_kv": int(meta.get(f"{arch}.attention.head_count_kv", n_head) or n_head),
            "n_layers": int(meta.get(f"{arch}.block_count", 0) or 0), "name": meta.get("general.name")}


def gguf_lora_tensors(tensors: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
    """PEFT-named LoRA tensors -> GGUF names (`blk.N.attn_q.weight.lora_a`), q/k permuted where needed."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        m = _KEY.search(key)
        if not m:
            raise AdapterError(f"cannot map LoRA tensor {key!r} to a GGUF name",
                               fix="train LoRA on the attention/MLP projections only (q,k,v,o,gate,up,down)")
        layer, module, ab = int(m.group(1)), m.group(2), m.group(3)
        if module not in MODULE_TO_GGUF:
            raise AdapterError(f"LoRA on module {module!r} has no GGUF equivalent", fix="drop it from targets")
        arr = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
        if ab == "B" and info["arch"] in PERMUTED_ARCHS and module in ("q_proj", "k_proj"):
            heads = info["n_head"] if module == "q_proj" else info["n_head_kv"]
            arr = np.ascontiguousarray(permute_rows(arr, heads))
        out[f"blk.{layer}.{MODULE_TO_GGUF[module]}.weight.lora_{ab.lower()}"] = arr
    for name in out:
        other = name[:-1] + ("b" if name.endswith("a") else "a")
        if other not in out:
            raise AdapterError(f"LoRA tensor {name} has no {other}", fix="export the complete adapter")
    return out


def write_gguf_lora(tensors: dict[str, np.ndarray], alpha: float, rank: int, base_gguf_path: str | Path,
                    out_path: str | Path) -> Path:
    """Write a GGUF LoRA adapter for `base_gguf_path` (loadable with llama.cpp's `lora_path` / `--lora`)."""
    import gguf

    info = base_info(base_gguf_path)
    named = gguf_lora_tensors(tensors, info)
    for name, arr in named.items():
        r = arr.shape[0] if name.endswith("lora_a") else arr.shape[1]
        if r != rank:
            raise AdapterError(f"{name} has rank {r}, expected {rank}", fix="pass the adapter's own rank")
    out_path = Path(out_path)
    paths.ensure_dir(out_path.parent)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), info["arch"])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    if info.get("name"):
        writer.add_string("general.name", f"{info['name']} panza adapter")
    for name in sorted(named, key=_natural):
        writer.add_tensor(name, named[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.chmod(paths.FILE_MODE)
    tmp.replace(out_path)
    return out_path


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def peft_key(key: str) -> str:
    """The key PEFT's `save_pretrained` uses for a LoRA tensor (`base_model.model.model.layers...`)."""
    m = _KEY.search(key)
    if not m:
        return key
    layer, module, ab = m.groups()
    block = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{ab}.weight"


def write_peft(tensors: dict[str, np.ndarray], alpha: float, rank: int, out_dir: str | Path,
               base_model: str = "", extra_config: dict | None = None) -> Path:
    """A PEFT adapter folder (adapter_model.safetensors + adapter_config.json) that peft can load."""
    from safetensors.numpy import save_file

    out_dir = paths.ensure_dir(Path(out_dir))
    flat = {peft_key(k): np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    modules = sorted({_KEY.search(k).group(2) for k in flat if _KEY.search(k)})
    tmp = out_dir / ".adapter_model.safetensors.tmp"
    save_file(flat, str(tmp), metadata={"format": "pt"})
    tmp.chmod(paths.FILE_MODE)
    tmp.replace(out_dir / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
              "target_modules": modules, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "inference_mode": True, "base_model_name_or_path": base_model, **(extra_config or {})}
    paths.write_private(out_dir / "adapter_config.json", json.dumps(config, indent=2))
    return out_dir


def read_peft(folder: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors, adapter_config) of a PEFT adapter folder."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    st = folder / "adapter_model.safetensors"
    if not st.exists():
        raise AdapterError(f"{st} is missing", fix="re-export the adapter with `panza adapters export`")
    return load_file(str(st)), json.loads((folder / "adapter_config.json").read_text())


def write_modelfile(base_gguf_path: str | Path, adapter_gguf_path: str | Path, out_path: str | Path) -> Path:
    """An Ollama Modelfile (FROM base + ADAPTER lora): `ollama create NAME -f Modelfile`."""
    text = (f"# panza-local adapter for Ollama: ollama create my-panza -f {Path(out_path).name}\n"
            f"FROM {Path(base_gguf_path).resolve()}\n"
            f"ADAPTER {Path(adapter_gguf_path).resolve()}\n")
    return paths.write_private(Path(out_path), text)
