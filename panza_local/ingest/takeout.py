"""A Gmail Takeout archive read as it downloads: `takeout-*.zip` or `takeout-*.tgz` (`.tar.gz`), never unpacked.

Google lays the mail out as `Takeout/Mail/All mail Including Spam and Trash.mbox` (or one `.mbox` per label
chosen), each message carrying its labels in `X-Gmail-Labels`. Every `.mbox` member is decompressed as a
stream and split line by line, so neither the archive nor the mbox inside is ever held in memory or on disk
(one message at a time is). A .tgz is read front to back in a single pass; a .zip member by member.

Each Item's `end` is how far into the archive file the reader has got (below its size until the last
message), so ingest can commit mid-archive; an archive is not appendable, so a re-run after a kill reads it
again and the messages already stored count as duplicates.
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .mbox import message_bytes
from .parse import Item
from .slim import BIG, slim

_HEADER = re.compile(rb"[!-9;-~]+:")
_GZIP = b"\x1f\x8b"
_ZIP = b"PK\x03\x04"


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError:
        return b""


def is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and _magic(path) == _ZIP


def is_tgz(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tgz", ".tar.gz")) and _magic(path)[:2] == _GZIP


def classify(path: Path) -> str | None:
    """"takeout" for an archive that can hold mail, `skip:<reason>` for a zip without any, None otherwise."""
    if is_tgz(path):
        return "takeout"  # a tar lists its members only as it is read: an archive without mail says so then
    if not is_zip(path):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            return "takeout" if any(_is_mbox(n) for n in zf.namelist()) else "skip:archive_without_mail"
    except (zipfile.BadZipFile, OSError):
        return "skip:damaged_archive"


def detect(path: Path) -> bool:
    return path.is_file() and classify(path) == "takeout"


def files(root: Path) -> Iterator[tuple[Path, str]]:
    yield root, "takeout"


def _is_mbox(name: str) -> bool:
    return name.lower().endswith(".mbox") and not name.endswith("/")


def read(path: Path, start: int = 0) -> Iterator[Item]:
    """The messages of every `.mbox` member, in archive order (`start` is ignored: an archive is re-read)."""
    size = path.stat().st_size
    with open(path, "rb") as raw:
        def where() -> int:  # how far into the archive file: below its size until the reader is done
            return min(raw.tell(), size - 1)

        found = False
        try:
            for name, stream in _members(path, raw):
                found = True
                for offset, msg in split_stream(stream):
                    yield Item(location=f"{path}:{name}:{offset}", raw=msg, end=where())
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error):
            # a download cut short: what was read is kept, the rest is counted as one damaged item
            yield Item(location=str(path), skip="damaged_archive")
            return
        if not found:
            yield Item(location=str(path), skip="archive_without_mail")


def _members(path: Path, raw: BinaryIO) -> Iterator[tuple[str, BinaryIO]]:
    """(member name, decompressing stream) for each `.mbox` in the archive."""
    if is_zip(path):
        with zipfile.ZipFile(raw) as zf:
            for info in zf.infolist():
                if _is_mbox(info.filename):
                    with zf.open(info) as stream:  # buffered: readline in C, not ZipExtFile's Python one
                        yield info.filename, io.BufferedReader(stream, 1 << 20)
        return
    with tarfile.open(fileobj=raw, mode="r|*") as tf:  # stream mode: one forward pass, no seeking
        for member in tf:
            if member.isfile() and _is_mbox(member.name):
                stream = tf.extractfile(member)
                if stream is not None:
                    yield member.name, stream


def split_stream(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset in the mbox, message bytes) read line by line: a `From ` line at the start or after a blank
    line, followed by a header line, starts a message (mboxrd `>From ` escapes undone, as mbox.read does)."""
    lines: list[bytes] = []
    size = 0
    begin = offset = 0
    prev_blank = True
    it = iter(stream)
    line = next(it, None)
    while line is not None:
        nxt = next(it, None)
        if prev_blank and line.startswith(b"From ") and nxt is not None and _HEADER.match(nxt):
            if lines:
                yield begin, _message(lines, size)
            lines, size, begin = [], 0, offset
        lines.append(line)
        size += len(line)
        prev_blank = line in (b"\n", b"\r\n")
        offset += len(line)
        line = nxt
    if lines:
        yield begin, _message(lines, size)


def _message(lines: list[bytes], size: int) -> bytes:
    if not lines[0].startswith(b"From "):  # text before the first separator is not a message
        return b""
    data = b"".join(lines)
    if size <= BIG:
        return message_bytes(data)
    eol = data.find(b"\n")
    return message_bytes(data[:eol + 1] + slim(data, eol + 1, len(data)))  # attachments dropped, as mbox does
