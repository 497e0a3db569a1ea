"""The same index API against a real Chroma server (`chroma run`) started by the test on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_index import MAIL, add_message  # tests/ is on sys.path (rootdir-relative import mode)

from panza_local import config, store
from panza_local.errors import ConfigError, StoreError
from panza_local.retrieval import chroma_store, index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chroma_cli() -> str | None:
    exe = Path(sys.executable).with_name("chroma")
    return str(exe) if exe.exists() else shutil.which("chroma")


@pytest.fixture
def chroma_server(tmp_path):
    cli = _chroma_cli()
    if cli is None:
        pytest.skip("the `chroma` command (from chromadb) is not installed")
    port = _free_port()
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen([cli, "run", "--path", str(tmp_path / "server-db"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: {(tmp_path / 'chroma.log').read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("chroma run did not listen within 60 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_index_and_search_through_a_chroma_server(home, chroma_server, monkeypatch):
    chroma_store.forget_clients()
    monkeypatch.setenv("PANZA_CHROMA_URL", chroma_server)
    conn = store.connect()
    try:
        for i, (subject, body, to) in enumerate(MAIL, 1):
            add_message(conn, i, subject, body, to)
        first = index.sync(conn)
        assert (first.embedded, first.total) == (12, 12)
        assert not (home / "chroma").exists()  # nothing went to the local persistent store
        assert index.sync(conn).embedded == 0
        hits = index.search("quarterly budget spreadsheet", k=2, conn=conn)
        assert hits[0].ref_id == 1
        conn.execute("UPDATE messages SET deleted = 1 WHERE id = 1")
        assert index.sync(conn).removed == 1
        assert 1 not in [h.ref_id for h in index.search("quarterly budget spreadsheet", k=2, conn=conn)]
        assert index.training_context(11, 2, conn=conn)  # RAFT context works the same way remotely
        # the server holds embeddings and ids, never the mail text
        col = chroma_store.get_collections(chroma_server, config.load().embedding_model, ("sent",))["sent"]
        got = col.get(include=["documents", "metadatas"])
        assert not any(got["documents"] or []) and "Attached" not in str(got["metadatas"])
        assert "@" not in str(got["metadatas"])  # recipients are stored hashed
    finally:
        conn.close()
        chroma_store.forget_clients()


def test_unreachable_server_is_a_clear_error(home, monkeypatch):
    chroma_store.forget_clients()
    monkeypatch.setenv("PANZA_CHROMA_URL", f"http://127.0.0.1:{_free_port()}")
    conn = store.connect()
    try:
        with pytest.raises(StoreError, match="cannot reach the Chroma server") as err:
            index.sync(conn)
        assert "chroma_url" in str(err.value)
    finally:
        conn.close()
    with pytest.raises(ConfigError, match="not an http"):
        chroma_store.parse_url("ftp://x")
    assert chroma_store.parse_url("https://idx.example:9000") == ("idx.example", 9000, True)
