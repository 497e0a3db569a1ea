"""Does training in int8 (train/int8.py) reach the adapter fp32 training reaches? Same data, init, steps.

Trains the same LoRA twice on one user's real pairs (../shared/data/panza), once with the frozen base's
products in fp32 and once in int8, from the same seed, data order and schedule, and compares the
validation loss curves (validation is computed on the exact fp32 path for both), plus tokens/s.

    python -m bench.train_int8_quality [--steps 40] [--data ../shared/data/panza/jeff_johnson_clean.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "panza" / "jeff_johnson_clean.jsonl"


def run(precision: str, data: Path, steps: int, threads: int) -> dict:
    from panza_local import catalogue
    from panza_local.train import HParams
    from panza_local.train import data as tdata
    from panza_local.train.torch.backend import train_lora

    tok = tdata.Tokenizer(catalogue.embedded_path())
    exs = tdata.examples_from_jsonl(data)
    val = [e for i, e in enumerate(exs) if i % 8 == 0]
    tr = [e for i, e in enumerate(exs) if i % 8]
    pack = lambda es: tdata.pack([tdata.tokenize(e, tok, 512) for e in es], 512)
    rows_tr, rows_va = pack(tr), pack(val)[:16]
    hp = HParams(max_steps=steps, grad_accum=1, evals=4, precision=precision, ckpt_every=10**6)
    with tempfile.TemporaryDirectory() as d:
        res = train_lora(catalogue.embedded_path(), rows_tr, rows_va, hp, Path(d), resume=False, device="cpu",
                         threads=threads)
    return {"precision": res["precision"], "tokens_per_s": res["tokens_per_s"], "peak_mem_mb": res["peak_mem_mb"],
            "val_before": res["val_loss_before"], "val_best": res["val_loss_after"], "history": res["history"],
            "n_train_rows": len(rows_tr), "n_val_rows": len(rows_va)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_int8_quality.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run(args.one, Path(args.data), args.steps, args.threads)), flush=True)
        return 0
    if not Path(args.data).exists():
        print(f"no data at {args.data} (needs ../shared/data/panza)", file=sys.stderr)
        return 2
    from bench._common import run_child

    results = {}
    for precision in ("fp32", "int8"):  # each in its own process: peak RSS is its own
        res = run_child([sys.executable, __file__, "--one", precision, "--data", args.data, "--steps",
                         str(args.steps), "--threads", str(args.threads)])
        if "error" in res:
            print(res["error"], file=sys.stderr)
            return 1
        results[precision] = res
        print(json.dumps(res), flush=True)
    f, i = results["fp32"], results["int8"]
    gain_f, gain_i = f["val_before"] - f["val_best"], i["val_before"] - i["val_best"]
    summary = {"steps": args.steps, "results": results, "val_gain_ratio": gain_i / gain_f if gain_f else None,
               "speed_ratio": i["tokens_per_s"] / f["tokens_per_s"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"val loss {f['val_before']:.4f} -> fp32 {f['val_best']:.4f} / int8 {i['val_best']:.4f}; "
          f"int8 keeps {summary['val_gain_ratio']:.2f} of fp32's improvement "
          f"at {summary['speed_ratio']:.2f}x the speed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
