"""`panza quickstart`: the whole pipeline on a bundled sample mailbox, then stock vs adapter drafts."""

from __future__ import annotations

from ._out import add_json, emit, progress


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="run the whole pipeline on a sample mailbox, then compare drafts")
    p.add_argument("--limit", type=int, default=None,
                   help="play back at most N emails (default: all of them, as training needs)")
    p.add_argument("--preset", default="quick", choices=["quick", "standard", "thorough"])
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the quickstart's budget)")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import quickstart, sample

    quiet = args.json

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    say("panza quickstart: a fictional person's mailbox → ingest → playback → index → train → drafts\n")
    overrides = {"max_steps": args.steps} if args.steps else None
    out = quickstart.run(lambda desc: progress(desc, enabled=not quiet), say, limit=args.limit, preset=args.preset,
                         train_overrides=overrides)
    if quiet:
        emit(args, out)
    else:
        show(out["compare"], sample.SAMPLE_NAME.split()[0])
        print(f"\n(adapter: {out['draft']['adapter'] or 'none'}; the sample person's data: {out['home']})")
        print("next: `panza ingest YOUR_MAILBOX --me you@example.com`, then `panza retune`, `panza chat`")
    return 0 if out["draft"]["text"].strip() else 1


def show(rows: list[dict], who: str) -> None:
    """The drafts side by side: the stock model's, then the adapter's (with retrieval), per instruction."""
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    for row in rows:
        table = Table(title=f"{row['instruction']}  (to {row['to']})", title_justify="left", expand=True,
                      show_lines=False)
        table.add_column("stock model", ratio=1)
        table.add_column(f"{who}'s adapter + her past emails", ratio=1)
        table.add_row(row["stock"] or "(no usable email)", row["adapter"] or "(no usable email)")
        con.print(table)
