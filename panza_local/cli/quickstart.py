"""`panza quickstart`: the whole pipeline on a bundled sample mailbox, then one draft."""

from __future__ import annotations

from ._out import add_json, emit, progress


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="run the whole pipeline on a sample mailbox, then draft one email")
    p.add_argument("--limit", type=int, default=24, help="emails to play back (default 24: a few minutes on a laptop)")
    p.add_argument("--preset", default="quick", choices=["quick", "standard", "thorough"])
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import quickstart

    quiet = args.json

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    say("panza quickstart: a fictional person's mailbox → ingest → playback → index → train → draft\n")
    out = quickstart.run(lambda desc: progress(desc, enabled=not quiet), say, limit=args.limit, preset=args.preset)
    if quiet:
        emit(args, out)
    else:
        print(out["draft"]["text"].strip())
        print(f"\n(adapter: {out['draft']['adapter'] or 'none'}; the sample person's data: {out['home']})")
        print("next: `panza ingest YOUR_MAILBOX --me you@example.com`, then `panza retune`, `panza chat`")
    return 0 if out["draft"]["text"].strip() else 1
