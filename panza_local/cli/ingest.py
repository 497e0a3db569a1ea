"""`panza ingest SOURCE... [--me ADDRESS...] [--json]`: mail and documents into the store, incrementally."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._out import add_json, emit, progress

if TYPE_CHECKING:
    from ..results import IngestResult


def register(sub) -> None:
    p = sub.add_parser("ingest", help="read mail (mbox, Maildir, .eml, .emlx, Takeout, Thunderbird, JSONL, IMAP) "
                                      "and documents; re-running reads only what changed")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="paths or imap://user@host/MAILBOX; none: every registered source (`panza sources add`)")
    p.add_argument("--me", action="append", metavar="ADDRESS",
                   help="one of your addresses (repeatable); saved as the `me` setting")
    p.add_argument("--only-mine", action="store_true", help="skip other people's mail instead of keeping it as context")
    p.add_argument("--language", action="append", metavar="CODE",
                   help="keep only messages in this language (ISO 639-1, repeatable); default: keep all")
    p.add_argument("--register", action="store_true", help="also register the sources for `panza retune`")
    p.add_argument("--guess-me", action="store_true",
                   help="only list the addresses your Sent folders were written from (nothing is stored)")
    add_json(p)
    p.set_defaults(func=run)


def resolve_me(args, sources: list[str], settings) -> list[str]:
    """The user's addresses: --me, else the setting, else the ones stored by an earlier ingest, else a guess."""
    from .. import config, store
    from ..errors import ConfigError
    from ..ingest import _stored_me, authorship

    if args.me:
        me = sorted(authorship.normalise_me(args.me))
        if not me:
            raise ConfigError(f"--me {' '.join(args.me)} holds no email address", fix="pass --me you@example.com")
        if set(me) - set(settings.me):
            config.set_value("me", ",".join(sorted(set(settings.me) | set(me))))
        return me
    if settings.me:
        return list(settings.me)
    with store.connect() as conn:
        known = _stored_me(conn)
    if known:
        return sorted(known)
    guesses = authorship.guess_me(sources)
    if not guesses:
        return []  # no Sent folder: documents, JSONL corpora or someone else's mail; nothing to claim
    shown = ", ".join(f"{a} ({n})" for a, n in guesses)
    if sys.stdin.isatty() and not args.json:
        top = [a for a, n in guesses if n >= max(2, guesses[0][1] // 10)]
        answer = input(f"Your Sent folders were written from: {shown}\n"
                       f"Use {', '.join(top)} as your address(es)? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            config.set_value("me", ",".join(top))
            return top
    # error messages carry no addresses unless debug: point at --guess-me, which prints them on request
    hint = f"; your Sent folders suggest: {shown}" if settings.debug else \
        "; `panza ingest --guess-me SOURCE...` lists the addresses your Sent folders were written from"
    raise ConfigError("panza does not know your email address, so it cannot tell your mail from others'",
                      fix=f"re-run with --me YOUR_ADDRESS (repeatable){hint}")


def run(args) -> int:
    from .. import config, store
    from ..errors import NoDataError
    from ..ingest import authorship, ingest, registered_sources

    if args.guess_me:
        guesses = authorship.guess_me(list(args.sources))
        emit(args, {"candidates": [{"address": a, "messages": n} for a, n in guesses]},
             lambda d: [print(f"{c['messages']:6}  {c['address']}") for c in d["candidates"]]
             or print("confirm with: panza ingest SOURCE... --me ADDRESS"))
        return 0
    settings = config.load()
    sources = list(args.sources)
    with store.connect() as conn:
        if not sources:
            sources = registered_sources(conn)
    if not sources:
        raise NoDataError("nothing to ingest: no SOURCE given and no registered source",
                          fix="panza ingest ~/Mail/Sent.mbox --me you@example.com  (or `panza sources add PATH`)")
    me = resolve_me(args, sources, settings)
    conn = store.connect()
    try:
        with progress("ingest", enabled=not args.json) as update:
            summary = ingest(conn, sources, me, update, only_mine=args.only_mine, register=args.register,
                             languages=args.language)
    finally:
        conn.close()
    emit(args, summary, _human)
    return 0


def _human(s: IngestResult) -> None:
    skipped = sum(s.skipped.values())
    print(f"seen {s.seen}: stored {s.stored} ({s.mine} yours, {s.documents} documents), "
          f"duplicates {s.duplicates}, skipped {skipped}")
    for reason, n in sorted(s.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {n:6}  {reason}")
    if s.unchanged_files:
        print(f"unchanged files (not re-read): {s.unchanged_files}")
    if s.deleted:
        print(f"gone from their source, marked deleted: {s.deleted}")
    if s.reassigned:
        print(f"re-labelled for your addresses: {s.reassigned}")
    if not s.me:
        print("note: no address of yours is known: only JSONL corpora count as your mail (use --me)")
    for e in s.errors[:20]:
        print(f"  error: {e['path']}: {e['reason']}")
    if s.errors_total > 20:
        print(f"  ... {s.errors_total - 20} more errors (see --json)")
