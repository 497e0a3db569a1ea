"""`panza search QUERY`: what the retrieval index returns for a query (the examples drafts would see)."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("search", help="search your indexed mail and documents")
    p.add_argument("query")
    p.add_argument("--k", type=int, default=5, help="number of hits (default 5)")
    p.add_argument("--kind", action="append", choices=["sent", "thread", "doc"],
                   help="item kinds to search (repeatable; default: all)")
    p.add_argument("--before", help="only items dated before this ISO date (e.g. 2001-05-01)")
    p.add_argument("--to", help="put past mail to (or from) this address first")
    p.add_argument("--min-score", type=float, help="drop hits under this cosine similarity")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import store
    from ..errors import ConfigError
    from ..retrieval import index

    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}", fix="panza search QUERY --k 5")
    conn = store.connect()
    try:
        hits = index.search(args.query, k=args.k, kinds=tuple(args.kind or index.KINDS), before=args.before,
                            min_score=args.min_score, to=args.to, conn=conn)
    except ValueError as exc:
        raise ConfigError(str(exc), fix="give --before as an ISO 8601 date, e.g. 2001-05-01") from None
    finally:
        conn.close()
    emit(args, {"query": args.query, "hits": [h.public() for h in hits]}, _human)
    return 0


def _human(data: dict) -> None:
    if not data["hits"]:
        print("no hits")
    for i, h in enumerate(data["hits"], 1):
        where = h["cite"] or (h["date"] or "undated")[:10]
        print(f"{i}. [{h['kind']}] {h['score']:.3f}  {where}  {h['subject']}")
        print(f"   {h['snippet']}")
