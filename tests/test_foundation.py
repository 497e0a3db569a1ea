"""Foundation: home and permissions, config precedence, migrations, catalogue, models add, GGUF header."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys

import pytest

from panza_local import catalogue, config, gguf_header, paths, store
from panza_local.errors import ConfigError, NotAGGUF


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_home_is_private(home):
    h = paths.home()
    assert h == home and mode(h) == 0o700
    f = paths.write_private(h / "x" / "secret.txt", "hi")
    assert mode(f) == 0o600 and mode(f.parent) == 0o700
    assert f.read_text() == "hi"


def test_home_tightens_loose_permissions(home):
    home.mkdir(parents=True)
    home.chmod(0o755)
    assert mode(paths.home()) == 0o700


def test_atomic_write_leaves_no_temp_on_error(home, monkeypatch):
    target = paths.home() / "a.txt"
    paths.write_private(target, "old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        paths.write_private(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in paths.home().iterdir()] == ["a.txt"]


def test_config_precedence(home, monkeypatch):
    assert config.load().temperature == 0.7  # default
    config.set_value("temperature", "0.3")
    assert config.load().temperature == 0.3 and config.sources()["temperature"] == "file"
    monkeypatch.setenv("PANZA_TEMPERATURE", "0.5")
    assert config.load().temperature == 0.5 and config.sources()["temperature"] == "env"
    assert config.load({"temperature": 0.1}).temperature == 0.1
    assert config.sources({"temperature": 0.1})["temperature"] == "cli"
    assert mode(paths.config_path()) == 0o600


def test_config_types_and_errors(home):
    assert config.set_value("me", "a@x.org, b@y.org") == ["a@x.org", "b@y.org"]
    assert config.load().me == ["a@x.org", "b@y.org"]
    assert config.coerce("debug", "yes") is True
    with pytest.raises(ConfigError, match="expects int"):
        config.set_value("n_ctx", "lots")
    with pytest.raises(ConfigError, match="unknown setting"):
        config.set_value("nope", "1")
    paths.config_path().write_text("model = [unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load()


def test_every_setting_is_documented():
    from dataclasses import fields

    for f in fields(config.Settings):
        assert config.field_doc(f.name), f"setting {f.name} has no docstring"


def test_migrations_ordered_and_idempotent(home):
    names = [n for n, _ in store.migrations()]
    assert names == sorted(names) and names[0].startswith("0001")
    conn = store.connect()
    v = store.schema_version(conn)
    assert v == len(names)
    assert store.apply_migrations(conn) == []  # second run applies nothing
    assert store.health(conn) == {"schema_version": v, "integrity": "ok"}
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    conn.close()
    assert mode(paths.db_path()) == 0o600


def test_opening_a_migrated_store_takes_no_write_lock(home):
    """A draft opens the store several times while ingest may hold the write lock for a batch: on a store
    that has every migration, opening only reads, so it does not wait for the writer."""
    import time

    store.connect().close()
    writer = store.connect()
    writer.execute("BEGIN IMMEDIATE")  # what an ingest batch holds
    try:
        t0 = time.monotonic()
        reader = store.connect()
        waited = time.monotonic() - t0
        assert reader.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(store.migrations())
        reader.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert waited < 5, f"opening the store waited {waited:.1f} s for the writer"


def test_transaction_rolls_back(home):
    conn = store.connect()
    with pytest.raises(RuntimeError), store.transaction(conn):
        conn.execute("INSERT INTO models (name, path, added_at) VALUES ('m', '/x', 'now')")
        raise RuntimeError
    assert conn.execute("SELECT count(*) FROM models").fetchone()[0] == 0


def test_unopenable_database_gives_clear_error(home):
    # root bypasses file modes, so make the database path unopenable instead: a directory in its place.
    paths.db_path().mkdir(parents=True)
    with pytest.raises(Exception, match="writable") as err:
        store.connect()
    assert str(paths.db_path()) in str(err.value)


def test_catalogue_validates_every_entry():
    cat = catalogue.load_catalogue()
    assert {"smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "llama-3.2-1b", "llama-3.2-3b",
            "llama-3.1-8b", "all-minilm-l6-v2"} <= set(cat)
    for m in cat.values():
        assert m.license and m.context_length > 0 and m.hf_repo


def test_catalogue_rejects_bad_entries(tmp_path):
    (tmp_path / "bad.toml").write_text('name = "bad"\ndisplay = "x"\nkind = "chat"\n')
    with pytest.raises(ConfigError, match="missing"):
        catalogue.load_catalogue(tmp_path)
    (tmp_path / "bad.toml").write_text(
        'name = "other"\ndisplay = "x"\nkind = "chat"\narch = "llama"\nhf_repo = "a/b"\nlicense = "x"\n'
        'context_length = 10\nram_gb = 1.0\nfile = "x.gguf"\n')
    with pytest.raises(ConfigError, match="does not match"):
        catalogue.load_catalogue(tmp_path)


def test_embedded_models_are_installed():
    p = catalogue.embedded_path()
    info = gguf_header.summary(p)
    assert info["arch"] == "llama" and info["chat_template"]
    assert (catalogue.embedding_model_dir() / "config.json").exists()


def test_models_add_rejects_non_gguf(home, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("definitely not a model")
    with pytest.raises(NotAGGUF, match="not a GGUF model file") as err:
        catalogue.add(junk, "junk")
    assert str(junk) in str(err.value) and err.value.fix


def test_models_add_and_resolve(home):
    info = catalogue.add(catalogue.embedded_path(), "mine")
    assert info["arch"] == "llama" and len(info["sha256"]) == 64
    assert catalogue.resolve("mine") == catalogue.embedded_path()


@pytest.mark.parametrize("blob", [
    b"GGUF",                                              # truncated after magic
    b"GGUF" + struct.pack("<I", 7) + b"\0" * 16,           # unsupported version
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40),  # absurd key length
    b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99),  # bad type
])
def test_gguf_header_rejects_corruption(tmp_path, blob):
    f = tmp_path / "bad.gguf"
    f.write_bytes(blob)
    with pytest.raises(NotAGGUF):
        gguf_header.read_header(f)


def test_cli_help_and_errors(home):
    env = {**os.environ, "PANZA_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "panza_local", "--help"], check=False, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "doctor" in r.stdout
    r = subprocess.run([sys.executable, "-m", "panza_local", "models", "add", "/nonexistent.gguf", "--name", "x"],
                       check=False, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "no such file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "panza_local", "config", "set", "n_ctx", "big"],
                       check=False, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "fix: panza config set n_ctx" in r.stderr


def test_doctor_json(home):
    import json

    env = {**os.environ, "PANZA_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "panza_local", "doctor", "--json"], check=False, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["home"] == str(home) and d["store"]["integrity"] == "ok" and d["store"]["schema_version"] >= 1
    assert d["embedded_model"].endswith(".gguf") and d["version"]
    assert any(m["name"] == "smollm2-135m" and m["present"] for m in d["models"])
    assert d["disk"]["total_bytes"] == sum(d["disk"]["by_folder"].values()) > 0  # the store at least
    assert d["disk"]["model_copies"] == {"files": 0, "bytes": 0}


def test_doctor_shows_where_the_disk_went(home):
    """Model copies (serving.py) are counted apart: a user who wonders where a GB went is told what is safe to
    delete."""
    from panza_local import doctor, paths

    paths.ensure_dir(home)
    (home / "cache" / "serving").mkdir(parents=True)
    (home / "cache" / "serving" / "base-prompt.serve-bf16.gguf").write_bytes(b"x" * 3000)
    (home / "adapters" / "ad-1").mkdir(parents=True)
    (home / "adapters" / "ad-1" / "adapter.gguf").write_bytes(b"x" * 500)
    (home / "adapters" / "ad-1" / "adapter.serve-bf16.gguf").write_bytes(b"x" * 2000)
    (home / "notes.txt").write_bytes(b"x" * 10)
    d = doctor.disk(home)
    assert d["model_copies"] == {"files": 2, "bytes": 5000}
    assert d["by_folder"] == {"cache": 3000, "adapters": 2500, "(files)": 10} and d["total_bytes"] == 5510
    env = {**os.environ, "PANZA_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "panza_local", "doctor"], check=False, capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "2 faster copies of models, 5.0 kB" in r.stdout and "safe to delete" in r.stdout


@pytest.mark.allow_network_attempt
def test_network_guard_blocks_non_loopback():
    import socket

    import pytest as _pytest

    with _pytest.raises(OSError, match="network guard"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1: never routed


@pytest.mark.allow_network_attempt
def test_models_pull_offline_fails_fast_with_manual_fix(home):
    import time

    from panza_local.errors import OfflineError

    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as err:
        catalogue.pull("qwen2.5-0.5b")
    assert time.perf_counter() - t0 < 10
    assert "panza models add" in err.value.fix and "qwen2.5-0.5b-instruct-q4_0.gguf" in err.value.fix


def test_fresh_home_drafts_offline_from_the_cli(home):
    """Issue 2's promise: a brand-new home, no data, no network: `panza draft` prints an email."""
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_THREADS": "1", "PANZA_SEED": "3"}
    r = subprocess.run([sys.executable, "-m", "panza_local", "draft", "Ask Bob to move our meeting to Friday",
                        "--max-tokens", "48"], check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) >= 5 and "Traceback" not in r.stderr


def test_connections_racing_on_a_new_store_all_open_it(tmp_path):
    """A command and its preload thread open a new home's store at once: both migrate it, neither fails."""
    import threading

    from panza_local import store

    errors = []
    for i in range(12):
        path = tmp_path / f"s{i}" / "panza.db"

        def open_it(path=path):
            try:
                store.connect(path).close()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        conn = store.connect(path)
        assert store.schema_version(conn) == len(store.migrations())
        conn.close()
    assert errors == []
