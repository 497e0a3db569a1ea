"""Bounded memory for huge messages: keep a message's MIME skeleton and its text, drop attachment bodies.

Ingest needs a message's headers and its readable text, never its attachments. A 50 MB message parsed
whole by the stdlib costs several times its size in RSS (bytes, the surrogate-escaped str, the line list), so a
message bigger than `BIG` is first reduced here, straight from the file's memory map, to a small
RFC 5322 message with the same headers and structure: non-text leaf parts keep their headers and lose
their body, text parts are cut at `TEXT_CAP` bytes. Nothing here copies more than one text part at a
time, so the peak is bounded by `TEXT_CAP`, not by the input. Messages under `BIG` are never touched.
"""

from __future__ import annotations

import email.parser
import email.policy
import mmap
from pathlib import Path

BIG = 4 * 2**20          # messages larger than this are slimmed before parsing
TEXT_CAP = 1 * 2**20     # at most this much of one text part is kept
HEADER_CAP = 256 * 2**10
MAX_DEPTH = 16
WINDOW = 8 * 2**20       # scan a mapping this much at a time, dropping the pages behind
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def release(buf, start: int, end: int) -> int:
    """Drop the pages of a read-only mapping in [start, end) from RSS (they re-read from the page cache);
    returns where the released whole pages end (the next call's start)."""
    a, b = start // mmap.PAGESIZE * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if isinstance(buf, mmap.mmap) and _DONTNEED is not None and b > a:
        buf.madvise(_DONTNEED, a, b - a)
    return b


def find(buf, sub: bytes, start: int, end: int) -> int:
    """buf.find(sub, start, end), scanning a mapping window by window so a huge part never sits in RSS."""
    pos = start
    while pos < end:
        stop = min(end, pos + WINDOW + len(sub))
        i = buf.find(sub, pos, stop)
        if i >= 0:
            return i
        if stop >= end:
            return -1
        release(buf, pos, stop - len(sub))
        pos = stop - len(sub)
    return -1


def _header_end(buf, start: int, end: int) -> tuple[int, int]:
    """(end of the header block, start of the body) of the part at buf[start:end]."""
    if buf[start:start + 1] == b"\n":
        return start, start + 1
    if buf[start:start + 2] == b"\r\n":
        return start, start + 2
    lf = find(buf, b"\n\n", start, end)
    crlf = find(buf, b"\r\n\r\n", start, lf + 4 if lf >= 0 else end)   # only an earlier CRLF blank line matters
    cands = [(i, i + n) for i, n in ((lf, 2), (crlf, 4)) if i >= 0]
    if not cands:
        return end, end
    i, j = min(cands)
    return i + (1 if j - i == 2 else 2), j


def _boundaries(buf, body: int, end: int, boundary: bytes) -> list[tuple[int, bool]]:
    """Offsets of the `--boundary` delimiter lines in buf[body:end], with whether each is the closing one."""
    delim = b"--" + boundary
    out, pos = [], body
    if buf[body:body + len(delim)] == delim:
        out.append(body)
        pos = body + 1
    while True:
        i = find(buf, b"\n" + delim, pos, end)
        if i < 0:
            break
        out.append(i + 1)
        pos = i + 1
    return [(i, buf[i + len(delim):i + len(delim) + 2] == b"--") for i in out]


def _part(buf, start: int, end: int, depth: int) -> bytes:
    hdr_end, body = _header_end(buf, start, end)
    head = bytes(buf[start:min(hdr_end, start + HEADER_CAP)])
    msg = _HEADERS.parsebytes(head + b"\n\n")
    nl = b"\r\n" if head.endswith(b"\r\n") else b"\n"
    out = head if head.endswith((b"\n", b"\r\n")) else head + nl
    out += nl
    ctype = msg.get_content_type()
    disposition = str(msg.get("Content-Disposition", "")).lower()
    if depth < MAX_DEPTH and msg.get_content_maintype() == "multipart" and msg.get_boundary():
        boundary = msg.get_boundary().encode("ascii", "replace")
        marks = _boundaries(buf, body, end, boundary)
        pieces = []
        for (i, closing), nxt in zip(marks, marks[1:] + [(end, True)]):
            if closing:
                break
            eol = buf.find(b"\n", i, end)
            p0 = eol + 1 if eol >= 0 else end
            p1 = nxt[0] - 1 if nxt[0] > p0 and nxt[0] != end else nxt[0]   # the newline before a delimiter is its own
            if buf[p1 - 1:p1] == b"\r":
                p1 -= 1
            pieces.append(b"--" + boundary + nl + _part(buf, p0, max(p0, p1), depth + 1))
        return out + b"".join(p + nl for p in pieces) + b"--" + boundary + b"--" + nl
    if depth < MAX_DEPTH and ctype == "message/rfc822":
        return out + _part(buf, body, end, depth + 1)
    if msg.get_content_maintype() == "text" and "attachment" not in disposition:
        return out + bytes(buf[body:min(end, body + TEXT_CAP)])
    return out                                  # an attachment: its headers say what it was, its body is gone


def slim(buf, start: int = 0, end: int | None = None) -> bytes:
    """The message at buf[start:end] (bytes or an mmap) with attachment bodies dropped and text capped."""
    end = len(buf) if end is None else end
    return _part(buf, start, end, 0)


def read_file(path: Path) -> bytes:
    """A message file's bytes; a file over `BIG` is slimmed through a memory map instead of read whole."""
    size = path.stat().st_size
    if size <= BIG:
        return path.read_bytes()
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return slim(buf)
