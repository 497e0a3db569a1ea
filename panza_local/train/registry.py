"""Adapter registry: the `adapters` table, `adapters/<id>/` folders, and the `current` pointer.

An adapter folder holds `adapter.gguf` (what llama.cpp serves), `peft/` (adapter_model.safetensors +
adapter_config.json), `config.json` (base model and its sha256, data hash, hyper-parameters) and
`metrics.json`. `current` is a symlink to the served adapter's folder, switched atomically, so a reader
(draft, serve, the TUI) sees the old adapter or the new one, never half of either.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .. import paths, store
from ..errors import AdapterError

CURRENT = "current"


def adapters_dir() -> Path:
    """The folder holding one sub-folder per adapter."""
    return paths.subdir("adapters")


def adapter_dir(adapter_id: str) -> Path:
    return adapters_dir() / adapter_id


def _conn(conn):
    return (conn, False) if conn is not None else (store.connect(), True)


def _row(r: sqlite3.Row) -> dict:
    d = dict(r)
    for k in ("config", "metrics"):
        if d.get(k):
            d[k] = json.loads(d[k])
    folder = Path(d["path"])
    d["gguf"] = str(folder / "adapter.gguf")
    d["peft"] = str(folder / "peft")
    return d


def begin(conn: sqlite3.Connection, adapter_id: str, *, base_model: str, base_sha256: str, data_hash: str,
          config: dict) -> dict | None:
    """Record an adapter as training (idempotent); return the row instead when it is already ready."""
    row = conn.execute("SELECT * FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
    if row is not None and row["status"] == "ready" and (Path(row["path"]) / "adapter.gguf").exists():
        return _row(row)
    folder = paths.ensure_dir(adapter_dir(adapter_id))
    conn.execute(
        """INSERT INTO adapters (id, base_model, base_sha256, data_hash, config, path, status, created_at)
           VALUES (?, ?, ?, ?, ?, ?, 'training', ?)
           ON CONFLICT(id) DO UPDATE SET status = 'training', config = excluded.config""",
        (adapter_id, base_model, base_sha256, data_hash, json.dumps(config), str(folder), store.now()))
    paths.write_private(folder / "config.json", json.dumps(
        {"id": adapter_id, "base_model": base_model, "base_sha256": base_sha256, "data_hash": data_hash,
         **config}, indent=2))
    return None


def finish(conn: sqlite3.Connection, adapter_id: str, metrics: dict) -> dict:
    """Mark an adapter ready with its metrics (after its files are written)."""
    folder = adapter_dir(adapter_id)
    if not (folder / "adapter.gguf").exists():
        raise AdapterError(f"{folder / 'adapter.gguf'} is missing", fix="run `panza train` again")
    paths.write_private(folder / "metrics.json", json.dumps(metrics, indent=2, default=str))
    conn.execute("UPDATE adapters SET status = 'ready', metrics = ? WHERE id = ?",
                 (json.dumps(metrics, default=str), adapter_id))
    return get(adapter_id, conn)


def fail(conn: sqlite3.Connection, adapter_id: str, reason: str) -> None:
    """Mark an adapter failed (its checkpoint stays, so the next run resumes)."""
    conn.execute("UPDATE adapters SET status = 'failed', metrics = ? WHERE id = ?",
                 (json.dumps({"error": reason}), adapter_id))


def get(adapter_id: str, conn: sqlite3.Connection | None = None) -> dict:
    """One adapter by id or unique id prefix."""
    conn, own = _conn(conn)
    try:
        rows = conn.execute("SELECT * FROM adapters WHERE id = ? OR id LIKE ? ORDER BY id = ? DESC",
                            (adapter_id, adapter_id.replace("%", "") + "%", adapter_id)).fetchall()
    finally:
        if own:
            conn.close()
    if not rows:
        raise AdapterError(f"no adapter {adapter_id!r}", fix="see `panza adapters list`")
    if len(rows) > 1 and rows[0]["id"] != adapter_id:
        raise AdapterError(f"{adapter_id!r} matches {len(rows)} adapters", fix="give more of the id")
    return _row(rows[0])


def list_(conn: sqlite3.Connection | None = None) -> list[dict]:
    """Every adapter, newest first, with `current` set on the served one."""
    conn, own = _conn(conn)
    try:
        rows = [_row(r) for r in conn.execute("SELECT * FROM adapters ORDER BY created_at DESC, id")]
    finally:
        if own:
            conn.close()
    cur = current_id()
    for r in rows:
        r["current"] = r["id"] == cur
    return rows


def count(conn: sqlite3.Connection) -> int:
    """Adapters registered (any status)."""
    return conn.execute("SELECT count(*) FROM adapters").fetchone()[0]


def current_id() -> str | None:
    """Id the `current` pointer names (None: drafts use the base model alone)."""
    link = adapters_dir() / CURRENT
    if not link.is_symlink():
        return None
    import os

    return Path(os.readlink(link)).name


def current(conn: sqlite3.Connection | None = None) -> dict | None:
    """The served adapter (row + `gguf` path), or None when none is in use or its files are gone."""
    cid = current_id()
    if cid is None:
        return None
    try:
        row = get(cid, conn)
    except AdapterError:
        return None
    if row["status"] != "ready" or not Path(row["gguf"]).exists():
        return None
    return row


@dataclass(frozen=True)
class Choice:
    """The adapter drafts serve for the active base model: `row` (with `id`, `gguf`), or None and `reason`,
    a one-line notice that names the fix."""

    row: dict | None
    reason: str = ""

    @property
    def id(self) -> str | None:
        return self.row["id"] if self.row else None

    @property
    def gguf(self) -> Path | None:
        return Path(self.row["gguf"]) if self.row else None


def adapter_for(settings=None, conn: sqlite3.Connection | None = None) -> Choice:
    """The current adapter when it can serve `settings.model` (trained for that base, GGUF on disk), else
    why not. Draft, eval, serve, retune and the TUI all ask here, so none of them can load an adapter
    trained for another base model."""
    from .. import config
    from ..errors import PanzaError

    settings = settings or config.load()
    try:
        cur = current(conn)
    except PanzaError as exc:
        return Choice(None, f"adapter not used ({exc.message}): drafting with the stock model")
    if not cur:
        return Choice(None, "no adapter in use: drafting with the stock model "
                            "(train one with `panza train`, or pick one with `panza adapters use ID`)")
    base = cur.get("base_model")
    if base and base != settings.model:
        return Choice(None, f"the current adapter was trained for {base}, not {settings.model}: "
                            "drafting with the stock model")
    if not Path(cur["gguf"]).exists():
        return Choice(None, f"adapter {cur['id']} has no GGUF export: drafting with the stock model "
                            f"(fix: panza adapters export {cur['id']} --format gguf)")
    return Choice(cur)


def use(adapter_id: str | None, conn: sqlite3.Connection | None = None) -> dict | None:
    """Serve adapter `adapter_id` from now on (atomic switch); None or 'none' serves the base model."""
    link = adapters_dir() / CURRENT
    if adapter_id in (None, "", "none", "base"):
        link.unlink(missing_ok=True)
        return None
    row = get(adapter_id, conn)
    if row["status"] != "ready":
        raise AdapterError(f"adapter {row['id']} is {row['status']}, not ready", fix="run `panza train` to finish it")
    if not Path(row["gguf"]).exists():
        raise AdapterError(f"{row['gguf']} is missing", fix=f"`panza adapters rm {row['id']}` and train again")
    paths.atomic_symlink(row["id"], link)  # relative target: the home may move
    row["current"] = True
    _serving_copy(row)
    return row


def _serving_copy(row: dict) -> None:
    """Build the newly served adapter's serving copy now (serving.py), so the next draft does not wait for
    it (a re-tune does this in the background). The copies of the previously served adapter stay (switching
    back costs nothing), older ones are deleted."""
    from .. import catalogue, config, serving
    from ..errors import PanzaError

    settings = config.load()
    if settings.merge_adapter and not settings.gpu_layers and not settings.engine_url \
            and row.get("base_model") == settings.model:
        try:
            serving.resolve(catalogue.resolve(settings.model), row["gguf"])
        except PanzaError as exc:  # the base is gone: drafts say so with its fix; nothing to build
            import logging

            logging.getLogger(__name__).debug("no serving copy: %s", exc.message)
    serving.keep_latest([d for d in adapters_dir().iterdir() if d.name != CURRENT and d.is_dir()],
                        served=Path(row["path"]))


def rm(adapter_id: str, conn: sqlite3.Connection | None = None) -> dict:
    """Delete an adapter's row and folder; removing the served one switches drafts to the base model."""
    row = get(adapter_id, conn)
    if current_id() == row["id"]:
        use(None)
    c, own = _conn(conn)
    try:
        c.execute("DELETE FROM adapters WHERE id = ?", (row["id"],))
    finally:
        if own:
            c.close()
    shutil.rmtree(row["path"], ignore_errors=True)
    return row


def export(adapter_id: str, fmt: str, out: str | Path | None = None, conn: sqlite3.Connection | None = None) -> Path:
    """Copy an adapter out as `gguf` (one file), `peft` (a folder) or `ollama` (Modelfile + adapter.gguf)."""
    from . import export as ex

    row = get(adapter_id, conn)
    if fmt == "gguf":
        target = Path(out or f"{row['id']}.gguf")
        shutil.copyfile(row["gguf"], target)
        return target
    if fmt == "peft":
        target = Path(out or f"{row['id']}-peft")
        shutil.copytree(row["peft"], target, dirs_exist_ok=True)
        return target
    if fmt == "ollama":
        target = paths.ensure_dir(Path(out or f"{row['id']}-ollama"))
        shutil.copyfile(row["gguf"], target / "adapter.gguf")
        base = (row.get("config") or {}).get("base_path")
        if not base or not Path(base).exists():
            from .. import catalogue

            base = str(catalogue.resolve(row["base_model"]))
        return ex.write_modelfile(base, target / "adapter.gguf", target / "Modelfile")
    raise AdapterError(f"unknown export format {fmt!r}", fix="use --format gguf, peft or ollama")
