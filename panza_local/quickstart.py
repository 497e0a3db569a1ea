"""`panza quickstart`: the whole pipeline on a sample mailbox the project writes itself, then the proof:
the stock model's drafts beside drafts by the sample person's own adapter, for the same instructions."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from . import paths, store

# (instruction, recipient): one to a stranger, two to people she writes to; none of them is in her mail.
INSTRUCTIONS = (
    ("Ask Bob to move our meeting to Friday", "bob@example.com"),
    ("Tell Jonas the oak sleepers can be delivered on Tuesday morning",
     "Jonas Berg <jonas.berg@northfield-builders.example>"),
    ("Invite Hannah to book club at mine on Thursday at 7:30", "Hannah Cole <hannah.cole@postbox.example>"),
)
INSTRUCTION = INSTRUCTIONS[0][0]
SEED = 7
# Training budget: every one of her emails is a pair, and the adapter sees each once (one epoch: ~56 steps of
# 2 rows for her 112 training pairs, 53-56 as their token lengths fall, ~1.3 s a step on two laptop cores), so the whole quickstart stays under
# five minutes (2 min 33 s on 2 cores of an AMD EPYC, load ~1.5). A third of them (16 steps, what this ran
# before) gave her greeting and sign-off but drafts vague about the ask: "Friday is on the 10th." for "Ask Bob
# to move our meeting to Friday", where one pass gives "I'd love to meet with you on Friday ..." (validation
# loss 1.20 and 1.00, from 1.55). tests/test_quickstart_voice.py checks the drafts.
TRAIN = {"epochs": 1.0, "grad_accum": 2, "seq_len": 320, "lr": 8e-4, "evals": 2, "max_val_rows": 4,
         "ckpt_every": 8}

Bar = Callable[[str], AbstractContextManager]


def run(bar: Bar, say: Callable[[str], None], *, limit: int | None = None, preset: str = "quick",
        train_overrides: dict | None = None, instructions=INSTRUCTIONS, seed: int = SEED) -> dict:
    """Write the sample mailbox, ingest → playback → index → train, then draft each instruction with the
    stock model and with the adapter; return what each stage did and the drafts.

    `bar(desc)` is a context manager yielding a progress updater; `say` prints a line. Every stage is
    incremental, so running the quickstart twice does (almost) no work the second time.
    """
    import os

    from . import config, ingest, playback, sample, train
    from .retrieval import index

    # The sample person gets a home of their own inside yours, so their settings, mail and adapter never
    # mix with your data: your own `panza ingest` later starts from a clean slate.
    os.environ["PANZA_HOME"] = str(paths.subdir("quickstart"))
    out: dict = {"home": str(paths.home())}
    mbox = paths.subdir("sample") / "sample.mbox"
    if not mbox.exists():
        sample.write_sample_mailbox(mbox)
    config.set_value("me", sample.SAMPLE_ME)
    if not config.load().user_name:
        config.set_value("user_name", sample.SAMPLE_NAME)
    overrides = {**TRAIN, **(train_overrides or {})}
    conn = store.connect()
    try:
        steps = [
            ("ingest", lambda cb: ingest.ingest(conn, [str(mbox)], me=[sample.SAMPLE_ME], on_progress=cb)),
            ("playback", lambda cb: playback.run(conn, limit=limit, on_progress=cb)),
            ("index", lambda cb: index.sync(conn, on_progress=cb)),
            ("train", lambda cb: train.train(conn, preset=preset, on_progress=cb, promote=True, overrides=overrides)),
        ]
        for name, step in steps:
            t0, c0 = time.perf_counter(), time.process_time()
            with bar(name) as cb:
                result = step(cb)
            result = {k: v for k, v in result.to_dict().items() if not isinstance(v, (list, dict)) or k == "skipped"}
            # CPU seconds beside wall seconds: on a busy machine they say what the stage costs by itself
            out[name] = {**result, "seconds": round(time.perf_counter() - t0, 1),
                         "cpu_seconds": round(time.process_time() - c0, 1)}
            say(f"{name:9} " + ", ".join(f"{k} {v}" for k, v in out[name].items() if k != "skipped"))
    finally:
        conn.close()
    t0, c0 = time.perf_counter(), time.process_time()
    with bar("drafts") as cb:
        out["compare"] = compare(instructions, seed=seed, on_progress=cb)
    out["compare_seconds"] = round(time.perf_counter() - t0, 1)
    out["compare_cpu_seconds"] = round(time.process_time() - c0, 1)
    first = out["compare"][0]
    out["draft"] = {"text": first["adapter"], "adapter": first["adapter_id"], "retrieved": first["retrieved"],
                    "seconds": first["seconds"]}
    return out


def compare(instructions=INSTRUCTIONS, *, seed: int = SEED, settings=None, on_progress=None) -> list[dict]:
    """For each (instruction, to): the stock model's draft (no adapter, no past emails) and the draft of the
    current adapter with past emails retrieved, same seed; each with its raw model text before clean-up."""
    from . import config, draft

    # a low temperature: the tiny embedded model rambles when sampled freely
    settings = settings or config.load({"temperature": 0.2})
    rows = []
    for i, (instruction, to) in enumerate(instructions):
        t0 = time.perf_counter()
        row: dict = {"instruction": instruction, "to": to}
        for name, kw in (("stock", {"use_adapter": False, "use_rag": False}), ("adapter", {})):
            plan = draft.prepare(instruction, to=to, seed=seed, settings=settings, **kw)
            for _ in draft.stream(plan):
                pass
            d = draft.finish(plan)
            row[name], row[f"{name}_raw"] = d.text, "".join(plan.raw).strip()
            if name == "adapter":
                row["adapter_id"], row["retrieved"], row["notices"] = d.adapter, d.retrieved, d.notices
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if on_progress:
            on_progress(i + 1, len(instructions), None)
    return rows
