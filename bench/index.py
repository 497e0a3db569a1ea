"""Retrieval benchmark: panza's index (Chroma HNSW through `index.sync` / `index.search`) vs brute-force numpy
cosine over the very same embeddings, in the same run.

Rows:
- end-to-end indexing throughput with the real embedding model (items/s) on N_REAL Enron sent emails;
- index-only throughput at 10k and 100k items (embeddings precomputed once and reused; the 100k set is the
  Enron sent set replicated with distinct ids, each copy's vector jittered so the copies are distinct);
- query latency p50/p95 at 10k and 100k: raw Chroma top-5, the full `index.search()` (MMR + store lookup,
  query embedding excluded and timed on its own), brute-force numpy cosine top-5; HNSW recall@5 vs exact;
- recall sanity on one Enron user: for held-back sent emails, how often the top-5 retrieved for the playback
  instruction include an email to the same recipient, vs. the chance of that for 5 random earlier emails.

Run: `python -m bench.index [--sizes 10000 100000] [--real 1000] [--queries 200]`. Results: bench/out/index.json.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import hashlib
import mailbox
import math
import os
import re
import statistics
import sys
import tempfile
import time
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

import numpy as np

from bench._common import OUT, SHARED, peak_rss_mb, print_rows, row, save

QUOTE = re.compile(r"^(-{2,}\s*Original Message|-{2,}\s*Forwarded by|\s*>|.*\d{2}/\d{2}/\d{4} \d{2}:\d{2} [AP]M)",
                   re.MULTILINE)


def _body(msg) -> str:
    part = msg
    if msg.is_multipart():
        part = next((p for p in msg.walk() if p.get_content_type() == "text/plain"), None)
        if part is None:
            return ""
    raw = part.get_payload(decode=True) or b""
    text = raw.decode(part.get_content_charset() or "latin-1", errors="replace")
    m = QUOTE.search(text)  # keep what the author wrote, not the quoted thread under it
    return (text[:m.start()] if m else text).strip()


def load_enron(users: list[str] | None = None) -> list[dict]:
    """Unique (by body) Enron sent emails: subject, body, to (list), date (ISO), user."""
    folder = SHARED / "enron" / "sent"
    if not folder.is_dir():
        sys.exit(f"needs the shared data set at {folder}")
    seen, out = set(), []
    for path in sorted(folder.glob("*.mbox")):
        user = path.name.split(".")[1]
        if users and user not in users:
            continue
        for msg in mailbox.mbox(str(path), factory=lambda f: email.message_from_binary_file(
                f, policy=email.policy.compat32), create=False):
            body = _body(msg)
            key = hashlib.sha1(" ".join(body.split()).encode()).hexdigest()
            if len(body) < 20 or key in seen:
                continue
            seen.add(key)
            try:
                date = parsedate_to_datetime(msg["Date"]).astimezone().isoformat()
            except (TypeError, ValueError):
                date = ""
            to = [a.lower() for _, a in getaddresses([str(msg.get("To", "")), str(msg.get("Cc", ""))]) if "@" in a]
            out.append({"subject": str(msg.get("Subject", "") or ""), "body": body, "to": to, "date": date,
                        "user": user})
    return out


def cached_embeddings(texts: list[str], name: str = "all-minilm-l6-v2") -> tuple[np.ndarray, float]:
    """Embeddings of `texts`, computed once and cached in bench/out (returns them and the embed seconds)."""
    from panza_local.retrieval import embed

    key = hashlib.sha1("\0".join(texts).encode()).hexdigest()[:16]
    cache = OUT / f"index_emb_{name}_{key}.npy"
    if cache.exists():
        return np.load(cache), 0.0
    t0 = time.perf_counter()
    vecs = embed.embed(texts, name)
    secs = time.perf_counter() - t0
    OUT.mkdir(exist_ok=True)
    np.save(cache, vecs)
    return vecs, secs


@contextlib.contextmanager
def fresh_home():
    """A throw-away PANZA_HOME for one stage."""
    from panza_local.retrieval import chroma_store

    old = os.environ.get("PANZA_HOME")
    with tempfile.TemporaryDirectory(prefix="panza-bench-index-") as tmp:
        os.environ["PANZA_HOME"] = tmp
        chroma_store.forget_clients()
        try:
            yield Path(tmp)
        finally:
            chroma_store.forget_clients()
            if old is None:
                os.environ.pop("PANZA_HOME", None)
            else:
                os.environ["PANZA_HOME"] = old


def insert(conn, mails: list[dict], n: int) -> list[tuple[str, str]]:
    """Insert n sent messages (the mails cycled; copy r gets a distinct subject) and return (subject, body)."""
    from panza_local import store

    rows, out = [], []
    for i in range(n):
        m, r = mails[i % len(mails)], i // len(mails)
        subject = m["subject"] if r == 0 else f"{m['subject']} #{r}"
        rows.append((i + 1, hashlib.sha1(f"{i}".encode()).hexdigest(), m["date"], "me@enron.com", ",".join(m["to"]),
                     subject, m["body"], 1, store.now()))
        out.append((subject, m["body"]))
    with store.transaction(conn):
        conn.executemany("INSERT INTO messages (id, content_hash, date, from_addr, to_addrs, subject, body, is_mine, "
                         "ingested_at) VALUES (?,?,?,?,?,?,?,?,?)", rows)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def bench_real(mails: list[dict], n: int) -> dict:
    """End-to-end `index.sync` with the real embedding model, then a no-op re-sync."""
    from panza_local import store
    from panza_local.retrieval import embed, index

    embed.embed(["warm up the model"])  # model load is a one-off, not throughput
    with fresh_home():
        conn = store.connect()
        insert(conn, mails, n)
        t0 = time.perf_counter()
        first = index.sync(conn)
        secs = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = index.sync(conn)
        resync = time.perf_counter() - t0
        conn.close()
    assert first.embedded == n and again.embedded == 0
    return {"n": n, "seconds": secs, "items_per_s": n / secs, "resync_seconds": resync}


def bench_size(mails: list[dict], base: np.ndarray, n: int, queries: np.ndarray, query_texts: list[str],
               rng: np.random.Generator) -> dict:
    """Index n items from precomputed vectors, then time queries: Chroma, index.search, numpy brute force."""
    from panza_local import config, store
    from panza_local.retrieval import chroma_store, embed, index

    with fresh_home():
        conn = store.connect()
        pairs = insert(conn, mails, n)
        vec_of: dict[int, np.ndarray] = {}
        matrix = np.empty((n, base.shape[1]), dtype=np.float32)
        for i, (subject, body) in enumerate(pairs):
            v = base[i % len(mails)]
            if i >= len(mails):  # a copy: jitter it so the collection holds n distinct vectors
                v = v + rng.normal(0, 0.02, v.shape).astype(np.float32)
                v /= np.linalg.norm(v)
            matrix[i] = v
            vec_of[hash(index.message_text(subject, body))] = v
        t0 = time.perf_counter()
        out = index.sync(conn, embed_fn=lambda texts: np.stack([vec_of[hash(t)] for t in texts]), batch=2000)
        sync_s = time.perf_counter() - t0
        assert out.embedded == n, out
        settings = config.load()
        col = chroma_store.get_collections(settings.chroma_url, settings.embedding_model, ("sent",))["sent"]

        chroma_ms, search_ms, numpy_ms, recall = [], [], [], []
        cached = dict(zip(query_texts, queries))
        real_embed = embed.embed
        embed.embed = lambda texts, name=None: np.stack([cached[t] for t in texts])  # query embedding timed apart
        try:
            for q, text in zip(queries, query_texts):
                t0 = time.perf_counter()
                res = col.query(query_embeddings=[q], n_results=5, include=["distances"])
                chroma_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                index.search(text, k=5, conn=conn, settings=settings)
                search_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                sims = matrix @ q
                top = np.argpartition(-sims, 5)[:5]
                top = top[np.argsort(-sims[top])]
                numpy_ms.append((time.perf_counter() - t0) * 1000)
                exact = {f"msg:{i + 1}" for i in top}
                recall.append(len(exact & set(res["ids"][0])) / 5)
        finally:
            embed.embed = real_embed
        conn.close()
    return {"n": n, "sync_seconds": sync_s, "index_items_per_s": n / sync_s,
            "chroma_p50_ms": statistics.median(chroma_ms), "chroma_p95_ms": pct(chroma_ms, 0.95),
            "search_p50_ms": statistics.median(search_ms), "search_p95_ms": pct(search_ms, 0.95),
            "numpy_p50_ms": statistics.median(numpy_ms), "numpy_p95_ms": pct(numpy_ms, 0.95),
            "hnsw_recall_at_5": statistics.mean(recall)}


def first_sentence(body: str) -> str:
    m = re.search(r"(.{20,}?[.!?])(\s|$)", " ".join(body.split()))
    return m.group(1) if m else " ".join(body.split())[:160]


def recall_sanity(mails: list[dict], base: np.ndarray, user: str, holdout: float = 0.1) -> dict:
    """Held-back sent mail of one user: top-5 for its instruction includes mail to the same recipient?"""
    from panza_local import store
    from panza_local.playback import scoring as pq
    from panza_local.retrieval import index

    mine = sorted((m for m in mails if m["user"] == user and m["date"] and m["to"]), key=lambda m: m["date"])
    cut = int(len(mine) * (1 - holdout))
    past, held = mine[:cut], mine[cut:]
    vec_of = {id(m): v for m, v in zip(mails, base)}
    vecs = [vec_of[id(m)] for m in past]
    idf = pq.idf_table(m["body"] for m in mine)
    out = {"user": user, "indexed": len(past), "held_back": len(held)}
    with fresh_home():
        conn = store.connect()
        pairs = insert(conn, past, len(past))
        by_text = {index.message_text(s, b): v for (s, b), v in zip(pairs, vecs)}
        index.sync(conn, embed_fn=lambda texts: np.stack([by_text[t] for t in texts]))
        for label, make in (("extractive", lambda m: pq.extractive(
                m["body"], subject=m["subject"], to_name=pq.recipient(m["body"], ",".join(m["to"])), idf=idf)),
                            ("first_sentence", lambda m: first_sentence(m["body"]))):
            got, chance, with_to = [], [], []
            for m in held:
                instr = make(m)
                hits = index.search(instr, k=5, kinds=("sent",), conn=conn)
                want = set(m["to"])
                got.append(any(want & set(h.to) for h in hits))
                n_match = sum(1 for p in past if want & set(p["to"]))
                n = len(past)
                chance.append(1 - math.comb(n - n_match, 5) / math.comb(n, 5))
                hits_to = index.search(instr, k=5, kinds=("sent",), to=list(want), conn=conn)
                with_to.append(any(want & set(h.to) for h in hits_to))
            out[label] = {"same_recipient_in_top5": statistics.mean(got), "random_5": statistics.mean(chance),
                          "with_to_param": statistics.mean(with_to)}
        conn.close()
    return out


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(quick: bool = False) -> dict:
    """run_all's entry: the full run, or with `quick` 10k items only, 200 real and 100 queries."""
    return measure(sizes=[10_000] if quick else [10_000, 100_000], real_n=200 if quick else 500,
                   n_queries=100 if quick else 200)


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--real", type=int, default=500, help="items for the end-to-end (real model) throughput")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--user", default="allen-p", help="Enron user for the recall sanity check")
    args = ap.parse_args(argv)
    measure(args.sizes, args.real, args.queries, args.user)
    return 0


def measure(sizes: list[int], real_n: int, n_queries: int, user: str = "allen-p") -> dict:
    """Every row (see the module docstring); printed, saved to bench/out/index.json and returned."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    rng = np.random.default_rng(0)

    from panza_local.retrieval import index

    mails = load_enron()
    print(f"{len(mails)} unique Enron sent emails", file=sys.stderr)
    base, embed_s = cached_embeddings([index.message_text(m["subject"], m["body"]) for m in mails])
    qmails = [mails[i] for i in rng.choice(len(mails), size=n_queries, replace=False)]
    query_texts = [first_sentence(m["body"]) for m in qmails]
    from panza_local.retrieval import embed

    embed.embed(query_texts[:2])
    one = []
    for t in query_texts[:50]:
        t0 = time.perf_counter()
        embed.embed([t])
        one.append((time.perf_counter() - t0) * 1000)
    queries = embed.embed(query_texts)

    say(f"embedded {len(mails)} texts in {embed_s:.0f} s (0 = cached); timing the real model on {real_n}")
    real = bench_real(mails, min(real_n, len(mails))) if real_n else None
    say(f"real model: {real['items_per_s']:.1f} items/s" if real else "real model: skipped (--real 0)")
    results = []
    for n in sizes:
        results.append(bench_size(mails, base, n, queries, query_texts, rng))
        say(f"{n} items: {results[-1]}")
    sanity = recall_sanity(mails, base, user)
    say(f"recall sanity: {sanity}")

    rows = [row(f"index: embed+index, real model, {real['n']} items", real["items_per_s"],
                real["items_per_s"], "items/s", note="no baseline: the model dominates"),
            row("index: re-sync of unchanged data", real["resync_seconds"], real["seconds"], "s",
                higher_is_better=False, note="baseline = the first sync")] if real else []
    for s in results:
        n = f"{s['n'] // 1000}k"
        rows += [row(f"index-only throughput at {n}", s["index_items_per_s"], s["index_items_per_s"], "items/s"),
                 row(f"query p50 at {n}: chroma vs numpy", s["chroma_p50_ms"], s["numpy_p50_ms"], "ms", False),
                 row(f"query p95 at {n}: chroma vs numpy", s["chroma_p95_ms"], s["numpy_p95_ms"], "ms", False),
                 row(f"search() p95 at {n} (MMR+store) vs numpy", s["search_p95_ms"], s["numpy_p95_ms"], "ms",
                     False),
                 row(f"HNSW recall@5 vs exact at {n}", s["hnsw_recall_at_5"], 1.0, "share")]
    for label in ("extractive", "first_sentence"):
        r = sanity[label]
        rows.append(row(f"same recipient in top-5 ({label}) vs random", r["same_recipient_in_top5"], r["random_5"],
                        "share"))
    print_rows(rows)
    print(f"query embedding alone: p50 {statistics.median(one):.1f} ms, p95 {pct(one, 0.95):.1f} ms; "
          f"embedding {len(mails)} texts took {embed_s:.1f} s (0 = cached); peak RSS {peak_rss_mb():.0f} MB",
          file=sys.stderr)
    out = {"rows": rows, "real": real, "sizes": results, "recall_sanity": sanity,
           "query_embed_p50_ms": statistics.median(one), "query_embed_p95_ms": pct(one, 0.95),
           "peak_rss_mb": peak_rss_mb(), "load_avg": os.getloadavg()}
    print(f"saved {save('index', out)}", file=sys.stderr)
    return out


if __name__ == "__main__":
    sys.exit(cli())
