"""Every llama.cpp model construction holds engine.QUIET_LOAD.

llama-cpp-python's quiet load (verbose=False) points sys.stdout/stderr and fds 1 and 2 at /dev/null while it
runs and then restores what it found. Two loads overlapping in two threads (a draft's preload and the
context fitter's vocab-only load) left them at /dev/null for good: `panza draft --format json` printed
nothing. Checked deterministically: each construction must find the lock held by its own thread's caller.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest


@pytest.fixture
def constructions(monkeypatch):
    """Record, for every llama_cpp.Llama(...) made, whether engine.QUIET_LOAD was held at that moment."""
    import llama_cpp

    from panza_local import engine, fit

    seen: list[bool] = []
    real = llama_cpp.Llama.__init__

    def init(self, *a, **k):
        seen.append(engine.QUIET_LOAD.locked())
        real(self, *a, **k)

    monkeypatch.setattr(llama_cpp.Llama, "__init__", init)
    engine.unload_all()
    fit._VOCABS.clear()
    yield seen
    engine.unload_all()
    fit._VOCABS.clear()


def test_model_vocab_and_training_tokenizer_loads_hold_the_lock(constructions, embedded_model):
    from panza_local import engine, fit
    from panza_local.train.data import Tokenizer

    engine.load(embedded_model, n_ctx=256, threads=1)
    engine.unload_all()  # so the fitter loads its own vocab-only model instead of reusing the engine's
    assert fit.count_text("hello there", embedded_model) > 0
    Tokenizer(embedded_model)
    assert constructions == [True, True, True]


def test_a_draft_with_its_preload_prints_its_json(home, monkeypatch, constructions):
    """The CLI path that lost its output: preload thread + vocab-only fit in the main thread."""
    from panza_local.cli import main

    monkeypatch.setenv("PANZA_THREADS", "1")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["draft", "Thank Sam for the invoice", "--format", "json", "--no-rag", "--max-tokens", "4",
                   "--seed", "1"])
    assert rc == 0 and json.loads(buf.getvalue())["text"]
    assert constructions and all(constructions)
