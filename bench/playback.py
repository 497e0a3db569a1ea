"""Playback throughput and quality: panza's generator vs. a naive one-call-per-email loop, same run, same model.

panza: a fixed system + few-shot prefix (llama.cpp reuses its KV cache across emails, so only the email is
evaluated), a grammar that forces one short imperative sentence (<= 40 tokens, stops at the full stop), guards,
retries and the extractive fallback. naive: one chat call per email with the email first and a plain request
("write the instruction that produced this email"), the engine's default max_tokens, no grammar, no guards.

    python bench/playback.py [--jsonl FILE] [--n 12] [--threads 1]

Prints one JSON object: emails/min of each, their ratio, median copy ratio and mean output tokens of each.
Runs in a throwaway PANZA_HOME; keep --n small on a shared 2-core machine (a few minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT = REPO.parent / "shared" / "data" / "panza" / "david_anonymous_clean.jsonl"
NAIVE = "{email}\n\nWrite the instruction that the author of this email gave to produce it."


def load_emails(path: Path, n: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            body = (rec.get("email") or "").replace("\r\n", "\n").strip()
            if body:
                rows.append({"id": len(rows), "body": body, "subject": rec.get("subject"), "thread": None,
                             "to_addrs": None, "content_hash": hashlib.sha256(body.encode()).hexdigest()})
    if not rows:
        sys.exit(f"{path} holds no emails: pass --jsonl FILE with {{\"email\": ...}} records")
    return rows[:n]


def measure(jsonl: Path, n: int, threads: int) -> dict:
    """Run both generators over the same `n` emails; return the figures and bench rows."""
    os.environ["PANZA_HOME"] = tempfile.mkdtemp(prefix="panza-bench-")

    from panza_local import catalogue, config, engine, playback
    from panza_local.playback import scoring as q

    settings = config.Settings(threads=threads)
    model = catalogue.embedded_path("smollm2-135m")
    rows = load_emails(jsonl, n)
    idf = q.idf_table(r["body"] for r in rows)
    engine.chat([{"role": "user", "content": "hi"}], model_path=model, settings=settings, max_tokens=1)  # load

    t0 = time.perf_counter()
    ours, our_tokens, sources = [], [], []
    for r in rows:
        res = playback.generate(r, model_path=model, settings=settings, idf=idf)
        ours.append(res.get("copy_ratio") or 0.0)
        sources.append(res.get("source"))
        our_tokens.append(engine.count_tokens(res.get("instruction") or "", model, settings))
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    naive, naive_tokens = [], []
    for r in rows:
        st = engine.Stats()
        text = engine.chat([{"role": "user", "content": NAIVE.format(email=r["body"])}], model_path=model,
                           settings=settings, seed=1, stats=st)
        naive.append(q.copy_ratio(text, r["body"]))
        naive_tokens.append(st.completion_tokens)
    naive_s = time.perf_counter() - t0

    n = len(rows)
    out = {
        "emails": n, "threads": threads, "load_avg_1m": round(os.getloadavg()[0], 2),
        "panza_emails_per_min": round(60 * n / ours_s, 2), "naive_emails_per_min": round(60 * n / naive_s, 2),
        "speedup": round(naive_s / ours_s, 2),
        "panza_copy_ratio_median": round(statistics.median(ours), 3),
        "naive_copy_ratio_median": round(statistics.median(naive), 3),
        "panza_tokens_mean_last_attempt": round(statistics.mean(our_tokens), 1),
        "naive_tokens_mean": round(statistics.mean(naive_tokens), 1),
        "panza_sources": {s: sources.count(s) for s in set(sources)},
    }
    from bench._common import row

    note = f"{n} emails, {threads} thread(s), load avg {out['load_avg_1m']}"
    out["rows"] = [
        row("playback emails/min (vs naive one-call loop)", out["panza_emails_per_min"],
            out["naive_emails_per_min"], "emails/min", note=note),
        row("playback median copy ratio (vs naive)", out["panza_copy_ratio_median"] or 1e-9,
            out["naive_copy_ratio_median"] or 1e-9, "ratio", higher_is_better=False, note=note),
    ]
    return out


def main(quick: bool = False) -> dict:
    """bench/run_all.py contract: a few emails when quick, a dozen otherwise."""
    return measure(DEFAULT, 4 if quick else 12, 1)


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jsonl", type=Path, default=DEFAULT, help="cleaned {email, subject} records")
    ap.add_argument("--n", type=int, default=12, help="emails per method")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 on a loaded shared machine)")
    args = ap.parse_args()
    if not args.jsonl.exists():
        sys.exit(f"{args.jsonl} not found: pass --jsonl FILE (e.g. ../shared/data/panza/*.jsonl)")
    out = measure(args.jsonl, args.n, args.threads)
    from bench._common import save

    save("playback", out)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
