"""What `panza eval` tests on: held-out pairs from the store, or a cleaned corpus (Panza's JSONL)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import NoDataError


@dataclass
class Item:
    """One held-out email and the instruction that should produce it."""

    instruction: str
    reference: str
    to: str | None = None
    subject: str | None = None
    message_id: int | None = None
    """messages.id when the email is in the store (leak-free retrieval by date); None for outside data."""
    key: str = ""
    thread: str | None = None
    """The email this one answered, when it is a reply (in the prompt, as drafts and training have it)."""


def _get(row, *names, default=None):
    for n in names:
        try:
            v = row[n] if isinstance(row, dict) or hasattr(row, "keys") else getattr(row, n)
        except (KeyError, IndexError, AttributeError):
            continue
        if v is not None:
            return v
    return default


def _test_rows(conn) -> list:
    """The held-out (newest) pairs from playback; a clear error when there are none."""
    try:
        from .. import playback
    except ImportError:
        raise NoDataError("this installation has no playback stage, so there are no held-out pairs",
                          fix="evaluate a corpus instead: panza eval --data FILE.jsonl") from None
    rows = list(playback.pairs(conn, split="test"))
    if not rows:
        raise NoDataError("there are no held-out pairs to evaluate on",
                          fix="run `panza ingest MAILBOX` and `panza playback` first (or use --data FILE.jsonl)")
    return rows


def items_from_store(conn, limit: int | None = None) -> list[Item]:
    """Held-out pairs from the store (playback's test split), newest first, at most `limit`."""
    from ..ingest import messages

    out = []
    for r in _test_rows(conn):
        instruction, email = _get(r, "instruction"), _get(r, "email", "body", "target")
        if not instruction or not email:
            continue
        mid = _get(r, "message_id", "id")
        to, subject = _get(r, "to", "to_addrs"), _get(r, "subject")
        if mid is not None and (to is None or subject is None):
            m = messages.by_id(conn, int(mid))
            if m:
                to, subject = to if to is not None else m["to_addrs"], subject if subject is not None else m["subject"]
        out.append(Item(instruction=instruction, reference=email, to=to or None, subject=subject or None,
                        message_id=int(mid) if mid is not None else None, thread=_get(r, "thread") or None,
                        key=str(_get(r, "content_hash", "key", default="") or _hash(email))))
    return _take(out, limit)


def _take(items: list[Item], limit: int | None) -> list[Item]:
    """At most `limit` items, spread evenly over the list (so a small run still spans the whole period)."""
    if not limit or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a cleaned corpus (Panza's JSONL: {"email", "subject"?, "summary"?}); bad lines are errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NoDataError(f"{path} does not exist", fix="give the path of a JSONL file, one {\"email\": ...} per line")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise NoDataError(f"{path}:{n} is not JSON", fix="fix or remove that line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("email"), str):
                raise NoDataError(f"{path}:{n} has no \"email\" string", fix="each line needs {\"email\": \"...\"}")
            if rec["email"].strip():
                rows.append(rec)
    if not rows:
        raise NoDataError(f"{path} holds no emails", fix="give a JSONL file with one {\"email\": ...} per line")
    return rows


def items_from_jsonl(path: str | Path, conn=None, limit: int | None = None,
                     notes: list[str] | None = None) -> list[Item]:
    """Items from a cleaned corpus. Instructions: the row's own (`summary`/`instruction`), else playback's
    for the same email when it was ingested and played back, else a TF-IDF keyword fallback (noted)."""
    notes = notes if notes is not None else []
    rows = read_jsonl(path)
    stored = _stored_pairs(conn) if conn is not None else {}
    test_keys = {k for k, v in stored.items() if v.get("test")}
    if test_keys and any(_norm(r["email"])[:300] in test_keys for r in rows):
        kept = [r for r in rows if _norm(r["email"])[:300] in test_keys]
        notes.append(f"{len(kept)} of {len(rows)} rows are in playback's held-out split; only those are evaluated")
        rows = kept
    elif stored:
        notes.append("no row of this file is in the store's held-out split: an adapter trained on this "
                     "mailbox may have seen these emails")
    rows = [rows[i] for i in _spread(len(rows), limit)]
    fallback = [r for r in rows if not (r.get("summary") or r.get("instruction")
                                        or stored.get(_norm(r["email"])[:300], {}).get("instruction"))]
    keywords = _tfidf_instructions([r["email"] for r in fallback], [r["email"] for r in rows]) if fallback else {}
    if fallback:
        notes.append(f"{len(fallback)} of {len(rows)} rows had no instruction (no `summary` field and no "
                     "playback pair): they use a six-keyword TF-IDF instruction instead; run `panza ingest "
                     "FILE.jsonl` and `panza playback` for real ones")
    out = []
    for r in rows:
        s = stored.get(_norm(r["email"])[:300], {})
        instruction = r.get("summary") or r.get("instruction") or s.get("instruction") or keywords[r["email"]]
        out.append(Item(instruction=instruction.strip(), reference=r["email"].strip(), to=r.get("to") or None,
                        subject=r.get("subject") or None, message_id=s.get("message_id"), key=_hash(r["email"])))
    return out


def _spread(n: int, limit: int | None) -> list[int]:
    if not limit or n <= limit:
        return list(range(n))
    return [int(i * n / limit) for i in range(limit)]


def _stored_pairs(conn) -> dict[str, dict]:
    """Normalised body prefix -> {instruction, message_id, test} for every email played back in the store."""
    out: dict[str, dict] = {}
    try:
        from .. import playback

        rows = playback.played_back(conn)
    except Exception:  # noqa: BLE001 - a store without pairs is simply a store without pairs
        return out
    for r in rows:
        out[_norm(r["body"] or "")[:300]] = {"instruction": r["instruction"], "message_id": r["id"], "test": False}
    try:
        test = _test_rows(conn)
    except NoDataError:
        test = []
    for r in test:
        body = _get(r, "email", "body", default="")
        entry = out.setdefault(_norm(body)[:300], {"instruction": _get(r, "instruction"),
                                                   "message_id": _get(r, "message_id")})
        entry["test"] = True
    return out


def _tfidf_instructions(texts: Sequence[str], corpus: Sequence[str], k: int = 6) -> dict[str, str]:
    """"Write an email about: w1, w2, ..." from each text's top-k TF-IDF words over `corpus`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    vec.fit(list(corpus))
    vocab = vec.get_feature_names_out()
    out = {}
    for text, row in zip(texts, vec.transform(texts)):
        arr = row.toarray()[0]
        top = [vocab[i] for i in arr.argsort()[::-1][:k] if arr[i] > 0]
        out[text] = "Write an email about: " + ", ".join(top) if top else "Write a short email."
    return out
