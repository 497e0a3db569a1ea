"""Choose what to train on when a mailbox has more pairs than the run can use.

Three rules, in order: near-duplicate emails go (the newest copy stays: a template sent forty times teaches
one email forty times); then the newest emails come first (a voice drifts, and the newest mail is what the
user writes now); and among them the pick is spread over recipients and topics (the normalised subject), so
the one colleague written to daily does not crowd out the rest. Every choice and every drop carries a reason,
counted in `panza train --json` under `selection`.

Near-duplicates: MinHash over word 3-shingles with LSH banding finds candidate pairs in about linear time;
each candidate is confirmed by the exact Jaccard similarity of the shingle sets (>= NEAR_DUP). With 16 bands of
4 rows a pair at 0.75 becomes a candidate with probability 0.998.
"""

from __future__ import annotations

import heapq
import re
import zlib
from collections import Counter
from email.utils import getaddresses

import numpy as np

NEAR_DUP = 0.75
"""Jaccard similarity of word 3-shingles at and above which two emails are near-copies. The sample mailbox's
template-made pairs (the same sentences reordered, a day changed) score 0.77-0.82; distinct emails to the
same person on the same topic stay under 0.45."""
RECENCY_W = 4.0
"""How much age weighs against spread: the oldest email costs as much as 4 earlier picks of its recipient or topic."""
BANDS, ROWS = 16, 4
_PRIME = 4294967311  # > 2**32, so crc32 values are distinct residues
_RNG = np.random.default_rng(20250101)
_A = _RNG.integers(1, 2**31, BANDS * ROWS, dtype=np.uint64)
_B = _RNG.integers(0, 2**31, BANDS * ROWS, dtype=np.uint64)
_SUBJ_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|tr)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def shingles(text: str, n: int = 3) -> set[int]:
    """crc32 of the email's lowercase word n-grams (the words themselves for an email shorter than n)."""
    words = re.findall(r"\w+", text.lower())
    grams = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))] if words else [""]
    return {zlib.crc32(g.encode("utf-8")) for g in grams}


def _minhash(sh: set[int]) -> np.ndarray:
    x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
    return ((_A[:, None] * x[None, :] + _B[:, None]) % _PRIME).min(axis=1)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def near_duplicates(texts: list[str], order: list[int], threshold: float = NEAR_DUP) -> dict[int, int]:
    """{index: index of the kept email it copies} for every near-duplicate, visiting `order` (newest first):
    the first-visited copy is kept."""
    sets = [shingles(t) for t in texts]
    buckets: dict[tuple, list[int]] = {}
    dups: dict[int, int] = {}
    for i in order:
        sig = _minhash(sets[i])
        keys = [(b, sig[b * ROWS:(b + 1) * ROWS].tobytes()) for b in range(BANDS)]
        cands = {j for k in keys for j in buckets.get(k, ())}
        twin = next((j for j in sorted(cands) if jaccard(sets[i], sets[j]) >= threshold), None)
        if twin is not None:
            dups[i] = twin
            continue
        for k in keys:
            buckets.setdefault(k, []).append(i)
    return dups


def recipient_of(to: str | None) -> str | None:
    """The first address an email went to, lowercased (None: unknown)."""
    addrs = [a.lower() for _, a in getaddresses([to or ""]) if a]
    return addrs[0] if addrs else None


def topic_of(subject: str | None, thread: str | None = None) -> str | None:
    """The subject without Re:/Fwd: prefixes, lowercased, spaces collapsed (else the thread; None: unknown)."""
    s = _SUBJ_PREFIX.sub("", subject or "").strip().lower()
    s = re.sub(r"\s+", " ", s)
    return s or (thread or None)


def choose(examples: list, k: int, threshold: float = NEAR_DUP) -> tuple[list, dict]:
    """(the chosen examples in their original order, a report of what was chosen and why) for at most `k` of
    `examples` (data.Example; `meta` may hold date, to, subject, thread)."""
    n = len(examples)
    meta = [e.meta or {} for e in examples]
    # newest first: by date where known, else by position (pairs come oldest first)
    order = sorted(range(n), key=lambda i: (meta[i].get("date") or "", i), reverse=True)
    rank = {i: r for r, i in enumerate(order)}
    dups = near_duplicates([e.target for e in examples], order, threshold)
    recips = [recipient_of(m.get("to")) for m in meta]
    topics = [topic_of(m.get("subject"), m.get("thread")) for m in meta]
    c_r: Counter = Counter()
    c_t: Counter = Counter()

    def score(i: int) -> float:
        return (c_r[recips[i]] if recips[i] else 0) + (c_t[topics[i]] if topics[i] else 0) + RECENCY_W * rank[i] / max(1, n)

    heap = [(score(i), i) for i in order if i not in dups]
    heapq.heapify(heap)
    chosen: dict[int, str] = {}
    while heap and len(chosen) < k:
        s, i = heapq.heappop(heap)
        now = score(i)
        if now > s + 1e-12:  # its recipient or topic was picked since: back in line at its new score
            heapq.heappush(heap, (now, i))
            continue
        if recips[i] and not c_r[recips[i]]:
            why = "new_recipient"
        elif topics[i] and not c_t[topics[i]]:
            why = "new_topic"
        else:
            why = "recent"
        chosen[i] = why
        c_r[recips[i]] += 1
        c_t[topics[i]] += 1
    keep = sorted(chosen)
    dates = [meta[i].get("date") for i in keep if meta[i].get("date")]
    report = {
        "available": n, "chosen": len(keep), "limit": k,
        "chosen_by": dict(Counter(chosen.values())),
        "dropped": {"near_duplicate": len(dups), "over_budget": n - len(dups) - len(keep)},
        "recipients": {"available": len({r for r in recips if r}), "chosen": len({recips[i] for i in keep if recips[i]})},
        "topics": {"available": len({t for t in topics if t}), "chosen": len({topics[i] for i in keep if topics[i]})},
        "dates": {"oldest": min(dates), "newest": max(dates)} if dates else None,
    }
    return [examples[i] for i in keep], report
