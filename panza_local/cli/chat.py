"""`panza chat`: the Textual app (also what bare `panza` opens)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("chat", help="open the terminal app: chat, draft in your voice, pipeline status")
    p.add_argument("--no-rag", action="store_true", help="do not retrieve past emails as context")
    p.add_argument("--max-tokens", type=int, default=None, help="longest reply or draft, in tokens")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    if not sys.stdout.isatty():
        from ..errors import PanzaError

        raise PanzaError("`panza chat` needs an interactive terminal",
                         fix='use `panza draft "INSTRUCTION"` in scripts and pipes')
    from ..tui import run as run_app

    run_app(use_rag=not args.no_rag, max_tokens=args.max_tokens)
    return 0
