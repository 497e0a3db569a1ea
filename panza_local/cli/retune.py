"""`panza retune [--watch] [--json]` and `panza retune log`."""

from __future__ import annotations

from ._out import add_json, emit, progress


def register(sub) -> None:
    p = sub.add_parser("retune", help="learn from new mail: ingest → playback → index → train → promote if better")
    p.add_argument("action", nargs="?", choices=["log"], help="`log`: show the history of passes")
    p.add_argument("--watch", action="store_true", help="keep running; start a pass when new mail settles")
    p.add_argument("--force", action="store_true", help="train even if little is new")
    p.add_argument("--nice", action="store_true", help="low CPU/IO priority and half the threads (scheduler)")
    p.add_argument("--only-on-ac", action="store_true", help="do nothing while on battery")
    p.add_argument("--debounce", type=float, default=30.0, help="--watch: seconds of quiet before a pass")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import retune, schedule

    if args.action == "log":
        rows = retune.history()

        def human(rows):
            if not rows:
                print("no re-tune passes yet: run `panza retune`")
            for r in rows:
                print(f"#{r['id']} {r['started_at']} {r['status']:11} new msgs {r.get('new_messages', '-')}, "
                      f"new pairs {r.get('new_pairs', '-')}, trained {r.get('trained', '-')}, "
                      f"promoted {r.get('promoted', '-')}, {r.get('seconds', '-')} s  {r.get('reason', '')}")

        emit(args, rows, human)
        return 0
    if args.only_on_ac and schedule.on_battery():
        emit(args, {"new_messages": 0, "new_pairs": 0, "trained": False, "promoted": False,
                    "reason": "on battery: skipped", "seconds": 0})
        return 0
    if args.nice:
        from ..engine import physical_cores

        schedule.low_priority(threads=max(1, physical_cores() // 2))
    say = (lambda s: None) if args.json else print
    if args.watch:
        retune.watch(debounce_s=args.debounce, say=say)
        return 0
    with progress("retune", enabled=not args.json) as cb:
        out = retune.run_once(force=args.force, say=say, on_progress=cb)
    emit(args, out, lambda d: print(f"done in {d['seconds']} s: {d['reason'] or 'nothing new'}"))
    return 0
