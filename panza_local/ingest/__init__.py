"""Ingest: mail and documents to `messages` / `documents` rows, once, incrementally, with every skip counted.

`ingest(conn, sources, me)` is the stage's entry point. Each source format is a small module in
`SOURCES` with `detect(path)`, `files(root)` and `read(path, start)`. Per-file state in `source_files`
(size, mtime, offset, head hash) means an unchanged file is never parsed again, a grown mbox or JSONL is
read from where it stopped, a changed file is re-read and a deleted one has its messages marked deleted.
Each batch commits its rows together with the file state, so Ctrl-C or kill -9 loses at most a batch,
and running the same command again resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import failpoint, store
from ..errors import SourceError
from ..results import IngestResult
from . import (
    authorship,
    clean,
    documents,
    eml,
    emlx,
    folder,
    imap,
    jsonl,
    maildir,
    mbox,
    takeout,
    thunderbird,
)
from .parse import Item, parse

log = logging.getLogger(__name__)

# Source kinds, in detection order. Each module: detect(path), files(root) -> (path, reader), read(path, start).
SOURCES = {"imap": imap, "thunderbird": thunderbird, "maildir": maildir, "mbox": mbox, "takeout": takeout,
           "emlx": emlx, "eml": eml, "jsonl": jsonl, "docs": documents, "folder": folder}
READERS = {"mbox": mbox.read, "maildir": maildir.read, "eml": eml.read, "emlx": emlx.read, "jsonl": jsonl.read,
           "takeout": takeout.read}
APPENDABLE = {"mbox", "jsonl"}          # read from the stored offset when the file only grew
BATCH = 500                             # rows per transaction (what a crash can cost)
BATCH_SECONDS = 2.0                     # ... or this long, whichever comes first (how long others wait)
MIN_WORDS = 3                           # shorter bodies are skipped as too_short
MAX_ERRORS = 200                        # errors listed in the summary (all are counted)

Progress = Callable[[int, "int | None", "str | None"], None]


def detect(path: Path) -> str:
    """The source kind of `path` (a key of SOURCES); raises SourceError when it is none of them."""
    if str(path).startswith(("imap://", "imaps://")):
        return "imap"
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist", fix="check the path (use an absolute path or ~/...)")
    if path.is_dir():
        if thunderbird.detect(path):
            return "thunderbird"
        if maildir.detect(path):
            return "maildir"
        return "folder"
    kind = folder.classify(path)
    if kind.startswith("skip:"):
        raise SourceError(f"{path} is not a mailbox, message, JSONL corpus or document ({kind[5:]})",
                          fix="point ingest at an mbox, a Maildir, a folder of .eml/.emlx files, a Thunderbird "
                              "profile, a Gmail Takeout .zip/.tgz, a .jsonl corpus or a document")
    return {"doc": "docs"}.get(kind, kind)


def new_summary() -> dict:
    return {"seen": 0, "stored": 0, "duplicates": 0, "skipped": Counter(), "errors": [], "errors_total": 0,
            "mine": 0, "documents": 0, "deleted": 0, "unchanged_files": 0, "files": 0, "reassigned": 0,
            "sources": []}


def ingest(conn: sqlite3.Connection, sources: list[str], me: list[str] | None = None,
           on_progress: Progress | None = None, *, only_mine: bool = False, register: bool = False,
           languages: list[str] | None = None) -> IngestResult:
    """Ingest every source; return what was seen, stored, duplicated, skipped (seen = stored + duplicates + skipped)."""
    me_set = authorship.normalise_me(me) or _stored_me(conn)
    summary = new_summary()
    opts = {"me": me_set, "only_mine": only_mine, "languages": set(languages or [])}
    # every source is checked before any is read: a typo fails fast, with nothing half done
    kinds = [detect(src if str(src).startswith(("imap://", "imaps://")) else Path(src).expanduser())
             for src in sources]
    for src, kind in zip(sources, kinds):
        if kind == "imap":
            imap.parse_uri(str(src))  # refuses a URI with a password before it is stored anywhere
    with store.run(conn, "ingest") as rec:
        for src, kind in zip(sources, kinds):
            if kind == "imap":
                uri = str(src)
                sid = source_row(conn, uri, kind, register)
                imap.ingest(conn, sid, uri, lambda item, sid=sid: _store_item(conn, sid, item, opts, summary, set()),
                            summary, on_progress)
                summary["sources"].append({"uri": uri, "kind": kind})
                continue
            root = Path(src).expanduser().resolve()
            sid = source_row(conn, str(root), kind, register)
            label = _ingest_files(conn, sid, root, kind, opts, summary, on_progress)
            conn.execute("UPDATE sources SET last_sync = ?, kind = ? WHERE id = ?", (store.now(), label, sid))
            summary["sources"].append({"uri": str(root), "kind": label})
        summary["reassigned"] = reassign(conn, me_set)
        summary["skipped"] = dict(summary["skipped"])
        summary["me"] = sorted(me_set)
        rec.update({k: v for k, v in summary.items() if k not in ("errors", "me")})
    log.info("ingest: seen %d stored %d duplicates %d skipped %s", summary["seen"], summary["stored"],
             summary["duplicates"], summary["skipped"])
    return IngestResult(**summary)


def source_row(conn: sqlite3.Connection, uri: str, kind: str, register: bool = False) -> int:
    """Id of the `sources` row for `uri` (created on first use; `register` marks it for retune)."""
    row = conn.execute("SELECT id, registered FROM sources WHERE uri = ?", (uri,)).fetchone()
    if row:
        if register and not row["registered"]:
            conn.execute("UPDATE sources SET registered = 1 WHERE id = ?", (row["id"],))
        return row["id"]
    cur = conn.execute("INSERT INTO sources (uri, kind, registered, added_at) VALUES (?, ?, ?, ?)",
                       (uri, kind, int(register), store.now()))
    return cur.lastrowid


# --- files ---------------------------------------------------------------------------------------------

def _head_hash(path: Path, offset: int) -> str:
    """Hash of the first 4 KiB and of the 4 KiB before `offset`: detects a rewrite of what was read."""
    with open(path, "rb") as fh:
        first = fh.read(min(4096, offset))
        fh.seek(max(0, offset - 4096))
        last = fh.read(min(4096, offset))
    return hashlib.sha1(first).hexdigest()[:16] + ":" + hashlib.sha1(last).hexdigest()[:16]


def _ingest_files(conn, sid: int, root: Path, kind: str, opts: dict, summary: dict,
                  on_progress: Progress | None) -> str:
    known = {r["path"]: r for r in conn.execute("SELECT * FROM source_files WHERE source_id = ?", (sid,))}
    listing = list(SOURCES[kind].files(root))
    present = {str(p) for p, _ in listing}
    for gone in [p for p in known if p not in present]:  # first, so a moved message is revived, not lost
        _forget_file(conn, sid, gone, summary)
    kinds: Counter[str] = Counter()
    tx = {"n": 0, "t0": time.monotonic()}
    conn.execute("BEGIN IMMEDIATE")
    try:
        for i, (path, reader) in enumerate(listing):
            if on_progress:
                tx["progress"] = lambda i=i: on_progress(i, len(listing),
                                                         f"{summary['seen']} seen, {summary['stored']} stored")
                if i % 50 == 0:
                    tx["progress"]()
            kinds[reader] += 1
            prev = known.get(str(path))
            try:
                st = path.stat()
            except OSError as exc:
                _error(summary, str(path), f"cannot stat: {exc.strerror}", "unreadable_file")
                continue
            if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns \
                    and prev["offset"] >= st.st_size:
                summary["unchanged_files"] += 1
                continue
            summary["files"] += 1
            try:
                _ingest_file(conn, sid, path, reader, st, prev, opts, summary, tx)
            except OSError as exc:
                _error(summary, str(path), f"cannot read: {exc.strerror or exc}", "unreadable_file")
            failpoint.hit("ingest.file")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (disk full) has already rolled back: keep its error
            conn.execute("ROLLBACK")
        raise
    if on_progress:
        on_progress(len(listing), len(listing), f"{summary['seen']} seen, {summary['stored']} stored")
    real = {k: v for k, v in kinds.items() if not k.startswith("skip:")}
    if kind == "folder" and real:
        top = max(real, key=real.get)
        return {"doc": "docs", "maildir": "maildir"}.get(top, top)
    return kind


def _tick(conn, tx: dict) -> bool:
    """Count one stored unit; True when the batch is full (the caller saves its offset, then `_commit`)."""
    tx["n"] += 1
    # also bounded in time: the write lock is held for the whole batch, and the TUI or `panza serve`
    # writing meanwhile must never wait anywhere near the busy timeout (slow PDFs, a loaded machine)
    return tx["n"] >= BATCH or time.monotonic() - tx.setdefault("t0", time.monotonic()) > BATCH_SECONDS


def _commit(conn, tx: dict) -> None:
    conn.execute("COMMIT")
    failpoint.hit("ingest.batch")
    if time.monotonic() - tx["t0"] > BATCH_SECONDS:
        # leave the lock free a moment: a waiting writer polls about every 100 ms (SQLite's busy handler),
        # so re-taking it at once would starve it into "database is locked" on a long ingest
        time.sleep(0.1)
    conn.execute("BEGIN IMMEDIATE")
    tx["n"], tx["t0"] = 0, time.monotonic()


def _ingest_file(conn, sid: int, path: Path, reader: str, st: os.stat_result, prev, opts: dict,
                 summary: dict, tx: dict) -> None:
    """Read one file inside the running transaction, committing every BATCH units with the file's offset."""
    start = 0
    old_ids: set[int] = set()
    if prev is not None:
        resumable = reader in APPENDABLE and st.st_size >= prev["size"] and prev["offset"] <= st.st_size
        if resumable and prev["head_hash"] == _head_hash(path, prev["offset"]):
            start = prev["offset"]
        else:
            old_ids = _ids_at(conn, path)
    if reader.startswith("skip:"):
        summary["seen"] += 1
        summary["skipped"][reader[5:]] += 1
    elif reader == "doc":
        summary["seen"] += 1
        _store_document(conn, sid, path, summary)
    else:
        touched: set[int] = set()
        for item in READERS[reader](path, start):
            _store_item(conn, sid, item, opts, summary, touched)
            if _tick(conn, tx) and item.end is not None:  # mid-file commit: remember how far we got
                _save_file(conn, sid, path, st, item.end, reader)
                _commit(conn, tx)
            if "progress" in tx and summary["seen"] % 200 == 0:  # big mbox files: keep the bar moving
                tx["progress"]()
        _mark_deleted(conn, old_ids - touched, summary)
    _save_file(conn, sid, path, st, st.st_size, reader)
    if _tick(conn, tx):
        _commit(conn, tx)


def _save_file(conn, sid: int, path: Path, st: os.stat_result, offset: int, reader: str) -> None:
    head = _head_hash(path, offset) if reader in APPENDABLE else None
    conn.execute(
        "INSERT INTO source_files (source_id, path, size, mtime_ns, offset, head_hash) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (source_id, path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
        "offset = excluded.offset, head_hash = excluded.head_hash",
        (sid, str(path), st.st_size, st.st_mtime_ns, offset, head))


def _ids_at(conn, path: Path) -> set[int]:
    p = str(path)
    rows = conn.execute("SELECT id FROM messages WHERE deleted = 0 AND (location = ? OR "
                        "substr(location, 1, ?) = ?)", (p, len(p) + 1, p + ":"))
    return {r[0] for r in rows}


def _mark_deleted(conn, ids: set[int], summary: dict) -> None:
    for mid in ids:
        conn.execute("UPDATE messages SET deleted = 1 WHERE id = ?", (mid,))
    summary["deleted"] += len(ids)


def _forget_file(conn, sid: int, path: str, summary: dict) -> None:
    with store.transaction(conn):
        _mark_deleted(conn, _ids_at(conn, Path(path)), summary)
        cur = conn.execute("UPDATE documents SET deleted = 1 WHERE source_id = ? AND path = ? AND deleted = 0",
                           (sid, path))
        summary["deleted"] += cur.rowcount
        conn.execute("DELETE FROM source_files WHERE source_id = ? AND path = ?", (sid, path))


def _error(summary: dict, path: str, reason: str, skip: str | None = None) -> None:
    summary["errors_total"] += 1
    if len(summary["errors"]) < MAX_ERRORS:
        summary["errors"].append({"path": path, "reason": reason})
    if skip:
        summary["seen"] += 1
        summary["skipped"][skip] += 1


# --- one message ----------------------------------------------------------------------------------------

def _skip(summary: dict, reason: str) -> None:
    summary["skipped"][reason] += 1


def _store_item(conn, sid: int, item: Item, opts: dict, summary: dict, touched: set[int]) -> None:
    """Parse, clean, filter, de-duplicate and store one item; every outcome is counted exactly once."""
    summary["seen"] += 1
    if item.skip:
        _skip(summary, item.skip)
        return
    try:
        row = _jsonl_row(item) if item.record is not None else _mail_row(conn, item, opts)
    except Exception as exc:  # noqa: BLE001 - a parser bug on one message must not stop the batch: count it and go on
        _error(summary, item.location, f"unparsable message ({type(exc).__name__})")
        _skip(summary, "unparsable")
        return
    if isinstance(row, int):
        _duplicate(conn, sid, item, row, summary, touched)
        return
    if isinstance(row, str):
        _skip(summary, row)
        return
    existing = conn.execute("SELECT id FROM messages WHERE content_hash = ?", (row["content_hash"],)).fetchone()
    if existing is not None:
        _duplicate(conn, sid, item, existing[0], summary, touched)
        return
    if row.get("language") is None:
        row["language"] = clean.language(row["body"])
    if opts["languages"] and row["language"] not in opts["languages"]:
        _skip(summary, "language")
        return
    row.update(source_id=sid, location=item.location, ingested_at=store.now())
    cols = ", ".join(row)
    cur = conn.execute(f"INSERT INTO messages ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    touched.add(cur.lastrowid)
    summary["stored"] += 1
    summary["mine"] += row["is_mine"]


def _duplicate(conn, sid: int, item: Item, mid: int, summary: dict, touched: set[int]) -> None:
    row = conn.execute("SELECT deleted FROM messages WHERE id = ?", (mid,)).fetchone()
    if row and row[0]:  # it came back (moved between folders): revive it here
        conn.execute("UPDATE messages SET deleted = 0, source_id = ?, location = ? WHERE id = ?",
                     (sid, item.location, mid))
    touched.add(mid)
    summary["duplicates"] += 1


def _mail_row(conn, item: Item, opts: dict) -> dict | str | int:
    """The messages row for an RFC 5322 item, the id of the row it duplicates, or why it is skipped."""
    p = parse(item.raw or b"")
    if not (p.from_addr or p.subject or p.message_id or p.date):
        return "no_headers"
    if p.message_id:
        dup = conn.execute("SELECT id FROM messages WHERE message_id = ?", (p.message_id,)).fetchone()
        if dup:
            return dup[0]
    if p.auto:
        return "auto_generated"
    c = clean.clean(p.text)
    if not c.body:
        return "empty_after_cleaning"
    authors = authorship.authors(p)
    mine = authorship.is_mine(authors, opts["me"])
    if opts["only_mine"] and not mine:
        return "not_mine"
    if len(c.body.split()) < MIN_WORDS:
        return "too_short"
    return {"message_id": p.message_id, "content_hash": clean.content_hash(c.body),
            "date": p.date or item.date_hint, "from_addr": p.from_addr, "from_name": p.from_name or None,
            "to_addrs": ",".join(p.to_addrs), "to_names": json.dumps(p.to_names, ensure_ascii=False),
            "cc_addrs": ",".join(p.cc_addrs), "subject": p.subject, "body": c.body, "thread": c.thread or None,
            "in_reply_to": p.in_reply_to, "refs": p.refs, "is_mine": int(mine), "language": None,
            "author": ",".join(authors), "folder": item.folder or p.labels or None, "html_only": int(p.html_only)}


def _jsonl_row(item: Item) -> dict | str:
    """A cleaned-corpus record: the user's own text, stored as is (only whitespace normalised)."""
    rec = item.record or {}
    body = clean._tidy(clean.normalise(rec.get("email") or ""))
    if not body:
        return "empty_after_cleaning"
    date = rec.get("date")
    if isinstance(date, str) and date:
        import datetime as dt

        try:
            d = dt.datetime.fromisoformat(date.replace("Z", "+00:00"))
            d = d if d.tzinfo else d.replace(tzinfo=dt.timezone.utc)
            date = d.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()
        except ValueError:
            date = None
    else:
        date = None
    return {"message_id": None, "content_hash": clean.content_hash(body), "date": date, "from_addr": None,
            "to_addrs": rec.get("to") if isinstance(rec.get("to"), str) else None,
            "subject": rec.get("subject") if isinstance(rec.get("subject"), str) else None, "body": body,
            "thread": rec.get("thread") if isinstance(rec.get("thread"), str) else None, "is_mine": 1,
            "language": None, "author": None, "folder": item.folder}


def _store_document(conn, sid: int, path: Path, summary: dict) -> None:
    try:
        title, text = documents.extract(path)
    except documents.DocumentError as exc:
        _skip(summary, exc.reason)
        if exc.reason not in ("empty_document",):
            _error(summary, str(path), exc.reason)
        return
    h = clean.content_hash(text)
    dup = conn.execute("SELECT id FROM documents WHERE content_hash = ? AND deleted = 0 AND NOT "
                       "(source_id = ? AND path = ?)", (h, sid, str(path))).fetchone()
    if dup:
        summary["duplicates"] += 1
        return
    conn.execute("INSERT INTO documents (source_id, path, content_hash, title, text, ingested_at) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source_id, path) DO UPDATE SET "
                 "content_hash = excluded.content_hash, title = excluded.title, text = excluded.text, "
                 "deleted = 0, ingested_at = excluded.ingested_at",
                 (sid, str(path), h, title, text, store.now()))
    summary["stored"] += 1
    summary["documents"] += 1


# --- authorship re-labelling -------------------------------------------------------------------------------

def _stored_me(conn) -> set[str]:
    row = conn.execute("SELECT value FROM ingest_meta WHERE key = 'me'").fetchone()
    return set(json.loads(row[0])) if row else set()


def reassign(conn, me: set[str]) -> int:
    """Re-label is_mine on every mail row when the user's addresses changed; return rows changed."""
    if not me or me == _stored_me(conn):
        return 0
    changed = 0
    with store.transaction(conn):
        for r in conn.execute("SELECT id, author, is_mine FROM messages WHERE author IS NOT NULL").fetchall():
            mine = int(authorship.is_mine(r["author"], me))
            if mine != r["is_mine"]:
                conn.execute("UPDATE messages SET is_mine = ? WHERE id = ?", (mine, r["id"]))
                changed += 1
        conn.execute("INSERT INTO ingest_meta (key, value) VALUES ('me', ?) ON CONFLICT (key) DO UPDATE "
                     "SET value = excluded.value", (json.dumps(sorted(me)),))
    return changed


def registered_sources(conn: sqlite3.Connection) -> list[str]:
    """URIs of the sources `panza sources add` registered (what `panza ingest` and retune re-read)."""
    return [r[0] for r in conn.execute("SELECT uri FROM sources WHERE registered = 1 ORDER BY id")]


def iter_raw(roots: list[str], limit: int | None = None,
             want: Callable[[str], bool] | None = None) -> Iterator[tuple[bytes, str]]:
    """(raw message, folder hint) for the mail under `roots` (files whose path passes `want`), no store."""
    n = 0
    for src in roots:
        if str(src).startswith(("imap://", "imaps://")):
            continue
        root = Path(src).expanduser()
        try:
            kind = detect(root)
        except SourceError:
            continue
        for path, reader in SOURCES[kind].files(root):
            if reader not in READERS or reader == "jsonl" or (want and not want(str(path))):
                continue
            for item in READERS[reader](path, 0):
                if item.raw:
                    yield item.raw, f"{item.folder} {path}"
                    n += 1
                    if limit and n >= limit:
                        return
