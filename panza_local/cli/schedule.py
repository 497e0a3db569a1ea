"""`panza schedule install|remove|status`."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("schedule", help="run `panza retune` periodically (systemd timer, launchd or cron)")
    p.add_argument("action", choices=["install", "remove", "status"])
    p.add_argument("--every", type=int, default=60, help="minutes between passes (default 60)")
    p.add_argument("--also-on-battery", action="store_true", help="run on battery power too")
    p.add_argument("--only-when-idle", action="store_true", help="skip a pass while the machine is busy")
    p.add_argument("--backend", choices=["systemd", "launchd", "cron"], help="default: what this OS uses")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import schedule

    if args.action == "install":
        out = schedule.install(args.every, only_on_ac=not args.also_on_battery, kind=args.backend,
                               only_when_idle=args.only_when_idle)
    elif args.action == "remove":
        out = schedule.remove(args.backend)
    else:
        out = schedule.status(args.backend)
    emit(args, out)
    return 0
