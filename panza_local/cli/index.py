"""`panza index`: bring the retrieval index in step with the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._out import add_json, console, emit, progress

if TYPE_CHECKING:
    from ..results import IndexResult


def register(sub) -> None:
    p = sub.add_parser("index", help="embed new mail and documents into the retrieval index, drop deleted ones")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import store
    from ..retrieval import index

    conn = store.connect()
    try:
        with store.run(conn, "index") as summary, progress("indexing", enabled=not args.json) as update:
            result = index.sync(conn, on_progress=update)
            summary.update(result.to_dict())
    finally:
        conn.close()
    if result.notice:
        console().print(f"[yellow]notice:[/] {result.notice}")
    emit(args, result, _human)
    return 0


def _human(s: IndexResult) -> None:
    print(f"embedded {s.embedded}, removed {s.removed}, unchanged {s.unchanged}; "
          f"{s.total} items in the index ({s.model}, {s.seconds} s)")
    if s.skipped:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in s.skipped.items()))
    if s.failed:
        print(f"failed: {s.failed} (run `panza index` again to retry them)")
        for e in s.errors[:10]:
            print(f"  {e['id']}: {e['reason']}")
