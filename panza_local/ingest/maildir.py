"""Maildir and Maildir++ (mutt, notmuch, offlineimap): one message per file under cur/ and new/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .parse import Item
from .slim import read_file


def detect(path: Path) -> bool:
    """A folder with cur/ or new/ (Maildir), or whose `.Sub` folders have them (Maildir++)."""
    if not path.is_dir():
        return False
    if (path / "cur").is_dir() or (path / "new").is_dir():
        return True
    return any((p / "cur").is_dir() for p in path.iterdir() if p.is_dir() and p.name.startswith("."))


def files(root: Path) -> Iterator[tuple[Path, str]]:
    """Every message file under cur/ and new/ of the root and its sub-folders (tmp/ is in flight)."""
    for sub in sorted(p for p in root.rglob("*") if p.is_dir() and p.name in ("cur", "new")):
        for f in sorted(sub.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                yield f, "maildir"


def folder_of(path: Path) -> str:
    """Maildir++ folder name (`.Sent` → `Sent`, the root → `INBOX`); a Thunderbird Maildir-store folder
    (`Sent/cur/…` beside `Sent.msf`) keeps its own name."""
    folder = path.parent.parent
    if folder.name.startswith("."):
        return folder.name.lstrip(".")
    return folder.name if folder.with_name(folder.name + ".msf").exists() else "INBOX"


def read(path: Path, start: int = 0) -> Iterator[Item]:
    yield Item(location=str(path), raw=read_file(path), folder=folder_of(path))
