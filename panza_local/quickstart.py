"""`panza quickstart`: the whole pipeline on a sample mailbox the project writes itself, then one draft."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from . import paths, store

INSTRUCTION = "Ask Bob to move our meeting to Friday"

Bar = Callable[[str], AbstractContextManager]


def run(bar: Bar, say: Callable[[str], None], *, limit: int | None = 24, preset: str = "quick") -> dict:
    """Write the sample mailbox, ingest → playback → index → train → draft; return what each stage did.

    `bar(desc)` is a context manager yielding a progress updater; `say` prints a line. Every stage is
    incremental, so running the quickstart twice does (almost) no work the second time.
    """
    import os

    from . import config, draft, ingest, playback, sample, train
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
    conn = store.connect()
    try:
        steps = [
            ("ingest", lambda cb: ingest.ingest(conn, [str(mbox)], me=[sample.SAMPLE_ME], on_progress=cb)),
            ("playback", lambda cb: playback.run(conn, limit=limit, on_progress=cb)),
            ("index", lambda cb: index.sync(conn, on_progress=cb)),
            ("train", lambda cb: train.train(conn, preset=preset, on_progress=cb, promote=True)),
        ]
        for name, step in steps:
            t0 = time.perf_counter()
            with bar(name) as cb:
                result = step(cb)
            result = {k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k == "skipped"}
            out[name] = {**result, "seconds": round(time.perf_counter() - t0, 1)}
            say(f"{name:9} " + ", ".join(f"{k} {v}" for k, v in out[name].items() if k != "skipped"))
    finally:
        conn.close()
    t0 = time.perf_counter()
    say(f"\ndraft: {INSTRUCTION!r}\n")
    # a low temperature: the tiny embedded model rambles when sampled freely
    d = draft.draft(INSTRUCTION, to="bob@example.com", settings=config.load({"temperature": 0.2}))
    out["draft"] = {"text": d.text, "adapter": d.adapter, "retrieved": d.retrieved,
                    "seconds": round(time.perf_counter() - t0, 1)}
    return out
