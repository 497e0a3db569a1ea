"""Reading the `messages` table ingest fills: what `panza messages list|show|export` prints, and the
recent mail the TUI's draft form offers to reply to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from .. import store
from ..errors import NoDataError

_SELECT = "SELECT m.*, s.uri AS source_uri FROM messages m LEFT JOIN sources s ON s.id = m.source_id"


def record(row) -> dict:
    """A messages row (joined with its source's URI) as the export object."""
    return {"id": row["id"], "date": row["date"], "from": row["from_addr"],
            "to": [a for a in (row["to_addrs"] or "").split(",") if a], "subject": row["subject"],
            "body": row["body"], "thread": row["thread"], "source": row["source_uri"],
            "language": row["language"], "is_mine": bool(row["is_mine"])}


def newest(conn: sqlite3.Connection, everyone: bool = False, limit: int | None = None) -> Iterator[dict]:
    """Live messages, newest first: the user's own, or everyone's with `everyone`."""
    sql = f"{_SELECT} WHERE m.deleted = 0" + ("" if everyone else " AND m.is_mine = 1") + \
        " ORDER BY m.date DESC, m.id DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return (record(r) for r in conn.execute(sql))


def get(conn: sqlite3.Connection, message_id: int) -> dict:
    """One message by id (deleted ones too); NoDataError naming the fix when there is none."""
    row = conn.execute(f"{_SELECT} WHERE m.id = ?", (message_id,)).fetchone()
    if row is None:
        raise NoDataError(f"no message {message_id}", fix="see `panza messages list` for ids")
    return record(row)


def recent(conn: sqlite3.Connection, query: str = "", limit: int = 50) -> list[dict]:
    """Recent live messages (not only the user's) to pick a thread to reply to; `query` filters subject,
    sender and body."""
    sql = "SELECT id, date, from_addr, to_addrs, subject, body, message_id, refs FROM messages WHERE deleted = 0"
    args: list = []
    if query.strip():
        like = f"%{store.escape_like(query.strip())}%"
        sql += " AND (subject LIKE ? ESCAPE '\\' OR from_addr LIKE ? ESCAPE '\\' OR body LIKE ? ESCAPE '\\')"
        args += [like, like, like]
    sql += " ORDER BY date DESC, id DESC LIMIT ?"
    return [dict(r) for r in conn.execute(sql, [*args, limit])]
