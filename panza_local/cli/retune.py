"""`panza retune [--watch] [--json]` and `panza retune log`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("retune", help="learn from new mail: ingest → playback → index → train → promote if better")
    p.add_argument("action", nargs="?", choices=["log"], help="`log`: show the history of passes")
    p.add_argument("--watch", action="store_true", help="keep running; start a pass when new mail settles")
    p.add_argument("--force", action="store_true", help="train even if little is new")
    p.add_argument("--nice", action="store_true", help="low CPU/IO priority and half the threads (scheduler)")
    p.add_argument("--only-on-ac", action="store_true", help="do nothing while on battery")
    p.add_argument("--only-when-idle", action="store_true", help="do nothing while the machine is busy")
    p.add_argument("--debounce", type=float, default=30.0, help="--watch: seconds of quiet before a pass")
    p.add_argument("--poll", type=float, default=300.0, help="--watch: seconds between IMAP polls")
    p.add_argument("--min-interval", type=float, default=None,
                   help="--watch: seconds between passes (default: retune_interval_min)")
    p.add_argument("--limit", type=int, default=20, help="log: passes to show")
    add_json(p)
    p.set_defaults(func=run)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _human_log(rows: list[dict]) -> None:
    if not rows:
        print("no re-tune passes yet: run `panza retune`")
    for r in rows:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in (r.get("steps") or {}).items()) or "-"
        print(f"#{r['id']} {r['started_at']} {r['status']:<8} {r.get('seconds', '-')} s  "
              f"new: {r.get('new_messages', '-')} messages, {r.get('new_pairs', '-')} pairs")
        print(f"    steps: {steps}")
        if r.get("trained"):
            print(f"    trained {r.get('adapter_id')} ({r.get('mode_why', r.get('mode', ''))}); held-out loss "
                  f"new {_fmt(r.get('score_new'))} vs {r.get('compared_with', 'current')} "
                  f"{_fmt(r.get('score_current'))} on {r.get('n_test', '?')} pairs")
        verdict = "promoted" if r.get("promoted") else "not promoted"
        print(f"    {verdict}: {r.get('reason') or ('interrupted' if r['status'] != 'done' else 'nothing new')}")


def run(args) -> int:
    from .. import retune, schedule

    if args.action == "log":
        emit(args, retune.history(args.limit), _human_log)
        return 0
    skip = "on battery" if args.only_on_ac and schedule.on_battery() else None
    skip = skip or (args.only_when_idle and schedule.busy_machine())
    if skip:
        from ..results import RetuneResult

        emit(args, RetuneResult(reason=f"{skip}: skipped", seconds=0))
        return 0
    if args.nice:
        from ..engine import physical_cores

        schedule.low_priority(threads=max(1, physical_cores() // 2))
    say = (lambda s: None) if args.json else print
    if args.watch:
        retune.watch(debounce_s=args.debounce, poll_s=args.poll, min_interval_s=args.min_interval, say=say)
        return 0
    with stage_view(enabled=not args.json) as on_stage:
        out = retune.run_once(force=args.force, say=say, on_stage=on_stage)
    emit(args, out, lambda r: print(f"done in {r.seconds} s: {r.reason or 'nothing new'}"))
    return 0


@contextlib.contextmanager
def stage_view(enabled: bool = True) -> Iterator[Callable[[dict], None]]:
    """One rich progress view of a pass: a line per stage (ingest ... promote) with its counts, its ETA and a
    note; yields the `on_stage` callback of `retune.run_once`. Quiet when disabled or not a TTY."""
    import sys

    if not enabled or not sys.stderr.isatty():
        yield lambda event: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..retune import STAGES
    from ._out import console

    with Progress(TextColumn("{task.fields[mark]} [bold]{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console()) as bar:
        tasks = {s: bar.add_task(s, total=1, completed=0, mark="·", note="[dim]waiting[/]") for s in STAGES}

        def on_stage(ev: dict) -> None:
            t, state = tasks[ev["stage"]], ev["state"]
            if state == "running":
                bar.update(t, total=ev["total"], completed=ev["done"], mark="▶", note=ev["note"])
            elif state == "done":
                total = ev["total"] or ev["done"] or 1
                bar.update(t, total=total, completed=total, mark="✓", note=ev["note"])
            else:
                bar.update(t, total=1, completed=1, mark="–", note=f"[dim]skipped: {ev['note']}[/]")

        yield on_stage
