"""The quickstart proves the product: after it, the sample person's adapter drafts in her voice.

Heavy (the whole pipeline: playback of her 138 emails, training, drafts on the real engine): run with
`pytest -m heavy tests/test_quickstart_voice.py -s` to read the drafts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re

import pytest

from panza_local import quickstart

# Five instructions none of the quickstart's defaults or prompts were tuned on, to people she writes to
# and to a stranger; with, for each, the words that carry its content (each group: any one of them).
VOICE = (
    ("Ask Tom to add the tree protection zones to the Harbour Park drawings by Wednesday",
     "Tom Okafor <tom@lindqvist-studio.example>", [("wednesday",), ("tree", "protection", "drawing")]),
    ("Tell Elena we need twelve silver birches delivered to site on Monday",
     "Elena Rossi <orders@rossi-nursery.example>", [("monday",), ("birch",)]),
    ("Ask Priya when the committee will decide on the Mill Lane rooftop application",
     "Priya Natarajan <priya.natarajan@greenway-council.example>", [("committee", "decision", "decide"),
                                                                    ("mill lane", "rooftop", "application")]),
    ("Let Sam know that planting in his garden is booked for Thursday",
     "Sam Whitaker <sam.whitaker@fastmail.example>", [("thursday",), ("plant",)]),
    ("Ask Bob to send the signed contract back by Friday", "bob@example.com", [("friday",), ("contract",)]),
)
# The `home` fixture clears PANZA_* settings; a run on a busy machine may still ask for fewer threads
# (PANZA_THREADS=1: llama.cpp's and torch's spinning threads crawl when the cores are shared).
THREADS = os.environ.get("PANZA_THREADS")
# A home where `panza quickstart` already ran (the README's first command; .ci/run points this at its home):
# the test runs the quickstart there again, which resumes (every stage is incremental: nothing to redo when
# code and data are unchanged, the stale stages when not) and drafts from the adapter the user's run trained.
# Unset, the test runs the whole quickstart in a home of its own.
QUICKSTART_HOME = os.environ.get("PANZA_QUICKSTART_HOME")
LEAKS = re.compile(r"subject:|chat history|message body|\[your name\]|\*\*|^#|^-{3,}|\bhere'?s (a|the)\b|"
                   r"the message is from", re.IGNORECASE | re.MULTILINE)


def opens_with_her_greeting(text: str, to: str) -> bool:
    from panza_local.profile import first_name_of

    first = first_name_of(to, "Bob") or "Bob"
    return text.lstrip().startswith(f"Hi {first},")


def ends_with_her_signoff(text: str) -> bool:
    return bool(re.search(r"\n\s*Cheers,?\s*\n\s*Maya\s*$", text.rstrip()))


THANKS_OPENING = re.compile(r"^\s*hi [^,\n]+,\s*(thanks|thank you)\b", re.IGNORECASE)


def wrapped_pairs(text: str) -> list[tuple[str, str]]:
    """(line, next line) inside a paragraph where the line is as long as a mail client's wrap (her mail is
    wrapped at 72): the model writes such breaks, the clean-up joins them (cleanup.REFLOW_MIN, REFLOW_MAX)."""
    lines = text.split("\n")
    return [(a, b) for a, b in itertools.pairwise(lines) if 50 <= len(a.strip()) <= 90 and b.strip()
            and not a.rstrip().endswith(":") and not re.match(r"\s*(?:[-*+>|]|\d{1,3}[.)]\s)", b)]


def carries(text: str, groups) -> bool:
    low = text.lower()
    return all(any(w in low for w in group) for group in groups)


@pytest.mark.heavy
def test_quickstart_adapter_drafts_in_her_voice(home, monkeypatch):
    if THREADS:
        monkeypatch.setenv("PANZA_THREADS", THREADS)
    if QUICKSTART_HOME:
        monkeypatch.setenv("PANZA_HOME", QUICKSTART_HOME)

    @contextlib.contextmanager
    def bar(_desc):
        yield lambda *a, **k: None

    out = quickstart.run(bar, print)
    assert out["train"]["promoted"], out["train"]
    rows = quickstart.compare([(i, to) for i, to, _ in VOICE])
    counts = {"greeting": 0, "signoff": 0, "raw_greeting": 0, "raw_signoff": 0, "content": 0, "stock_content": 0,
              "thanks_unasked": 0, "raw_wrapped": 0}
    for (instruction, to, groups), row in zip(VOICE, rows):
        print(f"\n=== {instruction} (to {to})\n--- stock:\n{row['stock']}\n--- adapter (raw):\n{row['adapter_raw']}"
              f"\n--- adapter:\n{row['adapter']}")
        assert not LEAKS.search(row["adapter"]) and not LEAKS.search(row["stock"])
        pairs = wrapped_pairs(row["adapter_raw"])
        assert not [p for p in pairs if f"{p[0].strip()}\n{p[1].strip()}" in row["adapter"]]  # paragraphs whole,
        counts["raw_wrapped"] += bool(pairs)  # for the mail client to wrap
        counts["greeting"] += opens_with_her_greeting(row["adapter"], to)
        counts["signoff"] += ends_with_her_signoff(row["adapter"])
        counts["raw_greeting"] += opens_with_her_greeting(row["adapter_raw"], to)
        counts["raw_signoff"] += ends_with_her_signoff(row["adapter_raw"])
        counts["content"] += carries(row["adapter"], groups)
        counts["stock_content"] += carries(row["stock"], groups)
        # none of these requests thanks anyone: a draft that opens "Thanks for ..." turned the request around
        counts["thanks_unasked"] += bool(THANKS_OPENING.search(row["adapter"]))
    print("\ncounts (of 5):", counts, "\nstage seconds:",
          {k: v.get("seconds") for k, v in out.items() if isinstance(v, dict) and "seconds" in v})
    assert counts["greeting"] >= 4 and counts["signoff"] >= 4 and counts["content"] >= 4
    assert counts["thanks_unasked"] <= 1
    # her greeting for the recipient is the reply's given start (draft.DraftPlan.opening), so the raw text has it;
    # the model itself, not the clean-up, writes her sign-off
    assert counts["raw_greeting"] >= 4 and counts["raw_signoff"] >= 4
