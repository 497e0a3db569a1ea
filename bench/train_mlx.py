"""The mlx row of the training benchmark: tokens/s, peak memory and validation loss of the mlx backend.

`bench/train.py` calls `mlx_row(...)` next to its torch and transformers + peft rows (same pairs, sequence
length and steps). Run alone, it writes bench/out/train_mlx.json. On Linux this is mlx's CPU build, which
is slow (its matmuls, quantized or not, ran ~20x slower than numpy's here): the number that matters for
users is Metal on Apple Silicon, which needs a Mac to measure.

    python bench/train_mlx.py --pairs 100 --seq-len 256 --steps 3
    python bench/train_mlx.py --compare --steps 12       # torch vs mlx: validation loss on the same 100 pairs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import SHARED, peak_rss_mb, save

DEFAULT_USER = "david_anonymous_clean.jsonl"


def prepare(n_pairs: int = 100, seq_len: int = 512, user: str = DEFAULT_USER, max_val_rows: int = 4):
    """(base gguf, train rows, val rows) from the first `n_pairs` emails of one Panza user (stable split)."""
    from panza_local import catalogue
    from panza_local.train import data

    base = catalogue.embedded_path()
    exs = data.examples_from_jsonl(SHARED / "panza" / user, limit=n_pairs)
    tr = [e for e in exs if data.split_of(e.key) == "train"]
    va = [e for e in exs if data.split_of(e.key) == "val"] or tr[-max(1, len(tr) // 10):]
    tok = data.Tokenizer(base)
    rows_tr = data.pack([data.tokenize(e, tok, seq_len) for e in tr], seq_len)
    rows_va = data.pack([data.tokenize(e, tok, seq_len) for e in va], seq_len)[:max_val_rows]
    return base, rows_tr, rows_va


def mlx_row(n_pairs: int = 100, seq_len: int = 512, steps: int = 3, grad_accum: int = 1, rank: int = 8,
            lr: float = 2e-4, rows=None) -> dict:
    """Train the mlx backend for `steps` optimizer steps; return its figures as one benchmark row."""
    from panza_local.train import HParams
    from panza_local.train.mlx import backend as mlx_backend
    from panza_local.train.mlx import model as mlx_model

    base, rows_tr, rows_va = rows or prepare(n_pairs, seq_len)
    t0 = time.perf_counter()
    lm = mlx_model.load(base)
    load_s = time.perf_counter() - t0
    hp = HParams(rank=rank, alpha=2.0 * rank, lr=lr, seq_len=seq_len, grad_accum=grad_accum, max_steps=steps,
                 evals=1, ckpt_every=10**6, patience=10)
    with tempfile.TemporaryDirectory() as tmp:
        res = mlx_backend.train_lora(base, rows_tr, rows_va, hp, Path(tmp), lm=lm,
                                     on_progress=lambda d, t, n: print(f"  mlx step {d}/{t} {n}", flush=True))
    return {"name": f"mlx LoRA r{rank}, seq {seq_len} ({res['device']})", "backend": "mlx",
            "device": res["device"], "tokens_per_s": round(res["tokens_per_s"], 2),
            "peak_mem_mb": round(max(res["peak_mem_mb"], peak_rss_mb()), 1), "load_s": round(load_s, 1),
            "val_loss_before": round(res["val_loss_before"], 4), "val_loss_after": round(res["val_loss_after"], 4),
            "steps": res["steps"], "train_tokens": res["train_tokens"], "n_pairs": n_pairs,
            "train_rows": len(rows_tr), "val_rows": len(rows_va),
            "note": "mlx CPU build on Linux; Metal (Apple Silicon) numbers need a Mac"}


def compare(n_pairs: int = 100, seq_len: int = 256, steps: int = 12, grad_accum: int = 2, rank: int = 8,
            lr: float = 2e-4, threads: int = 2) -> dict:
    """The same pairs, rows, hyper-parameters and schedule trained by the torch and the mlx backends: the
    validation loss each reaches (issue: comparable validation loss, report both)."""
    import torch

    from panza_local.train import HParams
    from panza_local.train.mlx import backend as mlx_backend
    from panza_local.train.torch import backend as torch_backend

    base, rows_tr, rows_va = prepare(n_pairs, seq_len)
    hp = HParams(rank=rank, alpha=2.0 * rank, lr=lr, seq_len=seq_len, grad_accum=grad_accum, max_steps=steps,
                 evals=2, ckpt_every=10**6, patience=10, warmup=0.1)
    torch.set_num_threads(threads)
    out = {"n_pairs": n_pairs, "train_rows": len(rows_tr), "val_rows": len(rows_va), "seq_len": seq_len,
           "steps": steps, "grad_accum": grad_accum, "lr": lr, "rank": rank}
    for name, fn in (("torch", lambda d: torch_backend.train_lora(base, rows_tr, rows_va, hp, d, device="cpu",
                                                                  threads=threads)),
                     ("mlx", lambda d: mlx_backend.train_lora(base, rows_tr, rows_va, hp, d))):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = fn(Path(tmp))
            out[name] = {"val_loss_before": round(res["val_loss_before"], 4),
                         "val_loss_after": round(res["val_loss_after"], 4), "steps": res["steps"],
                         "tokens_per_s": round(res["tokens_per_s"], 1), "seconds": round(time.perf_counter() - t0, 1),
                         "history": [{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
                                     for h in res["history"]]}
        print(f"  {name}: val loss {out[name]['val_loss_before']} -> {out[name]['val_loss_after']} "
              f"in {out[name]['seconds']} s", flush=True)
    t, m = out["torch"], out["mlx"]
    out["relative_gap"] = round(abs(t["val_loss_after"] - m["val_loss_after"]) /
                                (t["val_loss_before"] - t["val_loss_after"]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--compare", action="store_true",
                    help="train torch and mlx on the same pairs and report both validation losses")
    a = ap.parse_args()
    if not (SHARED / "panza").is_dir():
        sys.exit(f"needs the shared data set at {SHARED}")
    if a.compare:
        r = compare(a.pairs, a.seq_len, a.steps, a.grad_accum, lr=a.lr)
        print(r)
        print("saved", save("train_torch_vs_mlx", r))
        return
    r = mlx_row(a.pairs, a.seq_len, a.steps, a.grad_accum, lr=a.lr)
    print(r)
    print("saved", save("train_mlx", {"rows": [r]}))


if __name__ == "__main__":
    main()
