"""kill -9 in the middle of an ingest, then the same command again: same final rows, no duplicates.

The mail: three mbox files of the sample person's mail written by the test, the second repeating the first's
last 50 messages (a message kept in two folders, as mail clients do)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import usermail

from panza_local import store
from panza_local.ingest import ingest

ME = [usermail.ME]
CHILD = """
import sys
import panza_local.ingest as ing
from panza_local import store
ing.BATCH = 25  # small batches so the kill lands between commits
ing.BATCH_SECONDS = 1e9  # ... counted, never timed: the kill point does not depend on the machine's speed
ing.ingest(store.connect(), sys.argv[1:], {me!r})
"""


def _rows(db) -> list[tuple]:
    c = sqlite3.connect(db)
    try:
        return sorted(c.execute("SELECT content_hash, message_id, is_mine, deleted FROM messages").fetchall())
    finally:
        c.close()


def test_kill_9_mid_ingest_then_rerun(home, tmp_path):
    parts = [(200, 0), (200, 150), (150, 400)]  # (count, first): 550 messages, 50 of them twice
    sources = [str(usermail.mbox(tmp_path / f"folder{i}.mbox", usermail.messages(n, first)))
               for i, (n, first) in enumerate(parts)]
    store.connect().close()
    db = home / "panza.db"
    # SIGKILLed by the failpoint right after the 8th batch of 25 is committed (not a timer racing the ingest)
    proc = subprocess.run([sys.executable, "-c", CHILD.format(me=ME), *sources], check=False, timeout=300,
                          env={**os.environ, "PANZA_HOME": str(home), "PANZA_FAILPOINT": "ingest.batch:8"})
    assert proc.returncode == -signal.SIGKILL, "the ingest was not killed mid-run"
    partial = _rows(db)
    assert 100 <= len(partial) < 500

    conn = store.connect()
    resumed = ingest(conn, sources, ME)
    conn.close()
    assert resumed.seen < 550  # what was committed before the kill is not read again
    got = _rows(db)

    fresh = store.connect(tmp_path / "fresh.db")
    ingest(fresh, sources, ME)
    fresh.close()
    assert got == _rows(tmp_path / "fresh.db")
    c = sqlite3.connect(db)
    dup_ids = c.execute("SELECT count(*) FROM (SELECT message_id FROM messages WHERE message_id IS NOT NULL "
                        "GROUP BY message_id HAVING count(*) > 1)").fetchone()[0]
    assert dup_ids == 0
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
