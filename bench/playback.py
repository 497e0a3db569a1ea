"""Playback: batched (several emails per llama.cpp decode, `playback/batch.py`) vs one at a time, same run,
each on the base model as shipped and on its serving copy (serving.py: the embedded model's Q4_1 has
no fast prompt kernel; a Q4_K_M base gets a BF16 copy for playback alone where the CPU has BF16 dot products;
playback builds the copy once, inside the timed run, and evaluates its prompts there).

Every path runs `playback.run` on the same store, the same emails (the oldest N of an Enron user no eval
uses) and the same seeds; between them the pairs are deleted, so each generates everything. The baseline is
what playback did before either change: one at a time on the shipped file. Quality is the store's own
metric: recall@1 against the user's whole mailbox, the median copy ratio, and the share of instructions that
came from the keyword fallback.

    python bench/playback.py [--mbox FILE] [--me ADDRESS] [--n 80] [--threads 1] [--parallel N] [--model NAME]

Writes bench/results/playback.json and playback.md. On a shared 2-core machine wall time swings with the
other work on it, so the CPU seconds of this process (one llama.cpp thread: the work itself) are reported
next to emails per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench._common import SHARED, machine, row, scratch

DEFAULT = SHARED / "enron" / "sent" / "enron.bass-e.sent_items.mbox"
ME = "eric.bass@enron.com"
RESULTS = REPO / "bench" / "results"


# (label, sequences per decode or None for --parallel, the serving copy): the baseline first
# (the copy is built inside the first timed run that uses it; the next finds it, as every later playback does)
PATHS = (("one at a time", 1, False), ("batched", None, False), ("batched, serving copy", None, True),
         ("batched, copy built before", None, True), ("one at a time, serving copy", 1, True))


def _one(conn, n: int, parallel: int | None, settings) -> dict:
    from panza_local import playback

    conn.execute("DELETE FROM pairs")
    c0, t0 = time.process_time(), time.perf_counter()
    out = playback.run(conn, limit=n, settings=settings, parallel=parallel)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    reasons: dict[str, int] = {}
    for (r,) in conn.execute("SELECT reason FROM pairs WHERE reason IS NOT NULL"):
        for x in r.split(";"):
            reasons[x] = reasons.get(x, 0) + 1
    done = out.generated + out.failed
    return {"parallel": out.parallel, "serving_copy": settings.merge_adapter,
            "emails": done, "seconds_generate": out.seconds, "seconds_with_scoring": round(wall, 1),
            "cpu_seconds": round(cpu, 1),
            "emails_per_min": round(60 * done / out.seconds, 1),
            "emails_per_cpu_min": round(60 * done / cpu, 1),
            "recall_at_1": out.recall_at_1, "copy_ratio_median": out.copy_ratio_median,
            "model": out.model, "fallback": out.fallback, "failed": out.failed,
            "fallback_share": round(out.fallback / max(1, out.generated), 3),
            "recall_by_source": out.recall_by_source, "rejections": reasons,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def measure(mbox: Path, me: str, n: int, threads: int, parallel: int | None, model: str | None = None) -> dict:
    os.environ["PANZA_HOME"] = str(scratch("panza-bench-"))
    import dataclasses

    from panza_local import catalogue, config, engine, ingest, serving, store

    conn = store.connect()
    ing = ingest.ingest(conn, [str(mbox)], me=[me])
    settings = config.load()
    settings.threads = threads
    settings.model = model or settings.model  # every path plays back with it
    model_path = catalogue.resolve(settings.model)
    engine.chat([{"role": "user", "content": "hi"}], model_path=model_path, settings=settings, max_tokens=1)
    pool = conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1 AND deleted = 0").fetchone()[0]
    paths = {}
    for label, par, copy in PATHS:
        if copy and not (serving.worth_it(model_path) or serving.prompt_copy_worth_it(model_path)):
            continue  # playback makes no copy of this base on this CPU
        if copy and par == 1 and not serving.worth_it(model_path):
            continue  # playback's copy of a base with fast kernels is for batches only (serving.py)
        s = dataclasses.replace(settings, merge_adapter=copy)
        paths[label] = _one(conn, n, par if par is not None else parallel, s)
        print(f"{label}: {paths[label]['emails_per_min']} emails/min, recall@1 {paths[label]['recall_at_1']}",
              flush=True)
    conn.close()
    base = paths["one at a time"]
    return {"mbox": str(mbox.relative_to(SHARED)) if mbox.is_relative_to(SHARED) else mbox.name,
            "stored": ing.stored, "pool": pool, "n": n, "threads": threads, "model": Path(model_path).name,
            "paths": paths, "baseline": "one at a time",
            "speedup_wall": {k: round(v["emails_per_min"] / base["emails_per_min"], 2) for k, v in paths.items()},
            "speedup_cpu": {k: round(base["cpu_seconds"] / v["cpu_seconds"], 2) for k, v in paths.items()}}


def _md(res: dict) -> str:
    cols = list(res["paths"])
    lines = [f"# Playback: batched vs one at a time ({res['mbox']}, {res['n']} emails, pool {res['pool']})", "",
             (f"Machine: {machine()}; llama.cpp threads {res['threads']}; model {res['model']}; load avg "
              f"{' / '.join(str(v['load_avg_1m']) for v in res['paths'].values())} after each run "
              f"(in the order of the columns)."), "",
             "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label in [("parallel", "sequences per decode"), ("serving_copy", "serving copy (BF16 or Q8_0: serving.copy_type)"),
                       ("emails_per_min", "emails/min (wall)"), ("emails_per_cpu_min", "emails per CPU-minute"),
                       ("cpu_seconds", "CPU seconds"), ("recall_at_1", "recall@1 (whole mailbox)"),
                       ("copy_ratio_median", "median copy ratio"), ("fallback_share", "keyword fallback share"),
                       ("failed", "failed")]:
        lines.append(f"| {label} | " + " | ".join(str(res["paths"][c][key]) for c in cols) + " |")
    lines += ["", "Speed-up against one at a time on the shipped file (same run): " + ", ".join(
        f"{c} {res['speedup_wall'][c]}x emails/min ({res['speedup_cpu'][c]}x CPU seconds)" for c in cols[1:]) + ".",
        "", "Rejections (guard reasons, all attempts): " + "; ".join(
            f"{c} {res['paths'][c]['rejections']}" for c in cols) + ".", ""]
    return "\n".join(lines)


def main(quick: bool = False) -> dict:
    """bench/run_all.py contract: a few emails when quick."""
    res = measure(DEFAULT, ME, 8 if quick else 80, 1, None)
    base, best = res["paths"]["one at a time"], res["paths"][list(res["paths"])[2 if len(res["paths"]) > 2 else 1]]
    note = f"{res['n']} emails of {res['mbox']}, 1 thread"
    res["rows"] = [row("playback emails/min (batched + copy vs one at a time)", best["emails_per_min"],
                       base["emails_per_min"], "emails/min", note=note),
                   row("playback recall@1 (batched + copy vs one at a time)", best["recall_at_1"] or 1e-9,
                       base["recall_at_1"] or 1e-9, "recall", note=note)]
    return res


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbox", type=Path, default=DEFAULT, help="an mbox of one person's sent mail")
    ap.add_argument("--me", default=ME, help="that person's address")
    ap.add_argument("--n", type=int, default=80, help="emails per path")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 on a loaded shared machine)")
    ap.add_argument("--parallel", type=int, default=None,
                    help="sequences per decode on the batched path (default: playback's own, batch.fit_slots)")
    ap.add_argument("--model", default=None, help="catalogue model to play back with (default: the active one)")
    ap.add_argument("--out", default="playback", help="results file name under bench/results")
    args = ap.parse_args()
    if not args.mbox.exists():
        sys.exit(f"{args.mbox} not found: pass --mbox FILE (../shared/data/enron/sent/*.mbox) and --me ADDRESS")
    res = measure(args.mbox, args.me, args.n, args.threads, args.parallel, args.model)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"machine": machine(), **res}, indent=2))
    (RESULTS / f"{args.out}.md").write_text(_md(res))
    print(_md(res))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
