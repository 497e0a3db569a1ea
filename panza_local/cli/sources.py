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
    from .. import store
    from ..ingest import sources

    with store.connect() as conn:
        out = sources.register(conn, args.sources)
    emit(args, {"added": out}, lambda d: [print(f"registered {r['kind']:12} {r['uri']}") for r in d["added"]]
         and print("read them now with: panza ingest"))
    return 0


def list_cmd(args) -> int:
    from .. import store
    from ..ingest import sources

    with store.connect() as conn:
        data = {"sources": sources.list_(conn)}

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
    from .. import store
    from ..ingest import sources

    with store.connect() as conn:
        data = sources.remove(conn, args.source)
    emit(args, data, lambda x: print(f"removed {x['removed']}: {x['messages_deleted']} messages and "
                                     f"{x['documents_deleted']} documents marked deleted "
                                     "(`panza index` drops them from the index)"))
    return 0
