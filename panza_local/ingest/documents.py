"""Documents (txt, md, rst, org, html, pdf, docx, odt, rtf, epub) to plain text for retrieval.

Documents feed the retrieval index and the user profile, never the email training pairs. A document
that cannot be read (encrypted PDF, broken archive) raises `DocumentError` with the reason to count.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .parse import decode_bytes, html_to_text

UNSUPPORTED = {".doc", ".ppt", ".pptx", ".xls", ".xlsx", ".csv", ".tsv", ".json", ".xml", ".pages", ".key"}
EXTS = {".txt", ".text", ".md", ".markdown", ".rst", ".org", ".html", ".htm", ".pdf", ".docx", ".odt",
        ".rtf", ".epub"}
MAX_CHARS = 2_000_000  # a pathological file must not fill the database


class DocumentError(Exception):
    """A document could not be turned into text; `reason` is the counted skip reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in EXTS
    return path.is_dir() and any(p.suffix.lower() in EXTS for p in path.rglob("*") if p.is_file())


def files(root: Path) -> Iterator[tuple[Path, str]]:
    if root.is_file():
        yield root, "doc"
        return
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in EXTS and not f.name.startswith("."):
            yield f, "doc"


def extract(path: Path) -> tuple[str, str]:
    """(title, text) of a document; raises DocumentError(reason) when it cannot be read."""
    ext = path.suffix.lower()
    fn = {".pdf": _pdf, ".docx": _docx, ".odt": _odt, ".rtf": _rtf, ".epub": _epub,
          ".html": _html, ".htm": _html}.get(ext, _plain)
    try:
        title, text = fn(path)
    except DocumentError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader library has its own exception zoo; one reason for them all
        raise DocumentError("unreadable_document", type(exc).__name__) from None
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n")).strip()[:MAX_CHARS]
    if not text:
        raise DocumentError("empty_document")
    return (title or "").strip() or _first_line(text) or path.stem, text


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return ""


_BOMS = [(b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"), (b"\xfe\xff", "utf-16-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xef\xbb\xbf", "utf-8-sig")]


def _decode_text(raw: bytes) -> str:
    """Text of a plain file: BOM first, then UTF-16/32 without BOM (NUL pattern), then the usual chain."""
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            return raw[len(bom):].decode(enc, errors="replace")
    head = raw[:4096]
    if b"\x00" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if len(head) % 4 == 0 and head[1::4].count(0) > len(head) // 5 and head[2::4].count(0) > len(head) // 5:
            enc = "utf-32-le" if head[3::4].count(0) > len(head) // 5 else "utf-32-be"
        elif odd > len(head) // 4 and even < odd // 4:
            enc = "utf-16-le"
        elif even > len(head) // 4 and odd < even // 4:
            enc = "utf-16-be"
        else:
            raise DocumentError("binary_file")
        return raw.decode(enc, errors="replace")
    return decode_bytes(raw, None)


def _plain(path: Path) -> tuple[str, str]:
    text = _decode_text(path.read_bytes())
    title = ""
    if path.suffix.lower() in (".md", ".markdown"):
        m = re.search(r"(?m)^#\s+(.+)$", text)
        title = m.group(1) if m else ""
    return title, text


def _html(path: Path) -> tuple[str, str]:
    html = decode_bytes(path.read_bytes(), None)
    m = re.search(r"(?is)<title[^>]*>(.*?)</title>", html)
    return (re.sub(r"\s+", " ", m.group(1)).strip() if m else ""), html_to_text(html)


def _pdf(path: Path) -> tuple[str, str]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it logs every repaired xref at WARNING

    try:
        reader = PdfReader(str(path))
        _ = len(reader.pages)
    except PdfReadError as exc:
        if "decrypt" in str(exc).lower() or "password" in str(exc).lower():
            raise DocumentError("encrypted_pdf", "password-protected") from None
        raise DocumentError("unreadable_pdf", str(exc)[:80]) from None
    if reader.is_encrypted:
        try:
            ok = reader.decrypt("")
        except Exception:  # noqa: BLE001 - unsupported encryption algorithm
            ok = 0
        if not ok:
            raise DocumentError("encrypted_pdf", "password-protected")
    title = ""
    try:  # metadata is optional and often broken; the text matters more
        meta = reader.metadata
        title = str(meta.title) if meta and meta.title else ""
    except Exception:  # noqa: BLE001
        title = ""
    pages = []
    for page in reader.pages:
        try:
            pages.append(page.extract_text() or "")
        except Exception:  # noqa: BLE001 - one bad page must not lose the rest of the document
            pages.append("")
    return title, "\n\n".join(pages)


def _docx(path: Path) -> tuple[str, str]:
    import docx

    d = docx.Document(str(path))
    parts = [p.text for p in d.paragraphs]
    for table in d.tables:
        for row in table.rows:
            parts.append("\t".join(c.text for c in row.cells))
    return (d.core_properties.title or ""), "\n".join(parts)


def _odt(path: Path) -> tuple[str, str]:
    from odf import teletype, text
    from odf.opendocument import load

    doc = load(str(path))
    parts = [teletype.extractText(el) for el in doc.getElementsByType(text.H) + doc.getElementsByType(text.P)]
    title = ""
    try:
        from odf import dc

        t = doc.meta.getElementsByType(dc.Title)
        title = teletype.extractText(t[0]) if t else ""
    except Exception:  # noqa: BLE001 - metadata is optional
        title = ""
    return title, "\n".join(parts)


def _rtf(path: Path) -> tuple[str, str]:
    from striprtf.striprtf import rtf_to_text

    return "", rtf_to_text(decode_bytes(path.read_bytes(), "cp1252"), errors="ignore")


def _epub(path: Path) -> tuple[str, str]:
    import ebooklib
    from ebooklib import epub

    book = epub.read_epub(str(path), options={"ignore_ncx": True})
    parts = [html_to_text(item.get_content().decode("utf-8", errors="replace"))
             for item in book.get_items_of_type(ebooklib.ITEM_DOCUMENT)]
    titles = book.get_metadata("DC", "title")
    return (titles[0][0] if titles else ""), "\n\n".join(parts)


# --- the stored documents (the `documents` table ingest fills) ----------------------------------------------

def live(conn) -> Iterator:
    """(id, text) of every live document: what the index chunks and embeds."""
    return iter(conn.execute("SELECT id, text FROM documents WHERE deleted = 0"))


def live_by_ids(conn, ids: list[int]) -> dict:
    """{id: row (id, path, title, text)} of the live documents among `ids`."""
    if not ids:
        return {}
    return {r["id"]: r for r in conn.execute(
        f"SELECT id, path, title, text FROM documents WHERE deleted = 0 AND id IN ({','.join('?' * len(ids))})",
        list(ids))}
