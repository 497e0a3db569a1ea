"""How llama.cpp's OpenMP threads wait at a barrier: decode speed on idle cores and on cores shared with busy loops.

llama.cpp's CPU backend runs each token as hundreds of parallel ops with a barrier after each. GNU OpenMP makes
a waiting thread spin GOMP_SPINCOUNT loop iterations (300k by default) before it sleeps. This runs the embedded
model in a fresh process per setting (the variable is read when the library loads): a 400-token prompt, then
single-token decode steps, with 2 threads; first on idle cores, then with `--busy` CPU-bound loops beside it
(a laptop running other things), every setting in each round, rounds interleaved.

    python bench/omp_wait.py [--rounds 3] [--busy 4] [--tokens 32]

Settings: llama-cpp-python's default (spin 300k), OMP_WAIT_POLICY=PASSIVE (no spin), and GOMP_SPINCOUNT=N.
Writes bench/results/omp_wait.{json,md}; panza's engine sets what `engine.OMP_ENV` says.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from bench._common import machine

RESULTS = REPO / "bench" / "results"
SETTINGS = {"default (spin 300k)": {}, "passive (spin 0)": {"OMP_WAIT_POLICY": "PASSIVE"},
            "spin 1000": {"GOMP_SPINCOUNT": "1000"}, "spin 5000": {"GOMP_SPINCOUNT": "5000"}}
CHILD = """
import json, sys, time
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=2048, n_threads=2, n_threads_batch=2, verbose=False)
toks = llm.tokenize(open(sys.argv[2]).read().encode())[:400 + int(sys.argv[3])]
t0 = time.perf_counter(); llm.eval(toks[:400]); prompt = time.perf_counter() - t0
t0 = time.perf_counter()
for t in toks[400:]:
    llm.eval([t])
print(json.dumps({"prompt_ms_per_token": 1000 * prompt / 400,
                  "decode_ms_per_token": 1000 * (time.perf_counter() - t0) / (len(toks) - 400)}))
"""


def _one(env_extra: dict, tokens: int, timeout: float) -> dict:
    from panza_local import catalogue

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    cmd = [sys.executable, "-c", CHILD, str(catalogue.embedded_path()), str(REPO / "README.md"), str(tokens)]
    try:
        out = subprocess.run(cmd, env={**env, **env_extra}, capture_output=True, text=True, timeout=timeout,
                             check=True)
    except subprocess.TimeoutExpired:
        return {"timeout_s": timeout}
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(rounds: int, busy: int, tokens: int) -> dict:
    res: dict = {"idle": {k: [] for k in SETTINGS}, "busy": {k: [] for k in SETTINGS}}
    for load in ("idle", "busy"):
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy if load == "busy"
                                                                                          else 0)]
        try:
            for r in range(rounds):
                names = list(SETTINGS)
                for name in names[r % len(names):] + names[:r % len(names)]:  # the order rotates
                    res[load][name].append(_one(SETTINGS[name], tokens, 600))
                    print(load, name, res[load][name][-1], flush=True)
        finally:
            for p in loops:
                p.kill()
    return res


def _median(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if key in r]
    if not vals:
        return "timed out"
    return f"{statistics.median(vals):.1f} ({min(vals):.1f}-{max(vals):.1f})"


def _md(res: dict, args) -> str:
    lines = ["# llama.cpp's OpenMP barrier wait: decode speed idle and on shared cores (`python bench/omp_wait.py`)",
             "", (f"{machine()}; embedded SmolLM2-135M Q4_1, 2 threads, 400-token prompt then {args.tokens} "
                  f"single-token decode steps; {args.rounds} rounds, fresh process each; busy = {args.busy} "
                  "CPU-bound Python loops running beside it. ms per token: median (min-max)."), "",
             "| setting | decode, idle | decode, busy | prompt, idle | prompt, busy |", "|---|---:|---:|---:|---:|"]
    for name in SETTINGS:
        i, b = res["idle"][name], res["busy"][name]
        lines.append(f"| {name} | {_median(i, 'decode_ms_per_token')} | {_median(b, 'decode_ms_per_token')} | "
                     f"{_median(i, 'prompt_ms_per_token')} | {_median(b, 'prompt_ms_per_token')} |")
    lines += ["", "panza's engine loads llama.cpp with " + ", ".join(f"{k}={v}" for k, v in _engine_env().items())
              + " (a value the user set wins).", ""]
    return "\n".join(lines)


def _engine_env() -> dict:
    from panza_local import engine

    return engine.OMP_ENV


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=4, help="CPU-bound loops beside it in the busy half")
    ap.add_argument("--tokens", type=int, default=32, help="single-token decode steps timed")
    args = ap.parse_args()
    res = measure(args.rounds, args.busy, args.tokens)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "omp_wait.json").write_text(json.dumps({"machine": machine(), "args": vars(args), **res}, indent=2))
    (RESULTS / "omp_wait.md").write_text(_md(res, args))
    print(_md(res, args))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
