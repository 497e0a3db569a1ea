"""`panza playback`: write the instruction behind every email you sent; `panza playback export DIR`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._out import add_json, emit, progress

if TYPE_CHECKING:
    from ..results import PlaybackResult


def register(sub) -> None:
    p = sub.add_parser("playback", help="turn every email you wrote into an (instruction → email) training pair")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="generate at most N new pairs (a quick try)")
    p.add_argument("--model", default=None, metavar="NAME", help="chat model that writes the instructions "
                   "(catalogue name; default: the active model)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="emails generated together in one model context (default 8; 1 = one at a time)")
    add_json(p)
    p.set_defaults(func=run)
    inner = p.add_subparsers(dest="playback_command", metavar="")
    e = inner.add_parser("export", help="write train/valid/test chat JSONL (chronological split) into DIR")
    e.add_argument("dir", metavar="DIR")
    add_json(e)
    e.set_defaults(func=export)


def run(args) -> int:
    from .. import playback, store

    if args.limit is not None and args.limit < 0:
        from ..errors import ConfigError

        raise ConfigError(f"--limit must be 0 or more, got {args.limit}", fix="panza playback --limit 20")
    if args.parallel is not None and args.parallel < 1:
        from ..errors import ConfigError

        raise ConfigError(f"--parallel must be 1 or more, got {args.parallel}", fix="panza playback --parallel 8")
    conn = store.connect()
    try:
        with progress("playback", enabled=not args.json) as update:
            out = playback.run(conn, limit=args.limit, model=args.model, on_progress=update,
                               parallel=args.parallel)
    finally:
        conn.close()
    emit(args, out, _human)
    return 0


def _human(s: PlaybackResult) -> None:
    how = f", {s.parallel} at a time" if s.batched else ""
    print(f"generated {s.generated} (model {s.model}, extractive fallback {s.fallback}{how}), "
          f"reused {s.reused}, failed {s.failed}")
    if s.fail_reasons:
        print("failed: " + ", ".join(f"{k} {v}" for k, v in s.fail_reasons.items()))
    if s.recall_at_1 is not None:
        print(f"quality over {s.pairs} pairs: recall@1 {s.recall_at_1:.3f} (target ≥ 0.8), "
              f"median copy ratio {s.copy_ratio_median:.3f} (target ≤ 0.3)")
    left = s.todo_total - s.generated - s.failed
    if left > 0:
        print(f"{left} emails still have no instruction: run `panza playback` again to continue")


def export(args) -> int:
    from .. import playback, store

    conn = store.connect()
    try:
        out = playback.export(conn, args.dir)
    finally:
        conn.close()
    emit(args, out, lambda s: print(f"wrote {s['train']} train, {s['valid']} valid, {s['test']} test "
                                    f"examples to {s['dir']} (data hash {s['data_hash']})"))
    return 0
