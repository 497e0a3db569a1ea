"""SQLite store: WAL, foreign keys, ordered append-only migrations (panza_local/migrations/NNNN_*.sql)."""

# Who owns each table: only the owner's SQL writes it or reads it on its own; another module's SQL names it only
# joined to a table of its own (playback's pairs JOIN messages), else it calls a function of the owner
# (tests/test_sql_owners.py reads this map; paths under panza_local/, "/" ends a package):
#   ingest/              sources, source_files, messages, documents, ingest_meta
#   playback/            pairs, playback_vectors
#   retrieval/           index_items
#   train/registry.py    adapters
#   catalogue.py         models
#   chat.py              conversations, chat_messages
#   draft.py             drafts
#   retune.py            retune_gate, retune_state, retune_scores
#   store.py             runs, schema_migrations

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from . import paths
from .errors import StoreError


def now() -> str:
    """Current UTC time as ISO 8601 (what every *_at column holds)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


@functools.lru_cache(maxsize=1)
def _migration_files() -> tuple[tuple[str, str], ...]:
    pkg = resources.files("panza_local.migrations")
    files = sorted((p.name, p) for p in pkg.iterdir() if p.name.endswith(".sql"))
    return tuple((name, p.read_text(encoding="utf-8")) for name, p in files)


def migrations() -> list[tuple[str, str]]:
    """All migrations as (name, sql), in the order they apply (read from the package once per process)."""
    return list(_migration_files())


def _explain(exc: sqlite3.Error, path: Path) -> StoreError:
    msg = str(exc)
    if "readonly" in msg or "unable to open" in msg:
        return StoreError(f"cannot write the database {path} ({msg})",
                          fix=f"make {path.parent} writable, or point PANZA_HOME at a writable folder")
    if "disk is full" in msg or "disk I/O" in msg:
        return StoreError(f"the disk holding {path} is full ({msg}); the unfinished batch was rolled back, "
                          "what was committed before it is kept",
                          fix="free some disk space and run the same command again")
    if "malformed" in msg or "not a database" in msg:
        return StoreError(f"the database {path} is damaged ({msg})",
                          fix=f"restore {path} from a backup, or move it aside and re-run ingest")
    return StoreError(f"database error on {path}: {msg}", fix="run `panza doctor` and report the output")


def connect(path: Path | None = None, *, migrate: bool = True) -> sqlite3.Connection:
    """Open (and migrate) the store. Rows come back as sqlite3.Row."""
    path = Path(path) if path else paths.db_path()
    paths.ensure_dir(path.parent)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        _set_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        if migrate:
            apply_migrations(conn)
    except sqlite3.Error as exc:
        raise _explain(exc, path) from None
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists() and p.stat().st_mode & 0o077:
            with contextlib.suppress(PermissionError):
                p.chmod(paths.FILE_MODE)
    return conn


def version(path: Path | None = None) -> tuple:
    """A key that changes whenever the store's content may have: its path and its files' modification times
    and sizes (a WAL write touches the -wal file, a checkpoint the database). For what a long-running process
    (`panza serve`, the TUI) derives from the store on every draft and may keep until the store changes."""
    path = Path(path) if path else paths.db_path()
    out: list = [str(path)]
    for p in (path, Path(f"{path}-wal")):
        try:
            st = p.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _set_wal(conn: sqlite3.Connection, tries: int = 50) -> None:
    """Switch to WAL. On a new store, several connections (a command and its preload thread) may race to
    switch it; the switch does not wait on the busy handler, so a loser retries (once in WAL, it is a no-op)."""
    import time

    for i in range(tries):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or i == tries - 1:
                raise
            time.sleep(0.02 * (i + 1))


def apply_migrations(conn: sqlite3.Connection) -> list[str]:
    """Apply every migration not yet applied, each in its own transaction; return their names.

    Safe against another connection migrating at the same time: each migration is checked again inside
    its IMMEDIATE transaction, so the loser of a race skips what the winner applied. A store that has them
    all (every connection but a new store's first) is only read: opening it takes no write lock, so it
    never waits for a writer (an ingest batch)."""
    try:
        if {r[0] for r in conn.execute("SELECT name FROM schema_migrations")} >= {n for n, _ in _migration_files()}:
            return []
    except sqlite3.OperationalError:  # no such table yet: a new store
        pass
    with transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in migrations():
        if name in done:
            continue
        with transaction(conn):
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                continue
            # executescript would COMMIT our transaction; run statements one by one instead.
            for stmt in _statements(sql):
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, now()))
        applied.append(name)
    return applied


def _statements(sql: str) -> Iterator[str]:
    buf = ""
    for line in sql.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf
            buf = ""
    if buf.strip():
        yield buf


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception, Ctrl-C included)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    """Number of applied migrations."""
    return conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]


def health(conn: sqlite3.Connection) -> dict:
    """Schema version and `PRAGMA integrity_check` result (what doctor reports)."""
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return {"schema_version": schema_version(conn), "integrity": integrity}


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern written with ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def recent_runs(conn: sqlite3.Connection, limit: int = 8) -> list[dict]:
    """The last stage runs `run` recorded, newest first (id, stage, started_at, finished_at, status)."""
    return [dict(r) for r in conn.execute(
        "SELECT id, stage, started_at, finished_at, status FROM runs ORDER BY id DESC LIMIT ?", (limit,))]


@contextlib.contextmanager
def run(conn: sqlite3.Connection, stage: str) -> Iterator[dict]:
    """Record one stage run in `runs`; the caller fills the yielded dict with its summary."""
    cur = conn.execute("INSERT INTO runs (stage, started_at) VALUES (?, ?)", (stage, now()))
    run_id, summary = cur.lastrowid, {}
    status = "failed"
    try:
        yield summary
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                         (now(), status, json.dumps(summary, default=str), run_id))


def last_run_id(conn: sqlite3.Connection, stage: str) -> int | None:
    """Id of the newest run of `stage` (the one `run` is recording, inside it), or None."""
    return conn.execute("SELECT max(id) FROM runs WHERE stage = ?", (stage,)).fetchone()[0]


def save_run_summary(conn: sqlite3.Connection, run_id: int, summary: dict) -> None:
    """Write a running stage's summary so far (a run killed later still shows what it had done)."""
    conn.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps(summary, default=str), run_id))


def runs_of(conn: sqlite3.Connection, stage: str, limit: int = 20) -> list[sqlite3.Row]:
    """The last runs of `stage`, newest first: id, started_at, finished_at, status, summary (JSON text)."""
    return conn.execute("SELECT id, started_at, finished_at, status, summary FROM runs WHERE stage = ? "
                        "ORDER BY id DESC LIMIT ?", (stage, limit)).fetchall()


def last_run_that_counted(conn: sqlite3.Connection, stage: str, keys: tuple[str, ...]) -> int:
    """Id of the newest run of `stage` with one of the summary counts `keys` above 0, or that did not finish
    (so may have); 0 when none."""
    counted = " OR ".join("json_extract(summary, ?) > 0" for _ in keys)
    row = conn.execute(f"SELECT max(id) FROM runs WHERE stage = ? AND (status != 'done' OR {counted})",
                       (stage, *(f"$.{k}" for k in keys))).fetchone()[0]
    return row or 0
