"""The IMAP source: what is new in each mailbox since the stored UIDVALIDITY/UID cursor, read-only.

The protocol (URI, keyring password, TLS, mailbox names, EXAMINE/FETCH) lives in panza_local/imap.py;
this module keeps the cursor and hands each message to ingest. No MAILBOX in the URI: every selectable
mailbox but Junk and Trash.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .. import imap, store
from ..imap import KEYRING_SERVICE, parse_uri  # noqa: F401  (re-exported: the source's URI and keyring names)
from .parse import Item

CHUNK = 100


def detect(path) -> bool:
    return imap.is_uri(path)


def files(root: Path):
    return iter(())


def ingest(conn, sid: int, uri: str, store_item: Callable[[Item], None], summary: dict,
           on_progress=None) -> None:
    """Fetch what is new in each mailbox since the stored UID cursor; mark expunged messages deleted."""
    cfg = imap.parse_uri(uri)
    row = conn.execute("SELECT cursor FROM sources WHERE id = ?", (sid,)).fetchone()
    cursor = json.loads(row[0]) if row and row[0] else {}
    with imap.session(cfg) as server:
        boxes = [cfg["mailbox"]] if cfg["mailbox"] else imap.mailboxes(server)
        for box in boxes:
            _sync_mailbox(conn, sid, server, box, cursor, store_item, summary, on_progress)


def _sync_mailbox(conn, sid, server, box, cursor, store_item, summary, on_progress) -> None:
    validity = imap.examine(server, box)
    if validity is None:
        summary["errors_total"] += 1
        summary["errors"].append({"path": box, "reason": "mailbox cannot be opened"})
        return
    state = cursor.get(box) or {}
    if state.get("uidvalidity") != validity:  # UIDs were renumbered: start over (Message-IDs de-dup)
        state = {"uidvalidity": validity, "last_uid": 0}
    all_uids = imap.uids(server)
    prefix = f"{box};UID="
    gone = _expunged(conn, sid, prefix, set(all_uids))
    if gone:
        with store.transaction(conn):
            for mid in gone:
                conn.execute("UPDATE messages SET deleted = 1 WHERE id = ?", (mid,))
        summary["deleted"] += len(gone)
    new = [u for u in all_uids if u > state["last_uid"]]
    for i in range(0, len(new), CHUNK):
        chunk = new[i:i + CHUNK]
        fetched = imap.fetch(server, chunk)
        with store.transaction(conn):
            for uid, raw in fetched:
                store_item(Item(location=f"{prefix}{uid}", raw=raw, folder=box))
            state["last_uid"] = chunk[-1]
            cursor[box] = state
            conn.execute("UPDATE sources SET cursor = ?, last_sync = ? WHERE id = ?",
                         (json.dumps(cursor), store.now(), sid))
        if on_progress:
            on_progress(i + len(chunk), len(new), box)
    cursor[box] = state
    conn.execute("UPDATE sources SET cursor = ?, last_sync = ? WHERE id = ?", (json.dumps(cursor), store.now(), sid))


def _expunged(conn, sid: int, prefix: str, live: set[int]) -> list[int]:
    rows = conn.execute("SELECT id, location FROM messages WHERE source_id = ? AND deleted = 0 AND "
                        "substr(location, 1, ?) = ?", (sid, len(prefix), prefix)).fetchall()
    return [r["id"] for r in rows if int(r["location"][len(prefix):]) not in live]
