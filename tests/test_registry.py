"""Adapter registry: rows, folders, the atomic `current` pointer, list/use/rm/export."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from panza_local import store
from panza_local.errors import AdapterError
from panza_local.train import export, registry


def _fake_adapter(conn, adapter_id, embedded_model, loss=(2.0, 1.5)):
    rng = np.random.default_rng(0)
    t = {"model.layers.0.self_attn.v_proj.lora_A.weight": rng.normal(size=(4, 576)).astype(np.float32),
         "model.layers.0.self_attn.v_proj.lora_B.weight": rng.normal(size=(192, 4)).astype(np.float32)}
    assert registry.begin(conn, adapter_id, base_model="smollm2-135m", base_sha256="x" * 64, data_hash="d",
                          config={"hparams": {"rank": 4}, "base_path": str(embedded_model)}) is None
    folder = registry.adapter_dir(adapter_id)
    export.write_gguf_lora(t, 8.0, 4, embedded_model, folder / "adapter.gguf")
    export.write_peft(t, 8.0, 4, folder / "peft")
    return registry.finish(conn, adapter_id, {"val_loss_before": loss[0], "val_loss_after": loss[1]})


def test_lifecycle(home, embedded_model, tmp_path):
    conn = store.connect()
    assert registry.current() is None and registry.list_(conn) == []
    row = _fake_adapter(conn, "ad-one", embedded_model)
    assert row["status"] == "ready" and row["metrics"]["val_loss_after"] == 1.5
    assert registry.begin(conn, "ad-one", base_model="m", base_sha256="s", data_hash="d", config={})["id"] == "ad-one"
    _fake_adapter(conn, "ad-two", embedded_model)
    registry.use("ad-one", conn)
    cur = registry.current(conn)
    assert cur["id"] == "ad-one" and cur["gguf"].endswith("ad-one/adapter.gguf") and os.path.exists(cur["gguf"])
    link = home / "adapters" / "current"
    assert link.is_symlink() and os.readlink(link) == "ad-one"  # relative: the home can move
    assert [r["id"] for r in registry.list_(conn) if r["current"]] == ["ad-one"]
    registry.use("ad-tw", conn)  # unique prefix
    assert registry.current_id() == "ad-two"
    with pytest.raises(AdapterError, match="matches 2"):
        registry.get("ad-", conn)
    with pytest.raises(AdapterError, match="no adapter"):
        registry.use("nope", conn)
    # exports
    g = registry.export("ad-two", "gguf", tmp_path / "x.gguf", conn)
    assert g.read_bytes() == (home / "adapters" / "ad-two" / "adapter.gguf").read_bytes()
    p = registry.export("ad-two", "peft", tmp_path / "peft", conn)
    assert (p / "adapter_config.json").exists() and (p / "adapter_model.safetensors").exists()
    mf = registry.export("ad-two", "ollama", tmp_path / "ol", conn)
    assert f"FROM {embedded_model.resolve()}" in mf.read_text() and (tmp_path / "ol" / "adapter.gguf").exists()
    # removing the served adapter falls back to the base model
    registry.rm("ad-two", conn)
    assert registry.current() is None and not (home / "adapters" / "ad-two").exists()
    assert [r["id"] for r in registry.list_(conn)] == ["ad-one"]
    registry.use("none", conn)
    assert registry.current_id() is None


def test_unfinished_adapter_cannot_be_served(home, embedded_model):
    conn = store.connect()
    registry.begin(conn, "ad-wip", base_model="m", base_sha256="s", data_hash="d", config={})
    with pytest.raises(AdapterError, match="training"):
        registry.use("ad-wip", conn)
    registry.fail(conn, "ad-wip", "KeyboardInterrupt")
    assert registry.get("ad-wip", conn)["status"] == "failed"


def test_switch_is_atomic_under_concurrent_readers(home, embedded_model):
    """Readers never see a missing or dangling pointer while `use` flips it back and forth."""
    conn = store.connect()
    _fake_adapter(conn, "ad-a", embedded_model)
    _fake_adapter(conn, "ad-b", embedded_model)
    registry.use("ad-a", conn)
    link = home / "adapters" / "current"
    seen, bad, stop = set(), [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                target = os.readlink(link)
                seen.add(target)
                if not (link.parent / target / "adapter.gguf").exists():
                    bad.append(target)
            except OSError as exc:
                bad.append(repr(exc))

    th = threading.Thread(target=reader)
    th.start()
    for i in range(300):
        registry.use("ad-b" if i % 2 == 0 else "ad-a")
    stop.set()
    th.join()
    assert not bad and seen <= {"ad-a", "ad-b"}
