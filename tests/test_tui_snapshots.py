"""Snapshots of every screen at 80x24 and 160x48 over fixed store contents (no engine, no clock text).

Regenerate after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from panza_local import store

SIZES = [(80, 24), (160, 48)]
T0 = "2026-03-02T09:15:00+00:00"


def seed_store(conn: sqlite3.Connection) -> None:
    """Fixed contents: two sources, a few emails, pairs, an index row, an adapter, two conversations."""
    with store.transaction(conn):
        conn.execute("INSERT INTO sources (id, uri, kind, registered, added_at, last_sync) VALUES "
                     "(1, '/home/ada/Mail/Sent', 'maildir', 1, ?, '2026-03-01T18:00:00+00:00'), "
                     "(2, '/home/ada/export.mbox', 'mbox', 0, ?, NULL)", (T0, T0))
        mails = [
            (1, "2026-02-27T10:00:00+00:00", "ada@example.com", "bob@example.com", "Quarterly report",
             "Hi Bob,\n\nThe quarterly report is attached. Numbers look good.\n\nBest,\nAda", "<q1@example.com>", 1),
            (2, "2026-02-28T12:30:00+00:00", "bob@example.com", "ada@example.com", "Lunch on Friday?",
             "Ada, are you free for lunch on Friday at noon?\nBob", "<lunch@example.com>", 0),
            (3, "2026-03-01T08:05:00+00:00", "ada@example.com", "carol@example.com", "Budget review",
             "Carol,\n\nCan we move the budget review to Tuesday?\n\nThanks,\nAda", "<budget@example.com>", 1),
        ]
        for mid, date, frm, to, subject, body, msgid, mine in mails:
            conn.execute("INSERT INTO messages (id, source_id, content_hash, date, from_addr, to_addrs, subject, body, "
                         "message_id, is_mine, ingested_at) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (mid, f"h{mid}", date, frm, to, subject, body, msgid, mine, T0))
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (1, 'h1', 'g', 'ok', 'Send Bob the quarterly report', ?)", (T0,))
        conn.execute("INSERT INTO index_items VALUES ('sent:1', 'sent', 1, 'h1', 'all-minilm-l6-v2', ?)", (T0,))
        conn.execute("INSERT INTO adapters (id, base_model, base_sha256, data_hash, config, metrics, path, status, "
                     "created_at) VALUES ('a-20260301', 'smollm2-135m', 'x', 'd', '{}', ?, '/nowhere', 'ready', ?)",
                     (json.dumps({"val_loss_after": 2.31, "rougeL": 0.274}), "2026-03-01T20:00:00+00:00"))
        conn.execute("INSERT INTO runs (stage, started_at, finished_at, status, summary) VALUES "
                     "('ingest', '2026-03-01T18:00:00+00:00', '2026-03-01T18:00:09+00:00', 'done', '{}')")
        conn.execute("INSERT INTO conversations (id, title, created_at, updated_at) VALUES "
                     "(1, 'Reply to Bob about lunch', ?, '2026-03-02T09:20:00+00:00'), "
                     "(2, 'Tone of the budget email', ?, '2026-03-01T16:00:00+00:00')", (T0, T0))
        turns = [(1, "user", "How do I politely say yes to Bob's lunch invite?"),
                 (1, "assistant", ("Something short and warm works:\n\n> Hi Bob, Friday at noon is perfect. "
                                   "See you then!\n\n- keep it to **two lines**\n- sign off with your name")),
                 (2, "user", "Is my budget email too blunt?"),
                 (2, "assistant", "It is direct but polite. Add a reason for moving the meeting.")]
        for cid, role, content in turns:
            conn.execute("INSERT INTO chat_messages (conversation_id, role, content, created_at) VALUES (?, ?, ?, ?)",
                         (cid, role, content, T0))


@pytest.fixture(autouse=True)
def steady_cursor(monkeypatch):
    """No blinking cursors: a snapshot must not depend on which half-second it was taken in."""
    from textual.widgets import Input, TextArea

    for cls in (TextArea, Input):
        monkeypatch.setattr(cls.__dict__["cursor_blink"], "_default", False)


@pytest.fixture
def seeded(home):
    """A home whose store holds the fixed contents above."""
    conn = store.connect()
    seed_store(conn)
    conn.close()
    return home


def make_app(**kwargs):
    """The real app on the test's home; one engine thread (llama.cpp's spinning threads crawl on a shared box)."""
    from panza_local.tui.app import PanzaApp

    from panza_local import config

    kwargs.setdefault("settings", config.load({"threads": 1}))
    kwargs.setdefault("first_run", False)
    kwargs.setdefault("check_model", False)
    return PanzaApp(**kwargs)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_chat(seeded, snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_draft(seeded, snap_compare, size):
    # the form filled in from the keyboard: recipient, subject, instruction (no generation)
    keys = ["f3", "shift+tab", "shift+tab", *"bob@example.com", "tab", *"Lunch", "tab", *"say yes to lunch"]
    assert snap_compare(make_app(), terminal_size=size, press=keys)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_status(seeded, snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, press=["f4"])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_help(seeded, snap_compare, size):
    assert snap_compare(make_app(), terminal_size=size, press=["f1"])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_first_run(home, snap_compare, size):
    assert snap_compare(make_app(first_run=None), terminal_size=size)
