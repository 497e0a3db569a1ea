"""`panza train [--backend auto|torch|mlx] [--preset quick|standard|thorough] [--minutes N] [--precision auto|fp32|int8]
[--seq-len N] [--grad-ckpt] [--json]`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._out import add_json, emit, progress

if TYPE_CHECKING:
    from ..results import TrainResult


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a LoRA adapter on your emails (resumes an interrupted run)")
    p.add_argument("--backend", choices=["auto", "torch", "mlx"], default=None,
                   help="training backend (default: the train_backend setting)")
    p.add_argument("--preset", choices=["quick", "standard", "thorough"], default=None,
                   help="how long to train (default: the train_preset setting)")
    p.add_argument("--precision", choices=["auto", "fp32", "int8"], default=None,
                   help="torch on a CPU: int8 runs the frozen base's products in int8 (faster where the CPU "
                        "has VNNI; validation stays exact), fp32 exactly; auto (default) = int8 where VNNI is present")
    p.add_argument("--minutes", type=float, default=None,
                   help="finish within N minutes: the steps are fitted to the step time measured on the first "
                        "steps (never more than the preset's); stops sooner when validation loss stops improving")
    p.add_argument("--seq-len", type=int, default=None,
                   help="longest training sequence in tokens (default 512; shorter needs less memory)")
    p.add_argument("--grad-ckpt", action="store_true", default=None,
                   help="gradient checkpointing: recompute each layer in backward (slower, far less memory)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint left by an interrupted run")
    p.add_argument("--no-use", action="store_true", help="do not serve the new adapter even if it improved")
    add_json(p)
    p.set_defaults(func=run)


def _overrides(args) -> dict | None:
    given = {"precision": args.precision, "seq_len": args.seq_len, "grad_ckpt": args.grad_ckpt}
    return {k: v for k, v in given.items() if v is not None} or None


def run(args) -> int:
    from .. import config, store
    from ..train import train

    if args.minutes is not None and args.minutes <= 0:
        from ..errors import ConfigError

        raise ConfigError(f"--minutes {args.minutes:g} leaves no time to train", fix="give a positive number of minutes")
    settings = config.load({"train_backend": args.backend, "train_preset": args.preset})
    conn = store.connect()
    try:
        with progress("train", enabled=not args.json, eta=False) as update:
            res = train(conn, backend=settings.train_backend, preset=settings.train_preset, on_progress=update,
                        resume=not args.restart, settings=settings, promote=not args.no_use, minutes=args.minutes,
                        overrides=_overrides(args))
    finally:
        conn.close()

    def human(r: TrainResult):
        if r.reused:
            print(f"adapter {r.adapter_id} already trained on this data with these settings: nothing to do")
        else:
            if r.resumed_from:
                print(f"resumed from step {r.resumed_from}")
            print(f"adapter {r.adapter_id}: validation loss {r.val_loss_before:.3f} -> "
                  f"{r.val_loss_after:.3f} ({r.n_train} train / {r.n_val} val emails, {r.steps} of "
                  f"{r.planned_steps or r.steps} steps{', stopped early' if r.early_stopped else ''})")
            sel = r.selection or {}
            if sel.get("chosen", 0) < sel.get("available", 0):
                by = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sel["chosen_by"].items())
                drop = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sel["dropped"].items() if v)
                print(f"trained on {sel['chosen']} of {sel['available']} emails ({sel['why']}): chosen {by}; "
                      f"dropped {drop}")
            if r.step_s:
                print(f"{r.step_s:.2f} s a step, {r.eval_s:.2f} s a validation; ended: {r.stop_why}")
            prec = f", {r.precision}" if r.precision else ""
            print(f"{r.tokens_per_s:.0f} tokens/s, peak memory {r.peak_mem_mb:.0f} MB on {r.device}{prec}")
        print(f"GGUF adapter: {r.gguf}")
        print("now serving it" if r.promoted else
              f"not served (use it with `panza adapters use {r.adapter_id}`)")

    emit(args, res, human)
    return 0
