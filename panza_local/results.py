"""The typed result of each stage, and its JSON object: `to_dict()` gives exactly the keys docs/CLI.md lists.

One dataclass per stage entry point (`draft.Draft` is the draft's): ingest, playback, index, train, eval,
retune. Fields are the documented keys; nested free-form data (per-reason counts, per-config metrics, the
training plan) stays a dict. Keys docs/CLI.md marks "(optional)" are left out of the JSON while unset
(None), as each command printed them before the results were typed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def _json(obj, optional: frozenset[str] = frozenset(), drop: frozenset[str] = frozenset()) -> dict:
    """asdict(obj) without `drop`, and without the `optional` keys whose value is None."""
    return {k: v for k, v in asdict(obj).items() if k not in drop and not (k in optional and v is None)}


@dataclass
class IngestResult:
    """What `ingest.ingest` did (`panza ingest --json`); seen == stored + duplicates + sum(skipped)."""

    seen: int = 0
    stored: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """reason → messages not stored"""
    errors: list[dict] = field(default_factory=list)
    """up to ingest.MAX_ERRORS {path, reason}"""
    errors_total: int = 0
    mine: int = 0
    documents: int = 0
    deleted: int = 0
    unchanged_files: int = 0
    files: int = 0
    reassigned: int = 0
    sources: list[dict] = field(default_factory=list)
    """{uri, kind} of each source read"""
    me: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The JSON object of `panza ingest --json`."""
        return asdict(self)


@dataclass
class PlaybackResult:
    """What `playback.run` did (`panza playback --json`)."""

    generated: int = 0
    reused: int = 0
    failed: int = 0
    model: int = 0
    """new pairs the model wrote"""
    fallback: int = 0
    """new pairs from the extractive fallback"""
    fail_reasons: dict[str, int] = field(default_factory=dict)
    gen_config: str = ""
    todo: int = 0
    todo_total: int = 0
    batched: bool = False
    parallel: int = 1
    seconds: float = 0.0
    emails_per_min: float | None = None
    recall_at_1: float | None = None
    copy_ratio_median: float | None = None
    pairs: int = 0
    recall_by_source: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON object of `panza playback --json`."""
        return asdict(self)


@dataclass
class IndexResult:
    """What `index.sync` did (`panza index --json`)."""

    embedded: int = 0
    removed: int = 0
    unchanged: int = 0
    total: int = 0
    failed: int = 0
    errors: list[dict] = field(default_factory=list)
    """{id, reason} of the items that could not be embedded"""
    skipped: dict[str, int] = field(default_factory=dict)
    repaired: int = 0
    rebuilt: bool = False
    notice: str | None = None
    model: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The JSON object of `panza index --json`."""
        return asdict(self)


# what a reused adapter reports (nothing was trained, so no run figures)
_TRAIN_REUSED = frozenset({"adapter_id", "reused", "gguf", "selection", "val_loss_before", "val_loss_after",
                           "tokens_per_s", "peak_mem_mb", "promoted"})


@dataclass
class TrainResult:
    """What `train.train` did (`panza train --json`); a reused adapter carries only the first fields."""

    adapter_id: str
    reused: bool
    gguf: str | None
    val_loss_before: float | None = None
    val_loss_after: float | None = None
    tokens_per_s: float | None = None
    peak_mem_mb: float | None = None
    promoted: bool = False
    selection: dict = field(default_factory=dict)
    """which pairs were trained on (select.py counts) and why"""
    steps: int | None = None
    resumed_from: int | None = None
    early_stopped: bool = False
    n_train: int | None = None
    n_val: int | None = None
    backend: str | None = None
    device: str | None = None
    precision: str | None = None
    planned_steps: int | None = None
    budget_s: float | None = None
    step_s: float | None = None
    eval_s: float | None = None
    plan: dict | None = None
    """the figures the step count was fitted from (budget.py)"""
    stop_reason: str | None = None
    stop_why: str | None = None

    def to_dict(self) -> dict:
        """The JSON object of `panza train --json`."""
        if not self.reused:
            return asdict(self)
        return _json(self, drop=frozenset(f.name for f in fields(self)) - _TRAIN_REUSED)


@dataclass
class EvalResult:
    """What `evaluate.evaluate` / `evaluate.run` measured (`panza eval --json`)."""

    configs: dict[str, dict]
    """stock, stock+rag, adapter, adapter+rag → metric means, `*_std` and per-config details"""
    seeds: int
    n: int
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    adapter: str | None = None
    scoring_models: dict[str, str] = field(default_factory=dict)
    max_tokens: int | None = None
    temperature: float | None = None
    ref_lengths: list[int] = field(default_factory=list)
    data: str | None = None
    """where the held-out emails came from (set by `evaluate.run`)"""
    report: str | None = None
    samples: list[dict] = field(default_factory=list)
    """the first items' drafts per config, for the report (not part of the JSON contract)"""

    def to_dict(self, samples: bool = False) -> dict:
        """The JSON object of `panza eval --json` (with `samples`: also the drafts the report shows)."""
        return _json(self, optional=frozenset({"report"}), drop=frozenset() if samples else frozenset({"samples"}))


_RETUNE_OPTIONAL = frozenset({"deleted_messages", "ingest", "failed_pairs", "reused_pairs", "indexed",
                              "new_for_training", "mode", "mode_why", "adapter_id", "train", "score_new",
                              "score_current", "compared_with", "n_test"})


@dataclass
class RetuneResult:
    """What one `retune.run_once` pass did (`panza retune --json`); filled in stage by stage."""

    new_messages: int = 0
    new_pairs: int = 0
    trained: bool = False
    promoted: bool = False
    reason: str = ""
    seconds: float | None = None
    """wall seconds (None until the pass ends)"""
    steps: dict[str, float] = field(default_factory=dict)
    """stage → seconds"""
    adapter_before: str | None = None
    adapter_after: str | None = None
    deleted_messages: int | None = None
    ingest: dict | None = None
    """the ingest summary's counts"""
    failed_pairs: int | None = None
    reused_pairs: int | None = None
    indexed: int | None = None
    new_for_training: int | None = None
    mode: str | None = None
    mode_why: str | None = None
    adapter_id: str | None = None
    train: dict | None = None
    """the training run's val_loss_before, val_loss_after, steps, resumed_from, reused, stop_reason"""
    score_new: float | None = None
    score_current: float | None = None
    compared_with: str | None = None
    n_test: int | None = None

    def to_dict(self) -> dict:
        """The JSON object of `panza retune --json` (and of each pass `panza retune log` lists)."""
        return _json(self, optional=_RETUNE_OPTIONAL)
