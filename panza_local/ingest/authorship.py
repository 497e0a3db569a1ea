"""Who wrote a message, from its headers only (never from the folder it sits in).

`authors(p)` lists the addresses that may claim authorship of a parsed message; a message is the
user's when one of them is in `me`. Rules: a Sender that differs from From is the real writer (an
assistant sending on the boss's behalf is not the boss), unless Sender is a mailing list's bounce
address; a From rewritten by a mailing list ("Rob via USRP-users <list@...>") is replaced by Reply-To
and X-Original-From.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from .parse import Parsed

_LIST_SENDER = re.compile(r"(-bounces?|-owner|-request|-admin|^owner-|^bounce)", re.IGNORECASE)


def _is_list_rewrite(p: Parsed) -> bool:
    if not p.from_addr:
        return False
    if p.list_post and p.from_addr == p.list_post:
        return True
    if p.from_name and " via " in p.from_name.lower() and (p.list_id or p.list_post or p.reply_to):
        return True
    return bool(p.list_id and p.list_id.lower().find(p.from_addr.replace("@", ".")) >= 0)


def authors(p: Parsed) -> list[str]:
    """Addresses that may claim authorship of `p` (the writer, not the mailbox it was filed in)."""
    if _is_list_rewrite(p):
        out = [a for a in [p.original_from, *p.reply_to] if a and a != p.list_post]
        return list(dict.fromkeys(out))
    is_list = bool(p.list_id or p.list_post)
    if p.sender and p.sender != p.from_addr and not is_list and not _LIST_SENDER.search(p.sender.split("@")[0]):
        return [p.sender]
    return [p.from_addr] if p.from_addr else []


def is_mine(author_addrs: list[str] | str | None, me: set[str]) -> bool:
    """True when one of the authorship addresses is one of the user's."""
    if not author_addrs or not me:
        return False
    if isinstance(author_addrs, str):
        author_addrs = [a for a in author_addrs.split(",") if a]
    return any(a.lower() in me for a in author_addrs)


def normalise_me(me: list[str] | None) -> set[str]:
    """The user's addresses, lower-cased; `Name <addr>` forms accepted."""
    import email.utils

    out = set()
    for raw in me or []:
        for part in str(raw).split(","):
            addr = email.utils.parseaddr(part)[1] or part
            addr = addr.strip().lower()
            if "@" in addr:
                out.add(addr)
    return out


_SENT = re.compile(r"(^|[/\\. _-])(sent|gesendet|envoy|enviad|inviat|verzonden|skickat|sendt|_sent_mail|sent_items)",
                   re.IGNORECASE)


def looks_sent(path_or_labels: str) -> bool:
    """A folder name or Gmail label that says "sent"."""
    return bool(_SENT.search(path_or_labels))


def guess_me(roots: list[str], limit: int = 2000) -> list[tuple[str, int]]:
    """Most frequent authors in the Sent folders under `roots` (and Thunderbird identities), to confirm."""
    from . import iter_raw, thunderbird
    from .parse import parse

    counts: Counter[str] = Counter()
    for root in roots:
        if not str(root).startswith(("imap://", "imaps://")):
            for prof in thunderbird.profiles(Path(root).expanduser()) if Path(root).expanduser().is_dir() else []:
                for addr in prefs_identities(prof):
                    counts[addr] += 1
    seen = 0
    # Sent folders first (by path); Takeout keeps everything in one mbox, so fall back to its labels.
    for by_path in (True, False):
        for raw, where in iter_raw(roots, want=looks_sent if by_path else None):
            try:
                p = parse(raw)
            except Exception:  # noqa: BLE001, S112 - a broken message says nothing about who the user is
                continue
            if by_path or looks_sent(p.labels):
                for a in authors(p):
                    counts[a] += 1
            seen += 1
            if seen >= limit:
                return counts.most_common(5)
        if counts:
            break
    return counts.most_common(5)


def prefs_identities(profile: Path) -> list[str]:
    """Addresses declared in a Thunderbird profile's prefs.js (`mail.identity.*.useremail`)."""
    prefs = Path(profile) / "prefs.js"
    if not prefs.is_file():
        return []
    text = prefs.read_text(encoding="utf-8", errors="replace")
    return [m.lower() for m in re.findall(r'mail\.identity\.[^"]+\.useremail",\s*"([^"]+)"', text)]
