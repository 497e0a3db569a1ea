"""Engine benchmark: panza's engine vs calling llama-cpp-python directly, same GGUF, same threads, same run.

Rows: decode tokens/s (wall) and CPU ms per token with the same sampling on both sides (interleaved rounds,
one process, one OpenMP setting), time to first token, and TTFT with a repeated ~1,000-token preamble, warm (prefix
KV reused) vs cold (fresh context each call, what a naive one-Llama-per-request wrapper does). Also the
CLI start-up time of `panza --help` and `panza doctor` (goal: < 1 s).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from bench._common import print_rows, publish, row, save

PROMPT = [{"role": "system", "content": "You write short emails."},
          {"role": "user", "content": "Write an email asking Bob to move our meeting to Friday."}]


def _decode(pieces) -> tuple[float, float, float, int]:
    """(time to first piece, wall s/token after it, CPU s/token after it, pieces) of one generation."""
    t0 = time.perf_counter()
    first = cpu_first = None
    n = 0
    for piece in pieces:
        if piece:
            n += 1
            if first is None:
                first, cpu_first = time.perf_counter(), time.process_time()
    end, cpu_end = time.perf_counter(), time.process_time()
    return first - t0, (end - first) / max(n - 1, 1), (cpu_end - cpu_first) / max(n - 1, 1), n


def _decode_side_by_side(model_path, settings, max_tokens, reps) -> dict:
    """Direct llama-cpp-python and panza's engine on the same GGUF, threads and sampling (greedy, top_p 0.95,
    repeat_penalty 1.1: the engine's defaults), each from a reset context, rounds interleaved."""
    from panza_local import engine

    lib = engine.llama_cpp()  # one process, one OpenMP setting for both sides
    direct = lib.Llama(model_path=str(model_path), n_ctx=settings.n_ctx, n_threads=settings.threads,
                       n_threads_batch=settings.threads, verbose=False)
    ours = engine.load(model_path, n_ctx=settings.n_ctx, threads=settings.threads)

    def run_direct():
        direct.reset()
        return _decode(c["choices"][0].get("delta", {}).get("content") for c in direct.create_chat_completion(
            messages=PROMPT, max_tokens=max_tokens, temperature=0.0, top_p=0.95, repeat_penalty=1.1, seed=1,
            stream=True))

    def run_ours():
        ours.reset()
        return _decode(engine.stream_chat(PROMPT, model_path=model_path, max_tokens=max_tokens, temperature=0.0,
                                          seed=1, settings=settings))

    res = {"direct": [], "ours": []}
    for i in range(reps):
        for name, fn in ((("direct", run_direct), ("ours", run_ours)) if i % 2 == 0 else
                         (("ours", run_ours), ("direct", run_direct))):
            res[name].append(fn())
    med = {k: [statistics.median(r[j] for r in v) for j in range(4)] for k, v in res.items()}
    return {"direct": med["direct"], "ours": med["ours"], "load": os.getloadavg()[0]}


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
    threads = int(os.environ.get("PANZA_THREADS") or 0) or engine.physical_cores()
    settings = config.load({"n_ctx": 2048, "temperature": 0.0, "seed": 1, "threads": threads})
    model = catalogue.embedded_path()
    reps, max_tokens = (4, 48) if quick else (10, 128)
    dec = _decode_side_by_side(model, settings, max_tokens, reps)
    (d_ttft, d_wall, d_cpu, _), (o_ttft, o_wall, o_cpu, _) = dec["direct"], dec["ours"]
    n_pre, warm, cold = _preamble_ttft(model, settings, reps)
    help_s, doctor_s = _startup(["--help"]), _startup(["doctor", "--json"])
    rows = [
        row("engine decode tokens/s, wall (vs direct llama-cpp-python)", 1 / o_wall, 1 / d_wall, "tok/s",
            note=f"load {dec['load']:.1f}: wall-clock rates swing with other processes"),
        row("engine decode CPU ms/token (vs direct)", o_cpu * 1000, d_cpu * 1000, "ms", higher_is_better=False,
            note="the work per token, steady under load"),
        row("engine time to first token (vs direct)", o_ttft * 1000, d_ttft * 1000, "ms", higher_is_better=False),
        row(f"TTFT with a {n_pre}-token preamble: cached vs uncached", warm * 1000, cold * 1000, "ms",
            higher_is_better=False),
        row("`panza --help` start-up (goal < 1 s)", help_s, 1.0, "s", higher_is_better=False),
        row("`panza doctor --json` (goal < 1 s)", doctor_s, 1.0, "s", higher_is_better=False),
    ]
    result = {"bench": "engine", "threads": threads, "model": model.name, "rows": rows,
              "load": os.getloadavg()[0]}
    save("engine", result)
    if not quick:
        publish("engine", result, "python -m bench.engine")
    return result


if __name__ == "__main__":
    print_rows(main(quick="--quick" in sys.argv)["rows"])
