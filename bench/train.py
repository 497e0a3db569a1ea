"""CPU LoRA training: our torch backend vs plain transformers + peft, same model, data, seq len, threads, run.

Both train a rank-8 LoRA on all seven projections of the embedded SmolLM2-135M (loaded from its GGUF)
on the same packed rows of one user's real emails (seq 512, batch 1, AdamW), each in its own process so
that peak RSS is its own. tokens/s counts every token of the rows (prompt and email) over the timed steps.

    python bench/train.py [--steps 8] [--threads 2] [--data ../shared/data/panza/jeff_johnson_clean.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "panza" / "jeff_johnson_clean.jsonl"


def rows_for(data: Path, seq: int, n_rows: int) -> list[dict]:
    from panza_local import catalogue
    from panza_local.train import data as tdata

    tok = tdata.Tokenizer(catalogue.embedded_path())
    exs = tdata.examples_from_jsonl(data, limit=n_rows * 6)
    rows = tdata.pack([tdata.tokenize(e, tok, seq) for e in exs], seq)
    return rows[:n_rows]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


VARIANTS = {"ours": {}, "ours-dense": {"keep_q4": False, "grad_ckpt": False},
            "ours-dense-ckpt": {"keep_q4": False, "grad_ckpt": True},
            "ours-q4": {"keep_q4": True, "grad_ckpt": False}, "ours-q4-ckpt": {"keep_q4": True, "grad_ckpt": True}}


def run_ours(rows, steps, warmup, threads, variant: str = "ours") -> dict:
    import torch

    from panza_local import catalogue
    from panza_local.train import torch_backend as tb

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = tb.build(catalogue.embedded_path(), 8, 16.0, tb.ALL_TARGETS, "cpu", **VARIANTS[variant])
    load_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(list(model.lora.values()), lr=2e-4)

    def step(row):
        loss, n = model(row)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss) / n

    return _loop(step, rows, steps, warmup, load_s)


def run_baseline(rows, steps, warmup, threads) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from panza_local import catalogue
    from panza_local.train.data import IGNORE

    torch.set_num_threads(threads)
    p = catalogue.embedded_path()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    load_s = time.perf_counter() - t0
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-4)

    def step(row):
        ids = torch.tensor([row["input_ids"]])
        labels = torch.tensor([[IGNORE] + row["targets"][:-1]])  # HF shifts labels itself
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return _loop(step, rows, steps, warmup, load_s)


def _loop(step, rows, steps, warmup, load_s) -> dict:
    for i in range(warmup):
        step(rows[i % len(rows)])
    tokens, t0, losses = 0, time.perf_counter(), []
    for i in range(steps):
        row = rows[(warmup + i) % len(rows)]
        losses.append(step(row))
        tokens += len(row["input_ids"])
    dt = time.perf_counter() - t0
    return {"tokens_per_s": tokens / dt, "step_s": dt / steps, "tokens": tokens, "peak_rss_mb": rss_mb(),
            "load_s": load_s, "loss_first": losses[0], "loss_last": losses[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="ours,baseline")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "out"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        rows = rows_for(Path(args.data), args.seq, args.steps + args.warmup)
        if args.one in VARIANTS:
            res = run_ours(rows, args.steps, args.warmup, args.threads, args.one)
        else:
            res = run_baseline(rows, args.steps, args.warmup, args.threads)
        print("RESULT " + json.dumps({**res, "method": args.one}), flush=True)
        return 0
    results = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--data", args.data, "--seq", str(args.seq),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        p = subprocess.run(cmd, check=False, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        res = json.loads(line[7:]) if line else {"method": method, "error": p.stderr[-500:]}
        print(json.dumps(res), flush=True)
        results.append(res)
    by = {r["method"]: r for r in results}
    lines = [(f"# CPU LoRA training, SmolLM2-135M Q4_1 GGUF, seq {args.seq}, {args.threads} threads, "
              f"rank 8 all-linear, {args.steps} timed steps"), "",
             "| method | tokens/s | peak RSS MB | step s | load s |", "|---|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | error | | | |")
            continue
        lines.append(f"| {r['method']} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['step_s']:.2f} | "
                     f"{r['load_s']:.1f} |")
    if "tokens_per_s" in by.get("ours", {}) and "tokens_per_s" in by.get("baseline", {}):
        o, b = by["ours"], by["baseline"]
        lines += ["", (f"ours / baseline: {o['tokens_per_s'] / b['tokens_per_s']:.2f}x tokens/s at "
                       f"{o['peak_rss_mb'] / b['peak_rss_mb']:.2f}x the peak RSS (goal: >= 2x at <= 0.5x)")]
    md = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_cpu.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    (out / "train_cpu.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
