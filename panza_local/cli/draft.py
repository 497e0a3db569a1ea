"""`panza draft "INSTRUCTION"`: write an email in the user's voice (streams; text, eml or json)."""

from __future__ import annotations

import json
import re
import sys

from ._out import console as _console


def register(sub) -> None:
    p = sub.add_parser("draft", help="draft an email in your voice",
                       description="Draft an email. INSTRUCTION '-' reads it from stdin; lines quoted with '>' "
                                   "there are the email being answered (so mail clients can pipe a reply).")
    p.add_argument("instruction", help="what the email should say, or - for stdin")
    p.add_argument("--to", help="recipient (past mail to them is retrieved first)")
    p.add_argument("--subject")
    p.add_argument("--reply-to", metavar="FILE.eml|MESSAGE-ID", help="the email this draft answers")
    p.add_argument("--format", choices=["text", "eml", "json"], default="text")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument("--save-draft", metavar="maildir:PATH|imap|imaps://USER@HOST/Drafts",
                   help="also store the draft in a Maildir drafts folder or the IMAP Drafts mailbox")
    p.add_argument("--from", dest="sender", metavar="ADDRESS", help="From: of eml/saved drafts (default: settings.me)")
    p.add_argument("--no-rag", action="store_true", help="no past emails in the prompt")
    p.add_argument("--no-adapter", action="store_true", help="the stock model, without your adapter")
    p.add_argument("--n", type=int, default=1, help="number of alternatives (default 1)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("-q", "--quiet", action="store_true", help="no notes on stderr (for mail-client filters)")
    p.set_defaults(func=run)


def console(quiet: bool = False):
    """stderr console for notes; a silent one with --quiet (mail clients show stderr over their screen).
    Made on its first print: rich takes ~0.1 s to import, and most drafts print no note."""
    return _LazyConsole(quiet)


class _LazyConsole:
    def __init__(self, quiet: bool):
        self.quiet, self._c = quiet, None

    def print(self, *args, **kwargs) -> None:
        if self._c is None:
            self._c = _console()
            self._c.quiet = self.quiet
        self._c.print(*args, **kwargs)


class TermWrap:
    """Streamed text wrapped at word boundaries for a terminal of `width` columns (a draft's paragraphs are
    one line each, for the mail client to wrap; a terminal would cut their words at its edge). A word is held
    until it ends, to know whether it fits. width 0: the text as it comes (stdout is a pipe or a file)."""

    def __init__(self, width: int = 0):
        self.width, self._col, self._word, self._space = width, 0, "", ""

    @classmethod
    def for_stdout(cls) -> TermWrap:
        import shutil

        return cls(min(shutil.get_terminal_size((80, 24)).columns, 100) - 1 if sys.stdout.isatty() else 0)

    def feed(self, text: str) -> str:
        if not self.width:
            return text
        out = []
        for ch in text:
            if ch == "\n":
                out.append(self._flush() + "\n")
                self._col, self._space = 0, ""
            elif ch.isspace():
                out.append(self._flush())
                self._space += ch
            else:
                self._word += ch
        return "".join(out)

    def _flush(self) -> str:
        word, space, self._word = self._word, self._space, ""
        if not word:
            return ""
        self._space = ""
        if self._col and self._col + len(space) + len(word) > self.width:
            self._col = len(word)
            return "\n" + word
        self._col += len(space) + len(word)
        return space + word

    def close(self) -> str:
        return self._flush() if self.width else ""


def split_stdin(text: str) -> tuple[str, str | None]:
    """(instruction, quoted email) from piped text: '>' lines are the email answered, the rest the ask."""
    own, quoted = [], []
    for line in text.splitlines():
        if line.lstrip().startswith(">"):
            quoted.append(re.sub(r"^\s*>\s?", "", line))
        else:
            own.append(line)
    # drop the "On <date>, <name> wrote:" attribution line mail clients put above the quote
    own = [ln for ln in own if not re.match(r"^\s*(on .{0,200} wrote|.{0,80} schrieb|le .{0,200} a écrit)\s*:\s*$",
                                            ln, re.IGNORECASE)]
    return "\n".join(own).strip(), ("\n".join(quoted).strip() or None)


def run(args) -> int:
    from .. import config, draft, engine
    from ..errors import PanzaError

    if args.n < 1 or args.n > 10:
        raise PanzaError("--n must be between 1 and 10", fix="panza draft ... --n 3")
    if args.save_draft and not args.save_draft.startswith(("maildir:", "imap")):
        raise PanzaError(f"unknown --save-draft target {args.save_draft!r}",
                         fix="use maildir:PATH (e.g. maildir:~/Mail/Drafts), imap (the registered account) "
                             "or imaps://USER@HOST/Drafts")
    instruction, reply = args.instruction, args.reply_to
    if instruction == "-":
        instruction, quoted = split_stdin(sys.stdin.read())
        if quoted and not reply:
            reply = draft.Reply(body=quoted)
    if not instruction.strip():
        raise PanzaError("the instruction is empty", fix='panza draft "ask Anna to move Friday\'s call to 3pm"')
    settings = config.load({"seed": args.seed, "max_tokens": args.max_tokens, "temperature": args.temperature})
    engine.preload(settings, adapter=not args.no_adapter)  # loads while retrieval and the prompt are prepared
    kw = {"to": args.to, "subject": args.subject, "reply_to": reply, "use_rag": not args.no_rag,
          "use_adapter": not args.no_adapter, "settings": settings}
    err = console(quiet=args.quiet)
    if args.n > 1:
        drafts = draft.alternatives(instruction, n=args.n, **kw)
    elif args.format == "text":
        plan = draft.prepare(instruction, **kw)
        for note in plan.notices:
            err.print(f"[dim]note: {note}[/]")
        wrap = TermWrap.for_stdout()
        for piece in draft.stream(plan):
            sys.stdout.write(wrap.feed(piece))
            sys.stdout.flush()
        sys.stdout.write(wrap.close() + "\n")
        drafts = [draft.finish(plan)]
        if drafts[0].copied:
            err.print("[yellow]warning: this draft repeats a past email word for word; "
                      "run it again or use --no-rag[/]")
    else:
        drafts = [draft.draft(instruction, **kw)]
    if args.n > 1 or args.format != "text":
        for note in drafts[0].notices:
            err.print(f"[dim]note: {note}[/]")
        _print(args, drafts, settings)
    if args.save_draft:
        for d in drafts:
            err.print(f"saved draft: {_save(d, args.save_draft, args.sender, settings)}")
    return 0


def _print(args, drafts, settings) -> None:
    from .. import outbox

    if args.format == "json":
        obj = drafts[0].to_dict()
        if len(drafts) > 1:
            obj["alternatives"] = [d.to_dict() for d in drafts]
        print(json.dumps(obj, indent=2, ensure_ascii=False))
    elif args.format == "eml":
        for d in drafts:
            sys.stdout.buffer.write(outbox.to_eml(d, args.sender, settings=settings))
            sys.stdout.flush()
    else:
        for i, d in enumerate(drafts, 1):
            if len(drafts) > 1:
                print(f"--- alternative {i} ---")
            wrap = TermWrap.for_stdout()
            print(wrap.feed(d.text) + wrap.close())


def _save(d, target: str, sender: str | None, settings) -> str:
    from .. import outbox
    from ..errors import PanzaError

    if target.startswith("maildir:"):
        return str(outbox.save_maildir(d, target[len("maildir:"):], sender, settings=settings))
    if target.startswith(("imap", "imaps")):
        box = outbox.save_imap(d, target, sender=sender, settings=settings)
        return f"IMAP mailbox {box}"
    raise PanzaError(f"unknown --save-draft target {target!r}",
                     fix="use maildir:PATH (e.g. maildir:~/Mail/Drafts), imap (the registered account) "
                         "or imaps://USER@HOST/Drafts")
