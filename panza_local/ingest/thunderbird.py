"""A Thunderbird profile: its Mail/ and ImapMail/ folders are mbox files (`.msf` indexes ignored)."""

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
                if f.is_file() and f.suffix.lower() not in _NOT_MBOX and f.stat().st_size > 0 and mbox.detect(f):
                    yield f, "mbox"


def read(path: Path, start: int = 0) -> Iterator:
    yield from mbox.read(path, start, folder=path.name)
