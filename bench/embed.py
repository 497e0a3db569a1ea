"""MiniLM embeddings: panza's numpy encoder (retrieval/minilm.py) vs sentence-transformers, same run.

- cold query: a fresh process that imports the encoder, loads the model and embeds one instruction
  (what a cold `panza draft` pays before retrieval), rounds interleaved;
- warm query: one instruction at a time in a process that has embedded before (what every draft in `panza
  serve` or the TUI pays before retrieval), ms; also the numpy encoder multiplying rows by the transposed
  weight for every size (`minilm._FEW = 0`, the layout before `_linear`);
- bulk: texts/s embedding real mail in batches of 64 (what `panza index` does), both in this process,
  rounds interleaved; numpy spreads batches over one thread per core, torch uses its default threads;
- agreement: cosine between the two vectors of every text (real mail + odd inputs).

    python -m bench.embed [--quick] [--texts N] [--rounds N]

Writes bench/results/embed.{json,md}. Needs ../shared/data/panza (real mail).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._common import SHARED, machine

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
QUERY = "Ask Jonas to move our site visit to Friday"
COLD = {
    "numpy": "from panza_local.retrieval import embed; embed.embed([{q!r}])",
    "sentence-transformers": "from panza_local.retrieval import embed; "
                             "embed.model().encode([{q!r}], normalize_embeddings=True, show_progress_bar=False)",
}


def _texts(n: int) -> list[str]:
    from panza_local.retrieval.index import message_text

    files = sorted((SHARED / "panza").glob("*.jsonl"))
    if not files:
        raise SystemExit(f"needs real mail in {SHARED / 'panza'} (the shared data set)")
    per = -(-n // len(files))
    out = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= per:
                    break
                rec = json.loads(line)
                out.append(message_text(rec.get("subject"), rec.get("email")))
    return out[:n]


def main(quick: bool = False, texts: int | None = None, rounds: int | None = None) -> dict:
    """Run the benchmark (the contract of bench/run_all.py: `main(quick)` returning "rows")."""
    n_texts, rounds = texts or (200 if quick else 1000), rounds or (2 if quick else 3)
    import numpy as np

    from panza_local.retrieval import embed

    cold = {k: [] for k in COLD}
    for i in range(rounds):
        for k in (list(COLD) if i % 2 == 0 else list(COLD)[::-1]):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", COLD[k].format(q=QUERY)], check=True, capture_output=True)
            cold[k].append(time.perf_counter() - t0)
        print(f"cold query {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in cold.items())
              + f", load {os.getloadavg()[0]:.1f}", flush=True)

    texts = _texts(n_texts)
    enc, st = embed.encoder(), embed.model()
    n_tokens = sum(len(e.ids) for e in enc.tokenizer.encode_batch(texts))
    enc.encode(texts[:8])
    st.encode(texts[:8])
    from panza_local.retrieval import minilm

    queries = [f"{QUERY} ({i})" for i in range(20 if quick else 40)]  # new text each time: no cache answers
    few = minilm._FEW
    warm_ways = {"numpy": lambda q: embed.embed([q]),
                 "numpy, rows by transposed weight": lambda q: embed.embed([q]),
                 "sentence-transformers": lambda q: st.encode([q], normalize_embeddings=True, show_progress_bar=False)}
    warm: dict[str, list[float]] = {k: [] for k in warm_ways}
    for i, q in enumerate(queries):
        for k in (list(warm_ways) if i % 2 == 0 else list(warm_ways)[::-1]):
            minilm._FEW = 0 if k == "numpy, rows by transposed weight" else few
            t0 = time.perf_counter()
            warm_ways[k](q)
            warm[k].append((time.perf_counter() - t0) * 1000)
    minilm._FEW = few
    print("warm query: " + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in warm.items()), flush=True)
    bulk = {"numpy": [], "sentence-transformers": []}
    vecs = {}
    for i in range(rounds):
        for k in (list(bulk) if i % 2 == 0 else list(bulk)[::-1]):
            t0 = time.perf_counter()
            vecs[k] = (embed.embed(texts) if k == "numpy" else
                       st.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))
            bulk[k].append(len(texts) / (time.perf_counter() - t0))
        print(f"bulk {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} texts/s" for k, v in bulk.items())
              + f", load {os.getloadavg()[0]:.1f}", flush=True)
    odd = ["", " ", "hi", "Ünïcödé — ça va? 日本語 😀", "x" * 3000, "word " * 400]
    a, b = np.vstack([vecs["numpy"], embed.embed(odd)]), np.vstack([vecs["sentence-transformers"], st.encode(
        odd, normalize_embeddings=True, show_progress_bar=False)])
    cos = (a * b).sum(1)

    def med(v):
        return {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}

    out = {"machine": machine(), "bench": "embed", "rounds": rounds, "texts": len(texts), "tokens": n_tokens,
           "workers": embed._workers(), "load": round(os.getloadavg()[0], 1),
           "cold_query_s": {k: med(v) for k, v in cold.items()},
           "warm_query_ms": {k: med(v) for k, v in warm.items()},
           "bulk_texts_per_s": {k: med(v) for k, v in bulk.items()},
           "cosine": {"min": float(cos.min()), "median": float(np.median(cos)), "n": len(cos)}}
    c, k, w = out["cold_query_s"], out["bulk_texts_per_s"], out["warm_query_ms"]
    out["ratios"] = {"cold query: sentence-transformers / numpy":
                     round(c["sentence-transformers"]["median"] / c["numpy"]["median"], 2),
                     "warm query: sentence-transformers / numpy":
                     round(w["sentence-transformers"]["median"] / w["numpy"]["median"], 2),
                     "warm query: rows by transposed weight / numpy":
                     round(w["numpy, rows by transposed weight"]["median"] / w["numpy"]["median"], 2),
                     "bulk: numpy / sentence-transformers":
                     round(k["numpy"]["median"] / k["sentence-transformers"]["median"], 2)}
    from bench._common import row

    out["rows"] = [row("cold process embedding one query: numpy vs sentence-transformers", c["numpy"]["median"],
                       c["sentence-transformers"]["median"], "s", higher_is_better=False),
                   row("warm process embedding one query: numpy vs sentence-transformers", w["numpy"]["median"],
                       w["sentence-transformers"]["median"], "ms", higher_is_better=False),
                   row("bulk embedding, batches of 64: numpy vs sentence-transformers", k["numpy"]["median"],
                       k["sentence-transformers"]["median"], "texts/s")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(out, indent=2))
    md = ["# MiniLM embeddings: numpy encoder vs sentence-transformers (`python -m bench.embed`)\n",
          (f"{out['machine']}; {len(texts)} real emails ({n_tokens} tokens), batches of 64, {rounds} rounds "
          f"interleaved; 1-minute load average {out['load']} on 2 cores shared with other agents.\n"),
          "| | numpy | sentence-transformers | ratio |", "|---|---|---|---|",
          (f"| cold process: import, load, embed one query (s) | {c['numpy']['median']:.2f} | "
          f"{c['sentence-transformers']['median']:.2f} | {out['ratios']['cold query: sentence-transformers / numpy']} |"),
          (f"| warm process: embed one new query (ms) | {w['numpy']['median']:.1f} | "
          f"{w['sentence-transformers']['median']:.1f} | {out['ratios']['warm query: sentence-transformers / numpy']} |"),
          (f"| bulk (texts/s) | {k['numpy']['median']:.1f} | {k['sentence-transformers']['median']:.1f} | "
          f"{out['ratios']['bulk: numpy / sentence-transformers']} |"), "",
          (f"Warm query, numpy with every product as rows by the transposed weight (the layout before "
           f"`minilm._linear`): {w['numpy, rows by transposed weight']['median']:.1f} ms, "
           f"{out['ratios']['warm query: rows by transposed weight / numpy']}x the time of `_linear`'s. "
           f"Medians of {len(queries)} queries, interleaved.\n"),
          (f"Cosine between the two vectors of each text: min {cos.min():.7f} (1 - min = {1 - cos.min():.1e}), median {np.median(cos):.7f} "
          f"over {len(cos)} texts (real mail plus empty, 3,000-character and non-Latin inputs).")]
    (RESULTS / "embed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--texts", type=int, help="real emails to embed (default 1000, --quick 200)")
    ap.add_argument("--rounds", type=int, help="default 3, --quick 2")
    a = ap.parse_args()
    main(a.quick, a.texts, a.rounds)
