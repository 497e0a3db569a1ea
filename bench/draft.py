"""Draft latency: a cold `panza draft` (adapter + retrieval, embedded SmolLM2-135M) from process start to
its first token and to its end, against llama-cpp-python called directly on the same GGUF, adapter and
prompt text, in the same run; and a warm draft through `panza serve` (a running server, not its first
request) and through the TUI's in-process path (backend.plan_draft + stream) against a warm llama-cpp-python.

Cold rows, one fresh process each, rounds interleaved (the order rotates) so load drifts hit all alike:
- ours: `python -m panza_local draft INSTRUCTION --to ADDR` (text mode streams to stdout; the clock runs
  from before the process is spawned to its first stdout byte, then to its exit), after an earlier draft
  (another instruction) left its prompt cache (prefix_cache: the prefix drafts share is not re-evaluated);
- ours, first draft: the same with no prompt cache on disk (the first draft after install or training);
- ours, runtime adapter: `ours` with `merge_adapter = false`: the adapter applied by llama.cpp at run time
  on the Q4_1 base instead of the serving copy (serving.py: base + adapter merged, BF16 or Q8_0 projections);
- direct: `python direct.py`: imports llama_cpp, loads the base GGUF with `lora_path=` (llama-cpp-python's
  own adapter path), and streams `create_completion` on the prompt text panza rendered (same template,
  same sampling, greedy, the same stop), in the default environment;
- direct+omp: the same with the OpenMP wait setting panza's engine gives llama.cpp (`engine.OMP_ENV`; so the
  two baselines separate what that setting does from what the rest of panza does, see bench/omp_wait.py).
Ours evaluates prompts with llama.cpp's fused attention (settings.flash_attention), which llama-cpp-python
leaves off, and the serving copy rounds differently (BF16 or Q8_0): so even with the runtime adapter ours' greedy text
can part from direct's after some tokens (same prompt, same adapter); the results record both. The warm row
"tui, without flash attention" shows what the fused attention alone gives; where the serving copy is BF16
(serving.copy_type), "serve, Q8_0 copy" is a second server on a home built the same way whose copy is Q8_0
(PANZA_SERVING_COPY=q8_0), asked the same requests in the same rounds.

    python -m bench.draft [--quick] [--rounds N] [--threads 2] [--max-tokens 48] [--home PANZA_HOME --out NAME]

Writes bench/results/draft.{json,md} (--out: NAME.{json,md}). The quickstart's own home, whose past emails
are asked for by their playback instructions (longer prompts than the bench's home, whose requests are the
subjects) and whose adapter is trained: `PANZA_HOME=DIR panza quickstart`, then `python -m bench.draft --home
DIR/quickstart --out draft_quickstart`. Without --home it builds a home from the bundled sample mailbox
(ingest + index) with a random rank-8 all-linear LoRA (written by the training stage's exporter) as the adapter.
The warm rows draft each of the six emails twice (--quick: once). Other work on the 2 cores slows every row:
read the ratios, and the load average printed beside every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

JOBS = [  # (instruction, recipient) in the sample person's world
    ("Ask Jonas to move our site visit to Friday", "jonas.berg@northfield-builders.example"),
    ("Thank Priya for the permit update and ask when the council decides", "priya.natarajan@greenway-council.example"),
    ("Tell Tom the revised drawings are due on Thursday", "tom@lindqvist-studio.example"),
    ("Order twenty lavender plants from Elena for next week", "orders@rossi-nursery.example"),
    ("Send Sam the invoice for the garden design and thank him", "sam.whitaker@fastmail.example"),
    ("Tell Hannah I can host the book club in March", "hannah.cole@postbox.example"),
]

DIRECT = r"""
import sys, time, json
t0 = time.perf_counter()
from llama_cpp import Llama
a = json.load(open(sys.argv[1]))
llm = Llama(model_path=a["model"], lora_path=a["lora"], n_ctx=a["n_ctx"], n_threads=a["threads"],
            n_threads_batch=a["threads"], verbose=False)
opening = a["opening"]  # the greeting the prompt ends with: shown with the first word written after it
for ch in llm.create_completion(a["prompt"], max_tokens=a["max_tokens"], temperature=0.0, top_p=0.95,
                                repeat_penalty=1.1, seed=a["seed"], stop=a["stop"], stream=True):
    piece = ch["choices"][0]["text"]
    if piece:
        sys.stdout.write(opening + piece)
        sys.stdout.flush()
        opening = ""
"""


def load() -> float:
    return os.getloadavg()[0]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(cmd: list[str], env: dict) -> dict:
    """Run `cmd`: seconds from spawn to its first stdout byte and to its exit, the CPU seconds it used (all
    threads), and what it printed."""
    t0, c0 = time.perf_counter(), _cpu_children()
    # unbuffered: communicate() reads the fd itself, so bytes a buffered read(1) took in would be lost
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, bufsize=0)
    first = p.stdout.read(1)
    t_first = time.perf_counter() - t0
    rest, err = p.communicate()
    t_end = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({p.returncode}): {err.decode(errors='replace')[-1500:]}")
    return {"ttft": t_first, "total": t_end, "cpu": _cpu_children() - c0,
            "text": (first + rest).decode(errors="replace").strip(), "load": load()}


# -- the home ----------------------------------------------------------------------------------------------

def build_home(home: Path) -> None:
    """Sample mailbox ingested and indexed, a random adapter registered and in use."""
    from panza_local import catalogue, ingest, sample, store
    from panza_local.retrieval import index
    from panza_local.train import registry
    from panza_local.train.torch import synth

    conn = store.connect()
    mbox = sample.write_sample_mailbox(home.parent / "mail")
    ingest.ingest(conn, [str(mbox)], me=[sample.SAMPLE_ME])
    index.sync(conn)
    registry.begin(conn, "ad-bench", base_model="smollm2-135m", base_sha256="-", data_hash="-", config={})
    # rank 8 on all seven projections (what `panza train` trains), random weights
    synth.random_lora(catalogue.embedded_path("smollm2-135m"), registry.adapter_dir("ad-bench") / "adapter.gguf",
                      std=0.02, modules=synth.ALL_LINEAR)
    registry.finish(conn, "ad-bench", {})
    registry.use("ad-bench", conn)
    conn.close()


# -- warm paths ----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(env: dict) -> tuple[subprocess.Popen, str]:
    """`panza serve` on a free port, once it answers: (process, base URL)."""
    port = _free_port()
    server = subprocess.Popen([PY, "-m", "panza_local", "serve", "--port", str(port)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):  # a benchmark may poll: wait for the server to answer
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return server, url
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"panza serve exited: {server.stderr.read().decode()[-1500:]}") from None
            time.sleep(0.2)
    server.kill()
    raise SystemExit("panza serve did not answer in 2 minutes")


def _serve_request(url: str, instruction: str, to: str, max_tokens: int) -> dict:
    body = json.dumps({"model": "panza", "stream": True, "temperature": 0.0, "seed": 1, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": instruction}], "panza": {"to": to}}).encode()
    req = urllib.request.Request(f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, text = None, []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            obj = json.loads(line[6:])
            if "error" in obj:
                raise RuntimeError(f"serve: {obj['error']}")
            piece = (obj["choices"][0]["delta"].get("content") if obj.get("choices") else None)
            if piece:
                first = first or time.perf_counter() - t0
                text.append(piece)
    return {"ttft": first or time.perf_counter() - t0, "total": time.perf_counter() - t0, "text": "".join(text),
            "load": load()}


def _tui_draft(instruction: str, to: str, settings) -> dict:
    from panza_local.tui import backend

    t0 = time.perf_counter()
    plan = backend.plan_draft(instruction, to=to, seed=1, settings=settings)
    first, text = None, []
    for piece in backend.stream_draft(plan):
        first = first or time.perf_counter() - t0
        text.append(piece)
    return {"ttft": first or time.perf_counter() - t0, "total": time.perf_counter() - t0, "text": "".join(text),
            "load": load()}


def _tui_after_pause(instruction: str, to: str, settings) -> dict:
    """The TUI's draft after the user paused in typing: the form's prompt was evaluated during the pause
    (backend.prefill_draft, untimed: it ran while the user was reading what they typed), then Enter."""
    from panza_local.tui import backend

    backend.prefill_draft(instruction, to=to, seed=1, settings=settings)
    return _tui_draft(instruction, to, settings)


def _direct_warm(llm, prompt: list[int], opening: str, max_tokens: int) -> dict:
    from panza_local import prompts

    t0 = time.perf_counter()
    first, text = None, []
    for ch in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_p=0.95,
                                    repeat_penalty=1.1, seed=1, stop=[prompts.FENCE], stream=True):
        piece = ch["choices"][0]["text"]
        if piece:
            first = first or time.perf_counter() - t0
            text.append(opening + piece)
            opening = ""
    return {"ttft": first or time.perf_counter() - t0, "total": time.perf_counter() - t0, "text": "".join(text),
            "load": load()}


# -- the run ---------------------------------------------------------------------------------------------------

def _summary(xs: list[dict], key: str) -> dict:
    v = [x[key] for x in xs]
    return {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3), "n": len(v)}


def main(quick: bool = False, rounds: int | None = None, threads: int = 2, max_tokens: int = 48,
         home: Path | None = None, spin_baseline: bool = True, out_name: str = "draft") -> dict:
    """Run the benchmark (the contract of bench/run_all.py: `main(quick)` returning "rows")."""
    args = argparse.Namespace(quick=quick, rounds=rounds, threads=threads, max_tokens=max_tokens, home=home,
                              no_spin_baseline=not spin_baseline)
    rounds = args.rounds or (2 if args.quick else 5)

    from bench._common import scratch

    home = args.home or scratch("panza-bench-draft-") / "home"
    os.environ["PANZA_HOME"] = str(home)
    os.environ["PANZA_THREADS"] = str(args.threads)
    from panza_local import config, draft, engine, fit, prompts, serving
    from panza_local.train import registry

    if args.home is None:
        build_home(home)
    settings = config.load({"threads": args.threads, "temperature": 0.0, "seed": 1, "max_tokens": args.max_tokens})
    choice = registry.adapter_for(settings)
    if choice.row is None:
        raise SystemExit(f"{home}: {choice.reason}")
    model_path, _ = engine.default_model(settings)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    work = scratch("panza-bench-direct-")
    (work / "direct.py").write_text(DIRECT)

    # the prompt panza builds, for the direct baseline: its tokens (the chat template's, then the user's
    # greeting that the adapter's draft starts from) and that greeting
    vocab = fit.vocab(model_path)
    prompts_ids, openings, given = [], [], []
    for instruction, to in JOBS:
        plan = draft.prepare(instruction, to=to, settings=settings, seed=1)
        prompts_ids.append(engine.prompt_tokens(plan.messages, vocab, plan.opening))
        openings.append(plan.opening)
        given.append(len(engine.prefix_tokens(vocab, plan.opening)))  # max_tokens counts them
    n_prompt = [len(ids) for ids in prompts_ids]  # counts the greeting's tokens, as ours does
    engine.unload_all()

    variants = (["ours", "ours, first draft", "ours, runtime adapter", "direct+omp"]
                + ([] if args.no_spin_baseline else ["direct"]))
    kv_dir = home / "cache" / "kv"
    cold: dict[str, list[dict]] = {v: [] for v in variants}
    same_text: list[bool] = []
    copy_same_text: list[bool] = []
    print(f"cold: {rounds} rounds of {variants}, {args.threads} threads, {args.max_tokens} tokens; "
          f"load {load():.1f}", flush=True)
    cached = {"job": None}  # which job's draft wrote the prompt cache on disk

    def ours(j: int, merge: bool = True) -> dict:
        cached["job"] = j
        return _timed([PY, "-m", "panza_local", "draft", JOBS[j][0], "--to", JOBS[j][1], "--max-tokens",
                       str(args.max_tokens), "--seed", "1", "--temperature", "0", "-q"],
                      env if merge else {**env, "PANZA_MERGE_ADAPTER": "false"})

    for i in range(rounds):
        j = i % len(JOBS)
        spec = work / f"job{j}.json"
        spec.write_text(json.dumps({"model": str(model_path), "lora": str(choice.gguf), "n_ctx": settings.n_ctx,
                                    "threads": args.threads, "prompt": prompts_ids[j], "opening": openings[j],
                                    "max_tokens": args.max_tokens - given[j], "seed": 1, "stop": [prompts.FENCE]}))
        order = variants[i % len(variants):] + variants[:i % len(variants)]
        got = {}
        for v in order:
            if v == "ours":
                if cached["job"] in (None, j):  # the cache a previous draft, of another email, left
                    ours((j + 1) % len(JOBS))
                got[v] = ours(j)
            elif v == "ours, first draft":
                shutil.rmtree(kv_dir, ignore_errors=True)
                got[v] = ours(j)
            elif v == "ours, runtime adapter":  # its own prompt cache (another model file): another email's first
                ours((j + 1) % len(JOBS), merge=False)
                got[v] = ours(j, merge=False)
            else:
                got[v] = _timed([PY, str(work / "direct.py"), str(spec)],
                                {**env, **engine.OMP_ENV} if v == "direct+omp" else env)
            cold[v].append(got[v])
        # the same tokens: ours is direct's text, plus the sign-off the clean-up appends to a draft cut short, and
        # with the lines of a wrapped paragraph joined (cleanup._Reflow): compared word by word
        words = {v: " ".join(r["text"].split()) for v, r in got.items()}
        same_text.append(words["ours, runtime adapter"].startswith(words["direct+omp"]))
        copy_same_text.append(words["ours"] == words["ours, first draft"] and words["ours"].startswith(words["direct+omp"]))
        if not same_text[-1]:
            print("  texts differ:\n" + "\n".join(f"    {v}: {got[v]['text']!r}" for v in variants), flush=True)
        print(f"  round {i + 1}: " + ", ".join(f"{v} {got[v]['ttft']:.2f}/{got[v]['total']:.2f} s" for v in variants)
              + f" (first token/end), load {load():.1f}", flush=True)

    # CPU seconds up to the first token (one token, then exit): the work, which on busy cores inflates far
    # less than wall time. On idle cores a cold draft's first token comes between cpu/2 (everything on both
    # threads) and cpu (nothing in parallel): the estimate printed beside the goal.
    first_cpu: dict[str, list[float]] = {v: [] for v in variants if v not in ("direct", "ours, runtime adapter")}
    for i in range(rounds):
        j = i % len(JOBS)
        spec = work / f"one{j}.json"
        spec.write_text(json.dumps({**json.loads((work / f"job{j}.json").read_text()), "max_tokens": 1}))
        for v, cpus in first_cpu.items():
            if v == "direct+omp":
                r = _timed([PY, str(work / "direct.py"), str(spec)], {**env, **engine.OMP_ENV})
            else:
                if v == "ours, first draft":
                    shutil.rmtree(kv_dir, ignore_errors=True)
                elif cached["job"] in (None, j):
                    ours((j + 1) % len(JOBS))
                cached["job"] = j
                r = _timed([PY, "-m", "panza_local", "draft", JOBS[j][0], "--to", JOBS[j][1], "--max-tokens", "1",
                            "--seed", "1", "--temperature", "0", "-q"], env)
            cpus.append(r["cpu"])
    print("  CPU s to the first token: " + ", ".join(f"{v} {statistics.median(c):.2f}" for v, c in first_cpu.items()),
          flush=True)

    # warm: a running server (its second and later requests), the TUI's in-process path, a warm direct Llama;
    # where the serving copy is BF16, a second server on a home of its own (the same sample home and adapter)
    # serves a Q8_0 copy, so the two types are compared on the same requests in the same run
    servers = [_start_server(env)]
    other = None
    if args.home is None and serving.copy_type() == "bf16":
        other = home.parent / "q8" / "home"
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
                f"from bench.draft import build_home; build_home(Path({str(other)!r}))")
        subprocess.run([PY, "-c", code],
                       env={**env, "PANZA_HOME": str(other)}, cwd=ROOT, check=True, capture_output=True)
        servers.append(_start_server({**env, "PANZA_HOME": str(other), "PANZA_SERVING_COPY": "q8_0"}))
    url = servers[0][1]
    try:
        warm: dict[str, list[dict]] = {"serve": [], "tui": [], "tui, after a pause in typing": [],
                                       "tui, runtime adapter": [], "tui, without flash attention": [],
                                       "direct warm": []}
        if other is not None:
            warm["serve, Q8_0 copy"] = []
            for _ in range(2):
                _serve_request(servers[1][1], *JOBS[-1], args.max_tokens)
        runtime = config.load({"threads": args.threads, "temperature": 0.0, "seed": 1, "max_tokens": args.max_tokens,
                               "merge_adapter": False})
        plain = config.load({"threads": args.threads, "temperature": 0.0, "seed": 1, "max_tokens": args.max_tokens,
                             "flash_attention": False})
        # This process drafts with three engine models (the copy, the runtime adapter, no fused attention) where
        # the TUI holds one: keep all three loaded, or each row would time a reload (engine keeps two).
        engine._MAX_LOADED = max(engine._MAX_LOADED, 3)
        _serve_request(url, *JOBS[-1], args.max_tokens)  # the first request loads the model: not timed
        _tui_draft(*JOBS[-1], settings)
        _tui_draft(*JOBS[-1], runtime)
        _tui_draft(*JOBS[-1], plain)
        lib = engine.llama_cpp()
        direct = lib.Llama(model_path=str(model_path), lora_path=str(choice.gguf), n_ctx=settings.n_ctx,
                           n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
        _direct_warm(direct, prompts_ids[-1], openings[-1], args.max_tokens - given[-1])
        # every email twice (--quick: each once): the six prompts run from 349 to 451 tokens, so a median of
        # five rounds would say as much about which emails came up as about the path
        warm_rounds = len(JOBS) * (1 if args.quick else 2)
        for i in range(warm_rounds):
            j = i % len(JOBS)
            steps = [("serve", lambda j=j: _serve_request(url, *JOBS[j], args.max_tokens)),
                     ("tui", lambda j=j: _tui_draft(*JOBS[j], settings)),
                     # another email than the plain TUI row's, so neither finds the other's prompt cached
                     ("tui, after a pause in typing", lambda j=j: _tui_after_pause(*JOBS[(j + 3) % len(JOBS)],
                                                                                   settings)),
                     ("tui, runtime adapter", lambda j=j: _tui_draft(*JOBS[j], runtime)),
                     ("tui, without flash attention", lambda j=j: _tui_draft(*JOBS[j], plain)),
                     ("direct warm", lambda j=j: _direct_warm(direct, prompts_ids[j], openings[j],
                                                               args.max_tokens - given[j]))]
            if other is not None:
                steps.insert(1, ("serve, Q8_0 copy", lambda j=j: _serve_request(servers[1][1], *JOBS[j],
                                                                               args.max_tokens)))
            for name, fn in steps[i % len(steps):] + steps[:i % len(steps)]:
                warm[name].append(fn())
            print(f"  warm {i + 1}: " + ", ".join(f"{k} {v[-1]['ttft']:.2f}/{v[-1]['total']:.2f} s"
                                                 for k, v in warm.items()) + f", load {load():.1f}", flush=True)
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=30)

    out = {"bench": "draft", "threads": args.threads, "max_tokens": args.max_tokens, "rounds": rounds,
           "home": "sample mailbox + random rank-8 all-linear LoRA" if args.home is None else _home_words(args.home),
           "adapter": choice.id, "copy_type": serving.copy_type(), "prompt_tokens": n_prompt,
           "warm_rounds": warm_rounds,
           "same_text_as_direct": same_text,
           "serving_copy_same_text_as_direct": copy_same_text,
           "goals_s": {"cold_first_token": 3.0, "warm_first_token": 0.5},
           "cold": {v: {"ttft": _summary(r, "ttft"), "total": _summary(r, "total"), "cpu": _summary(r, "cpu"),
                        "load": _summary(r, "load")} for v, r in cold.items()},
           "cold_cpu_to_first_token": {v: _summary([{"c": x} for x in c], "c") for v, c in first_cpu.items()},
           "warm": {v: {"ttft": _summary(r, "ttft"), "total": _summary(r, "total"),
                        "load": _summary(r, "load")} for v, r in warm.items()},
           "raw": {"cold": {v: [{k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items() if k != "text"}
                               for r in rs] for v, rs in cold.items()},
                   "warm": {v: [{k: round(x, 3) for k, x in r.items() if k != "text"} for r in rs]
                            for v, rs in warm.items()}}}
    out["ratios"] = _ratios(out)
    out["rows"] = _rows(out)
    _write(out, out_name)
    return out


def _rows(out: dict) -> list[dict]:
    from bench._common import row

    c, w = out["cold"], out["warm"]
    rows = [row(f"cold draft first token: {o} vs llama-cpp-python direct (same OMP env)", c[o]["ttft"]["median"],
                c["direct+omp"]["ttft"]["median"], "s", higher_is_better=False)
            for o in ("ours", "ours, first draft", "ours, runtime adapter")]
    if "direct" in c:
        rows.append(row("cold draft first token: ours vs llama-cpp-python direct (default env)",
                        c["ours"]["ttft"]["median"], c["direct"]["ttft"]["median"], "s", higher_is_better=False))
    rows.append(row("cold draft end: ours vs direct (same OMP env)", c["ours"]["total"]["median"],
                    c["direct+omp"]["total"]["median"], "s", higher_is_better=False))
    rows += [row(f"warm draft first token: {name} vs warm direct", w[name]["ttft"]["median"],
                 w["direct warm"]["ttft"]["median"], "s", higher_is_better=False)
             for name in ("serve", "tui", "tui, after a pause in typing", "tui, runtime adapter",
                          "tui, without flash attention")]
    if "serve, Q8_0 copy" in w:
        rows.append(row("warm draft first token: serve on the BF16 copy vs on a Q8_0 copy", w["serve"]["ttft"]["median"],
                        w["serve, Q8_0 copy"]["ttft"]["median"], "s", higher_is_better=False))
    return rows


def _ratios(out: dict) -> dict:
    """Same-run medians of baseline / ours (> 1: panza is faster)."""
    c, w, r = out["cold"], out["warm"], {}
    for base in ("direct", "direct+omp"):
        if base in c:
            for k in ("ttft", "total"):
                for o in ("ours", "ours, first draft", "ours, runtime adapter"):
                    r[f"cold {k}: {base} / {o}"] = round(c[base][k]["median"] / c[o][k]["median"], 2)
    for name in ("serve", "tui", "tui, after a pause in typing", "tui, runtime adapter",
                 "tui, without flash attention"):
        for k in ("ttft", "total"):
            r[f"warm {k}: direct warm / {name}"] = round(w["direct warm"][k]["median"] / w[name][k]["median"], 2)
    if "serve, Q8_0 copy" in w:
        for k in ("ttft", "total"):
            r[f"warm {k}: serve, Q8_0 copy / serve"] = round(w["serve, Q8_0 copy"][k]["median"] / w["serve"][k]["median"], 2)
    return r


def _home_words(home: Path) -> str:
    """A home given with --home, as the results name it (a quickstart's home by what it holds, not its path)."""
    if home.name == "quickstart":
        return "the quickstart's home (sample mailbox, playback, its trained adapter)"
    return str(home)


def _write(out: dict, out_name: str = "draft") -> None:
    from bench._common import machine, write_result

    out = {"machine": machine(), **out}
    head = (f"{out['machine']}; {out['threads']} threads, {out['max_tokens']} tokens max, {out['rounds']} cold "
            f"rounds, home: {out['home']}, prompts of {min(out['prompt_tokens'])}-{max(out['prompt_tokens'])} "
            f"tokens, {out['warm_rounds']} warm rounds (each email {out['warm_rounds'] // len(JOBS)}x). Seconds: median "
            "(min-max); load = 1-minute load average on 2 cores (this run's own threads and any other work).\n")
    command = "python -m bench.draft" + (f" --home HOME --out {out_name}" if out_name != "draft" else "")
    lines = [f"# Draft latency (`{command}`)\n", head, "| path | first token | end | load |",
             "|---|---|---|---|"]

    def f(d: dict) -> str:
        return f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"

    for group in ("cold", "warm"):
        for name, s in out[group].items():
            lines.append(f"| {group}: {name} | {f(s['ttft'])} | {f(s['total'])} | {s['load']['median']:.1f} |")
    lines += ["", ("CPU seconds to the first token (all threads; one token, then exit), and what that implies on "
                   "2 idle cores (between cpu/2 and cpu):"), ""]
    lines += [f"- {v}: {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) -> idle estimate "
              f"{d['median'] / 2:.1f}-{d['median']:.1f} s" for v, d in out["cold_cpu_to_first_token"].items()]
    lines += ["", "Same-run ratios (baseline / ours; > 1 means panza is faster):", ""]
    lines += [f"- {k}: {v}" for k, v in out["ratios"].items()]
    goals = out["goals_s"]
    lines += ["", ("Same generated tokens as direct (greedy, same prompt, word by word; ours may add the sign-off), runtime adapter: "
                   f"{out['same_text_as_direct']}; serving copy ({out['copy_type']} rounding, may part after some tokens): "
                   f"{out['serving_copy_same_text_as_direct']}."),
              f"Goals: first token <= {goals['cold_first_token']} s cold, <= {goals['warm_first_token']} s warm."]
    write_result(out_name, out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    ap.add_argument("--rounds", type=int, help="cold rounds (default 5, --quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--home", type=Path, help="an existing PANZA_HOME with an index and an adapter in use")
    ap.add_argument("--out", default="draft", help="results name: bench/results/OUT.{json,md} (default draft)")
    ap.add_argument("--no-spin-baseline", action="store_true",
                    help="skip llama-cpp-python in the default environment (very slow on busy cores)")
    a = ap.parse_args()
    main(a.quick, a.rounds, a.threads, a.max_tokens, a.home, not a.no_spin_baseline, a.out)
