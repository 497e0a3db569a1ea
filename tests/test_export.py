"""Adapter export: GGUF LoRA naming, the q/k permutation, PEFT folder, Ollama Modelfile."""

from __future__ import annotations

import json

import numpy as np
import pytest

from panza_local import gguf_header
from panza_local.errors import AdapterError
from panza_local.train import export


def _lora(n_layers=2, dim=576, kv=192, ffn=1536, r=8, seed=0, modules=None):
    rng = np.random.default_rng(seed)
    shapes = {"q_proj": (dim, dim), "k_proj": (kv, dim), "v_proj": (kv, dim), "o_proj": (dim, dim),
              "gate_proj": (ffn, dim), "up_proj": (ffn, dim), "down_proj": (dim, ffn)}
    out = {}
    for i in range(n_layers):
        for m, (o, inn) in shapes.items():
            if modules and m not in modules:
                continue
            block = "self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            out[f"model.layers.{i}.{block}.{m}.lora_A.weight"] = rng.normal(size=(r, inn)).astype(np.float32)
            out[f"model.layers.{i}.{block}.{m}.lora_B.weight"] = rng.normal(size=(o, r)).astype(np.float32)
    return out


def test_permutation_is_the_converters_and_invertible():
    from panza_local.train.torch.backend import _unpermute

    w = np.arange(12 * 3).reshape(12, 3)
    p = export.permute_rows(w, n_head=2)  # head_dim 6: rows 0..5 -> 0,3,1,4,2,5 (halves interleaved)
    assert p[:6, 0].tolist() == [0, 9, 3, 12, 6, 15]
    assert np.array_equal(_unpermute(p, 2), w)


def test_gguf_names_and_permuted_rows(embedded_model):
    info = export.base_info(embedded_model)
    assert info == {**info, "arch": "llama", "n_head": 9, "n_head_kv": 3, "n_layers": 30}
    t = _lora()
    named = export.gguf_lora_tensors(t, info)
    assert set(named) == {f"blk.{i}.{g}.weight.lora_{ab}" for i in range(2) for ab in "ab"
                          for g in export.MODULE_TO_GGUF.values()}
    qb = t["model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert np.array_equal(named["blk.0.attn_q.weight.lora_b"], export.permute_rows(qb, 9))
    kb = t["model.layers.1.self_attn.k_proj.lora_B.weight"]
    assert np.array_equal(named["blk.1.attn_k.weight.lora_b"], export.permute_rows(kb, 3))
    assert not np.array_equal(named["blk.0.attn_q.weight.lora_b"], qb)
    vb = t["model.layers.0.self_attn.v_proj.lora_B.weight"]
    assert np.array_equal(named["blk.0.attn_v.weight.lora_b"], vb)  # only q and k are permuted
    # non-llama architectures are not permuted
    plain = export.gguf_lora_tensors(t, {**info, "arch": "qwen2"})
    assert np.array_equal(plain["blk.0.attn_q.weight.lora_b"], qb)


def test_bad_names_are_refused(embedded_model):
    info = export.base_info(embedded_model)
    with pytest.raises(AdapterError, match="cannot map"):
        export.gguf_lora_tensors({"model.embed_tokens.lora_A.weight": np.zeros((8, 4))}, info)
    t = _lora(n_layers=1, modules=["q_proj"])
    t.pop("model.layers.0.self_attn.q_proj.lora_B.weight")
    with pytest.raises(AdapterError, match="has no"):
        export.gguf_lora_tensors(t, info)


def test_written_gguf_is_an_adapter_llama_cpp_loads(embedded_model, tmp_path):
    from panza_local import engine

    out = export.write_gguf_lora(_lora(n_layers=30, seed=1), 16.0, 8, embedded_model, tmp_path / "a.gguf")
    head = gguf_header.read_header(out)
    meta = head["metadata"]
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["adapter.lora.alpha"] == 16.0 and meta["general.architecture"] == "llama"
    assert head["tensor_count"] == 30 * 7 * 2
    assert out.stat().st_mode & 0o777 == 0o600
    logits = engine.next_token_logits("Hello", embedded_model, out, threads=1)
    assert np.isfinite(logits).all()
    engine.unload_all()


def test_rank_mismatch_is_refused(embedded_model, tmp_path):
    with pytest.raises(AdapterError, match="rank"):
        export.write_gguf_lora(_lora(n_layers=1, r=4), 8.0, 8, embedded_model, tmp_path / "a.gguf")


def test_peft_folder_roundtrip_and_loads_in_peft(tmp_path):
    t = _lora(n_layers=1, dim=64, kv=32, ffn=128, r=4)
    folder = export.write_peft(t, 8.0, 4, tmp_path / "peft", base_model="smollm2-135m")
    tensors, cfg = export.read_peft(folder)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["peft_type"] == "LORA"
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert np.array_equal(tensors[key], t["model.layers.0.self_attn.q_proj.lora_A.weight"])
    # peft itself loads it onto a llama model of the same shape
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    model = PeftModel.from_pretrained(hf, str(folder))
    a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert torch.allclose(a, torch.from_numpy(t["model.layers.0.self_attn.q_proj.lora_A.weight"]))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"


def test_ollama_modelfile(tmp_path, embedded_model):
    mf = export.write_modelfile(embedded_model, tmp_path / "adapter.gguf", tmp_path / "Modelfile")
    lines = [x for x in mf.read_text().splitlines() if x and not x.startswith("#")]
    assert lines == [f"FROM {embedded_model.resolve()}", f"ADAPTER {(tmp_path / 'adapter.gguf').resolve()}"]
