"""`panza eval`: score drafts against held-out emails in four configurations, over several seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._out import add_json, console, emit, progress

if TYPE_CHECKING:
    from ..results import EvalResult


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure how much the drafts read like you (BLEU, ROUGE, MAUVE, BERTScore, style)")
    add_json(p)
    p.add_argument("--report", metavar="DIR", help="write a Markdown report with plots into DIR")
    p.add_argument("--data", metavar="FILE.jsonl",
                   help="evaluate on a cleaned corpus (Panza's JSONL: {\"email\", \"subject\"?, \"summary\"?}) "
                        "instead of the held-out split of your own mail")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="held-out emails to draft (default 20; 0 = all). Time grows as N x seeds x configs")
    p.add_argument("--seeds", type=int, default=3, metavar="K", help="sampling seeds per email (default 3)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="longest draft in tokens (default: twice the 90th-percentile length of the emails tested)")
    p.add_argument("--configs", default="stock,stock+rag,adapter,adapter+rag", metavar="LIST",
                   help="comma-separated subset of stock, stock+rag, adapter, adapter+rag")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import evaluate
    from ..errors import PanzaError

    if args.seeds < 1 or args.limit < 0:
        raise PanzaError("--seeds must be at least 1 and --limit 0 or more",
                         fix="e.g. panza eval --limit 20 --seeds 3")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    with progress("evaluating", enabled=not args.json) as update:
        result = evaluate.run(data=args.data, limit=args.limit or None, seeds=args.seeds, configs=configs,
                              report=args.report, on_progress=update, max_tokens=args.max_tokens)
    emit(args, result, _human)
    return 0


def _human(r: EvalResult) -> None:
    from ..evaluate.report import markdown_table

    table = r.to_dict()
    print(f"{r.n} held-out emails x {r.seeds} seeds ({r.data}); adapter: {r.adapter or 'none'}")
    print(markdown_table(table))
    print(markdown_table(table, ("length_words", "greeting_match", "signoff_match", "vocab_overlap")))
    out = console()
    for c, why in r.skipped.items():
        out.print(f"[yellow]{c} not run:[/] {why}")
    for note in r.notes:
        out.print(f"[dim]note:[/] {note}")
    if r.report:
        print(f"report: {r.report}")
