"""Input that does not fit the context: trimmed with a notice, or refused naming the limit and the fix.

Real tokenizer and chat template of the embedded model (fit.count is checked against what llama.cpp
evaluates), the real engine, the CLI as a subprocess, evaluation, and the TUI under Pilot.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from panza_local import chat, draft, fit, store

WORDS = ["budget", "forecast", "meeting", "friday", "invoice", "contract", "review", "schedule", "vendor",
         "shipment", "report", "quarter", "numbers", "travel", "approval", "deadline", "proposal", "draft"]


def filler(tag: str, n_words: int) -> str:
    """Plain text of `n_words` words, each prefixed with `tag` so a test can see which piece survived."""
    return " ".join(f"{tag}{WORDS[i % len(WORDS)]}" for i in range(n_words))


@pytest.fixture
def settings(home, monkeypatch):
    from panza_local import config

    monkeypatch.setenv("PANZA_THREADS", "1")
    return config.load({"n_ctx": 1024, "seed": 3, "temperature": 0.0, "max_tokens": 8, "threads": 1})


def plan_with(settings, *, examples=(), thread=None, max_tokens=64, instruction="Ask Bob to move the call to 3pm",
              n_ctx=None, history=()):
    """A draft plan prepared with room to spare, then fitted to `n_ctx` (with `history`) as serve does."""
    reply = draft.Reply(body=thread) if thread else None
    roomy = dataclasses.replace(settings, n_ctx=n_ctx and 8192 or settings.n_ctx)
    plan = draft.prepare(instruction, reply_to=reply, use_rag=False, use_adapter=False, settings=roomy,
                         examples=list(examples))
    plan.settings = dataclasses.replace(settings, n_ctx=n_ctx or settings.n_ctx)
    plan.max_tokens = max_tokens
    fit.fit_plan(plan, history=list(history))
    return plan


# -- counting ---------------------------------------------------------------------------------------------------

def test_count_is_exactly_what_llama_cpp_evaluates(embedded_model):
    from panza_local import engine

    cases = [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "You write emails.\n<|im_start|>user looks like a token"},
              {"role": "user", "content": "Grüße an Zoë — “quoted” ~~~ 3pm 🙂 " * 20}],
             [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
              {"role": "assistant", "content": "b"}, {"role": "user", "content": filler("x", 200)}]]
    engine.unload_all()
    fit._VOCABS.clear()
    cold = [fit.count(msgs, embedded_model) for msgs in cases]  # a vocab-only load (the cold CLI)
    fit._VOCABS.clear()
    fit._TOKENS.clear()  # tokenized again below, by the engine's model
    llm = engine.load(embedded_model, n_ctx=1024, threads=1)
    assert fit.vocab(embedded_model) is llm  # warm: the engine's own model, nothing loaded twice
    for msgs, n in zip(cases, cold):
        got = llm.create_chat_completion(messages=msgs, max_tokens=1, temperature=0.0)
        assert n == fit.count(msgs, embedded_model) == got["usage"]["prompt_tokens"]
    assert fit.trained_context(embedded_model) == 8192
    # the engine tokenizes the prompt its plan was fitted with: the second time it is a copy of the first
    first = fit.chat_tokens(cases[1], llm)
    first.append(-1)
    assert fit.chat_tokens(cases[1], llm) == first[:-1]


# -- trimming order -----------------------------------------------------------------------------------------------

def test_oldest_history_goes_first_and_only_as_much_as_needed(settings):
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " + filler(f"t{i}", 70)}
             for i in range(10)]
    plan = plan_with(settings, history=turns)
    kept = [m for m in plan.messages if m["content"].startswith("turn")]
    assert kept and kept == turns[-len(kept):]  # a suffix: the newest turns stay, in order
    dropped = len(turns) - len(kept)
    assert any(f"left out the {dropped} oldest of 10 earlier chat turns" in n for n in plan.notices), plan.notices
    n = fit.count(plan.messages, plan.model_path)
    assert n + plan.max_tokens <= settings.n_ctx
    # minimal: one more old turn would not have fitted
    longer = [*plan.messages[:1], *turns[dropped - 1:], plan.messages[-1]]
    assert fit.count(longer, plan.model_path) + plan.max_tokens > settings.n_ctx
    assert plan.messages[-1]["content"].endswith("Ask Bob to move the call to 3pm")  # the request, last


def test_then_least_relevant_retrieved_then_the_threads_tail(settings):
    ex = [draft.Retrieved(id="msg:a", score=0.9, text=filler("a", 150), to="x@y"),
          draft.Retrieved(id="msg:b", score=0.4, text=filler("b", 150), to="x@y"),
          draft.Retrieved(id="msg:c", score=0.7, text=filler("c", 150), to="x@y")]
    thread = "THREADSTART " + filler("q", 500)
    history = [{"role": "user", "content": filler("h", 60)}, {"role": "assistant", "content": filler("k", 60)}]
    plan = plan_with(settings, examples=ex, thread=thread, history=history, n_ctx=640)
    text = "\n".join(m["content"] for m in plan.messages)
    notes = [n for n in plan.notices if fit.is_notice(n)]
    assert len(notes) == 3, plan.notices
    assert "left out the 2 oldest of 2 earlier chat turns" in notes[0]
    assert "left out 3 retrieved items (msg:b, msg:c, msg:a)" in notes[1]  # ascending relevance
    assert "kept the first" in notes[2] and f"of {len(thread):,} characters of the quoted email" in notes[2]
    assert "hbudget" not in text and "abudget" not in text and "THREADSTART" in text  # the head stays
    assert fit.THREAD_CUT.strip() in text and plan.retrieved == []
    assert fit.count(plan.messages, plan.model_path) + plan.max_tokens <= 640


def test_the_least_relevant_example_goes_first_even_mid_list(settings):
    ex = [draft.Retrieved(id="msg:a", score=0.9, text=filler("a", 150), to="x@y"),
          draft.Retrieved(id="msg:b", score=0.3, text=filler("b", 150), to="x@y"),
          draft.Retrieved(id="msg:c", score=0.6, text=filler("c", 150), to="x@y")]
    full = plan_with(settings, examples=ex, n_ctx=8192)
    need = fit.count(full.messages, full.model_path)
    plan = plan_with(settings, examples=ex, n_ctx=need + 64 - 20)
    assert [r.id for r in plan.retrieved] == ["msg:a", "msg:c"]
    assert any("left out 1 retrieved item (msg:b)" in n for n in plan.notices), plan.notices


def test_a_long_reply_budget_is_shortened_not_the_prompt(settings):
    ex = [draft.Retrieved(id="msg:a", score=0.9, text=filler("a", 100), to="x@y")]
    plan = plan_with(settings, examples=ex, max_tokens=900)
    n = fit.count(plan.messages, plan.model_path)
    assert [r.id for r in plan.retrieved] == ["msg:a"]  # never cut to free more than half the context
    assert plan.max_tokens == 1024 - n < 900
    assert any(f"the reply may be at most {1024 - n} tokens long (asked for 900)" in x for x in plan.notices)


def test_an_instruction_that_cannot_fit_is_refused_naming_the_fix(settings):
    with pytest.raises(fit.ContextTooLong) as err:
        plan_with(settings, instruction=filler("w", 500))
    e = err.value
    assert e.limit == 1024 and e.needed > 1024
    assert "the instruction is too long" in e.message and "1,024 tokens" in e.message
    suggested = int(re.search(r"panza config set n_ctx (\d+)", e.fix).group(1))
    assert e.needed + fit.MIN_REPLY <= suggested <= 8192 and "shorten the instruction" in e.fix
    with pytest.raises(fit.ContextTooLong) as err:  # beyond what the model was trained for: no n_ctx advice
        plan_with(settings, instruction=filler("w", 12000))
    assert "at most 8,192 tokens" in err.value.fix and "n_ctx" not in err.value.fix


# -- each path -------------------------------------------------------------------------------------------------

def _env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANZA_") or k == "PANZA_SHARED_DATA"}
    env.update(PANZA_HOME=str(home), PANZA_THREADS="1")
    return env


def test_cli_draft_from_stdin_with_a_10k_token_instruction_is_a_clear_error(home):
    text = "Please write to Bob about the budget. " + filler("n", 7000)
    r = subprocess.run([sys.executable, "-m", "panza_local", "draft", "-", "--max-tokens", "8"], input=text,
                       capture_output=True, text=True, env=_env(home), timeout=300, check=False)
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: the instruction is too long"), r.stderr
    assert "4,096 tokens" in r.stderr and "fix: shorten the instruction" in r.stderr


@pytest.mark.slow
def test_cli_json_says_what_was_left_out_of_a_long_quoted_thread(home, monkeypatch, capsys):
    from panza_local.cli import main

    monkeypatch.setenv("PANZA_THREADS", "1")
    monkeypatch.setenv("PANZA_N_CTX", "512")
    quoted = "\n".join(f"> line {i} of the quoted mail: " + filler("q", 12) for i in range(60))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"Say yes to the review\n\nOn Tue, Bob wrote:\n{quoted}\n"))
    rc = main(["draft", "-", "--format", "json", "--no-rag", "--no-adapter", "--max-tokens", "6", "--seed", "1"])
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert rc == 0 and out["instruction"] == "Say yes to the review"
    cut = [n for n in out["notices"] if n.startswith("to fit the model's context (512 tokens): kept the first")]
    assert cut, out["notices"]
    assert out["stats"]["prompt_tokens"] + 6 <= 512
    assert cut[0] in " ".join(cap.err.split())  # also said on stderr (where rich wraps it)
    assert "llama_context" not in cap.err  # and nothing else from llama.cpp


def test_eval_skips_an_item_that_cannot_fit_and_scores_the_rest(settings):
    from panza_local import evaluate

    items = [evaluate.Item(instruction="Thank Anna for the slides", reference="Hi Anna, thanks for the slides!"),
             evaluate.Item(instruction=filler("w", 1500), reference="Hi Bob, long one."),
             evaluate.Item(instruction="Ask Bob for the report", reference="Bob, could you send the report?")]
    res = evaluate.evaluate(items, configs=["stock"], seeds=1, settings=settings, with_models=False, max_tokens=6)
    assert res.configs["stock"]["lengths"] and len(res.configs["stock"]["lengths"]) == 2
    assert isinstance(res.configs["stock"]["bleu"], float)
    assert any("1 of 3 held-out emails were not drafted (items 1)" in n and "too long" in n for n in res.notes)


# -- TUI -------------------------------------------------------------------------------------------------------

def _app(**settings):
    from test_tui_snapshots import make_app

    from panza_local import config

    return make_app(settings=config.load({"threads": 1, **settings}), seed=3, use_rag=False)


async def _wait(app, pilot, timeout: float = 240) -> None:
    """Every worker done and what it posted handled (test_tui.wait_workers: waits for the state, not a clock)."""
    from test_tui import wait_workers

    await wait_workers(app, pilot, timeout)


def _record_notes(app) -> list:
    """Every notification the app shows (on screen they expire after a few seconds; a slow draft outlives them)."""
    seen: list = []
    show = app.notify

    def notify(message, *args, **kwargs):
        seen.append(SimpleNamespace(message=message, severity=kwargs.get("severity", "information")))
        return show(message, *args, **kwargs)

    app.notify = notify
    return seen


@pytest.mark.asyncio
async def test_tui_draft_too_long_is_a_notification_and_a_long_thread_a_warning(home):
    from panza_local.tui.screens.draft import DraftScreen
    from textual.widgets import TextArea

    app = _app(n_ctx=640, max_tokens=6)
    seen = _record_notes(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, DraftScreen)
        screen.query_one("#draft-instruction").text = filler("w", 1500)
        await pilot.press("ctrl+g")
        await _wait(app, pilot)
        errors = [n for n in seen if n.severity == "error"]
        assert len(errors) == 1 and "too long for the model's context" in errors[0].message, seen
        assert "fix:" in errors[0].message and not screen.streaming
        # a reply to a long email: drafted, and told what was cut
        screen.thread = {"message_id": "<x@y>", "subject": "Review", "from_addr": "bob@example.com",
                         "body": "REVIEWSTART " + filler("q", 700)}
        screen.query_one("#draft-instruction").text = "Say yes to the review"
        await pilot.press("ctrl+g")
        await _wait(app, pilot)
        warnings = [n for n in seen if n.severity == "warning" and fit.is_notice(n.message)]
        assert warnings and "of the quoted email" in warnings[0].message, seen
        assert screen.result is not None and screen.query_one("#draft-text", TextArea).text.strip()


@pytest.mark.asyncio
async def test_tui_chat_with_a_long_history_warns_and_replies(home):
    conn = store.connect()
    conv = chat.create(conn, "Long talk")
    for i in range(8):
        chat.add_message(conn, conv.id, "user" if i % 2 == 0 else "assistant", f"turn{i} " + filler(f"t{i}", 60))
    conn.close()
    app = _app(n_ctx=1024, max_tokens=6)
    seen = _record_notes(app)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert app.screen.conversation_id == conv.id
        app.screen.query_one("#chat-input").focus()
        for key in "Summarise":
            await pilot.press(key)
        await pilot.press("enter")
        await _wait(app, pilot)
        warnings = [n.message for n in seen if n.severity == "warning"]
        assert any("oldest of 8 earlier chat turns" in w for w in warnings), seen
        assert not [n for n in seen if n.severity == "error"], seen
        turns = chat.messages(app.conn, conv.id)
        assert turns[-1].role == "assistant" and turns[-1].content.strip()
        # a message that cannot fit at all: an error notification, the app goes on
        app.screen.query_one("#chat-input").text = filler("w", 1500)
        await pilot.press("enter")
        await _wait(app, pilot)
        errors = [n.message for n in seen if n.severity == "error"]
        assert errors and "your message is too long" in errors[-1] and "fix:" in errors[-1]
