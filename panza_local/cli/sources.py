"""`panza sources add|list|remove`: the sources `panza ingest` (no argument) and `panza retune` re-read."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("sources", help="register, list or remove the mail and document sources panza re-reads")
    sp = p.add_subparsers(dest="sources_cmd", metavar="ACTION", required=True)
    add = sp.add_parser("add", help="register sources (read them with `panza ingest`)")
    add.add_argument("sources", nargs="+", metavar="SOURCE")
    add_json(add)
    add.set_defaults(func=add_cmd)
    ls = sp.add_parser("list", help="every known source, its kind, last sync and message counts")
    add_json(ls)
    ls.set_defaults(func=list_cmd)
    rm = sp.add_parser("remove", help="unregister a source and mark its messages and documents deleted")
    rm.add_argument("source", help="the path or URI as `panza sources list` shows it, or its id")
    add_json(rm)
    rm.set_defaults(func=remove_cmd)


def add_cmd(args) -> int:
    from pathlib import Path

    from .. import imap, store
    from ..ingest import detect, source_row

    out = []
    with store.connect() as conn:
        for src in args.sources:
            remote = imap.is_uri(src)
            uri = str(src) if remote else str(Path(src).expanduser().resolve())
            if remote:
                imap.parse_uri(uri)  # refuses a URI with a password before it is stored anywhere
            kind = detect(uri if remote else Path(uri))
            sid = source_row(conn, uri, kind, register=True)
            out.append({"id": sid, "uri": uri, "kind": kind})
    emit(args, {"added": out}, lambda d: [print(f"registered {r['kind']:12} {r['uri']}") for r in d["added"]]
         and print("read them now with: panza ingest"))
    return 0


def list_sources(conn) -> list[dict]:
    """Every source with its message/document counts."""
    rows = conn.execute(
        "SELECT s.id, s.uri, s.kind, s.registered, s.last_sync, "
        "(SELECT count(*) FROM messages m WHERE m.source_id = s.id AND m.deleted = 0) AS messages, "
        "(SELECT count(*) FROM messages m WHERE m.source_id = s.id AND m.deleted = 0 AND m.is_mine = 1) AS mine, "
        "(SELECT count(*) FROM documents d WHERE d.source_id = s.id AND d.deleted = 0) AS documents "
        "FROM sources s ORDER BY s.id").fetchall()
    return [dict(r) for r in rows]


def list_cmd(args) -> int:
    from .. import store

    with store.connect() as conn:
        data = {"sources": list_sources(conn)}

    def human(d):
        if not d["sources"]:
            print("no sources yet: panza sources add PATH  (or panza ingest PATH)")
        for r in d["sources"]:
            flag = "registered" if r["registered"] else "one-off   "
            print(f"{r['id']:3} {flag} {r['kind']:11} {r['messages']:6} msgs ({r['mine']} yours) "
                  f"{r['documents']:4} docs  last sync {r['last_sync'] or 'never'}  {r['uri']}")

    emit(args, data, human)
    return 0


def remove_cmd(args) -> int:
    from pathlib import Path

    from .. import store
    from ..errors import SourceError

    with store.connect() as conn:
        key = args.source
        row = None
        if key.isdigit():
            row = conn.execute("SELECT id, uri FROM sources WHERE id = ?", (int(key),)).fetchone()
        if row is None:
            uri = key if key.startswith(("imap://", "imaps://")) else str(Path(key).expanduser().resolve())
            row = conn.execute("SELECT id, uri FROM sources WHERE uri = ? OR uri = ?", (key, uri)).fetchone()
        if row is None:
            raise SourceError(f"no source {key!r}", fix="see `panza sources list` for ids and paths")
        with store.transaction(conn):
            m = conn.execute("UPDATE messages SET deleted = 1 WHERE source_id = ? AND deleted = 0", (row["id"],)).rowcount
            d = conn.execute("UPDATE documents SET deleted = 1 WHERE source_id = ? AND deleted = 0",
                             (row["id"],)).rowcount
            conn.execute("DELETE FROM source_files WHERE source_id = ?", (row["id"],))
            conn.execute("UPDATE sources SET registered = 0, cursor = NULL WHERE id = ?", (row["id"],))
    data = {"removed": row["uri"], "messages_deleted": m, "documents_deleted": d}
    emit(args, data, lambda x: print(f"removed {x['removed']}: {m} messages and {d} documents marked deleted "
                                     "(`panza index` drops them from the index)"))
    return 0
