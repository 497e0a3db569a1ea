"""Apple Mail `.emlx` / `.partial.emlx`: a byte count line, the message, then an XML plist."""

from __future__ import annotations

import datetime as dt
import plistlib
import re
from collections.abc import Iterator
from pathlib import Path

from .parse import Item


def detect(path: Path) -> bool:
    if path.is_file():
        return path.name.lower().endswith(".emlx")
    return path.is_dir() and any(path.rglob("*.emlx"))


def files(root: Path) -> Iterator[tuple[Path, str]]:
    if root.is_file():
        yield root, "emlx"
        return
    for f in sorted(root.rglob("*.emlx")):
        if f.is_file():
            yield f, "emlx"


def folder_of(path: Path) -> str:
    """The `Name.mbox` folder an emlx file sits in (`Sent Messages`)."""
    for parent in path.parents:
        if parent.name.endswith(".mbox"):
            return parent.name[:-5]
    return path.parent.name


def read(path: Path, start: int = 0) -> Iterator[Item]:
    data = path.read_bytes()
    first, _, rest = data.partition(b"\n")
    if not re.fullmatch(rb"\s*\d+\s*", first):
        yield Item(location=str(path), skip="unparsable_emlx", folder=folder_of(path))
        return
    count = int(first)
    if count > len(rest) or not rest[count:].lstrip().startswith((b"<?xml", b"<plist")):
        # .partial.emlx written after attachments were stripped: the count is stale; the plist still ends it
        count = rest.rfind(b"<?xml")
        count = len(rest) if count < 0 else count
    if count <= 0:
        yield Item(location=str(path), skip="unparsable_emlx", folder=folder_of(path))
        return
    msg, plist = rest[:count], rest[count:]
    yield Item(location=str(path), raw=msg, folder=folder_of(path), date_hint=_plist_date(plist))


def _plist_date(blob: bytes) -> str | None:
    try:
        meta = plistlib.loads(blob.strip())
    except Exception:  # noqa: BLE001 - a damaged plist only costs the fallback date
        return None
    ts = meta.get("date-sent") or meta.get("date-received")
    if not isinstance(ts, (int, float)):
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()
