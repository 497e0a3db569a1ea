"""Playback pairs out of the store: the chronological split and the chat-JSONL export (mlx-lm and TRL read it)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

SPLITS = ("train", "valid", "test")
ALIASES = {"val": "valid", "validation": "valid", "all": None, None: None}
HELD_OUT = 0.10  # newest 10% test, the 10% before it valid


def split_of(dates: list[str | None]) -> list[str]:
    """Split of each item given its ISO date, in input order: newest 10% test, the 10% before valid, rest train.

    Chronological, never random: undated items sort oldest (train); ties keep input order. Under 10 items
    everything is train. Training, eval and export all call this, so they agree on what is held out.
    """
    n = len(dates)
    order = sorted(range(n), key=lambda i: (dates[i] is not None, dates[i] or "", i))
    n_test = n_valid = int(n * HELD_OUT)
    out = ["train"] * n
    for rank, i in enumerate(order):
        if rank >= n - n_test:
            out[i] = "test"
        elif rank >= n - n_test - n_valid:
            out[i] = "valid"
    return out


def splits(conn: sqlite3.Connection) -> dict[str, str]:
    """content_hash → split for every email that has an ok pair."""
    return {p["content_hash"]: p["split"] for p in pairs(conn)}


def pairs(conn: sqlite3.Connection, split: str | None = None) -> list[dict]:
    """The latest ok pair of every email the user wrote, oldest first, each with its `split`.

    Keys: instruction, email, thread, subject, to, date, message_id, content_hash, split, source, copy_ratio.
    `split`: train, valid (or val), test; None or 'all' for every pair.
    """
    if split not in ALIASES and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use train, valid, test or all")
    want = ALIASES.get(split, split)
    rows = conn.execute(
        "SELECT p.id AS pair_id, p.instruction, p.source, p.copy_ratio, m.id AS message_id, m.content_hash, "
        "m.body, m.thread, m.subject, m.to_addrs, m.date FROM pairs p JOIN messages m ON m.id = p.message_id "
        "WHERE p.status = 'ok' AND m.deleted = 0 AND m.is_mine = 1 AND p.instruction IS NOT NULL "
        "ORDER BY m.id, p.id DESC").fetchall()
    latest, seen = [], set()
    for r in rows:
        if r["message_id"] not in seen:
            seen.add(r["message_id"])
            latest.append(r)
    latest.sort(key=lambda r: (r["date"] is not None, r["date"] or "", r["message_id"]))
    labels = split_of([r["date"] for r in latest])
    out = []
    for r, label in zip(latest, labels):
        if want and label != want:
            continue
        out.append({"instruction": r["instruction"], "email": r["body"], "thread": r["thread"] or None,
                    "subject": r["subject"] or None, "to": r["to_addrs"] or None, "date": r["date"],
                    "message_id": r["message_id"], "content_hash": r["content_hash"], "split": label,
                    "source": r["source"], "copy_ratio": r["copy_ratio"]})
    return out


def instructions(conn: sqlite3.Connection, message_ids: list[int]) -> dict[int, str]:
    """{message id: its newest ok instruction} for the ids among `message_ids` that have one."""
    if not message_ids:
        return {}
    marks = ",".join("?" * len(message_ids))
    rows = conn.execute(f"SELECT message_id, instruction FROM pairs WHERE message_id IN ({marks}) AND status = 'ok' "
                        f"AND instruction IS NOT NULL ORDER BY id", list(message_ids)).fetchall()
    return {r[0]: r[1] for r in rows}  # the newest pair wins


def played_back(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(id, body, instruction) of every email with an ok pair, oldest pair first, deleted mail included."""
    return conn.execute("SELECT m.id, m.body, p.instruction FROM pairs p JOIN messages m ON m.id = p.message_id "
                        "WHERE p.status = 'ok' AND p.instruction IS NOT NULL ORDER BY p.id").fetchall()


def new_since(conn: sqlite3.Connection, created_at: str) -> int:
    """The user's live emails with an ok pair stored after `created_at`."""
    return conn.execute(
        "SELECT count(DISTINCT p.message_id) FROM pairs p JOIN messages m ON m.id = p.message_id WHERE "
        "p.status = 'ok' AND m.deleted = 0 AND m.is_mine = 1 AND p.created_at > ?", (created_at,)).fetchone()[0]


def count_ok(conn: sqlite3.Connection) -> int:
    """Pairs with an instruction (status ok)."""
    return conn.execute("SELECT count(*) FROM pairs WHERE status = 'ok'").fetchone()[0]


def chat_record(pair: dict, names: dict[str, str] | None = None) -> dict:
    """One training example: the prompt the drafts use, with the email as the assistant turn (`names`:
    `profile.display_names`, whom the request names as drafts do)."""
    from .. import prompts
    from ..profile import with_names

    msgs = prompts.build(pair["instruction"], thread=pair.get("thread"), to=with_names(pair.get("to"), names or {}),
                         subject=pair.get("subject"))
    return {"messages": [*msgs, {"role": "assistant", "content": pair["email"]}]}


def export(conn: sqlite3.Connection, out_dir: str | Path) -> dict:
    """Write train/valid/test.jsonl (chat records, chronological split) and manifest.json into `out_dir`."""
    from .. import paths
    from ..errors import NoDataError

    rows = pairs(conn)
    if not rows:
        raise NoDataError("there are no playback pairs to export", fix="run `panza playback` first")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise NoDataError(f"{out_dir} is a file, not a folder", fix="give a folder path to export into")
    from ..profile import display_names

    names = display_names(conn)
    counts, digest = {}, hashlib.sha256()
    for name in SPLITS:
        lines = [json.dumps(chat_record(p, names), ensure_ascii=False) for p in rows if p["split"] == name]
        text = "\n".join(lines) + ("\n" if lines else "")
        digest.update(text.encode())
        paths.write_private(out_dir / f"{name}.jsonl", text)
        counts[name] = len(lines)
    manifest = {**counts, "data_hash": digest.hexdigest()[:16], "dir": str(out_dir),
                "sources": {s: sum(1 for p in rows if p["source"] == s) for s in ("model", "fallback")},
                "split": "chronological: newest 10% test, the 10% before it valid"}
    paths.write_private(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
