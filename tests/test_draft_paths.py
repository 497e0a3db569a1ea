"""Every path a draft reaches the user by (CLI, serve streaming and not, the TUI draft screen) gives the
cleaned email: checked on a prompt whose raw greedy draft is not yet her email on the real engine (another
greeting, no sign-off of hers).

The paths are not compared word for word: llama.cpp's numerics differ slightly when a prompt's prefix is
already cached, and greedy decoding of the 4-bit model can then take another word."""

from __future__ import annotations

import json
import re

import pytest

from panza_local import cleanup, draft, engine, profile
from panza_local.prompts import Profile

# Greedy decoding of the embedded model answers this with "Dear Bob," and no sign-off of hers (checked
# below on the raw text, so the test notices if the model starts writing her email unaided).
INSTR = "Draft a sample message to Bob, with a Subject: line, about lunch"
TO = "bob@example.com"
MAX = 72
LEAKS = re.compile(r"subject:|\bhere'?s the\b|\*\*|---|\[your name\]", re.IGNORECASE)

pytestmark = pytest.mark.slow


@pytest.fixture
def maya(home, monkeypatch):
    from panza_local import config

    for key, value in {"PANZA_THREADS": "1", "PANZA_N_CTX": "2048", "PANZA_SEED": "1", "PANZA_TEMPERATURE": "0",
                       "PANZA_MAX_TOKENS": str(MAX)}.items():
        monkeypatch.setenv(key, value)  # the CLI, the server and the app load the same settings
    profile.save(Profile(name="Maya Lindqvist", greeting="Hi <name>,", signoff="Cheers,\nMaya", typical_words=50))
    settings = config.load()
    assert (settings.threads, settings.seed, settings.temperature, settings.max_tokens) == (1, 1, 0.0, MAX)
    engine.unload_all()  # a fresh context, as the CLI's process starts with: llama.cpp's sums (and so a greedy
    # draft) can differ by rounding when a prompt prefix comes from the KV cache an earlier test left
    plan = draft.prepare(INSTR, to=TO, use_rag=False, use_adapter=False, settings=settings)
    streamed = "".join(draft.stream(plan)).strip()
    raw = "".join(plan.raw)
    assert not is_clean(raw) and raw.startswith("Dear Bob,"), raw  # the raw text is not her email ...
    assert not LEAKS.search(streamed), streamed  # ... and the clean-up leaks nothing
    assert streamed == draft.finish(plan, record=False).text == cleanup.clean(raw, plan.profile, TO)
    assert is_clean(streamed)
    return settings, streamed


def is_clean(text: str) -> bool:
    """Her greeting and sign-off around a body, and none of the scaffolding the model wrote."""
    return (text.startswith("Hi Bob,\n") and text.endswith("\n\nCheers,\nMaya") and len(text.split()) > 8
            and not LEAKS.search(text))


def test_cli_json_and_text(maya, capsys):
    from panza_local.cli import main

    args = ["draft", INSTR, "--to", TO, "--no-rag", "--no-adapter"]
    assert main([*args, "--format", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert is_clean(as_json["text"])
    assert main([*args, "--json"]) == 0  # the flag every other command takes means the same here
    assert json.loads(capsys.readouterr().out).keys() == as_json.keys()
    assert main(args) == 0  # streamed to the terminal piece by piece
    assert is_clean(capsys.readouterr().out.strip())


def test_serve_streaming_and_not(maya):
    from openai import OpenAI

    from panza_local import serve

    settings, _ = maya
    with serve.running(settings=settings) as url:
        client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        body = {"model": "panza-stock", "messages": [{"role": "user", "content": INSTR}], "max_tokens": MAX,
                "extra_body": {"panza": {"to": TO}}}
        r = client.chat.completions.create(**body)
        assert is_clean(r.choices[0].message.content)
        chunks = list(client.chat.completions.create(**body, stream=True))
        pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert is_clean("".join(pieces).strip()) and len(pieces) >= 2


@pytest.mark.asyncio
async def test_tui_draft_screen(maya):
    from panza_local.tui.screens.draft import DraftScreen
    from test_tui import type_text, wait_workers
    from test_tui_snapshots import make_app
    from textual.widgets import TextArea

    settings, _ = maya
    app = make_app(settings=settings, seed=1, use_rag=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, DraftScreen)
        screen.query_one("#draft-to").value = TO
        screen.query_one("#draft-instruction").focus()
        await type_text(pilot, INSTR)
        await pilot.press("enter")
        await wait_workers(app, pilot, timeout=900)
        shown = screen.query_one("#draft-text", TextArea).text.strip()
        assert is_clean(shown) and screen.result is not None and screen.result.text == shown


def test_generation_stops_once_the_email_is_over(home):
    """The engine stops when the clean-up is `done` (her name under the sign-off, another email, a loop): the
    raw text ends at the token that made it so, never runs on to max_tokens writing what would be cut."""
    from panza_local import config

    profile.save(Profile(name="Maya Lindqvist", greeting="Hi <name>,", signoff="Cheers,\nMaya", typical_words=50))
    settings = config.load({"threads": 1, "n_ctx": 2048, "seed": 1, "temperature": 0.0, "max_tokens": 200})
    stopped = 0
    for instruction, to in (("Invite Hannah to book club at mine on Thursday at 7:30", "hannah@postbox.example"),
                            ("Tell Jonas the oak sleepers can be delivered on Tuesday morning", "jonas@x.example"),
                            ("Ask Bob to move our meeting to Friday", TO)):
        plan = draft.prepare(instruction, to=to, use_rag=False, use_adapter=False, settings=settings)
        text = "".join(draft.stream(plan)).strip()
        before = cleanup.Cleaner(plan.profile, to, instruction)
        before.feed("".join(plan.raw[:-1]))
        assert not before.done, plan.raw  # it was not over one token earlier ...
        after = cleanup.Cleaner(plan.profile, to, instruction)
        after.feed("".join(plan.raw))
        if after.done:  # ... and where it is over, the engine stopped right there
            stopped += 1
            assert plan.stats["completion_tokens"] < 200
        assert text == draft.finish(plan, record=False).text and text.endswith("Maya")
    engine.unload_all()
    assert stopped >= 1  # the stock model signs off (or loops) on at least one of them within 200 tokens
