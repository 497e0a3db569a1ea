"""A folder of `.eml` files (or one file holding a single RFC 5322 message)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .parse import Item
from .slim import read_file

_HEADER_LINE = re.compile(rb"^[!-9;-~]+:[ \t]?", re.MULTILINE)
_KNOWN = re.compile(rb"(?im)^(from|to|subject|date|message-id|received|return-path|mime-version|"
                    rb"delivered-to|content-type|x-[\w-]+|reply-to|cc):")


def looks_like_message(path: Path) -> bool:
    """The file starts with RFC 5322 header lines, at least two of them well-known ones."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if not _HEADER_LINE.match(head.lstrip(b"\r\n")[:200]):
        return False
    block = re.split(rb"\r?\n\r?\n", head, maxsplit=1)[0]
    return len({m.group(1).lower() for m in _KNOWN.finditer(block)}) >= 2


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".eml" or looks_like_message(path)
    return path.is_dir() and any(path.rglob("*.eml"))


def files(root: Path) -> Iterator[tuple[Path, str]]:
    if root.is_file():
        yield root, "eml"
        return
    for f in sorted(root.rglob("*.eml")):
        if f.is_file():
            yield f, "eml"


def read(path: Path, start: int = 0) -> Iterator[Item]:
    yield Item(location=str(path), raw=read_file(path), folder=path.parent.name)
