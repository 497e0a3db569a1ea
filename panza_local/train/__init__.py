"""Train stage: pairs -> packed token rows -> LoRA on the active base GGUF -> registered, exported adapter.

`train()` is the entry; `BACKENDS` maps a name to the function that trains (lazy "module:function"
strings, so nothing heavy is imported until a backend runs). A backend takes
`(gguf_path, train_rows, val_rows, hp: HParams, run_dir, on_progress, resume)` with rows from
`data.pack`, checkpoints into `run_dir` and resumes from it, and returns a dict with `tensors` (the best
adapter, PEFT naming, numpy), `val_loss_before`, `val_loss_after`, `tokens_per_s`, `peak_mem_mb`, `steps`,
`resumed_from`. Export, registry and the JSON summary are shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import platform
import sys
from dataclasses import dataclass, field

from ..results import TrainResult

BACKENDS = {
    "torch": "panza_local.train.torch.backend:train_lora",
    "mlx": "panza_local.train.mlx.backend:train_lora",
}
PRESETS = ("quick", "standard", "thorough")
MIN_PAIRS = 8


@dataclass
class HParams:
    """Hyper-parameters of one run (stored with the adapter; part of its id)."""

    rank: int = 8
    alpha: float = 16.0
    lr: float = 2e-4
    epochs: float = 2.0
    seq_len: int = 512
    grad_accum: int = 4
    warmup: float = 0.05
    weight_decay: float = 0.0
    evals: int = 4
    """Validation passes per run (early stopping and best-state selection use them)."""
    ckpt_every: int = 5
    """Optimizer steps between checkpoints (a killed run resumes from the last one)."""
    patience: int = 2
    targets: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    seed: int = 0
    grad_ckpt: bool | None = None
    max_steps: int = 0
    max_val_rows: int = 24
    precision: str = "auto"
    """torch on CPU: "int8" runs the frozen base's products in int8 (faster on VNNI CPUs: bench/results/
    train_cpu.md; see train/torch/int8.py), "fp32" exactly; "auto" picks int8 where the CPU has VNNI.
    Validation is always fp32."""
    extra: dict = field(default_factory=dict)


# Epochs by data size, (fewest train emails, (quick, standard, thorough)): a small mailbox needs several passes
# to move the loss at all; a large one learns the voice in one, and two passes over 3,000 emails would take
# hours on a laptop's two cores (~6 s a step at seq 512, grad_accum 4: bench/results/train_cpu.md).
EPOCHS = ((0, (1.5, 3.0, 6.0)), (200, (1.0, 2.0, 4.0)), (600, (0.75, 1.5, 3.0)), (1500, (0.5, 1.0, 2.0)))
MAX_STEPS = {"quick": 60, "standard": 300, "thorough": 1000}
"""Most optimizer steps a preset runs whatever the data size (the epochs shrink to fit)."""
EVALS = {"quick": 2, "standard": 6, "thorough": 8}
"""Validation passes: enough that early stopping (patience 2) can end a run that has stopped improving."""


def hparams(preset: str, n_examples: int) -> HParams:
    """Hyper-parameters for a preset and a data size: fewer emails get more epochs, more emails fewer."""
    if preset not in PRESETS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown preset {preset!r}", fix=f"use one of: {', '.join(PRESETS)}")
    # Small models want a LoRA lr far above Panza's 1e-5 (that was full-rank RoSA on 7B); 2e-4 lowered
    # validation loss steadily on SmolLM2-135M with 100-500 emails, 5e-4 overshot.
    epochs = [e for least, e in EPOCHS if n_examples >= least][-1][PRESETS.index(preset)]
    return HParams(rank=16 if preset == "thorough" else 8, alpha=32.0 if preset == "thorough" else 16.0,
                   epochs=epochs, lr=2e-4, evals=EVALS[preset])


DEFAULT_TOKENS_PER_S = {"int8": 320.0, "fp32": 150.0}
"""Training speed assumed before this machine has trained once: two cores, the embedded model, the int8 path
where the CPU has VNNI, else fp32 (bench/results/train_cpu.md: ours, ours-fp32)."""


def usable(hp: HParams, preset: str | None, n_examples: int, rows: list[dict], minutes: float | None,
           tokens_per_s: tuple[float, str]) -> tuple[int | None, str]:
    """(how many train examples this run can use, why), or (None, why) when it can use them all: the examples
    one pass (the preset's epochs, at least one) fits in the preset's step cap, or in `minutes` at the
    measured `tokens_per_s` ((speed, where it was measured)). An explicit max_steps is the caller's choice:
    no selection then."""
    if hp.max_steps or not rows or not n_examples:
        return None, "steps set by the caller" if hp.max_steps else "no data"
    steps, why = MAX_STEPS.get(preset or ""), f"the {preset} preset's {MAX_STEPS.get(preset or '')} steps"
    if minutes:
        tps, src = tokens_per_s
        step_s = hp.grad_accum * sum(len(r["input_ids"]) for r in rows) / len(rows) / max(tps, 1e-9)
        fit = int(minutes * 60 * 0.8 / step_s)  # a fifth for loading, validation and export
        if steps is None or fit < steps:
            steps, why = fit, f"{fit} steps in {minutes:g} min at {tps:.0f} tokens/s ({src})"
    if steps is None:
        return None, "no step limit"
    per_row = n_examples / len(rows)
    k = max(MIN_PAIRS, int(steps * hp.grad_accum / max(1.0, hp.epochs) * per_row))
    return (k, why) if k < n_examples else (None, why)


def _measured_tokens_per_s(conn, base) -> tuple[float, str]:
    """Training speed of the newest ready adapter on this base file (this machine's own figure), else the default."""
    from . import registry

    sha = base_sha256(base)
    for row in registry.list_(conn):
        tps = (row.get("metrics") or {}).get("tokens_per_s")
        if row.get("status") == "ready" and row.get("base_sha256") == sha and tps:
            return float(tps), f"measured by {row['id']}"
    try:
        from .torch import int8

        kind = "int8" if int8.available() else "fp32"
    except ImportError:  # no torch (an mlx-only install): the fp32 figure is the cautious guess
        kind = "fp32"
    return DEFAULT_TOKENS_PER_S[kind], f"default for {kind}: nothing trained here yet"


def preset_steps(hp: HParams, n_rows: int, preset: str | None) -> None:
    """Cap a run at its preset's MAX_STEPS by lowering the epochs (unless max_steps was set)."""
    cap = MAX_STEPS.get(preset or "")
    if cap and not hp.max_steps and math.ceil(n_rows * hp.epochs / hp.grad_accum) > cap:
        hp.epochs = round(cap * hp.grad_accum / max(1, n_rows), 4)


def schedule(hp: HParams, n_rows: int):
    """(total steps, eval interval, lr_at) shared by every backend: linear warm-up, then
    cosine decay to 0.1 x lr, so torch and mlx train on the same schedule."""
    total = hp.max_steps or max(1, math.ceil(n_rows * hp.epochs / hp.grad_accum))
    warm = max(1, int(total * hp.warmup))
    eval_every = max(1, total // max(1, hp.evals))

    def lr_at(step: int) -> float:
        if step < warm:
            return hp.lr * (step + 1) / warm
        frac = (step - warm) / max(1, total - warm)
        return hp.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    return total, eval_every, lr_at


def auto_backend() -> str:
    """mlx on Apple Silicon when installed, torch everywhere else."""
    if sys.platform == "darwin" and platform.machine() == "arm64" and importlib.util.find_spec("mlx"):
        return "mlx"
    return "torch"


def backend_fn(name: str):
    """The training function of backend `name`."""
    from ..errors import ConfigError

    if name == "auto":
        name = auto_backend()
    if name not in BACKENDS:
        raise ConfigError(f"unknown training backend {name!r}", fix=f"use one of: auto, {', '.join(BACKENDS)}")
    mod, fn = BACKENDS[name].split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except ImportError as exc:
        raise ConfigError(f"the {name} backend cannot load ({exc})",
                          fix="pip install 'panza-local[mlx]'" if name == "mlx" else "pip install torch") from None


_SHA_CACHE: dict = {}


def base_sha256(path) -> str:
    """sha256 of the base GGUF (cached per path, size and mtime: big models take seconds to hash)."""
    from pathlib import Path

    from .. import catalogue

    st = Path(path).stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = catalogue.sha256_file(Path(path))
    return _SHA_CACHE[key]


def prepare(conn, settings, hp_preset: str, overrides: dict | None = None, train_examples=None, val_examples=None,
            minutes: float | None = None):
    """(examples train/val, HParams, packed rows train/val, base path, selection report) for one run: when
    there are more train pairs than the preset's steps or the `minutes` can use, a chosen subset (select.py)."""
    from .. import catalogue
    from ..errors import NoDataError
    from . import data

    base = catalogue.resolve(settings.model)
    tr = train_examples if train_examples is not None else data.examples(conn, "train", settings)
    va = val_examples if val_examples is not None else data.examples(conn, "val", settings)
    if len(tr) + len(va) < MIN_PAIRS:
        raise NoDataError(f"only {len(tr) + len(va)} (instruction, email) pairs to train on; {MIN_PAIRS} are needed",
                          fix="ingest more of your sent mail (`panza ingest`), then `panza playback`")
    if not va:  # tiny data: hold out the last tenth so early stopping has something to watch
        k = max(1, len(tr) // 10)
        tr, va = tr[:-k], tr[-k:]
    hp = hparams(hp_preset, len(tr))
    for k, v in (overrides or {}).items():
        if not hasattr(hp, k):
            from ..errors import ConfigError

            raise ConfigError(f"unknown training option {k!r}", fix="see panza_local.train.HParams")
        setattr(hp, k, tuple(v) if k == "targets" else v)
    if minutes:
        hp.extra = {**hp.extra, "budget_min": minutes}  # another budget is another adapter
    tok = data.Tokenizer(base)
    seqs = [data.tokenize(e, tok, hp.seq_len) for e in tr]
    rows_tr = data.pack(seqs, hp.seq_len)
    selection = {"available": len(tr), "chosen": len(tr), "limit": None}
    k, why = usable(hp, hp_preset, len(tr), rows_tr, minutes, _measured_tokens_per_s(conn, base))
    if k is not None and k < len(tr):  # more pairs than this run can use: choose which (select.py)
        from . import select

        seq_of = {id(e): q for e, q in zip(tr, seqs)}
        tr, selection = select.choose(tr, k)
        rows_tr = data.pack([seq_of[id(e)] for e in tr], hp.seq_len)
    selection["why"] = why
    rows_va = data.pack([data.tokenize(e, tok, hp.seq_len) for e in va], hp.seq_len)[: hp.max_val_rows]
    preset_steps(hp, len(rows_tr), hp_preset if "epochs" not in (overrides or {}) else None)
    return tr, va, hp, rows_tr, rows_va, base, selection


def train(conn, backend: str = "auto", preset: str | None = None, on_progress=None, resume: bool = True, *,
          settings=None, overrides: dict | None = None, train_examples=None, val_examples=None,
          promote: bool = False, init_from: str | None = None, minutes: float | None = None) -> TrainResult:
    """Train (or resume, or reuse) an adapter for the active model on the stored pairs; export and register it.

    `init_from`: id of a ready adapter of the same base and shape to warm-start from (torch backend; ignored,
    with `init_from` None in the result's config, when it cannot be used).
    `minutes`: finish within this many minutes from the call: the step count is fitted to the step time
    measured on the first steps (budget.py), never above the preset's.
    """
    import time

    from .. import config, store
    from . import budget, data, export, registry

    started = time.monotonic()
    settings = settings or config.load()
    name = auto_backend() if backend == "auto" else backend
    fn = backend_fn(name)
    tr, va, hp, rows_tr, rows_va, base, selection = prepare(conn, settings, preset or settings.train_preset,
                                                            overrides, train_examples, val_examples, minutes=minutes)
    sha = base_sha256(base)
    dhash = data.data_hash(tr + va)
    hp_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(hp).items()}
    init = _init_tensors(init_from, hp, sha) if init_from and name == "torch" else None
    init_from = init_from if init is not None else None
    key = [sha, dhash, hp_dict, name] + ([init_from] if init_from else [])  # a warm start is another adapter
    ident = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    adapter_id = f"ad-{ident[:10]}"
    cfg = {"backend": name, "hparams": hp_dict, "base_path": str(base), "n_train": len(tr), "n_val": len(va),
           "selection": {k: v for k, v in selection.items() if k != "why"},
           "train_rows": len(rows_tr), "val_rows": len(rows_va), "init_from": init_from}
    existing = registry.begin(conn, adapter_id, base_model=settings.model, base_sha256=sha, data_hash=dhash,
                              config=cfg)
    if existing is not None:  # same base, data and settings: nothing to do
        m = existing.get("metrics") or {}
        if promote:
            registry.use(adapter_id, conn)
        return TrainResult(adapter_id=adapter_id, reused=True, gguf=existing["gguf"], selection=selection,
                           promoted=registry.current_id() == adapter_id,
                           **{k: m.get(k) for k in ("val_loss_before", "val_loss_after", "tokens_per_s", "peak_mem_mb")})
    run_dir = registry.adapter_dir(adapter_id)
    with store.run(conn, "train") as summary:
        pacer = budget.Pacer(minutes * 60 if minutes else None, hp.evals, started=started,
                             val_tokens=sum(len(r["input_ids"]) for r in rows_va),
                             step_tokens=hp.grad_accum * sum(len(r["input_ids"]) for r in rows_tr) / max(1, len(rows_tr)),
                             cap=schedule(hp, len(rows_tr))[0])
        try:
            kw = {"threads": settings.threads, "init": init} if name == "torch" else {}
            res = fn(base, rows_tr, rows_va, hp, run_dir, _with_eta(on_progress, pacer), resume, pace=pacer, **kw)
        except BaseException as exc:
            registry.fail(conn, adapter_id, type(exc).__name__)
            raise
        tensors = res.pop("tensors")
        gguf = export.write_gguf_lora(tensors, hp.alpha, hp.rank, base, run_dir / "adapter.gguf")
        export.write_peft(tensors, hp.alpha, hp.rank, run_dir / "peft", base_model=settings.model)
        metrics = {k: v for k, v in res.items()}
        metrics.update(n_train=len(tr), n_val=len(va), backend=name)
        registry.finish(conn, adapter_id, metrics)
        for ckpt in ("checkpoint.pt", "checkpoint.mlx.safetensors"):  # either backend's resume state
            (run_dir / ckpt).unlink(missing_ok=True)
        improved = res["val_loss_after"] < res["val_loss_before"]
        if promote and improved:
            registry.use(adapter_id, conn)
        out = TrainResult(
            adapter_id=adapter_id, reused=False, gguf=str(gguf), val_loss_before=res["val_loss_before"],
            val_loss_after=res["val_loss_after"], tokens_per_s=res["tokens_per_s"], peak_mem_mb=res["peak_mem_mb"],
            steps=res["steps"], resumed_from=res["resumed_from"],
            n_train=len(tr), n_val=len(va), backend=name, device=res.get("device"), precision=res.get("precision"),
            promoted=registry.current_id() == adapter_id, planned_steps=res.get("total_steps"), **pacer.summary(),
            **_stop(res, pacer, hp), selection=selection)
        summary.update({k: v for k, v in out.to_dict().items() if k not in ("gguf", "plan", "selection")})
    return out


def _with_eta(on_progress, pacer):
    """on_progress with the ETA from the measured step and validation times appended to its note."""
    if on_progress is None:
        return None
    from .budget import fmt_s

    def update(step: int, total: int, note: str | None = None) -> None:
        eta = pacer.eta(step, total)
        if eta is not None and step < total:
            note = f"{note} · ETA {fmt_s(eta)}" if note else f"ETA {fmt_s(eta)}"
        on_progress(step, total, note)

    return update


def _stop(res: dict, pacer, hp: HParams) -> dict:
    """Why the run ended: `stop_reason` (plateau, time, budget, preset) and a sentence, `stop_why`."""
    plan = pacer.plan or {}
    if res.get("early_stopped"):
        why = (f"validation loss did not improve for {hp.patience} validations in a row "
               f"(best {res['val_loss_after']:.4f})")
        return {"early_stopped": True, "stop_reason": "plateau", "stop_why": why}
    if pacer.reason == "time":
        return {"early_stopped": True, "stop_reason": "time",
                "stop_why": f"steps ran slower than measured; stopped at step {res['steps']} to end in time"}
    if plan.get("limited_by") == "budget":
        return {"early_stopped": False, "stop_reason": "budget",
                "stop_why": f"{plan['steps']} steps fit in {pacer.budget_s / 60:g} min at {plan['step_s']:.2f} s a step "
                            f"and {plan['eval_s']:.2f} s a validation"}
    return {"early_stopped": False, "stop_reason": "preset", "stop_why": f"the preset's {res.get('total_steps')} steps ran"}


def _init_tensors(adapter_id: str, hp: HParams, sha: str) -> dict | None:
    """PEFT tensors of adapter `adapter_id` when it fits this run (same base bits, rank and targets), else None."""
    from pathlib import Path

    from safetensors.numpy import load_file

    from ..errors import AdapterError
    from . import registry

    try:
        row = registry.get(adapter_id)
    except AdapterError:
        return None
    old = (row.get("config") or {}).get("hparams") or {}
    f = Path(row["peft"]) / "adapter_model.safetensors"
    if (row["status"] != "ready" or row["base_sha256"] != sha or old.get("rank") != hp.rank
            or tuple(old.get("targets") or ()) != tuple(hp.targets) or not f.exists()):
        return None
    return load_file(str(f))
