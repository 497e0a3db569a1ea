"""JSONL corpora of cleaned emails (`{"email": ..., "subject": ..., "date": ...}`), all the user's own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from .parse import Item


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".jsonl"
    return path.is_dir() and any(path.glob("*.jsonl"))


def files(root: Path) -> Iterator[tuple[Path, str]]:
    if root.is_file():
        yield root, "jsonl"
        return
    for f in sorted(root.rglob("*.jsonl")):
        yield f, "jsonl"


def read(path: Path, start: int = 0) -> Iterator[Item]:
    """One Item per line; a line that is not a JSON object with an `email` string is skipped, counted."""
    with open(path, "rb") as fh:
        fh.seek(start)
        offset = start
        for lineno, line in enumerate(fh, 1):
            here = offset
            offset += len(line)
            if not line.strip():
                continue
            loc = f"{path}:{here}"
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield Item(location=loc, skip="bad_json", end=offset)
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("email"), str):
                yield Item(location=loc, skip="no_email_field", end=offset)
                continue
            yield Item(location=loc, record=rec, folder=path.stem, end=offset)
