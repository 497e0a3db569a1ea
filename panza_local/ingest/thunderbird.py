"""A Thunderbird profile: its Mail/ and ImapMail/ folders, stored as mbox files (the default) or, with the
Maildir store (`mail.serverDefaultStoreContractID` = maildirstore), as folders of one message per file under
`cur/` (Thunderbird writes no `new/`). `.msf` indexes are ignored; both stores can mix in one profile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import mbox

_NOT_MBOX = {".msf", ".dat", ".json", ".html", ".sqlite", ".js", ".txt", ".log"}


def detect(path: Path) -> bool:
    """A profile folder (prefs.js + Mail/ or ImapMail/), or a folder holding such profiles."""
    return _profile(path) is not None or (path.is_dir() and any(_profile(p) for p in _children(path)))


def _children(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []


def _profile(path: Path) -> Path | None:
    if path.is_dir() and (path / "prefs.js").is_file() and ((path / "Mail").is_dir() or (path / "ImapMail").is_dir()):
        return path
    return None


def profiles(path: Path) -> list[Path]:
    """The profile folders at or under `path`."""
    own = _profile(path)
    return [own] if own else [p for p in _children(path) if _profile(p)]


def files(root: Path) -> Iterator[tuple[Path, str]]:
    """Every mbox file of the profile's mail folders (empty ones and index files skipped)."""
    for prof in profiles(root):
        for top in ("Mail", "ImapMail"):
            base = prof / top
            if not base.is_dir():
                continue
            for f in sorted(base.rglob("*")):
                if not f.is_file() or f.suffix.lower() in _NOT_MBOX or f.stat().st_size == 0:
                    continue
                if f.parent.name in ("cur", "new") and not f.name.startswith("."):
                    yield f, "maildir"  # a Maildir-store folder: <Folder>/cur/<message>
                elif f.parent.name != "tmp" and mbox.detect(f):
                    yield f, "mbox"


def read(path: Path, start: int = 0) -> Iterator:
    yield from mbox.read(path, start, folder=path.name)
