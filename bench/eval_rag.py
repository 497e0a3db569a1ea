"""Does retrieval help the small model? stock vs stock+RAG (and the adapter's pair when there is one) on the
newest held-out emails of one user, cheaply: only the held-out emails and the past emails retrieved for
them are played back (a full `panza playback` of a big mailbox takes an hour on 2 shared cores).

    python bench/eval_rag.py marcus --n 20 --seeds 3
    python bench/eval_rag.py allen-p --n 20 --seeds 3 --rag-k 2 --chars 400 --tag k2c400

Writes bench/results/eval_rag_<user>[_<tag>].json. Layout knobs: --rag-k, --chars (prompts.MAX_EXAMPLE_CHARS),
--min-score. Retrieval is leak-free (`index.training_context`: only mail dated before the email).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from eval_claim import ME, USERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("user", choices=sorted(USERS))
    ap.add_argument("--n", type=int, default=20, help="held-out emails (the newest)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rag-k", type=int, default=None)
    ap.add_argument("--chars", type=int, default=None, help="longest retrieved email in a prompt")
    ap.add_argument("--min-score", type=float, default=None)
    ap.add_argument("--configs", default="stock,stock+rag")
    ap.add_argument("--tag", default="")
    ap.add_argument("--home", default=None)
    args = ap.parse_args()
    home = Path(args.home or ROOT / "bench" / "out" / f"eval_rag_{args.user}")
    os.environ["PANZA_HOME"] = str(home)
    os.environ.setdefault("PANZA_THREADS", "1")  # llama.cpp's spinning threads crawl on a shared 2-core box

    from panza_local import config, evaluate, ingest, prompts, store
    from panza_local.retrieval import index

    if args.chars:
        prompts.MAX_EXAMPLE_CHARS = args.chars
    over = {k: v for k, v in {"rag_k": args.rag_k, "rag_min_score": args.min_score}.items() if v is not None}
    settings = config.load(over)
    conn = store.connect()
    t0 = time.perf_counter()
    times = {}
    if not conn.execute("SELECT 1 FROM messages LIMIT 1").fetchone():
        ingest.ingest(conn, [str(p) for p in USERS[args.user]], me=ME.get(args.user))
        times["ingest"] = round(time.perf_counter() - t0, 1)
    t = time.perf_counter()
    index.sync(conn, settings=settings)
    times["index"] = round(time.perf_counter() - t, 1)
    mine = [dict(r) for r in conn.execute("SELECT id, content_hash, body, thread, subject, to_addrs, date FROM messages "
                                          "WHERE is_mine = 1 AND deleted = 0 AND date IS NOT NULL "
                                          "AND length(body) > 40 ORDER BY date DESC, id DESC")]
    test = mine[: args.n]
    # the past emails retrieved for each held-out one (its instruction is the query, so play it back first)
    t = time.perf_counter()
    _playback(conn, test, settings)
    items = [_item(conn, m) for m in test]
    ctx_ids = set()
    for it in items:
        for h in index.training_context(it.message_id, settings.rag_k, conn=conn, settings=settings,
                                        query=it.instruction):
            ctx_ids.add(h.ref_id)
    _playback(conn, [m for m in mine if m["id"] in ctx_ids], settings)
    times["playback"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    result = evaluate.evaluate(items, configs=args.configs.split(","), seeds=args.seeds, settings=settings,
                               samples=args.n)
    times["eval"] = round(time.perf_counter() - t, 1)
    out = {"user": args.user, "n": len(items), "seeds": args.seeds, "rag_k": settings.rag_k,
           "rag_min_score": settings.rag_min_score, "max_example_chars": prompts.MAX_EXAMPLE_CHARS,
           "loadavg": Path("/proc/loadavg").read_text().split()[:3], "seconds": times,
           "configs": {c: {k: v for k, v in r.items() if k not in ("per_seed", "lengths")}
                       for c, r in result.configs.items() if r.get("bleu") is not None},
           "per_seed": {c: r.get("per_seed") for c, r in result.configs.items() if r.get("bleu") is not None},
           "notes": result.notes,
           # the drafts without the held-out emails and requests they came from (../shared/data stays out of the repo)
           "samples": [{k: v for k, v in x.items() if k not in ("reference", "instruction", "thread")}
                       for x in result.samples]}
    name = f"eval_rag_{args.user}" + (f"_{args.tag}" if args.tag else "")
    dest = ROOT / "bench" / "results" / f"{name}.json"
    dest.write_text(json.dumps(out, indent=2, default=str))
    keys = ("bleu", "rouge1", "rougeL", "bertscore", "greeting_match", "signoff_match", "length_ratio")
    for c, r in out["configs"].items():
        print(f"{c:12} " + "  ".join(f"{k} {r.get(k, float('nan')):.3f}±{r.get(k + '_std', 0) or 0:.3f}"
                                     for k in keys if r.get(k) is not None))
    print("seconds", times, "->", dest)


def _playback(conn, rows: list[dict], settings) -> None:
    from panza_local import catalogue, playback
    from panza_local.ingest import messages

    model = catalogue.resolve(settings.model)
    cfg, _ = playback.gen_config(model, settings)
    done = {r[0] for r in conn.execute("SELECT content_hash FROM pairs WHERE gen_config = ?", (cfg,))}
    idf = playback.q.idf_table(m["body"] for m in messages.mine(conn))
    for row in rows:
        if row["content_hash"] in done:
            continue
        t = time.perf_counter()
        res = playback.generate(row, model_path=model, settings=settings, idf=idf, user_name=settings.user_name)
        playback._save(conn, row, cfg, res, time.perf_counter() - t)


def _item(conn, m: dict):
    from panza_local.evaluate import Item

    pair = conn.execute("SELECT instruction FROM pairs WHERE message_id = ? AND status = 'ok' ORDER BY id DESC",
                        (m["id"],)).fetchone()
    return Item(instruction=(pair[0] if pair else f"Write an email about: {m['subject'] or 'this'}"),
                reference=m["body"], to=m["to_addrs"] or None, subject=m["subject"] or None, message_id=m["id"],
                thread=m["thread"] or None)


if __name__ == "__main__":
    main()
