"""Draft benchmark: time to first token and total time of a draft with RAG + adapter vs the stock model
with no RAG, same run, same instructions, same threads, interleaved so load drifts hit both alike.

"ttft" is what the user waits for: from the call to the first text piece, so the RAG row includes the
query embedding, the Chroma search and the longer prompt's evaluation. The past emails are one user's
cleaned sent mail from ../shared/data/panza, indexed in a temporary home; the adapter is a random rank-8
LoRA on q/v written by the training stage's GGUF exporter (random weights cost the same as trained ones).

    python -m bench.draft [--quick] [--threads N] [--max-tokens N] [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench._common import SHARED, print_rows, row, save

INSTRUCTIONS = [
    "Ask Prof. Aman for the contact of the person who set up their cluster",
    "Tell the team the Friday meeting moves to 3pm and ask who cannot make it",
    "Thank Maria for the report and ask for the final numbers by Thursday",
    "Decline the invitation to speak next month, suggest a colleague instead",
    "Follow up with the vendor about the delayed invoice from March",
    "Ask IT to extend my VPN access while I travel next week",
]


def _load_mail(conn, path: Path, limit: int) -> int:
    from panza_local import store

    n = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            body = (rec.get("email") or "").replace("\r\n", "\n").strip()
            if not body:
                continue
            conn.execute("INSERT OR IGNORE INTO messages (content_hash, date, from_addr, to_addrs, subject, body, "
                         "is_mine, ingested_at) VALUES (?,?,?,?,?,?,1,?)",
                         (hashlib.sha256(body.encode()).hexdigest(), f"2020-01-{1 + n % 28:02d}T10:00:00+00:00",
                          "me@example.org", f"person{n % 7}@example.org", rec.get("subject") or "", body, store.now()))
            n += 1
            if n >= limit:
                break
    return n


def _random_lora(base: Path, out: Path) -> Path:
    import numpy as np

    from panza_local import gguf_header
    from panza_local.train import export

    meta = gguf_header.read_header(base)["metadata"]
    arch = meta["general.architecture"]
    d, heads, kv = (int(meta[f"{arch}.{k}"]) for k in ("embedding_length", "attention.head_count",
                                                        "attention.head_count_kv"))
    rng, r, tensors = np.random.default_rng(0), 8, {}
    for layer in range(int(meta[f"{arch}.block_count"])):
        for mod, rows in (("q_proj", d), ("v_proj", d // heads * kv)):
            pre = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            tensors[f"{pre}.lora_A.weight"] = rng.normal(0, 0.02, (r, d)).astype("float32")
            tensors[f"{pre}.lora_B.weight"] = rng.normal(0, 0.02, (rows, r)).astype("float32")
    return export.write_gguf_lora(tensors, alpha=16, rank=r, base_gguf_path=base, out_path=out)


def _one(instruction: str, to: str | None, use_rag: bool, adapter, settings) -> dict:
    from panza_local import draft

    t0 = time.perf_counter()
    plan = draft.prepare(instruction, to=to, use_rag=use_rag, use_adapter=adapter, settings=settings)
    t_plan = time.perf_counter() - t0
    first = None
    for _ in draft.stream(plan):
        first = first or time.perf_counter()
    end = time.perf_counter()
    return {"ttft": (first or end) - t0, "total": end - t0, "plan": t_plan,
            "prompt_tokens": plan.stats["prompt_tokens"], "tokens": plan.stats["completion_tokens"],
            "retrieved": len(plan.retrieved), "notices": plan.notices}


def main(quick: bool = False, threads: int = 0, max_tokens: int = 64, runs: int | None = None,
         user: str = "david_anonymous_clean.jsonl") -> dict:
    home = Path(tempfile.mkdtemp(prefix="panza-bench-draft-"))
    os.environ["PANZA_HOME"] = str(home)
    from panza_local import catalogue, config, engine, store
    from panza_local.retrieval import index

    settings = config.load({"threads": threads, "max_tokens": max_tokens, "temperature": 0.0, "seed": 1,
                            "n_ctx": 4096, "rag_min_score": 0.0})
    src = SHARED / "panza" / user
    if not src.exists():
        raise SystemExit(f"needs {src} (the shared data set)")
    conn = store.connect()
    n_mail = _load_mail(conn, src, 60 if quick else 400)
    t = time.perf_counter()
    idx = index.sync(conn, settings=settings)
    index_s = time.perf_counter() - t
    base = catalogue.embedded_path("smollm2-135m")
    lora = _random_lora(base, home / "adapters" / "bench-random.gguf")
    # load both engines and warm the embedder once, outside the timed runs
    t = time.perf_counter()
    engine.load(base, None, n_ctx=settings.n_ctx, threads=settings.threads)
    engine.load(base, lora, n_ctx=settings.n_ctx, threads=settings.threads)
    load_s = time.perf_counter() - t
    index.search("warm up", 1, settings=settings)

    runs = runs or (2 if quick else len(INSTRUCTIONS))
    res = {"stock": [], "adapter+rag": []}
    for i in range(runs):
        instr = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        to = f"person{i % 7}@example.org"
        order = [("stock", False, False), ("adapter+rag", True, lora)]
        for name, rag, adapter in (order if i % 2 == 0 else order[::-1]):
            res[name].append(_one(instr, to if rag else None, rag, adapter, settings))

    def med(name, key):
        return statistics.median(r[key] for r in res[name])

    rows = [
        row("draft ttft: adapter+RAG vs stock no-RAG (s)", med("adapter+rag", "ttft"), med("stock", "ttft"), "s",
            higher_is_better=False, note="ratio < 1: RAG + adapter cost this much more"),
        row("draft total: adapter+RAG vs stock no-RAG (s)", med("adapter+rag", "total"), med("stock", "total"), "s",
            higher_is_better=False),
        row("prompt tokens: adapter+RAG vs stock", med("adapter+rag", "prompt_tokens"), med("stock", "prompt_tokens"),
            "tokens", higher_is_better=False),
        row("retrieval + prompt build (prepare) (s)", med("adapter+rag", "plan"), med("stock", "plan"), "s",
            higher_is_better=False),
    ]
    out = {"rows": rows, "runs": runs, "max_tokens": max_tokens, "threads": settings.threads or engine.physical_cores(),
           "mail_indexed": n_mail, "index_s": round(index_s, 2), "index": {k: idx[k] for k in ("embedded", "total")},
           "engine_load_s": round(load_s, 2),
           "retrieved_per_draft": med("adapter+rag", "retrieved"),
           "tokens_generated": {k: [r["tokens"] for r in v] for k, v in res.items()},
           "raw": {k: [{kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in r.items() if kk != "notices"}
                       for r in v] for k, v in res.items()}}
    print_rows(rows)
    print(f"{runs} runs each, {max_tokens} max tokens, threads={out['threads']}, {n_mail} emails indexed "
          f"in {out['index_s']} s, engines loaded in {out['engine_load_s']} s")
    save("draft", out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="0 = one per physical core")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int)
    a = ap.parse_args()
    main(a.quick, a.threads, a.max_tokens, a.runs)
