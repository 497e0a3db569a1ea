"""The `sources` table: what was read, from where; registering, listing and removing a source.

Removing is a soft delete: the source's messages and documents are marked deleted (`panza index` then
drops them from the index), its file offsets are forgotten, and it is no longer re-read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .. import imap, store
from ..errors import SourceError
from . import detect, source_row


def normalise(src: str) -> str:
    """The URI a source is stored under: an IMAP URI as given, a path absolute."""
    return str(src) if imap.is_uri(src) else str(Path(src).expanduser().resolve())


def register(conn: sqlite3.Connection, sources: list[str]) -> list[dict]:
    """Register `sources` for `panza ingest` (no argument) and retune; {id, uri, kind} of each."""
    out = []
    for src in sources:
        uri = normalise(src)
        if imap.is_uri(uri):
            imap.parse_uri(uri)  # refuses a URI with a password before it is stored anywhere
        kind = detect(uri if imap.is_uri(uri) else Path(uri))
        out.append({"id": source_row(conn, uri, kind, register=True), "uri": uri, "kind": kind})
    return out


def list_(conn: sqlite3.Connection) -> list[dict]:
    """Every source with its live message, own-message and document counts."""
    rows = conn.execute(
        "SELECT s.id, s.uri, s.kind, s.registered, s.last_sync, "
        "(SELECT count(*) FROM messages m WHERE m.source_id = s.id AND m.deleted = 0) AS messages, "
        "(SELECT count(*) FROM messages m WHERE m.source_id = s.id AND m.deleted = 0 AND m.is_mine = 1) AS mine, "
        "(SELECT count(*) FROM documents d WHERE d.source_id = s.id AND d.deleted = 0) AS documents "
        "FROM sources s ORDER BY s.id").fetchall()
    return [dict(r) for r in rows]


def find(conn: sqlite3.Connection, key: str) -> sqlite3.Row:
    """The source row (id, uri) for an id, a path (relative or with ~) or a URI; SourceError when none."""
    row = None
    if key.isdigit():
        row = conn.execute("SELECT id, uri FROM sources WHERE id = ?", (int(key),)).fetchone()
    if row is None:
        row = conn.execute("SELECT id, uri FROM sources WHERE uri = ? OR uri = ?", (key, normalise(key))).fetchone()
    if row is None:
        raise SourceError(f"no source {key!r}", fix="see `panza sources list` for ids and paths")
    return row


def remove(conn: sqlite3.Connection, key: str) -> dict:
    """Unregister the source `key` names and mark its messages and documents deleted, in one transaction."""
    row = find(conn, key)
    with store.transaction(conn):
        m = conn.execute("UPDATE messages SET deleted = 1 WHERE source_id = ? AND deleted = 0", (row["id"],)).rowcount
        d = conn.execute("UPDATE documents SET deleted = 1 WHERE source_id = ? AND deleted = 0",
                         (row["id"],)).rowcount
        conn.execute("DELETE FROM source_files WHERE source_id = ?", (row["id"],))
        conn.execute("UPDATE sources SET registered = 0, cursor = NULL WHERE id = ?", (row["id"],))
    return {"removed": row["uri"], "messages_deleted": m, "documents_deleted": d}


def imap_account(conn: sqlite3.Connection) -> str | None:
    """The URI of the first IMAP source, or None (where `--save-draft imap` appends drafts)."""
    row = conn.execute("SELECT uri FROM sources WHERE kind = 'imap' ORDER BY id LIMIT 1").fetchone()
    return row["uri"] if row else None
