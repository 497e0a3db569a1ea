"""Playback's BF16 copy of a K-quant base (serving.py, `prompt_copy_worth_it`): every weight in BF16 but the two
vocabulary matrices, kept in their shipped blocks (`serving.PROMPT_KEEP`, what panza builds), against every weight
in BF16 (what it built before) and against the token embeddings alone kept, same run: the copy's size, its build time
(llama.cpp's quantizer, the base file in the page cache, rounds interleaved) and batched playback on each copy (the
same emails, rounds interleaved).

    python -m bench.prompt_copy [--model qwen2.5-coder-0.5b] [--n 64] [--rounds 3] [--threads 2]

Writes bench/results/prompt_copy.{json,md}. Needs the model installed (`panza models pull NAME`) and
../shared/data (an Enron sent mailbox for the emails).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench._common import SHARED, machine, scratch, write_result

MBOX = SHARED / "enron" / "sent" / "enron.bass-e.sent_items.mbox"
ME = "eric.bass@enron.com"
KINDS = ("vocabulary kept (panza)", "every weight BF16", "embeddings alone kept")
KEEP = {KINDS[1]: {}, KINDS[2]: {"token_embd.weight": "token_embedding_type"}}


def _build(kind: str, base: Path, out: Path) -> float:
    from panza_local import serving

    keep = serving.PROMPT_KEEP
    serving.PROMPT_KEEP = KEEP.get(kind, keep)
    try:
        out.unlink(missing_ok=True)
        t0 = time.perf_counter()
        serving._requantize(base, out)
        return time.perf_counter() - t0
    finally:
        serving.PROMPT_KEEP = keep


def measure(model: str, n: int, rounds: int, threads: int) -> dict:
    os.environ["PANZA_HOME"] = str(scratch("panza-bench-"))
    from panza_local import catalogue, config, ingest, store
    from panza_local.ingest import messages
    from panza_local.playback import batch
    from panza_local.playback import scoring as q

    base = Path(catalogue.resolve(model))
    work = Path(os.environ["PANZA_HOME"]) / "copies"
    work.mkdir(parents=True, exist_ok=True)
    files = {k: work / f"{i}.gguf" for i, k in enumerate(KINDS)}
    base.read_bytes()  # into the page cache, as a playback run finds it after loading the model
    builds: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(3):
        for k in KINDS:
            builds[k].append(_build(k, base, files[k]))
    conn = store.connect()
    ingest.ingest(conn, [str(MBOX)], me=[ME])
    mine = messages.mine(conn)
    rows, idf = mine[:n], q.idf_table(m["body"] for m in mine)
    settings = config.load({"threads": threads, "merge_adapter": False})  # load each copy as it is
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for r in range(rounds):
        for k in (KINDS if r % 2 == 0 else tuple(reversed(KINDS))):  # each kind early and late alike
            t0 = time.perf_counter()
            out = {row["id"]: res for row, res in batch.generate_many(rows, model_path=files[k], settings=settings,
                                                                       idf=idf)}
            dt = time.perf_counter() - t0
            ins = [out[row["id"]].get("instruction") for row in rows]
            runs[k].append({"seconds": round(dt, 1), "emails_per_min": round(60 * len(rows) / dt, 1),
                            "fallback": sum(out[row["id"]].get("source") == "fallback" for row in rows),
                            "instructions": ins, "load_avg_1m": round(os.getloadavg()[0], 2)})
            print(f"{k}: {runs[k][-1]['emails_per_min']} emails/min", flush=True)
    conn.close()
    same = sum(a == b for a, b in zip(runs[KINDS[0]][0]["instructions"], runs[KINDS[1]][0]["instructions"]))
    for k in KINDS:  # the texts are compared above; the results file keeps the figures
        for x in runs[k]:
            x.pop("instructions")
    res = {"machine": machine(), "model": base.name, "n": len(rows), "threads": threads, "rounds": rounds,
           "kinds": {k: {"bytes": files[k].stat().st_size, "build_seconds": [round(x, 2) for x in builds[k]],
                         "build_seconds_median": round(statistics.median(builds[k]), 2),
                         "emails_per_min": [x["emails_per_min"] for x in runs[k]],
                         "emails_per_min_median": statistics.median(x["emails_per_min"] for x in runs[k]),
                         "fallback": [x["fallback"] for x in runs[k]], "load": [x["load_avg_1m"] for x in runs[k]]}
                     for k in KINDS},
           "same_instructions": same}
    for f in files.values():
        f.unlink(missing_ok=True)
    return res


def _md(res: dict) -> str:
    ours, *others = KINDS
    a = res["kinds"][ours]
    lines = [f"# Playback's BF16 copy: the vocabulary matrices kept vs other layouts ({res['model']})", "",
             (f"Machine: {res['machine']}; llama.cpp threads {res['threads']}; {res['n']} emails of bass-e, "
              f"{res['rounds']} rounds of batched playback on each copy, the order reversed every other round; "
              "builds: 3 each, interleaved."), "",
             "| | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
    for key, label, fmt in (("bytes", "size (GB)", lambda v: f"{v / 1e9:.2f}"),
                            ("build_seconds_median", "build (median s)", str),
                            ("emails_per_min_median", "batched playback (median emails/min)", str),
                            ("fallback", "keyword fallbacks per run", str),
                            ("build_seconds", "builds (s)", str), ("emails_per_min", "emails/min per round", str),
                            ("load", "load after each round", str)):
        lines.append(f"| {label} | " + " | ".join(fmt(res["kinds"][k][key]) for k in KINDS) + " |")
    lines.append("")
    for k in others:
        b = res["kinds"][k]
        lines.append(f"Against {k}: size {a['bytes'] / b['bytes']:.2f}x, build {b['build_seconds_median'] / a['build_seconds_median']:.2f}x "
                     f"faster, playback {a['emails_per_min_median'] / b['emails_per_min_median']:.2f}x.")
    lines += ["", (f"Same instruction as on every weight BF16 (first round): {res['same_instructions']} of {res['n']} "
                   "(rounding: the shipped blocks against BF16 made from them)."), ""]
    return "\n".join(lines)


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not MBOX.exists():
        print(f"needs {MBOX} (../shared/data)", file=sys.stderr)
        return 2
    res = measure(args.model, args.n, args.rounds, args.threads)
    write_result("prompt_copy", res, _md(res))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
