"""Document chunking that respects paragraphs; every chunk knows its paragraphs and character span."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_CHARS = 1200  # ~256 MiniLM tokens: the embedding model truncates anything longer
_PARA_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Chunk:
    """Characters [start, end) of a document, covering paragraphs para_start..para_end (1-based)."""

    n: int
    start: int
    end: int
    para_start: int
    para_end: int


def paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank paragraph (blocks separated by blank lines), whitespace trimmed."""
    spans, pos = [], 0
    for m in [*_PARA_BREAK.finditer(text), None]:
        end = m.start() if m else len(text)
        s, e = pos, end
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
        pos = m.end() if m else len(text)
    return spans


def _split_long(text: str, s: int, e: int, max_chars: int) -> list[tuple[int, int]]:
    """Cut one over-long paragraph at sentence ends (else at whitespace, else hard) into <= max_chars."""
    out = []
    while e - s > max_chars:
        window = text[s:s + max_chars]
        cut = max((m.start() for m in _SENTENCE_END.finditer(window)), default=-1)
        if cut < max_chars // 3:
            cut = window.rfind(" ")
        if cut < max_chars // 3:
            cut = max_chars
        out.append((s, s + cut))
        s += cut
        while s < e and text[s].isspace():
            s += 1
    if e > s:
        out.append((s, e))
    return out


def chunk(text: str, max_chars: int = MAX_CHARS) -> list[Chunk]:
    """Group whole paragraphs into chunks of at most `max_chars`; split only paragraphs longer than that."""
    out: list[Chunk] = []
    cur: list[int] | None = None  # [start, end, para_start, para_end]

    def flush() -> None:
        nonlocal cur
        if cur:
            out.append(Chunk(len(out), cur[0], cur[1], cur[2], cur[3]))
        cur = None

    for i, (s, e) in enumerate(paragraphs(text), 1):
        if e - s > max_chars:
            flush()
            for ps, pe in _split_long(text, s, e, max_chars):
                out.append(Chunk(len(out), ps, pe, i, i))
            continue
        if cur and e - cur[0] > max_chars:
            flush()
        if cur:
            cur[1], cur[3] = e, i
        else:
            cur = [s, e, i, i]
    flush()
    return out


def cite(path: str, para_start: int, para_end: int) -> str:
    """Human citation of a chunk: `file ¶3` or `file ¶3-5`."""
    paras = f"¶{para_start}" if para_start == para_end else f"¶{para_start}-{para_end}"
    return f"{path} {paras}"
