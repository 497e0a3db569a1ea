"""Any folder: every file is classified on its own (mbox, Maildir message, .eml, .emlx, Takeout archive, JSONL,
document).

Files that are none of these are counted as skipped with a reason, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import documents, eml, mbox, takeout

_TNEF_MAGIC = b"\x78\x9f\x3e\x22"
_CFB_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def detect(path: Path) -> bool:
    return path.is_dir()


def classify(path: Path) -> str:
    """The reader for one file, or `skip:<reason>`."""
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix == ".msf":
        return "skip:index_file"
    if name.endswith(".emlx"):
        return "emlx"
    if suffix == ".jsonl":
        return "jsonl"
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return "skip:unreadable_file"
    if not head:
        return "skip:empty_file"
    if head.startswith(_TNEF_MAGIC):
        return "skip:tnef_unsupported"
    if head.startswith(_CFB_MAGIC) and suffix in (".msg", ""):
        return "skip:outlook_msg_unsupported"
    if path.parent.name in ("cur", "new") and (path.parent.parent / "cur").is_dir():
        return "maildir"
    if mbox.detect(path):
        return "mbox"
    archive = takeout.classify(path)
    if archive:
        return archive
    if suffix == ".eml" or (suffix not in (".pdf", ".docx", ".odt", ".epub") and eml.looks_like_message(path)):
        return "eml"
    if suffix in documents.EXTS:
        return "doc"
    if suffix in documents.UNSUPPORTED:
        return "skip:unsupported_document"
    return "skip:not_mail"


def files(root: Path) -> Iterator[tuple[Path, str]]:
    if root.is_file():
        yield root, classify(root)
        return
    for f in sorted(root.rglob("*")):
        if f.is_file() and not f.is_symlink() and "tmp" != f.parent.name:
            yield f, classify(f)
