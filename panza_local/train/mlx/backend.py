"""mlx LoRA backend (Apple Silicon; also Linux CPU with `mlx[cpu]`): the same run as the torch backend.

The base is the GGUF's own quantized tensors as MLX quantized weights (`mlx_model.load`), LoRA layers are
mlx-lm's `LoRALinear` on the projections in `hp.targets`, and the loop mirrors `torch_backend.train_lora`
step for step: one packed row per micro-batch, `hp.grad_accum` rows per optimizer step, the loss summed over
the email tokens and divided by their count, gradient clipping at 1.0, AdamW with bias correction, linear
warm-up then cosine decay to a tenth of `hp.lr`, `hp.evals` validation passes, early stopping after
`hp.patience` passes without improvement, the best validation state returned, and an atomic checkpoint every
`hp.ckpt_every` steps that a re-run resumes from. The data order depends only on the seed and the epoch.

mlx-lm keeps LoRA as x @ A @ B with A (in, r) and B (r, out); PEFT keeps lora_A (r, in) and lora_B (out, r):
`lora_tensors` transposes both, so `export.write_gguf_lora` gets the torch backend's layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from ... import failpoint
from ..data import IGNORE

CHECKPOINT = "checkpoint.mlx.safetensors"


def device_name() -> str:
    """`mlx-gpu` (Metal) or `mlx-cpu`."""
    import mlx.core as mx

    return f"mlx-{'gpu' if mx.default_device() == mx.gpu else 'cpu'}"


def add_lora(lm, rank: int, alpha: float, targets, seed: int = 0) -> None:
    """Wrap the target projections of every layer in mlx-lm LoRA layers (A uniform, B zero), scale alpha/rank."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    keys = {f"{'self_attn' if t in ('q_proj', 'k_proj', 'v_proj', 'o_proj') else 'mlp'}.{t}" for t in targets}
    mx.random.seed(seed)
    linear_to_lora_layers(lm.model, len(lm.model.layers),
                          {"rank": rank, "scale": alpha / rank, "dropout": 0.0, "keys": keys})


def _lora_modules(lm):
    from mlx_lm.tuner.lora import LoRALinear

    return [(p, m) for p, m in lm.model.named_modules() if isinstance(m, LoRALinear)]


def lora_tensors(lm) -> dict[str, np.ndarray]:
    """The adapter in PEFT naming (`model.layers.N.self_attn.q_proj.lora_A.weight`), fp32 numpy."""
    import mlx.core as mx

    out = {}
    for path, m in _lora_modules(lm):
        out[f"{path}.lora_A.weight"] = np.array(m.lora_a.astype(mx.float32)).T.copy()
        out[f"{path}.lora_B.weight"] = np.array(m.lora_b.astype(mx.float32)).T.copy()
    return out


def set_lora_tensors(lm, tensors: dict[str, np.ndarray]) -> None:
    """Set the adapter from PEFT-named tensors (inverse of `lora_tensors`)."""
    import mlx.core as mx

    mods = dict(_lora_modules(lm))
    for key, arr in tensors.items():
        path, ab = key.rsplit(".lora_", 1)
        m = mods[path.removeprefix("base_model.model.")]
        if ab.startswith("A"):
            m.lora_a = mx.array(np.asarray(arr, dtype=np.float32).T)
        else:
            m.lora_b = mx.array(np.asarray(arr, dtype=np.float32).T)
    mx.eval(lm.model.trainable_parameters())


def _row_arrays(row: dict):
    """mx arrays of one packed row, and the positions/targets that carry loss."""
    import mlx.core as mx

    tg = np.asarray(row["targets"])
    sel = np.nonzero(tg != IGNORE)[0]
    return (mx.array([row["input_ids"]]), mx.array([row["positions"]]), mx.array([row["segments"]]),
            mx.array(sel.astype(np.int32)), mx.array(tg[sel].astype(np.int32)), len(sel))


def row_loss(lm, ids, pos, seg, sel, tgt, grad_ckpt: bool = False):
    """Summed cross-entropy over one row's loss tokens; the vocabulary projection only where there is loss."""
    from mlx import nn

    from . import model as mlx_model

    h = mlx_model.hidden(lm, ids, pos, seg, grad_ckpt=grad_ckpt)[0]
    logits = mlx_model.head(lm, h[sel])
    return nn.losses.cross_entropy(logits, tgt, reduction="sum")


def evaluate(lm, rows: list[dict]) -> float:
    """Mean loss per target token over packed rows."""
    total, n = 0.0, 0
    for row in rows:
        ids, pos, seg, sel, tgt, k = _row_arrays(row)
        if k:
            total += float(row_loss(lm, ids, pos, seg, sel, tgt))
            n += k
    return total / max(n, 1)


def _peak_mem_mb() -> float:
    import resource
    import sys

    import mlx.core as mx

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return max(rss_mb, mx.get_peak_memory() / 2**20)


def _save_checkpoint(path: Path, lm, opt, state: dict) -> None:
    """Atomic checkpoint (temp file + rename): a kill at any instant leaves the previous one whole."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    arrays = {f"lora/{k}": v for k, v in tree_flatten(lm.model.trainable_parameters())}
    arrays.update({f"opt/{k}": v for k, v in tree_flatten(opt.state)})
    arrays.update({f"best/{k}": mx.array(v) for k, v in (state["best"] or {}).items()})
    meta = {"state": json.dumps({k: v for k, v in state.items() if k != "best"})}
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    mx.save_safetensors(str(tmp), arrays, metadata=meta)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, lm, opt) -> dict:
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    arrays, meta = mx.load(str(path), return_metadata=True)
    lm.model.load_weights([(k[5:], v) for k, v in arrays.items() if k.startswith("lora/")], strict=False)
    opt.state = tree_unflatten([(k[4:], v) for k, v in arrays.items() if k.startswith("opt/")])
    state = json.loads(meta["state"])
    state["best"] = {k[5:]: np.array(v) for k, v in arrays.items() if k.startswith("best/")} or None
    mx.eval(lm.model.trainable_parameters(), opt.state)
    return state


def train_lora(gguf_path, train_rows: list[dict], val_rows: list[dict], hp, run_dir: Path, on_progress=None,
               resume: bool = True, lm=None, pace=None) -> dict:
    """Train a LoRA on packed rows with mlx; checkpoint to `run_dir/checkpoint.mlx.safetensors`, resume from it.

    Returns the adapter tensors (PEFT naming) of the best validation state and the run's figures, the keys
    `train.train()` reads from every backend. `lm` lets a caller pass a model already loaded (benchmarks).
    `pace(state)` (a budget.Pacer), called after every step, may return a new total (a time budget).
    """
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx import nn
    from mlx.utils import tree_map

    from .. import schedule
    from . import model as mlx_model

    if lm is None:
        lm = mlx_model.load(gguf_path)
    if not _lora_modules(lm):
        add_lora(lm, hp.rank, hp.alpha, hp.targets, hp.seed)
    opt = optim.AdamW(learning_rate=hp.lr, weight_decay=hp.weight_decay, bias_correction=True)
    n = len(train_rows)
    total, eval_every, lr_at = schedule(hp, n)

    orders: dict[int, list[int]] = {}

    def row_at(k: int) -> dict:  # k-th micro-batch overall: the data order depends only on the seed
        epoch, j = divmod(k, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng(hp.seed * 7919 + epoch).permutation(n).tolist()
        return train_rows[orders[epoch][j]]

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / CHECKPOINT
    state = {"step": 0, "history": [], "best_loss": None, "best": None, "bad": 0, "train_s": 0.0,
             "train_tokens": 0, "val_before": None, "stopped": False, "total": total}
    resumed_from = 0
    if resume and ckpt.exists():
        state = _load_checkpoint(ckpt, lm, opt)
        resumed_from = state["step"]
        if state.get("total", total) != total:  # fitted to a time budget (budget.py): keep that schedule
            fitted = dataclasses.replace(hp, max_steps=state["total"], evals=state.get("evals", hp.evals))
            total, eval_every, lr_at = schedule(fitted, n)
    if state["val_before"] is None:
        state["val_before"] = evaluate(lm, val_rows)
        state["best_loss"] = state["val_before"]
        state["best"] = lora_tensors(lm)
    if on_progress:
        on_progress(state["step"], total, f"val loss {state['val_before']:.3f}")
    recompute = bool(hp.grad_ckpt)  # default off: on a CPU the recompute costs more than the memory it saves
    loss_and_grad = nn.value_and_grad(lm.model, lambda *a: row_loss(lm, *a, grad_ckpt=recompute))
    last_loss = float("nan")
    while state["step"] < total and not state["stopped"]:
        step = state["step"]
        opt.learning_rate = lr_at(step)
        batch = [row_at(step * hp.grad_accum + j) for j in range(hp.grad_accum)]
        n_tgt = sum(sum(1 for t in r["targets"] if t != IGNORE) for r in batch)
        t0 = time.perf_counter()
        grads, loss_total = None, 0.0
        for row in batch:
            ids, pos, seg, sel, tgt, k = _row_arrays(row)
            if not k:
                continue
            loss, g = loss_and_grad(ids, pos, seg, sel, tgt)
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(loss, grads)  # bound the graph to one row: memory stays that of a single row
            loss_total += float(loss)
        if grads is not None:
            inv = 1.0 / max(n_tgt, 1)
            grads = tree_map(lambda g: g * inv, grads)  # noqa: B023 - used at once, in this iteration
            grads, _ = optim.clip_grad_norm(grads, 1.0)
            opt.update(lm.model, grads)
            mx.eval(lm.model.trainable_parameters(), opt.state)
        state["train_s"] += time.perf_counter() - t0
        state["train_tokens"] += sum(len(r["input_ids"]) for r in batch)
        state["step"] = step = step + 1
        if pace is not None and (fit := pace(state)) and fit != total:  # a time budget fixes the total (budget.py)
            total, eval_every, lr_at = schedule(dataclasses.replace(hp, max_steps=fit, evals=pace.evals), n)
            state["total"], state["evals"] = total, pace.evals
        last_loss = loss_total / max(n_tgt, 1)
        tps = state["train_tokens"] / max(state["train_s"], 1e-9)
        note = f"loss {last_loss:.3f} · {tps:.0f} tok/s"
        if step % eval_every == 0 or step == total:
            val = evaluate(lm, val_rows)
            state["history"].append({"step": step, "train_loss": last_loss, "val_loss": val})
            if val < state["best_loss"] - 1e-4:
                state["best_loss"], state["best"], state["bad"] = val, lora_tensors(lm), 0
            else:
                state["bad"] += 1
                state["stopped"] = state["bad"] >= hp.patience  # early stop: validation stopped improving
            note += f" · val {val:.3f}"
        if step % hp.ckpt_every == 0 or step == total or state["stopped"]:
            _save_checkpoint(ckpt, lm, opt, state)
            failpoint.hit("train.checkpoint")
        if on_progress:
            on_progress(step, total, note)
    return {"tensors": state["best"], "val_loss_before": state["val_before"], "val_loss_after": state["best_loss"],
            "tokens_per_s": state["train_tokens"] / max(state["train_s"], 1e-9),
            "peak_mem_mb": _peak_mem_mb(), "steps": state["step"], "total_steps": total,
            "resumed_from": resumed_from, "early_stopped": state["stopped"], "history": state["history"],
            "device": device_name(), "train_tokens": state["train_tokens"],
            "requantized": dict(lm.requantized)}
