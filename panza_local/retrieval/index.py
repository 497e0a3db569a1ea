"""Retrieval: keep a Chroma collection in step with the store, search it, and build leak-free RAFT context.

Items: the user's sent mail (`sent`, what drafts imitate), received mail (`thread`, context for replies)
and paragraph chunks of documents (`doc`). `index_items` records each item's content hash and the
embedding model that built it, so a re-run embeds only what changed and removes what is gone.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from email.utils import getaddresses

from .. import config, failpoint, store
from ..errors import NoDataError
from ..results import IndexResult
from . import chroma_store, chunks, embed

log = logging.getLogger(__name__)

KINDS = ("sent", "thread", "doc")
MAX_TEXT = 2000  # characters embedded per item; MiniLM reads ~256 tokens, the rest only costs time
NEAR_DUP = 0.95  # cosine at or above which two emails count as the same email (RAFT exclusion, diversity)
NEAR_DUP_TEXT = 0.8  # share of the shorter text's word 3-grams found in the other: the same email
MMR_LAMBDA = 0.7  # relevance vs. novelty in the diversity step
# Document passages put beside past emails: facts for the draft, not style, so few and only close matches.
# Measured with MiniLM on an office memo whose chunks hold one paragraph each: an instruction and the
# paragraph that answers it 0.47-0.76, unrelated instructions 0.0-0.3; shared words without a shared topic
# ("move our meeting to Friday" vs. "the team moves ... pack by Friday") 0.43-0.46, at the threshold. A
# wrong passage makes a small model write about it, a missing one only leaves a fact out: precision first
# (tests/test_index.py::test_documents_match_only_what_they_answer). A chunk that mixes several short
# paragraphs scores ~0.4 for each of its topics and is rarely used.
DOC_K = 2
DOC_MIN_SCORE = 0.45

Progress = Callable[[int, int | None, str | None], None]


@dataclass
class Hit:
    """One retrieved item: `id` is the index item id, `ref_id` the messages.id or documents.id."""

    id: str
    ref_id: int
    score: float
    kind: str
    date: str | None
    subject: str
    snippet: str
    text: str
    to: list[str] = field(default_factory=list)
    cite: str = ""

    def public(self) -> dict:
        """The fields `panza search --json` prints (no full text)."""
        d = asdict(self)
        d.pop("text")
        d["score"] = round(self.score, 4)
        return d


@dataclass
class _Item:
    id: str
    kind: str
    ref_id: int
    text: str
    meta: dict


# ---------------------------------------------------------------- items from the store

def addresses(raw: str | Iterable[str] | None) -> list[str]:
    """Lower-cased bare addresses from a header-like string or a list of them."""
    if not raw:
        return []
    return list(_addresses((raw,) if isinstance(raw, str) else tuple(raw)))


@functools.lru_cache(maxsize=4096)
def _addresses(parts: tuple[str, ...]) -> tuple[str, ...]:
    # a search reads the To: of each of its ~60 candidates, the same few people's again and again: parsed
    # once (email.utils is ~10 us a header)
    out: list[str] = []
    for _, addr in getaddresses(list(parts)):
        addr = addr.strip().lower()
        if "@" in addr and addr not in out:
            out.append(addr)
    return tuple(out)


def timestamp(value) -> int | None:
    """Seconds since the epoch for an ISO 8601 string, a date/datetime or a number; None if unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int(value.timestamp())


def person_key(address: str) -> str:
    """What the index stores for an address: a hash, enough to match a recipient, not to read one."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()[:20]


def message_text(subject: str | None, body: str | None) -> str:
    """What is embedded for an email: its subject, a blank line, its body, cut at MAX_TEXT characters."""
    return f"{(subject or '').strip()}\n\n{(body or '').strip()}".strip()[:MAX_TEXT]


def _message_items(conn: sqlite3.Connection) -> Iterator[_Item]:
    from ..ingest import messages

    for r in messages.live(conn):
        mine = bool(r["is_mine"])
        people = addresses([r["to_addrs"] or "", r["cc_addrs"] or ""]) if mine else addresses(r["from_addr"])
        ts = timestamp(r["date"])
        meta = {"kind": "sent" if mine else "thread", "ref": r["id"], "ts": ts if ts is not None else -1}
        if people:  # hashed: a shared Chroma server never sees who the user writes to
            meta["people"] = [person_key(a) for a in people]
        yield _Item(f"msg:{r['id']}", meta["kind"], r["id"], message_text(r["subject"], r["body"]), meta)


def _doc_items(conn: sqlite3.Connection) -> Iterator[_Item]:
    from ..ingest import documents

    for r in documents.live(conn):
        text = r["text"] or ""
        for c in chunks.chunk(text):
            meta = {"kind": "doc", "ref": r["id"], "ts": -1, "chunk": c.n, "start": c.start, "end": c.end,
                    "p0": c.para_start, "p1": c.para_end}
            yield _Item(f"doc:{r['id']}:{c.n}", "doc", r["id"], text[c.start:c.end][:MAX_TEXT], meta)


def items(conn: sqlite3.Connection) -> Iterator[_Item]:
    """Every item the index should hold, built from the store."""
    yield from _message_items(conn)
    yield from _doc_items(conn)


def item_dates(conn: sqlite3.Connection, item_ids: list[str]) -> dict[str, str]:
    """Dates (YYYY-MM-DD) of the messages behind index item ids (documents and unknown ids have none)."""
    out: dict[str, str] = {}
    for item_id in item_ids:
        row = conn.execute("SELECT m.date FROM index_items i JOIN messages m ON m.id = i.ref_id "
                           "WHERE i.item_id = ? AND i.kind != 'doc'", (item_id,)).fetchone()
        if row and row["date"]:
            out[item_id] = row["date"][:10]
    return out


def item_message(conn: sqlite3.Connection, item_id: str) -> sqlite3.Row | None:
    """(body, to_addrs, subject) of the message behind a mail item id, or None (documents, unknown ids)."""
    return conn.execute("SELECT m.body, m.to_addrs, m.subject FROM index_items i JOIN messages m ON m.id = i.ref_id "
                        "WHERE i.item_id = ? AND i.kind != 'doc'", (item_id,)).fetchone()


def item_instructions(conn: sqlite3.Connection, item_ids: list[str]) -> dict[str, str]:
    """{item id: the newest playback instruction of its message} for the mail items among `item_ids` that have one."""
    if not item_ids:
        return {}
    marks = ",".join("?" * len(item_ids))
    rows = conn.execute(
        f"SELECT i.item_id, p.instruction FROM index_items i JOIN pairs p ON p.message_id = i.ref_id "
        f"WHERE i.item_id IN ({marks}) AND i.kind != 'doc' AND p.status = 'ok' AND p.instruction IS NOT NULL "
        f"ORDER BY p.id", list(item_ids)).fetchall()
    return {r[0]: r[1] for r in rows}  # the newest pair wins


def _hash(item: _Item) -> str:
    raw = json.dumps([item.text, item.meta], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- sync

def sync(conn: sqlite3.Connection, on_progress: Progress | None = None, *, settings: config.Settings | None = None,
         embed_fn: Callable[[list[str]], object] | None = None, batch: int = 256) -> IndexResult:
    """Bring the collections in step with the store: embed new or changed items, remove gone ones."""
    t0 = time.perf_counter()
    settings = settings or config.load()
    model = settings.embedding_model
    embed_fn = embed_fn or (lambda texts: embed.embed(texts, model))
    cols, notice = chroma_store.open_collections(settings.chroma_url, model, embed.dims(model), KINDS)
    if notice:
        conn.execute("DELETE FROM index_items")
    have = {r[0]: (r[1], r[2], r[3]) for r in
            conn.execute("SELECT item_id, content_hash, model, kind FROM index_items")}
    repaired = sum(_reconcile(conn, cols[k], k, have) for k in KINDS)

    wanted: set[str] = set()
    todo: list[_Item] = []
    skipped: Counter[str] = Counter()
    hashes: dict[str, str] = {}
    for it in items(conn):
        if not it.text.strip():
            skipped["empty"] += 1
            continue
        wanted.add(it.id)
        h = hashes[it.id] = _hash(it)
        old = have.get(it.id)
        if old is None or old[:2] != (h, model) or old[2] != it.kind:
            todo.append(it)
            if old is not None and old[2] != it.kind:  # e.g. authorship re-decided: leave the old collection
                cols[old[2]].delete(ids=[it.id])
        else:
            it.text = ""  # unchanged: free the text early (100k items)
    gone = [i for i in have if i not in wanted]
    for i in range(0, len(gone), 5000):
        part = gone[i:i + 5000]
        for kind in KINDS:  # Chroma first, then the ledger: a crash in between repeats a harmless delete
            ids = [x for x in part if have[x][2] == kind]
            if ids:
                cols[kind].delete(ids=ids)
        with store.transaction(conn):
            conn.executemany("DELETE FROM index_items WHERE item_id = ?", [(x,) for x in part])

    embedded, errors = 0, []
    total = len(todo)
    todo.sort(key=lambda x: KINDS.index(x.kind))
    if on_progress:
        on_progress(0, total, "embedding")
    batch = chroma_store.batch_size(cols["sent"], batch)
    for i in range(0, total, batch):
        ok, vecs, errs = _embed_batch(todo[i:i + batch], embed_fn)
        errors += errs
        for kind in KINDS:
            sel = [j for j, x in enumerate(ok) if x.kind == kind]
            if sel:
                cols[kind].upsert(ids=[ok[j].id for j in sel], embeddings=vecs[sel],
                                  metadatas=[ok[j].meta for j in sel])
        if ok:
            now = store.now()
            with store.transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO index_items (item_id, kind, ref_id, content_hash, model, indexed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)", [(x.id, x.kind, x.ref_id, hashes[x.id], model, now) for x in ok])
            embedded += len(ok)
            failpoint.hit("index.batch")
        if on_progress:
            on_progress(min(i + batch, total), total, f"{embedded} embedded")
    summary = IndexResult(embedded=embedded, removed=len(gone), unchanged=len(wanted) - total,
                          total=conn.execute("SELECT count(*) FROM index_items").fetchone()[0], failed=len(errors),
                          errors=errors, skipped=dict(skipped), repaired=repaired, rebuilt=bool(notice),
                          notice=notice, model=model, seconds=round(time.perf_counter() - t0, 2))
    log.info("index sync: %s embedded, %s removed, %s unchanged, %s failed",
             embedded, len(gone), summary.unchanged, len(errors))
    return summary


def _reconcile(conn: sqlite3.Connection, col, kind: str, have: dict) -> int:
    """Repair a ledger that disagrees with a collection (deleted chroma dir, other server, crash)."""
    mine = [i for i, v in have.items() if v[2] == kind]
    if col.count() == len(mine):
        return 0
    present = chroma_store.all_ids(col)
    lost = [i for i in mine if i not in present]
    stray = list(present - set(mine))
    with store.transaction(conn):
        conn.executemany("DELETE FROM index_items WHERE item_id = ?", [(x,) for x in lost])
    for x in lost:
        del have[x]
    for i in range(0, len(stray), 5000):
        col.delete(ids=stray[i:i + 5000])
    if lost or stray:
        log.warning("index ledger repaired (%s): %d items to re-embed, %d stray items removed", kind, len(lost),
                    len(stray))
    return len(lost) + len(stray)


def _embed_batch(part: list[_Item], embed_fn) -> tuple[list[_Item], object, list[dict]]:
    """Embed a batch; when it fails, retry item by item so one bad item costs only itself."""
    import numpy as np

    try:
        return part, np.asarray(embed_fn([x.text for x in part]), dtype=np.float32), []
    except Exception as exc:  # noqa: BLE001 - any failure: isolate the item that caused it
        if len(part) == 1:
            return [], None, [{"id": part[0].id, "reason": f"{type(exc).__name__}: {exc}"[:200]}]
    ok, vecs, errors = [], [], []
    for x in part:
        o, v, e = _embed_batch([x], embed_fn)
        ok += o
        errors += e
        if o:
            vecs.append(v[0])
    return ok, (np.stack(vecs) if vecs else None), errors


# ---------------------------------------------------------------- search

@dataclass
class _Cand:
    id: str
    meta: dict
    vec: object
    score: float
    hit: Hit | None = None
    _shingles: frozenset | None = None

    def shingles(self) -> frozenset:
        if self._shingles is None:
            self._shingles = shingles(self.hit.text if self.hit else "")
        return self._shingles


def shingles(text: str, n: int = 3) -> frozenset:
    """Word n-grams of the lower-cased text (what near-duplicate detection compares)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def near_duplicate(a: frozenset, b: frozenset) -> bool:
    """One text is (almost) contained in the other: a forward, a re-send, the same email plus a signature."""
    if not a or not b:
        return False
    return len(a & b) / min(len(a), len(b)) >= NEAR_DUP_TEXT


def _before_clause(before) -> dict:
    ts = timestamp(before)
    if ts is None:
        raise ValueError(f"before={before!r} is not a date (use ISO 8601, e.g. 2001-05-01)")
    return {"$and": [{"ts": {"$lt": ts}}, {"ts": {"$gte": 0}}]}  # undated mail cannot be proven older


def _older(meta: dict, clause: dict | None) -> bool:
    if clause is None:
        return True
    ts = meta.get("ts", -1)
    return 0 <= ts < clause["$and"][0]["ts"]["$lt"]


def _candidates(cols: dict, qv, where: dict | None, n: int) -> list[_Cand]:
    """The n nearest items over the given collections (one query each, merged by score)."""
    import numpy as np

    out: list[_Cand] = []
    for col in cols.values():
        res = col.query(query_embeddings=[qv], n_results=n, where=where,
                        include=["metadatas", "distances", "embeddings"])
        out += [_Cand(i, m, np.asarray(e, dtype=np.float32), 1.0 - float(d)) for i, m, e, d in
                zip(res["ids"][0], res["metadatas"][0], res["embeddings"][0], res["distances"][0])]
    out.sort(key=lambda c: -c.score)
    return out[:n]


def _dated_candidates(cols: dict, qv, before: dict | None, where: dict | None, n: int) -> list[_Cand]:
    """Candidates older than `before`. A date filter that matches most items makes Chroma scan its metadata
    (slow at 100k), so filter a wider unfiltered fetch first and ask Chroma to filter only when that is short."""
    if before is None:
        return _candidates(cols, qv, where, n)
    wide = [c for c in _candidates(cols, qv, where, 4 * n) if _older(c.meta, before)]
    if len(wide) >= n:
        return wide[:n]
    return _candidates(cols, qv, before if where is None else {"$and": [*before["$and"], where]}, n)


def _redundant(c: _Cand, p: _Cand) -> tuple[bool, float]:
    import numpy as np

    sim = float(np.dot(c.vec, p.vec))
    return sim >= NEAR_DUP or near_duplicate(c.shingles(), p.shingles()), sim


def _mmr(pool: list[_Cand], k: int, chosen: list[_Cand], lam: float = MMR_LAMBDA) -> list[_Cand]:
    """Maximal marginal relevance: pick relevant items unlike those already picked; skip near-duplicates.

    Each candidate's redundancy (its highest similarity to an item chosen or picked) is raised as each item is
    picked, so every pair is compared once, not once per pick; ties go to the earlier candidate."""
    picked: list[_Cand] = []
    if k <= 0:
        return picked
    pool = list(pool)
    redundancy = [0.0] * len(pool)

    def absorb(p: _Cand) -> None:  # pool items that duplicate `p` go; the rest count their likeness to it
        nonlocal pool, redundancy
        keep = []
        for c, red in zip(pool, redundancy):
            dup, sim = _redundant(c, p)
            if not dup:
                keep.append((c, max(red, sim)))
        pool, redundancy = [c for c, _ in keep], [r for _, r in keep]

    for p in chosen:
        absorb(p)
    while pool and len(picked) < k:
        vals = [lam * c.score - (1 - lam) * red for c, red in zip(pool, redundancy)]
        best = vals.index(max(vals))
        picked.append(pool.pop(best))
        redundancy.pop(best)
        absorb(picked[-1])
    return picked


def _item_id(x) -> str:
    return f"msg:{x}" if isinstance(x, int) or (isinstance(x, str) and x.isdigit()) else str(x)


def search(query: str, k: int = 5, kinds: Iterable[str] = ("sent",), before=None, exclude_ids: Iterable = (),
           min_score: float | None = None, to: str | Iterable[str] | None = None, *,
           conn: sqlite3.Connection | None = None, settings: config.Settings | None = None,
           near_dup_of=None) -> list[Hit]:
    """Top-k diverse hits for `query`; with `to`, past mail to (or from) that person comes first.

    `before` keeps only items dated strictly earlier; `exclude_ids` takes message ids (int) or item ids;
    `near_dup_of` (the target email's text, or its vector) drops its near-duplicates (RAFT, evaluation).
    """
    settings = settings or config.load()
    if k <= 0 or not query or not query.strip():
        return []
    unknown = set(kinds or KINDS) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(sorted(unknown))}: use {', '.join(KINDS)}")
    if before is not None:
        _before_clause(before)  # a bad date is the caller's error, raised before any retry
    try:
        return _search(query, k, tuple(kinds or KINDS), before, exclude_ids, min_score, to, conn, settings,
                       near_dup_of)
    except NoDataError:
        raise
    except Exception:  # noqa: BLE001 - a cached handle to a collection another process rebuilt: look again once
        chroma_store.forget_collections()
        return _search(query, k, tuple(kinds or KINDS), before, exclude_ids, min_score, to, conn, settings,
                       near_dup_of)


def _search(query, k, kinds, before, exclude_ids, min_score, to, conn, settings, near_dup_of) -> list[Hit]:
    import numpy as np

    every = chroma_store.get_collections(settings.chroma_url, settings.embedding_model, KINDS)
    if not every:
        raise NoDataError("the retrieval index is empty (or was built by another embedding model)",
                          fix="run `panza index`")
    cols = {kind: every[kind] for kind in kinds if kind in every}
    dup_text = near_dup_of if isinstance(near_dup_of, str) else None
    if dup_text is None:  # one query searched twice in a row (past emails, then documents) embeds once
        vecs = [_query_vector(query, settings.embedding_model)]
    else:
        vecs = embed.embed([query, dup_text[:MAX_TEXT]], settings.embedding_model)
    qv = vecs[0]
    clause = _before_clause(before) if before is not None else None
    excluded = {_item_id(x) for x in exclude_ids}
    fetch = max(4 * k, 20) + len(excluded)
    wheres: list[dict | None] = [None]  # the Chroma filter of each pool, searched in turn while k are not chosen
    people = addresses(to) if to else []
    if people:  # selective, so Chroma's metadata filter is cheap here
        keys = [person_key(a) for a in people]
        wheres.insert(0, {"people": {"$contains": keys[0]}} if len(keys) == 1 else
                      {"$or": [{"people": {"$contains": a}} for a in keys]})

    def pool_of(where: dict | None) -> list[_Cand]:
        found = _dated_candidates(cols, qv, clause, where, fetch)
        if where is None and not found and not any(c.count() for c in every.values()):  # counted only then
            raise NoDataError("the retrieval index is empty", fix="run `panza index` (after `panza ingest`)")
        return found

    target = None
    if near_dup_of is not None:  # a text (vector + word overlap checks) or a bare vector
        tvec = vecs[1] if dup_text is not None else np.asarray(near_dup_of, dtype=np.float32)
        target = _Cand("target", {}, tvec, 1.0, Hit("target", -1, 1.0, "", None, "", "", dup_text or ""))
    own = conn is None
    conn = conn or store.connect()
    try:
        chosen: list[_Cand] = []
        for where in wheres:
            if len(chosen) >= k:  # past mail to the person filled the k: no wider search
                break
            pool = pool_of(where)
            taken = {c.id for c in chosen}
            pool = [c for c in pool if c.id not in excluded and c.id not in taken
                    and (min_score is None or c.score >= min_score)]
            pool = _hydrate(conn, pool)
            if target is not None:
                pool = [c for c in pool if not _redundant(c, target)[0]]
            chosen += _mmr(pool, k - len(chosen), chosen)
    finally:
        if own:
            conn.close()
    return [c.hit for c in chosen]


_QUERIES: dict[tuple[str, str], object] = {}


def _query_vector(query: str, model: str):
    key = (query, model)
    if key not in _QUERIES:
        while len(_QUERIES) >= 8:
            _QUERIES.pop(next(iter(_QUERIES)))
        _QUERIES[key] = embed.embed([query], model)[0]
    return _QUERIES[key]


def documents(query: str, k: int = DOC_K, *, min_score: float = DOC_MIN_SCORE, near_dup_of=None,
              conn: sqlite3.Connection | None = None, settings: config.Settings | None = None) -> list[Hit]:
    """Passages of the user's documents that match `query` closely (at most `k`; none when the index holds no
    documents). `near_dup_of` (a text) drops passages that contain it, as `search` does (evaluation)."""
    settings = settings or config.load()
    if k <= 0:
        return []
    try:
        return search(query, k, kinds=("doc",), min_score=min_score, conn=conn, settings=settings,
                      near_dup_of=near_dup_of)
    except NoDataError:  # no index at all: the email search beside it has said so already
        return []


def _snippet(text: str, n: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[:n - 1].rstrip() + "…"


def _hydrate(conn: sqlite3.Connection, cands: list[_Cand]) -> list[_Cand]:
    """Attach hits from the store (the collection holds no text); items gone since the last sync drop out."""
    from ..ingest import documents, messages

    msgs = messages.live_by_ids(conn, [c.meta["ref"] for c in cands if c.meta.get("kind") != "doc"])
    docs = documents.live_by_ids(conn, [c.meta["ref"] for c in cands if c.meta.get("kind") == "doc"])
    out = []
    for c in cands:
        m, ref = c.meta, c.meta["ref"]
        if m.get("kind") == "doc":
            if ref not in docs:
                continue
            d = docs[ref]
            text = (d["text"] or "")[m["start"]:m["end"]]
            c.hit = Hit(c.id, ref, c.score, "doc", None, d["title"] or d["path"].rsplit("/", 1)[-1],
                        _snippet(text), text, cite=chunks.cite(d["path"], m["p0"], m["p1"]))
        elif ref in msgs:
            r = msgs[ref]
            c.hit = Hit(c.id, ref, c.score, m["kind"], r["date"], r["subject"] or "", _snippet(r["body"] or ""),
                        r["body"] or "", to=addresses(r["to_addrs"]))
        else:
            continue
        out.append(c)
    return out


# ---------------------------------------------------------------- RAFT training context

def training_context(message_id: int, k: int | None = None, *, conn: sqlite3.Connection | None = None,
                     settings: config.Settings | None = None, query: str | None = None) -> list[Hit]:
    """Retrieved examples for one training target: only the user's mail dated strictly before it, never the
    target itself nor a near-duplicate of it (mostly the same words, or embedding cosine >= NEAR_DUP)."""
    from .. import playback
    from ..ingest import messages

    settings = settings or config.load()
    k = settings.rag_k if k is None else k
    own = conn is None
    conn = conn or store.connect()
    try:
        row = messages.by_id(conn, message_id)
        if row is None:
            raise NoDataError(f"no message with id {message_id}", fix="see `panza messages list` for ids")
        if timestamp(row["date"]) is None or k <= 0:
            return []  # an undated target has no provable past: no context rather than a possible leak
        if query is None:
            query = playback.instructions(conn, [message_id]).get(message_id)
            query = query if query is not None else f"{row['subject'] or ''}\n\n{row['body']}"
        hits = search(query, k=k, kinds=("sent",), before=row["date"], exclude_ids=[message_id],
                      conn=conn, settings=settings, near_dup_of=row["body"] or "")
        return [h for h in hits if h.ref_id != message_id]
    finally:
        if own:
            conn.close()


def carries_context(message_id: int, share: float | None = None) -> bool:
    """Whether this target's training prompt carries retrieved context (a stable draw at `share`)."""
    share = config.load().raft_context_share if share is None else share
    draw = int(hashlib.sha256(f"raft:{message_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return draw < share


def count(conn: sqlite3.Connection) -> int:
    """Items in the index (by the store's ledger)."""
    return conn.execute("SELECT count(*) FROM index_items").fetchone()[0]


def status(conn: sqlite3.Connection) -> dict:
    """What the index holds, by kind (for doctor and the TUI)."""
    rows = conn.execute("SELECT kind, count(*), max(indexed_at), group_concat(DISTINCT model) "
                        "FROM index_items GROUP BY kind").fetchall()
    return {"by_kind": {r[0]: r[1] for r in rows}, "total": sum(r[1] for r in rows),
            "models": sorted({m for r in rows for m in (r[3] or "").split(",") if m}),
            "last_indexed": max((r[2] for r in rows), default=None)}
