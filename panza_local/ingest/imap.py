"""Live IMAP (placeholder until the IMAP reader lands)."""

from __future__ import annotations

from pathlib import Path


def detect(path) -> bool:
    return str(path).startswith(("imap://", "imaps://"))


def files(root: Path):
    return iter(())


def ingest(conn, sid, uri, store_item, summary, on_progress=None) -> None:
    from ..errors import SourceError

    raise SourceError("IMAP is not supported yet", fix="export the mailbox to mbox and ingest that")
