"""The serving copy's type (serving.py): the embedded model's prompt evaluation and decoding as shipped (Q4_1,
what llama.cpp would load without panza's copy) and in each type panza may build its copy in (Q8_0, BF16),
same run, same process, rounds interleaved.

For each file: a 450-token prompt evaluated from an empty cache (a cold draft's prompt), 114 tokens after a
400-token prefix already in the cache (a warm draft's new tokens, a playback email after the preamble), and
single tokens decoded after a 200-token prompt. llama.cpp with fused attention (panza's default), 2 threads.

    python -m bench.copy_types [--rounds 5] [--threads 2]

Writes bench/results/copy_types.{json,md}. The type panza picks on the machine is `serving.copy_type()`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench._common import machine, row, scratch, write_result

TEXT = (REPO / "README.md").read_text()[:8000]


def _files(base: Path, work: Path) -> dict[str, Path]:
    """The shipped base and a copy of it in each serving type (built by serving.merge, as panza builds it)."""
    from panza_local import serving

    out = {"Q4_1 (shipped)": base}
    native = serving.copy_type
    try:
        for kind in serving.TYPES:
            serving.copy_type = lambda kind=kind: kind
            built = serving.merge(base, None)
            out[f"{kind.upper()} copy"] = Path(shutil.copy(built, work / built.name))
    finally:
        serving.copy_type = native
    return out


def _measure(llm, toks: list[int]) -> dict:
    llm.reset()
    t = time.perf_counter()
    llm.eval(toks[:450])
    cold = time.perf_counter() - t
    llm.reset()
    llm.eval(toks[:400])
    t = time.perf_counter()
    llm.eval(toks[400:514])
    fill = time.perf_counter() - t
    llm.reset()
    llm.eval(toks[:200])
    t = time.perf_counter()
    for tok in toks[200:240]:
        llm.eval([tok])
    return {"prompt_450_s": cold, "fill_114_after_400_s": fill, "decode_ms": (time.perf_counter() - t) / 40 * 1000}


def main(quick: bool = False, rounds: int | None = None, threads: int = 2) -> dict:
    """bench/run_all.py contract: `main(quick)` returning "rows"."""
    rounds = rounds or (2 if quick else 5)
    os.environ["PANZA_HOME"] = str(scratch("panza-bench-types-"))
    from panza_local import catalogue, config, engine, serving

    base = Path(catalogue.resolve(config.load().model))
    work = scratch("panza-bench-types-files-")
    files = _files(base, work)
    lib = engine.llama_cpp()
    models = {name: lib.Llama(model_path=str(p), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                              n_batch=512, flash_attn=True, verbose=False) for name, p in files.items()}
    toks = next(iter(models.values())).tokenize(TEXT.encode())
    runs: dict[str, list[dict]] = {name: [] for name in models}
    for r in range(rounds):
        names = list(models)
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(_measure(models[name], toks))
        print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]['prompt_450_s']:.2f} s" for n in names), flush=True)
    med = {name: {k: round(statistics.median(x[k] for x in rs), 4) for k in rs[0]} for name, rs in runs.items()}
    sizes = {name: p.stat().st_size for name, p in files.items()}
    shutil.rmtree(work, ignore_errors=True)
    shipped = med["Q4_1 (shipped)"]
    rows = []
    for name in list(med)[1:]:
        rows.append(row(f"prompt of 450 tokens, {name} vs shipped Q4_1", med[name]["prompt_450_s"],
                        shipped["prompt_450_s"], "s", higher_is_better=False))
        rows.append(row(f"decode a token, {name} vs shipped Q4_1", med[name]["decode_ms"], shipped["decode_ms"], "ms",
                        higher_is_better=False))
    return {"machine": machine(), "threads": threads, "rounds": rounds, "picked": serving.copy_type(),
            "system_info": engine.system_info(), "sizes_bytes": sizes, "median": med, "rows": rows}


def _md(res: dict) -> str:
    names = list(res["median"])
    feature = "AVX512_BF16" if "AVX512_BF16 = 1" in res["system_info"] else "no AVX512_BF16"
    lines = ["# Serving copy types (`python -m bench.copy_types`)", "",
             (f"Machine: {res['machine']}; {res['threads']} threads, fused attention; median of {res['rounds']} "
              f"interleaved rounds; panza picks **{res['picked']}** here (llama.cpp: {feature})."), "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key, label in [("prompt_450_s", "450-token prompt, empty cache (s)"),
                       ("fill_114_after_400_s", "114 tokens after 400 cached (s)"), ("decode_ms", "decode, ms a token")]:
        lines.append(f"| {label} | " + " | ".join(f"{res['median'][n][key]:.3f}" for n in names) + " |")
    lines.append("| file size (MB) | " + " | ".join(f"{res['sizes_bytes'][n] / 1e6:.0f}" for n in names) + " |")
    base = res["median"][names[0]]
    lines += ["", "Ratios against the shipped Q4_1 (same run; > 1: faster): " + "; ".join(
        f"{n}: prompt {base['prompt_450_s'] / res['median'][n]['prompt_450_s']:.2f}x, warm fill "
        f"{base['fill_114_after_400_s'] / res['median'][n]['fill_114_after_400_s']:.2f}x, decode "
        f"{base['decode_ms'] / res['median'][n]['decode_ms']:.2f}x" for n in names[1:]) + ".", ""]
    return "\n".join(lines)


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    res = main(rounds=args.rounds, threads=args.threads)
    write_result("copy_types", res, _md(res))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
