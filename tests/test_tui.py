"""The Textual app driven by keys under Pilot: every screen, the real engine, the real store."""

from __future__ import annotations

import email
import io
import mailbox
import time
from email import policy

import pytest
from test_tui_snapshots import make_app, seed_store

from panza_local import chat, store

pytestmark = pytest.mark.asyncio


@pytest.fixture
def seeded(home):
    conn = store.connect()
    seed_store(conn)
    conn.close()
    return home


async def wait_until(pilot, done, what: str, limit: float = 240) -> None:
    """Wait for the state `done()` (checked between frames). `limit` only turns a hang into a failure that says
    what never happened: it is never the synchronisation itself."""
    deadline = time.monotonic() + limit
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {limit:.0f}s"
        await pilot.pause(0.02)


async def wait_dialog(app, pilot, kind: str) -> None:
    """Wait until the modal `kind` (AskText, Confirm, PickOne) is on top: an action's worker pushes it."""
    from panza_local.tui.screens import dialogs

    cls = getattr(dialogs, kind)
    await wait_until(pilot, lambda: isinstance(app.screen, cls), f"the {kind} dialog never opened", limit=60)


async def wait_workers(app, pilot, timeout: float = 240) -> None:
    """Let every worker finish (the real engine on a busy 2-core box can take a while), then let the messages
    they posted be handled (a thread worker posts before it finishes). A *cancelled* worker counts as finished
    at once while its thread still runs: after a cancel, wait for the screen's own state instead."""
    await wait_until(pilot, lambda: all(w.is_finished for w in app.workers), f"workers still running: {list(app.workers)}",
                     timeout)
    await pilot.pause()  # messages posted by the workers are handled before this returns


class EngineHold:
    """Holds every generation of the real engine at a known point until the test calls `release()`, so a test
    sees a stream or a re-tune mid-way however fast or busy the machine is.

    at="start": the worker waits (idle) before the engine starts; after release it generates as usual.
    at="end": the engine generates as usual, and when it finishes before the release it generates again
    (the real engine, busy the whole time) until released; with `replay` the further generations' pieces are
    yielded too, otherwise only the first generation's are (what the caller gets is unchanged).
    `reached` is set once a generation is held (start) or has produced its first piece (end); `pieces` counts
    the engine's pieces across all generations."""

    def __init__(self, monkeypatch, at: str = "end", replay: bool = False) -> None:
        import threading

        from panza_local import engine

        self.at, self.replay = at, replay
        self.reached, self._released = threading.Event(), threading.Event()
        self.pieces = 0
        real = engine.stream_chat

        def held(*args, **kwargs):
            if self.at == "start":
                self.reached.set()
                self._released.wait()
            first = True
            while True:
                gen = real(*args, **kwargs)
                while True:
                    try:
                        piece = next(gen)
                    except StopIteration as end:
                        stats = end.value  # stream_chat returns its Stats
                        break
                    self.pieces += 1
                    self.reached.set()
                    if first or self.replay:
                        yield piece
                    if self._released.is_set() and (self.replay or not first):  # (replayed pieces: stop now)
                        gen.close()
                        return None
                if self.at == "start" or self._released.is_set():
                    return stats
                first = False

        monkeypatch.setattr(engine, "stream_chat", held)

    def release(self) -> None:
        self._released.set()


@pytest.fixture
def engine_hold(monkeypatch):
    """EngineHold factory; every hold is released at teardown so no engine thread outlives the test."""
    holds = []

    def make(**kwargs) -> EngineHold:
        holds.append(EngineHold(monkeypatch, **kwargs))
        return holds[-1]

    yield make
    for h in holds:
        h.release()


def visible_text(app) -> str:
    """The screen as plain text, exactly as the terminal would show it (what a person reads)."""
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, force_terminal=True,
                      legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


@pytest.fixture(autouse=True)
def _record_notifications(monkeypatch):
    """Every notification the app raises, kept: on screen they expire after their timeout in wall-clock time,
    which a busy machine can outlast between the notify and the test's look at it."""
    from panza_local.tui.app import PanzaApp

    real = PanzaApp.notify

    def notify(self, message, *args, **kwargs):
        self.__dict__.setdefault("_seen_notes", []).append(str(message))
        return real(self, message, *args, **kwargs)

    monkeypatch.setattr(PanzaApp, "notify", notify)


def notes(app) -> list[str]:
    """The messages of every notification the app raised so far (expired ones included)."""
    return list(app.__dict__.get("_seen_notes", [])) or [n.message for n in app._notifications]


async def open_draft(app, pilot):
    """F3: the draft screen, on top."""
    from panza_local.tui.screens.draft import DraftScreen

    await pilot.press("f3")
    await pilot.pause()
    assert isinstance(app.screen, DraftScreen)
    return app.screen


async def type_text(pilot, text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


# -- first run, help, palette ---------------------------------------------------------------------------------

async def test_first_run_guides_then_continues_to_chat(home):
    from panza_local.tui.screens.chat import ChatScreen
    from panza_local.tui.screens.first_run import FirstRunScreen

    app = make_app(first_run=None)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, FirstRunScreen)
        guide = app.screen.query_one("#first-run-guide").source
        for cmd in ("panza ingest", "panza playback", "panza index", "panza train", "panza quickstart"):
            assert cmd in guide
        assert "○" in guide and "✔" not in guide  # nothing done yet
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChatScreen)


async def test_help_screen_and_palette_switch_screens(seeded):
    from panza_local.tui.screens.help import HelpScreen
    from panza_local.tui.screens.status import StatusScreen

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "ctrl+n" in visible_text(app)
        await pilot.press("end")  # the key list scrolls from the keyboard
        await pilot.pause()
        assert "re-tune now" in visible_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("ctrl+p")
        await pilot.pause()
        await type_text(pilot, "status")
        from textual.command import CommandList

        await wait_until(pilot, lambda: app.screen.query(CommandList) and app.screen.query_one(CommandList).option_count,
                         "the palette never listed a match for 'status'")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, StatusScreen), "enter in the palette did not open status")


# -- chat history ---------------------------------------------------------------------------------------------

async def test_history_browse_search_rename_delete(seeded):
    from panza_local.tui.widgets.conversations import ConversationList

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert screen.conversation_id == 1  # most recently updated opens first
        assert "Bob's lunch invite" in visible_text(app)
        # search from the keyboard: only the budget conversation matches "blunt"
        await pilot.press("ctrl+f")
        await type_text(pilot, "blunt")
        await pilot.pause()
        options = screen.query_one("#conv-options")
        assert options.option_count == 1
        await pilot.press("enter", "enter")  # to the list, then open the highlighted conversation
        await pilot.pause()
        assert screen.conversation_id == 2
        assert "too blunt" in visible_text(app)
        # rename it
        await pilot.press("ctrl+r")
        await wait_dialog(app, pilot, "AskText")
        await pilot.press("ctrl+a", "ctrl+k")  # clear the prefilled title
        await type_text(pilot, "Budget tone")
        await pilot.press("enter")
        await wait_until(pilot, lambda: chat.get(app.conn, 2).title == "Budget tone", "the rename was not stored")
        # delete it (F8, then y)
        await pilot.press("f8")
        await wait_dialog(app, pilot, "Confirm")
        await pilot.press("y")
        await wait_until(pilot, lambda: [c.id for c in chat.list_(app.conn)] == [1], "the delete was not stored")
        await wait_workers(app, pilot)
        assert screen.query_one("#conv-options").option_count == 0  # the search "blunt" still applies
        await pilot.press("ctrl+f", "ctrl+a", "ctrl+k")  # clear it
        await pilot.pause()
        assert screen.query_one(ConversationList).query_one("#conv-options").option_count == 1
        # a new conversation starts empty
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert screen.conversation_id is None
        assert "Ask anything" in visible_text(app)


@pytest.mark.slow
async def test_chat_streams_from_real_engine_and_survives_restart(seeded):
    from textual.widgets import Markdown

    app = make_app(max_tokens=8, seed=7, use_rag=False)
    async with app.run_test(size=(160, 48)) as pilot:  # wide: the side panel shows
        await pilot.press("ctrl+n")
        await type_text(pilot, "Say hello to Bob")
        await pilot.press("enter")
        await wait_workers(app, pilot)
        assert not [n for n in notes(app) if "fix" in n], notes(app)
        conv_id = app.screen.conversation_id
        turns = chat.messages(app.conn, conv_id)
        assert [t.role for t in turns] == ["user", "assistant"]
        reply = turns[1].content
        assert reply.strip() and reply != "(no reply)"
        assert turns[1].meta["tokens"] >= 1
        blocks = app.screen.query(".turn.assistant").results(Markdown)
        assert reply.split()[0] in list(blocks)[-1].source  # what streamed in is what was stored
        assert reply.split()[0] in visible_text(app)  # and it is on screen, not scrolled away
        assert "tok/s" in visible_text(app)
    # a fresh app on the same home shows the same conversation first
    app2 = make_app()
    async with app2.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app2.screen.conversation_id == conv_id
        text = visible_text(app2)
        assert "Say hello to Bob" in text
        assert reply.split()[0] in text


# -- draft mode -----------------------------------------------------------------------------------------------

@pytest.mark.slow
async def test_draft_streams_then_saves_eml_and_maildir(seeded, tmp_path, engine_hold):
    from textual.widgets import TextArea

    hold = engine_hold(at="start")  # the engine waits for the test: "streaming" is seen however fast it is
    app = make_app(max_tokens=12, seed=3, use_rag=False)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_draft(app, pilot)
        # reply to Bob's lunch email, picked from the keyboard
        await pilot.press("ctrl+t")
        await wait_dialog(app, pilot, "PickOne")
        await type_text(pilot, "lunch")
        await pilot.press("enter", "enter")
        await wait_until(pilot, lambda: screen.query_one("#draft-to").value, "the picked thread filled nothing")
        assert screen.query_one("#draft-to").value == "bob@example.com"
        assert screen.query_one("#draft-subject").value == "Re: Lunch on Friday?"
        await pilot.press("tab", "tab", "tab")  # back to the instruction box
        screen.query_one("#draft-instruction").focus()
        await type_text(pilot, "say yes to lunch on Friday")
        await pilot.press("enter")
        await wait_until(pilot, hold.reached.is_set, "the draft never reached the engine")
        area = screen.query_one("#draft-text", TextArea)
        assert screen.streaming and area.read_only  # held before its first token: the draft is being written
        await pilot.press("ctrl+s")  # saving mid-stream is refused, not a half draft on disk
        await wait_until(pilot, lambda: any("still being written" in n for n in notes(app)), "no mid-stream warning")
        hold.release()
        t0 = time.monotonic()
        await wait_workers(app, pilot)
        print(f"draft took {time.monotonic() - t0:.1f}s")
        assert not screen.streaming
        text = screen.query_one("#draft-text", TextArea).text
        assert text.strip(), notes(app)
        assert screen.result is not None and screen.result.in_reply_to == "<lunch@example.com>"
        side = visible_text(app)
        assert "smollm2-135m" in side and "tok/s" in side
        # edit in place, then save as .eml through the dialog
        area.focus()
        await pilot.press(*["down"] * 12, "end")  # to the end of the draft
        assert area.cursor_location == area.document.end
        await type_text(pilot, " Ada")
        edited = area.text
        target = tmp_path / "out" / "reply.eml"
        await pilot.press("ctrl+s")
        await wait_dialog(app, pilot, "AskText")
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, str(target))
        await pilot.press("enter")
        await wait_workers(app, pilot)  # the save dialog's worker wrote the file (or notified why not)
        assert target.exists(), notes(app)
        msg = email.message_from_bytes(target.read_bytes(), policy=policy.default)
        assert msg["To"] == "bob@example.com"
        assert msg["Subject"] == "Re: Lunch on Friday?"
        assert msg["In-Reply-To"] == "<lunch@example.com>"
        # the file's lines end in CRLF (RFC 5322); a 7bit body reads back with them
        assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == edited.strip()
        # save to a Maildir's Drafts folder: the file carries the D flag
        maildir = tmp_path / "Maildir"
        await pilot.press("ctrl+o")
        await wait_dialog(app, pilot, "AskText")
        await pilot.press("ctrl+a", "ctrl+k")
        await type_text(pilot, str(maildir / "Drafts"))
        await pilot.press("enter")
        await wait_workers(app, pilot)
        assert (maildir / "Drafts" / "cur").is_dir(), notes(app)
        box = mailbox.Maildir(str(maildir / "Drafts"), create=False)
        keys = list(box.keys())
        assert len(keys) == 1, notes(app)
        assert "D" in box.get_message(keys[0]).get_flags()


async def test_draft_prompt_is_evaluated_while_typing(seeded):
    """A pause in typing evaluates the prompt typed so far; Enter then starts from it (the side panel says
    how much of the prompt was ready)."""
    app = make_app(max_tokens=8, seed=3, use_rag=False)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_draft(app, pilot)
        text = "thank Bob for the quarterly report"
        await type_text(pilot, text)
        await wait_until(pilot, lambda: screen.prefilled == text, "the prompt was never evaluated ahead of enter")
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.result is not None and not screen.streaming, "no draft")
        await wait_workers(app, pilot)
        stats = screen.result.stats
        assert stats["prompt_tokens"] > 50 and stats["cached_tokens"] >= stats["prompt_tokens"] - 2, stats
        assert f"prompt {stats['prompt_tokens']} tokens, {stats['cached_tokens']} ready" in visible_text(app)
        # To was left empty: the draft went to the Bob the user writes to, and To and Subject say so
        assert screen.query_one("#draft-to").value == "bob@example.com"
        assert screen.query_one("#draft-subject").value == "Thanks for the quarterly report"


async def test_to_and_subject_filled_by_a_draft_follow_the_next_instruction(seeded):
    """To and Subject left empty are filled from the instruction; the next instruction, to someone else, gets
    its own (a value the user typed is kept)."""
    conn = store.connect()
    conn.execute("INSERT INTO messages (id, content_hash, date, from_addr, to_addrs, to_names, subject, body, "
                 "is_mine, ingested_at) VALUES (99, 'h99', '2026-02-20T10:00:00+00:00', 'ada@example.com', "
                 "'dana.diaz@example.com', '[\"Dana Diaz\"]', 'Plans', 'Hi Dana,\n\nSee you soon.\n\nAda', 1, "
                 "'2026-03-01T00:00:00+00:00')")
    conn.execute("INSERT INTO messages (id, content_hash, date, from_addr, to_addrs, subject, body, is_mine, "
                 "ingested_at) VALUES (98, 'h98', '2026-02-21T10:00:00+00:00', 'ada@example.com', "
                 "'carol.king@example.com', 'Books', 'Carol, the books.', 1, '2026-03-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    app = make_app(max_tokens=8, seed=3, use_rag=False)
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_draft(app, pilot)
        to, subject = screen.query_one("#draft-to"), screen.query_one("#draft-subject")

        async def draft(instruction: str) -> None:
            box = screen.query_one("#draft-instruction")
            box.text = instruction
            box.focus()
            screen.action_generate()
            await wait_until(pilot, lambda: screen.result is not None and not screen.streaming, "no draft")
            await wait_workers(app, pilot)

        await draft("thank Bob for the quarterly report")
        assert (to.value, subject.value) == ("bob@example.com", "Thanks for the quarterly report")
        await draft("Ask Dana to send the plans by Friday")
        assert (to.value, subject.value) == ("Dana Diaz <dana.diaz@example.com>", "Send the plans by Friday")
        assert screen.result.to == to.value
        await draft("Ask Dana to send the plans by Friday, and the photos")  # the same person: To stays
        assert to.value == "Dana Diaz <dana.diaz@example.com>" and subject.value == "Send the plans by Friday"
        await draft("Ask Carol about lunch")  # two Carols written to (carol@, carol.king@): ask
        assert to.value == "" and screen.result.to == ""
        assert any("more than one person" in n for n in screen.result.notices)  # the side panel lists notices
        to.value = "someone@example.org"  # typed by the user: kept whatever the instruction says
        await draft("thank Bob for the quarterly report")
        assert screen.result.to == to.value == "someone@example.org"


# -- status screen --------------------------------------------------------------------------------------------

async def test_status_screen_shows_pipeline(seeded):
    from textual.widgets import DataTable

    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        text = visible_text(app)
        assert "3 messages" in text and "1 pairs" in text and "2 sources" in text
        sources = app.screen.query_one("#status-sources", DataTable)
        assert sources.row_count == 2
        assert sources.get_row_at(0)[0] == "/home/ada/Mail/Sent"
        assert sources.get_row_at(0)[4] == "2026-03-01 18:00"
        adapters = app.screen.query_one("#status-adapters", DataTable)
        assert "rougeL 0.274" in adapters.get_row_at(0)[3]


async def test_errors_name_the_fixing_command(home):
    from panza_local import config

    settings = config.Settings(model="no-such-model")
    app = make_app(settings=settings, check_model=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: any("panza models" in n or "models add" in n for n in notes(app)),
                         "no notification names the fix", limit=60)
        # drafting without a model says what fixes it too
        await pilot.press("f3")
        await pilot.pause()
        await type_text(pilot, "hello")
        await pilot.press("enter")
        await wait_workers(app, pilot, timeout=60)
        errors = [n for n in notes(app) if "no-such-model" in n]
        assert errors and all("fix" in n for n in errors), notes(app)
        # replying to a thread with no mail ingested names `panza ingest`
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: any("panza ingest" in n for n in notes(app)), "no `panza ingest` hint", limit=60)


# -- responsiveness -------------------------------------------------------------------------------------------

class LagProbe:
    """Measures how late the app's event loop wakes up for a 10 ms timer (frame handling)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task = None

    async def _run(self) -> None:
        import asyncio

        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.lags.append(time.perf_counter() - t - 0.01)

    def start(self) -> None:
        import asyncio

        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        self._task.cancel()


async def send_key(app, key: str, char: str | None = None) -> None:
    """Deliver a key the way a terminal does (the driver posts it), without Pilot's wait-for-idle.

    Pilot.press waits until the whole process is CPU-idle (up to 1 s), which with an engine or re-tune
    thread busy measures the test harness, not the app; here only the app's own handling is timed."""
    import asyncio

    from textual import events

    event = events.Key(key, char)
    event.set_sender(app)
    app._driver.send_message(event)
    await asyncio.sleep(0)


async def latency_until(app, key: str, char: str | None, done, limit: float = 10.0) -> float:
    """Seconds from a key press until `done()` is true."""
    import asyncio

    t = time.perf_counter()
    await send_key(app, key, char)
    while not done():
        assert time.perf_counter() - t < limit, f"key {key!r} had no effect within {limit}s"
        await asyncio.sleep(0.001)
    return time.perf_counter() - t


async def key_latencies(app, widget, keys: str) -> list[float]:
    """Seconds from each key press until the Input shows the typed character."""
    out = []
    for ch in keys:
        want = widget.value + ch
        out.append(await latency_until(app, ch, ch, lambda want=want: widget.value == want))
    return out


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


@pytest.fixture
def endless_drafts(monkeypatch):
    """Generation that never ends on its own: end-of-turn tokens get a -inf logit bias, stop strings go, and the
    token budget (capped by the draft near 3x the user's typical length) becomes 3000."""
    import llama_cpp
    from llama_cpp import Llama

    real = Llama.create_chat_completion

    def endless(self, *args, **kwargs):
        vocab = self._model.vocab  # every end-of-generation token (SmolLM2 has three), not just the EOS id
        kwargs["logit_bias"] = {i: float("-inf") for i in range(self.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}
        kwargs["stop"] = []
        kwargs["max_tokens"] = 3000
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Llama, "create_chat_completion", endless)


@pytest.mark.slow
async def test_responsive_while_a_draft_streams(seeded, endless_drafts, engine_hold):
    from textual.widgets import Input, TextArea

    # The draft must still be streaming while keys are typed, however fast or busy the machine: the real engine
    # runs with its end-of-turn tokens banned and no stop string, and should it still end (the context fills),
    # the hold starts it again and streams that too, so only Escape ends the draft.
    hold = engine_hold(at="end", replay=True)
    app = make_app(seed=5, use_rag=False)
    async with app.run_test(size=(80, 24)) as pilot:
        try:
            await pilot.press("f3")
            await pilot.pause()
            screen = app.screen
            await type_text(pilot, "ask Carol to move the budget review")
            await pilot.press("enter")
            area = screen.query_one("#draft-text", TextArea)
            await wait_until(pilot, lambda: area.text or not screen.streaming, "no streamed piece")  # the first one
            assert screen.streaming, notes(app)
            probe = LagProbe()
            probe.start()
            await pilot.press("shift+tab")  # instruction → Subject box, typing while tokens keep arriving
            subject = screen.query_one("#draft-subject", Input)
            assert app.focused is subject
            pieces_before = hold.pieces
            lat = await key_latencies(app, subject, "budgetreview")
            # keep probing the loop while the engine produces 20 more tokens (and for 100 ticks at least)
            await wait_until(pilot, lambda: hold.pieces >= pieces_before + 20 and len(probe.lags) >= 100,
                             "the engine stopped producing tokens")
            probe.stop()
            assert screen.streaming, notes(app)  # tokens kept arriving throughout
            await pilot.press("escape")  # stop the draft: what streamed so far stays, editable
            t0 = time.monotonic()
            # a cancelled worker counts as finished at once; its thread still tidies and records the draft
            await wait_until(pilot, lambda: not screen.streaming, "escape did not end the draft")
            print(f"\nstopped {time.monotonic() - t0:.1f}s after escape, {hold.pieces} pieces")
            await wait_workers(app, pilot)
            assert not area.read_only and area.text.strip()
            print(f"\nwhile streaming: key latency median {sorted(lat)[len(lat) // 2] * 1000:.0f} ms, "
                  f"max {max(lat) * 1000:.0f} ms; loop lag p95 {p95(probe.lags) * 1000:.0f} ms, "
                  f"max {max(probe.lags) * 1000:.0f} ms over {len(probe.lags)} ticks")
            assert subject.value == "budgetreview"
            # A UI blocked by generation would show the whole draft's time (tens of seconds here) on some key;
            # thresholds leave room for a 2-core box shared by 8 jobs.
            assert sorted(lat)[len(lat) // 2] < 0.25 and max(lat) < 2.0, lat
            assert p95(probe.lags) < 0.25, sorted(probe.lags)[-5:]
        finally:
            hold.release()  # a failed assertion must not leave the engine generating (the app waits for it)


@pytest.mark.slow
async def test_responsive_while_a_retune_runs(home, tmp_path, monkeypatch, engine_hold):
    from email.message import EmailMessage

    from textual.widgets import DataTable

    monkeypatch.setenv("PANZA_THREADS", "1")
    monkeypatch.setenv("PANZA_ME", "ada@example.com")
    mbox = tmp_path / "sent.mbox"
    box = mailbox.mbox(str(mbox))
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "Ada <ada@example.com>", "carol@example.com", "Budget review"
    m["Date"], m["Message-ID"] = "Mon, 02 Mar 2026 09:00:00 +0000", "<m1@example.com>"
    m.set_content("Carol,\n\nCould we move the budget review to Tuesday at 10? I am out on Monday.\n\nBest,\nAda")
    box.add(m)
    box.flush()
    box.close()
    conn = store.connect()
    conn.execute("INSERT INTO sources (uri, kind, registered, added_at) VALUES (?, 'mbox', 1, ?)",
                 (str(mbox), store.now()))
    conn.execute("INSERT INTO sources (uri, kind, registered, added_at) VALUES ('/elsewhere', 'mbox', 0, ?)",
                 (store.now(),))  # a second row for the cursor to move to (not re-read: not registered)
    conn.close()
    # the re-tune is held inside its playback stage, the real engine generating, until the measurement is done
    hold = engine_hold(at="end")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        screen = app.screen
        await pilot.press("r")
        await wait_until(pilot, lambda: hold.reached.is_set() or not screen.retuning, "the re-tune never generated")
        assert screen.retuning, str(screen.query_one("#retune-note").render())
        probe = LagProbe()
        probe.start()
        table = screen.query_one("#status-sources", DataTable)
        assert app.focused is table
        lat = []
        for key, row in [("down", 1), ("up", 0)] * 6:  # move through the sources table while the worker runs
            lat.append(await latency_until(app, key, None, lambda row=row: table.cursor_row == row))
        pieces_before = hold.pieces
        await wait_until(pilot, lambda: hold.pieces >= pieces_before + 20 and len(probe.lags) >= 100,
                         "the held re-tune stopped generating")  # keep probing the loop while the engine works
        probe.stop()
        was_running = screen.retuning
        hold.release()
        await wait_workers(app, pilot, timeout=300)
        print(f"\nwhile re-tuning: key latency median {sorted(lat)[len(lat) // 2] * 1000:.0f} ms, "
              f"max {max(lat) * 1000:.0f} ms; loop lag p95 {p95(probe.lags) * 1000:.0f} ms, "
              f"max {max(probe.lags) * 1000:.0f} ms over {len(probe.lags)} ticks")
        assert was_running, "the re-tune ended before the measurement"
        assert not screen.retuning
        # the outcome is reported either way: a summary, or an error naming its fix
        note = str(screen.query_one("#retune-note").render())
        assert note.startswith(("done", "failed")), note
        if note.startswith("failed"):
            assert any("fix" in n for n in notes(app)), notes(app)
        assert sorted(lat)[len(lat) // 2] < 0.25 and max(lat) < 2.0, lat
        assert p95(probe.lags) < 0.25, sorted(probe.lags)[-5:]


async def test_status_shows_retune_history_and_a_promotion_by_another_process(home, embedded_model):
    """A re-tune in another process promotes an adapter: the running app switches to it between requests,
    says so, and the status view lists every pass with promoted or not and why."""
    import asyncio
    import json
    import subprocess
    import sys

    from test_registry import _fake_adapter
    from textual.widgets import DataTable

    conn = store.connect()
    _fake_adapter(conn, "ad-old", embedded_model)
    _fake_adapter(conn, "ad-new", embedded_model, loss=(2.0, 1.2))
    from panza_local.train import registry

    registry.use("ad-old", conn)
    for promoted, reason, new, cur in ((False, "kept ad-old: held-out loss 1.9 > 1.5", 1.9, 1.5),
                                       (True, "promoted: held-out loss 1.2 <= 1.5", 1.2, 1.5)):
        conn.execute("INSERT INTO runs (stage, started_at, finished_at, status, summary) VALUES "
                     "('retune', ?, ?, 'ok', ?)", (store.now(), store.now(), json.dumps(
                         {"new_messages": 7, "new_pairs": 6, "trained": True, "promoted": promoted,
                          "reason": reason, "score_new": new, "score_current": cur})))
    conn.commit()
    conn.close()
    app = make_app()
    app.ADAPTER_POLL_S = 0.2
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        assert app.adapter["id"] == "ad-old"
        passes = app.screen.query_one("#status-retunes", DataTable)
        rows = [passes.get_row_at(i) for i in range(passes.row_count)]
        assert len(rows) == 2
        assert "yes" in rows[0][4] and rows[0][5] == "1.2000 / 1.5000" and rows[0][6].startswith("promoted")
        assert rows[1][4] == "no" and rows[1][6].startswith("kept ad-old")
        r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "panza_local", "adapters", "use", "ad-new"],
                                    check=False, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        await wait_until(pilot, lambda: app.adapter and app.adapter["id"] == "ad-new", "the app never switched adapter")
        assert app.adapter_label() == "ad-new"
        assert any("Drafts now use adapter ad-new" in n for n in notes(app)), notes(app)
        adapters = app.screen.query_one("#status-adapters", DataTable)

        def marked_rows() -> list[str]:
            return [adapters.get_row_at(i)[0] for i in range(adapters.row_count)]

        await wait_until(pilot, lambda: "● ad-new" in marked_rows(), "the status table never marked ad-new")
        marked = marked_rows()
        assert "● ad-new" in marked and "ad-old" in marked, marked
        assert "ad-new" in visible_text(app)
