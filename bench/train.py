"""CPU LoRA training: our torch backend vs plain transformers + peft, same model, data, seq len, threads, run.

Both train a rank-8 LoRA on all seven projections of the embedded SmolLM2-135M (loaded from its GGUF)
on the same packed rows of one user's real emails (seq 512, batch 1, AdamW), each in its own process so
that peak RSS is its own. tokens/s counts every token of the rows (prompt and email) over the timed steps.

    python bench/train.py [--steps 8] [--threads 2] [--data ../shared/data/panza/jeff_johnson_clean.jsonl]

With --layout qwen2.5-0.5b (or qwen2.5-1.5b, llama-3.2-3b) the model is instead a random-weight GGUF that the
bench writes in that model's Q4_K_M layout (its shapes, vocabulary and llama.cpp's block types, see
panza_local/train/torch/synth.py), and the baseline is transformers + peft on a randomly initialised model of
the same shape in fp32 (what its GGUF loader would dequantize the file to): the same shape, the same rows.

    python bench/train.py --layout qwen2.5-0.5b --methods ours,baseline --steps 2 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import peak_rss_mb, row, run_child

DEFAULT_DATA = REPO.parent / "shared" / "data" / "panza" / "jeff_johnson_clean.jsonl"


def rows_for(data: Path, seq: int, n_rows: int) -> list[dict]:
    from panza_local import catalogue
    from panza_local.train import data as tdata

    tok = tdata.Tokenizer(catalogue.embedded_path())
    exs = tdata.examples_from_jsonl(data, limit=n_rows * 6)
    rows = tdata.pack([tdata.tokenize(e, tok, seq) for e in exs], seq)
    return rows[:n_rows]


# "ours" is what `panza train` runs (precision auto: int8 products where the CPU has VNNI, else fp32)
VARIANTS = {"ours": {"precision": "auto"}, "ours-fp32": {"precision": "fp32"},
            "ours-int8-ckpt": {"precision": "int8", "grad_ckpt": True},
            "ours-dense": {"keep_q4": False, "grad_ckpt": False, "precision": "fp32"},
            "ours-q4-ckpt": {"keep_q4": True, "grad_ckpt": True, "precision": "fp32"},
            # what `panza train` runs when the pre-flight finds the activations would not fit: checkpointing
            "ours-ckpt": {"grad_ckpt": True, "precision": "auto"}}


def layout_gguf(layout: str, out: Path) -> Path:
    """The random-weight GGUF of `layout` (written once into `out`)."""
    from panza_local.train.torch import synth

    path = out / f"random-{layout}-q4_k_m.gguf"
    if not path.exists():
        spec = dict(synth.LAYOUTS[layout])
        out.mkdir(parents=True, exist_ok=True)
        synth.write(path.with_suffix(".tmp"), spec.pop("arch"), types=synth.Q4_K_M, **spec)
        path.with_suffix(".tmp").rename(path)
    return path


def run_ours(rows, steps, warmup, threads, variant: str = "ours", gguf: str = "") -> dict:
    import torch

    from panza_local import catalogue
    from panza_local.train.torch import backend as tb

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = tb.build(gguf or catalogue.embedded_path(), 8, 16.0, tb.ALL_TARGETS, "cpu", **VARIANTS[variant])
    load_s = time.perf_counter() - t0
    opt = tb.optimizer(model.lora.values(), lr=2e-4)

    def step(row):
        loss, n = model(row)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss) / n

    return _loop(step, rows, steps, warmup, load_s)


def _hf_random(layout: str):
    """A randomly initialised transformers model of `layout`'s shape (fp32)."""
    import transformers

    from panza_local.train.torch import synth

    spec = synth.LAYOUTS[layout]
    cls = {"qwen2": "Qwen2", "llama": "Llama"}[spec["arch"]]
    cfg = getattr(transformers, f"{cls}Config")(
        vocab_size=spec["vocab"], hidden_size=spec["dim"], intermediate_size=spec["ffn"],
        num_hidden_layers=spec["n_layers"], num_attention_heads=spec["n_heads"],
        num_key_value_heads=spec["n_kv_heads"], tie_word_embeddings=spec["tied"], max_position_embeddings=4096)
    return getattr(transformers, f"{cls}ForCausalLM")(cfg)


def run_baseline(rows, steps, warmup, threads, layout: str = "embedded") -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from panza_local import catalogue
    from panza_local.train.data import IGNORE

    torch.set_num_threads(threads)
    p = catalogue.embedded_path()
    t0 = time.perf_counter()
    if layout != "embedded":
        model = _hf_random(layout)
    else:
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


MLX_STEPS = 2


def run_mlx(rows, steps, warmup, threads) -> dict:
    """The mlx backend's step on the same rows (its CPU build here; Metal needs a Mac)."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx import nn

    from panza_local import catalogue
    from panza_local.train.mlx import backend as mlx_backend
    from panza_local.train.mlx import model as mlx_model

    t0 = time.perf_counter()
    lm = mlx_model.load(catalogue.embedded_path())
    mlx_backend.add_lora(lm, 8, 16.0, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    load_s = time.perf_counter() - t0
    opt = optim.AdamW(learning_rate=2e-4)
    loss_and_grad = nn.value_and_grad(lm.model, lambda *a: mlx_backend.row_loss(lm, *a))

    def step(row):
        *arrays, n = mlx_backend._row_arrays(row)
        loss, grads = loss_and_grad(*arrays)
        opt.update(lm.model, grads)
        mx.eval(lm.model.trainable_parameters(), opt.state, loss)
        return float(loss) / n

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
    return {"tokens_per_s": tokens / dt, "step_s": dt / steps, "tokens": tokens, "peak_rss_mb": peak_rss_mb(),
            "load_s": load_s, "loss_first": losses[0], "loss_last": losses[-1]}


def measure(methods: list[str], data: str = str(DEFAULT_DATA), seq: int = 512, steps: int = 8, warmup: int = 1,
            threads: int = 2, layout: str = "embedded", gguf: str = "") -> list[dict]:
    """Each method in its own process (its peak RSS is its own); one result dict per method."""
    results = []
    for method in methods:
        # mlx's Linux CPU build multiplies matrices with naive kernels (~60x slower than torch's here): a
        # step takes minutes, so it times fewer steps (tokens/s does not depend on how many)
        n = min(steps, MLX_STEPS) if method == "mlx" else steps
        cmd = [sys.executable, __file__, "--one", method, "--data", data, "--seq", str(seq),
               "--steps", str(n), "--warmup", str(warmup), "--threads", str(threads), "--layout", layout,
               "--gguf", gguf]
        res = run_child(cmd)
        res = {**res, "method": method} if "error" in res else res
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


def _summarize(runs: list[dict]) -> dict:
    """One method's rounds: the median of each figure (an error if every round failed)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for k in ("tokens_per_s", "step_s", "peak_rss_mb", "load_s"):
        out[k] = statistics.median([r[k] for r in ok])
    out["rounds"] = len(ok)
    return out


def main(quick: bool = False) -> dict:
    """run_all's entry: ours vs transformers + peft (and the mlx row), tokens/s and peak RSS as ratios."""
    steps = 3 if quick else 8
    results = measure(["ours", "baseline", "mlx"], steps=steps)
    by = {r["method"]: r for r in results if "error" not in r}
    rows = []
    if "ours" in by and "baseline" in by:
        o, b = by["ours"], by["baseline"]
        rows += [row("CPU LoRA training tokens/s vs transformers+peft (seq 512, 2 threads)", o["tokens_per_s"],
                     b["tokens_per_s"], "tok/s"),
                 row("CPU LoRA training peak RSS vs transformers+peft", o["peak_rss_mb"], b["peak_rss_mb"], "MB",
                     higher_is_better=False)]
    if "mlx" in by and "baseline" in by:
        rows.append(row("mlx (Linux CPU build) LoRA training tokens/s vs transformers+peft",
                        by["mlx"]["tokens_per_s"], by["baseline"]["tokens_per_s"], "tok/s",
                        note="Metal on Apple Silicon needs a Mac"))
    return {"rows": rows, "results": results}


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="repeat every method this many times, interleaved")
    ap.add_argument("--methods", default="ours,baseline,mlx",
                    help=f"comma-separated: baseline, mlx, {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "out"))
    ap.add_argument("--layout", default="embedded", choices=["embedded", "qwen2.5-0.5b", "qwen2.5-1.5b",
                                                             "llama-3.2-3b"],
                    help="embedded: the SmolLM2-135M GGUF; else a random-weight GGUF in that model's Q4_K_M layout")
    ap.add_argument("--gguf", default="", help=argparse.SUPPRESS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        rows = rows_for(Path(args.data), args.seq, args.steps + args.warmup)
        if args.one in VARIANTS:
            res = run_ours(rows, args.steps, args.warmup, args.threads, args.one, args.gguf)
        elif args.one == "mlx":
            res = run_mlx(rows, args.steps, args.warmup, args.threads)
        else:
            res = run_baseline(rows, args.steps, args.warmup, args.threads, args.layout)
        print("RESULT " + json.dumps({**res, "method": args.one}), flush=True)
        return 0
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in ("baseline", "mlx", *VARIANTS)]
    if unknown:  # an unknown name used to run the baseline under that name
        ap.error(f"unknown method(s) {', '.join(unknown)}: use baseline, mlx, {', '.join(VARIANTS)}")
    out = Path(args.out)
    gguf = str(layout_gguf(args.layout, REPO / "bench" / "out")) if args.layout != "embedded" else ""
    if gguf and "mlx" in methods:
        ap.error("mlx runs the embedded model only")
    rounds = []
    # the machine's speed drifts: rotate the order each round, pair each method with its round's baseline
    for k in range(args.rounds):
        order = methods[k % len(methods):] + methods[:k % len(methods)]
        got = {r["method"]: r for r in measure(order, args.data, args.seq, args.steps, args.warmup, args.threads,
                                               args.layout, gguf)}
        rounds.append([got[m] for m in methods])
    results = [_summarize([rnd[j] for rnd in rounds]) for j in range(len(methods))]
    by = {r["method"]: r for r in results}
    model = ("SmolLM2-135M Q4_1 GGUF" if not gguf else
             f"random-weight GGUF in {args.layout}'s Q4_K_M layout ({Path(gguf).stat().st_size / 2**20:.0f} MB; "
             f"baseline: transformers + peft, the same shape in fp32)")
    lines = [(f"# CPU LoRA training, {model}, seq {args.seq}, {args.threads} threads, "
              f"rank 8 all-linear, {args.steps} timed steps (mlx: {min(args.steps, MLX_STEPS)}), "
              f"{args.rounds} round(s), medians; ratios are the median of each round's ratio (min-max)"), "",
             "| method | tokens/s | peak RSS MB | step s | load s | vs baseline tok/s | vs baseline RSS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for j, r in enumerate(results):
        if "error" in r:
            lines.append(f"| {r['method']} | error | | | | | |")
            continue
        ratio = "| "
        if "baseline" in by and "error" not in by["baseline"]:
            b = methods.index("baseline")
            pairs = [(rnd[j], rnd[b]) for rnd in rounds if "error" not in rnd[j] and "error" not in rnd[b]]
            tok = sorted(o["tokens_per_s"] / x["tokens_per_s"] for o, x in pairs)
            mem = sorted(o["peak_rss_mb"] / x["peak_rss_mb"] for o, x in pairs)
            spread = lambda v: f" ({v[0]:.2f}-{v[-1]:.2f})" if len(v) > 1 else ""
            ratio = f"{statistics.median(tok):.2f}x{spread(tok)} | {statistics.median(mem):.2f}x{spread(mem)}"
            r["vs_baseline_tokens_per_s"], r["vs_baseline_rss"] = statistics.median(tok), statistics.median(mem)
        lines.append(f"| {r['method']} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['step_s']:.2f} | "
                     f"{r['load_s']:.1f} | {ratio} |")
    goal = ("ours >= 2x the baseline's tokens/s at <= 1/3 its peak RSS, the 3B in <= 6 GB (issue 20)"
            if args.layout != "embedded" else "ours >= 2x the baseline's tokens/s at <= 0.5x its peak RSS")
    lines += ["", f"Goal (issue): {goal}.", "",
              f"Command: `python bench/train.py {' '.join(sys.argv[1:])}`"]
    md = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    stem = "train_cpu" if not gguf else f"train_cpu_{args.layout}"
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "results": results, "rounds": rounds},
                                                 indent=2))
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
