"""mbox (mboxo, mboxrd, mboxcl/Content-Length), also Gmail Takeout: messages split with byte offsets.

A separator is a `From ` line at the start of the file or after a blank line, followed by a header
line; a valid Content-Length is trusted over `From ` lines in the body. Offsets let a grown mbox be
read from where the last run stopped.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from pathlib import Path

from .parse import Item
from .slim import BIG, WINDOW, release, slim

_HEADER = re.compile(rb"[!-9;-~]+:")
_BLANK = re.compile(rb"\r?\n\r?\n")
_SEP_CANDIDATE = re.compile(rb"\n\r?\nFrom ")
_SEP_MAX = 8                              # longest _SEP_CANDIDATE match: windows overlap by this much
_CL = re.compile(rb"(?im)^content-length:\s*(\d+)\s*$")
_ESCAPED = re.compile(rb"(?m)^>(>*From )")
_RELEASE = 8 * 2**20                     # drop read pages from the mapping every 8 MiB (bounded RSS)


def detect(path: Path) -> bool:
    """A file whose first line is an mbox `From ` separator."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(1024)
    return head.startswith(b"From ") and b"\n" in head and bool(_HEADER.match(head.split(b"\n", 1)[1]))


def files(root: Path) -> Iterator[tuple[Path, str]]:
    yield root, "mbox"


def _is_sep(buf, pos: int) -> bool:
    if buf[pos:pos + 5] != b"From ":
        return False
    eol = buf.find(b"\n", pos)
    if eol < 0:
        return False
    nxt = buf[eol + 1:eol + 200]
    return bool(_HEADER.match(nxt))


def _next_sep(buf, pos: int, n: int) -> int:
    """Offset of the next separator line at or after `pos` (n when none)."""
    while True:
        stop = min(n, pos + WINDOW)
        m = _SEP_CANDIDATE.search(buf, pos, stop)
        if m is None:
            if stop >= n:
                return n
            release(buf, pos, stop - _SEP_MAX)      # a huge message: do not keep its pages while looking past it
            pos = stop - _SEP_MAX
            continue
        start, pos = m.end() - 5, m.start() + 1
        if _is_sep(buf, start):
            return start


def split(buf, start: int = 0) -> Iterator[tuple[int, int]]:
    """(begin, end) byte spans of the messages in `buf` from offset `start`."""
    n = len(buf)
    pos = start
    if pos >= n:
        return
    if not _is_sep(buf, pos):
        nxt = _next_sep(buf, pos, n)
        if nxt >= n:
            return
        pos = nxt
    while pos < n:
        hm = _BLANK.search(buf, pos)
        hdr_end, body_start = (hm.start(), hm.end()) if hm else (n, n)
        end = None
        m = _CL.search(buf[pos:hdr_end])
        if m:
            cand = body_start + int(m.group(1))
            j = cand
            while j < n and buf[j:j + 1] in (b"\n", b"\r"):
                j += 1
            if cand <= n and (j >= n or _is_sep(buf, j)):
                end = min(n, j)
        if end is None:
            end = _next_sep(buf, hdr_end, n)
        yield pos, end
        pos = end


def _unescape(body: bytes) -> bytes:
    """mboxrd `>From ` escapes undone."""
    return _ESCAPED.sub(rb"\1", body) if b">From " in body else body


def message_bytes(chunk: bytes) -> bytes:
    """A message without its `From ` line, with mboxrd `>From ` escapes undone."""
    eol = chunk.find(b"\n")
    return _unescape(chunk[eol + 1:] if eol >= 0 else b"")


def _raw(buf, begin: int, end: int) -> bytes:
    """One message's bytes; a huge one is slimmed straight from the mapping (attachments dropped)."""
    if end - begin <= BIG:
        return message_bytes(buf[begin:end])
    eol = buf.find(b"\n", begin, end)
    return _unescape(slim(buf, eol + 1 if eol >= 0 else end, end))


def read(path: Path, start: int = 0, folder: str | None = None) -> Iterator[Item]:
    """Messages of an mbox file from byte `start`; each Item's `end` is where the next begins."""
    size = path.stat().st_size
    if size == 0 or start >= size:
        return
    folder = folder if folder is not None else path.stem
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        done = start // mmap.PAGESIZE * mmap.PAGESIZE
        for begin, end in split(buf, start):
            yield Item(location=f"{path}:{begin}", raw=_raw(buf, begin, end), folder=folder, end=end)
            if end - done >= _RELEASE:
                # pages already read would otherwise stay mapped: a 2 GB mbox would cost 2 GB of RSS
                done = release(buf, done, end)
