"""Reading the `messages` table ingest fills: what `panza messages list|show|export` prints, and the
recent mail the TUI's draft form offers to reply to."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from email.utils import getaddresses

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


# --- what the other stages read (their SQL on `messages` lives here, with the table) ------------------------

def by_id(conn: sqlite3.Connection, message_id: int) -> sqlite3.Row | None:
    """The messages row `message_id` (deleted ones too), or None."""
    return conn.execute("SELECT * FROM messages WHERE id = ?", (message_id,)).fetchone()


def by_message_id(conn: sqlite3.Connection, message_id: str) -> sqlite3.Row | None:
    """The row whose Message-ID header is `message_id` (with or without <>, in either case), live first; or None."""
    bare = message_id.strip().strip("<>")
    for cand in (bare, f"<{bare}>", bare.lower(), f"<{bare.lower()}>"):
        row = conn.execute("SELECT * FROM messages WHERE message_id = ? ORDER BY deleted LIMIT 1", (cand,)).fetchone()
        if row:
            return row
    return None


def live(conn: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Every live message (id, date, subject, body, from_addr, to_addrs, cc_addrs, is_mine): what the index embeds."""
    return iter(conn.execute("SELECT id, date, subject, body, from_addr, to_addrs, cc_addrs, is_mine "
                             "FROM messages WHERE deleted = 0"))


def live_by_ids(conn: sqlite3.Connection, ids: list[int]) -> dict[int, sqlite3.Row]:
    """{id: row (id, date, subject, body, to_addrs)} of the live messages among `ids`."""
    if not ids:
        return {}
    return {r["id"]: r for r in conn.execute(
        f"SELECT id, date, subject, body, to_addrs FROM messages WHERE deleted = 0 AND id IN ({','.join('?' * len(ids))})",
        list(ids))}


def mine(conn: sqlite3.Connection) -> list[dict]:
    """The user's live messages, oldest first (undated last): what playback writes instructions for."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
    extra = ", to_names" if "to_names" in cols else ", NULL AS to_names"
    return [dict(r) for r in conn.execute(
        f"SELECT id, content_hash, body, thread, subject, to_addrs, date{extra} FROM messages "
        "WHERE is_mine = 1 AND deleted = 0 ORDER BY date IS NULL, date, id")]


def mine_bodies(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """(content_hash, body) of the user's live messages: the pool playback's recall@1 searches."""
    return conn.execute("SELECT content_hash, body FROM messages WHERE is_mine = 1 AND deleted = 0").fetchall()


def mine_newest(conn: sqlite3.Connection, limit: int = 5000) -> list[sqlite3.Row]:
    """(body, language) of the user's newest live messages: what the profile is seeded from."""
    return conn.execute("SELECT body, language FROM messages WHERE is_mine = 1 AND deleted = 0 "
                        "ORDER BY date DESC LIMIT ?", (limit,)).fetchall()


def mine_to(conn: sqlite3.Connection, address: str, limit: int = 200) -> list[str]:
    """Bodies of the user's newest live messages to `address` (a substring of the To: addresses, any case)."""
    rows = conn.execute("SELECT body FROM messages WHERE is_mine = 1 AND deleted = 0 AND "
                        "lower(to_addrs) LIKE ? ORDER BY date DESC LIMIT ?", (f"%{address.lower()}%", limit))
    return [r["body"] for r in rows]


def correspondents(conn: sqlite3.Connection, mentioning: str = "") -> list[tuple[str, str, int]]:
    """(address, display name or '', emails) of everyone the user has written to, the most written to first;
    with `mentioning`, only from emails whose recipients' addresses or names contain it (any case): a name
    looked up in a 7,000-email mailbox reads a few rows, not all of them."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
    names_col = "to_names" if "to_names" in cols else "NULL"
    where, args = "is_mine = 1 AND deleted = 0", []
    if mentioning:
        where += f" AND (to_addrs LIKE ? OR coalesce({names_col}, '') LIKE ?)"
        args = [f"%{mentioning}%"] * 2
    emails: Counter[str] = Counter()
    names: dict[str, str] = {}
    for addrs, raw in conn.execute(f"SELECT to_addrs, {names_col} FROM messages WHERE {where}", args):
        try:
            shown = json.loads(raw) if raw else []
        except ValueError:
            shown = []
        listed = getaddresses([addrs]) if addrs and ("<" in addrs or '"' in addrs) else [("", a) for a in (addrs or "").split(",")]
        for i, (written, addr) in enumerate(listed):  # ingest stores bare addresses: split, do not parse
            addr = addr.strip().lower()
            if "@" not in addr:
                continue
            emails[addr] += 1
            name = shown[i] if i < len(shown) and isinstance(shown[i], str) and shown[i].strip() else written
            if not names.get(addr) and name.strip():
                names[addr] = " ".join(name.split())
    return [(a, names.get(a, ""), n) for a, n in emails.most_common()]


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Live messages, the user's own, live documents and sources (what the status views show)."""
    q = {"messages": "SELECT count(*) FROM messages WHERE deleted = 0",
         "mine": "SELECT count(*) FROM messages WHERE deleted = 0 AND is_mine = 1",
         "documents": "SELECT count(*) FROM documents WHERE deleted = 0",
         "sources": "SELECT count(*) FROM sources"}
    return {k: conn.execute(sql).fetchone()[0] for k, sql in q.items()}
