"""A user's own emails for tests that need real writing: from ../shared/data when it is there, else the
project's sample mailbox (sample.py), so that a fresh clone runs these tests instead of skipping them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED

MARCUS = SHARED / "panza" / "marcus_anonymous_clean.jsonl"


def sample_emails(seed: int | None = None, *, mine_only: bool = True) -> list[dict]:
    """{"subject", "email"} of the sample mailbox (`seed`: another year of the same person's mail); with
    `mine_only`, only Maya's own emails that quote no thread."""
    from panza_local import sample

    msgs = sample.sample_messages() if seed is None else sample.sample_messages(seed)
    return [{"subject": m["Subject"], "email": m.get_payload(decode=True).decode("utf-8").strip()} for m in msgs
            if not mine_only or (sample.SAMPLE_ME in m["From"] and not m["Subject"].startswith("Re:"))]


def user_emails(n: int, who: str = "") -> list[dict]:
    """`n` emails of one user: Marcus's from ../shared/data when it is there (or `who="marcus"`, which skips
    without it), else (or `who="maya"`) the sample person's own."""
    if who == "marcus" and not MARCUS.is_file():
        pytest.skip(f"needs the shared data set at {SHARED} (absent in a fresh clone)")
    if who != "maya" and MARCUS.is_file():
        rows = [json.loads(line) for line in MARCUS.read_text(encoding="utf-8").splitlines()]
        rows = [{"subject": d.get("subject"), "email": d["email"].strip()} for d in rows if d.get("email", "").strip()]
    else:
        rows = sample_emails()
    return rows[:n]


def jsonl(name: str, tmp_dir, rows: int = 200) -> Path:
    """The Panza-style JSONL ../shared/data/panza/`name` when it is there, else one written to `tmp_dir` from
    the sample person's own emails (the same {"subject", "email"} lines)."""
    path = SHARED / "panza" / name
    if path.is_file():
        return path
    out = Path(tmp_dir) / "maya_sample.jsonl"
    out.write_text("".join(json.dumps(d) + "\n" for d in sample_emails()[:rows]), encoding="utf-8")
    return out
