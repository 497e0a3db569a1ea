"""`panza messages list|show|export`: what ingest stored (your mail by default, `--all` for everyone's)."""

from __future__ import annotations

import json
import sys

from ._out import add_json, emit

EXPORT_KEYS = ("id", "date", "from", "to", "subject", "body", "thread", "source", "language")


def register(sub) -> None:
    p = sub.add_parser("messages", help="list, show or export ingested messages")
    sp = p.add_subparsers(dest="messages_cmd", metavar="ACTION", required=True)
    ls = sp.add_parser("list", help="newest first: id, date, from, subject")
    ls.add_argument("--all", action="store_true", help="include other people's mail (thread context)")
    ls.add_argument("--limit", type=int, default=50)
    add_json(ls)
    ls.set_defaults(func=list_cmd)
    sh = sp.add_parser("show", help="one message: headers, cleaned body and the quoted thread")
    sh.add_argument("id", type=int)
    add_json(sh)
    sh.set_defaults(func=show_cmd)
    ex = sp.add_parser("export", help="JSONL, one object per message (id, date, from, to, subject, body, "
                                      "thread, source, language); FILE - is stdout")
    ex.add_argument("file")
    ex.add_argument("--all", action="store_true", help="include other people's mail")
    ex.set_defaults(func=export_cmd)


def list_cmd(args) -> int:
    from .. import store
    from ..ingest import messages

    with store.connect() as conn:
        rows = list(messages.newest(conn, args.all, args.limit))

    def human(d):
        for r in d["messages"]:
            mark = "*" if r["is_mine"] else " "
            print(f"{r['id']:6} {mark} {(r['date'] or '')[:10]:10} {(r['from'] or '-')[:28]:28} {(r['subject'] or '')[:60]}")
        if not d["messages"]:
            print("no messages yet: panza ingest PATH --me you@example.com")

    emit(args, {"messages": [{k: r[k] for k in ("id", "date", "from", "subject", "is_mine")} for r in rows]}, human)
    return 0


def show_cmd(args) -> int:
    from .. import store
    from ..ingest import messages

    with store.connect() as conn:
        rec = messages.get(conn, args.id)

    def human(r):
        print(f"id       {r['id']}{'  (yours)' if r['is_mine'] else ''}")
        print(f"date     {r['date']}\nfrom     {r['from']}\nto       {', '.join(r['to'])}")
        print(f"subject  {r['subject']}\nsource   {r['source']}\nlanguage {r['language']}\n")
        print(r["body"])
        if r["thread"]:
            print("\n--- quoted thread ---\n" + r["thread"])

    emit(args, rec, human)
    return 0


def export_cmd(args) -> int:
    from pathlib import Path

    from .. import paths, store
    from ..ingest import messages

    n = 0
    with store.connect() as conn:
        lines = (json.dumps({k: r[k] for k in EXPORT_KEYS}, ensure_ascii=False)
                 for r in messages.newest(conn, args.all))
        if args.file == "-":  # streamed: `panza messages export - | head` reads the first lines at once
            for line in lines:
                sys.stdout.write(line + "\n")
                n += 1
        else:
            lines = list(lines)
            n = len(lines)
            paths.write_private(Path(args.file), "\n".join(lines) + ("\n" if lines else ""))
    if args.file != "-":
        print(f"exported {n} messages to {args.file}", file=sys.stderr)
    return 0
