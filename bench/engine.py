"""Engine benchmark: panza's engine vs calling llama-cpp-python directly, same GGUF, same threads, same run.

Rows: decode tokens/s, time to first token, and TTFT with a repeated ~1,000-token preamble, warm (prefix
KV reused) vs cold (fresh context each call, what a naive one-Llama-per-request wrapper does). Also the
CLI start-up time of `panza --help` and `panza doctor` (goal: < 1 s).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from bench._common import print_rows, row, save

PROMPT = [{"role": "system", "content": "You write short emails."},
          {"role": "user", "content": "Write an email asking Bob to move our meeting to Friday."}]


def _direct(model_path, threads, n_ctx, max_tokens, reps):
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    ttfts, rates = [], []
    for _ in range(reps):
        llm.reset()
        t0 = time.perf_counter()
        first, n = None, 0
        for chunk in llm.create_chat_completion(messages=PROMPT, max_tokens=max_tokens, temperature=0.0, stream=True):
            if chunk["choices"][0].get("delta", {}).get("content"):
                n += 1
                first = first or time.perf_counter()
        end = time.perf_counter()
        ttfts.append(first - t0)
        rates.append((n - 1) / (end - first))
    return statistics.median(ttfts), statistics.median(rates)


def _ours(model_path, settings, max_tokens, reps):
    from panza_local import engine

    ttfts, rates = [], []
    for _ in range(reps):
        engine.load(model_path, n_ctx=settings.n_ctx, threads=settings.threads).reset()
        s = engine.Stats()
        engine.chat(PROMPT, model_path=model_path, max_tokens=max_tokens, temperature=0.0, settings=settings, stats=s)
        ttfts.append(s.ttft_s)
        rates.append((s.completion_tokens - 1) / (s.total_s - s.ttft_s))
    return statistics.median(ttfts), statistics.median(rates)


def _preamble_ttft(model_path, settings, reps):
    from panza_local import engine

    preamble = ("You are Maya's writing assistant. Here is how Maya writes. " +
                "She keeps emails short, friendly and to the point, signs with Cheers, Maya. " * 45)
    llm = engine.load(model_path, n_ctx=settings.n_ctx, threads=settings.threads)
    n_pre = len(llm.tokenize(preamble.encode(), add_bos=False))
    warm, cold = [], []
    for i in range(reps + 1):
        msgs = [{"role": "system", "content": preamble}, {"role": "user", "content": f"Write note number {i}."}]
        llm.reset()  # cold: nothing cached
        s = engine.Stats()
        engine.chat(msgs, model_path=model_path, max_tokens=1, settings=settings, stats=s)
        cold.append(s.ttft_s)
        msgs[1]["content"] = f"Write reminder number {i}."  # warm: same preamble, new question
        s = engine.Stats()
        engine.chat(msgs, model_path=model_path, max_tokens=1, settings=settings, stats=s)
        warm.append(s.ttft_s)
    return n_pre, statistics.median(warm[1:]), statistics.median(cold[1:])


def _startup(args, reps=5):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "panza_local", *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(quick: bool = False) -> dict:
    from panza_local import catalogue, config, engine

    os.environ.setdefault("PANZA_HOME", os.path.join(os.path.dirname(__file__), "out", "home"))
    settings = config.load({"n_ctx": 2048, "temperature": 0.0, "seed": 1})
    threads = settings.threads or engine.physical_cores()
    model = catalogue.embedded_path()
    reps, max_tokens = (2, 48) if quick else (5, 128)
    d_ttft, d_rate = _direct(model, threads, settings.n_ctx, max_tokens, reps)
    o_ttft, o_rate = _ours(model, settings, max_tokens, reps)
    n_pre, warm, cold = _preamble_ttft(model, settings, reps)
    help_s, doctor_s = _startup(["--help"]), _startup(["doctor", "--json"])
    rows = [
        row("engine decode tokens/s (vs direct llama-cpp-python)", o_rate, d_rate, "tok/s"),
        row("engine time to first token (vs direct)", o_ttft * 1000, d_ttft * 1000, "ms", higher_is_better=False),
        row(f"TTFT with a {n_pre}-token preamble: cached vs uncached", warm * 1000, cold * 1000, "ms",
            higher_is_better=False),
        row("`panza --help` start-up (goal < 1 s)", help_s, 1.0, "s", higher_is_better=False),
        row("`panza doctor --json` (goal < 1 s)", doctor_s, 1.0, "s", higher_is_better=False),
    ]
    result = {"bench": "engine", "threads": threads, "model": model.name, "rows": rows}
    save("engine", result)
    return result


if __name__ == "__main__":
    print_rows(main(quick="--quick" in sys.argv)["rows"])
