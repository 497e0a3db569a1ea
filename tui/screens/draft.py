"""Draft mode: instruction (+ recipient, subject, thread) → streamed draft → edit, copy, save, regenerate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import ClassVar

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TextArea
from textual.worker import get_current_worker

from panza_local.errors import PanzaError

from .. import backend
from ..messages import ContextReady, Prefilled, PromptSubmitted, StreamChunk, StreamDone, StreamFailed
from ..widgets.prompt import PromptInput
from ..widgets.side_panel import SidePanel
from .dialogs import AskText, PickOne


class DraftScreen(Screen):
    """Write an email in the user's voice."""

    BINDINGS: ClassVar = [
        Binding("ctrl+g", "generate", "Generate"),
        Binding("ctrl+t", "pick_thread", "Reply to…"),
        Binding("ctrl+l", "alternatives", "Alternatives"),
        Binding("ctrl+s", "save_eml", "Save .eml"),
        Binding("ctrl+o", "save_drafts", "To Drafts"),
        Binding("f7", "copy", "Copy"),
        Binding("ctrl+b", "toggle_side", "Side panel"),
        Binding("escape", "stop", "Stop", show=False),
    ]

    PREFILL_AFTER_S = 0.6
    """Quiet typing time after which the prompt as typed so far is evaluated ahead of Enter."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: dict | None = None
        self.instruction = ""
        self.streaming = False
        self.result: backend.Draft | None = None
        self.prefilled: str | None = None
        """The instruction whose prompt was last evaluated ahead of Enter (None: none yet)."""
        self._prefill_timer = None
        self._filled: dict[str, tuple[str, str]] = {}
        """To and Subject as a draft filled them in: field id -> (value, the instruction it came from)."""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="draft-body"):
            with Vertical(id="draft-main"):
                with Horizontal(id="draft-fields"):
                    yield Input(placeholder="To", id="draft-to")
                    yield Input(placeholder="Subject", id="draft-subject")
                yield Static("Replying to: [dim]nothing (ctrl+t picks a thread from your mail)[/]",
                             id="draft-thread")
                yield PromptInput(placeholder="What should the email say? (enter drafts it)", id="draft-instruction")
                yield TextArea(id="draft-text", soft_wrap=True, tab_behavior="focus")
            yield SidePanel(id="draft-side")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "draft"
        self.query_one("#draft-text", TextArea).border_title = "Draft (editable)"
        self.query_one("#draft-side", SidePanel).show_context([], backend.model_name(self.app.settings),
                                                                self.app.adapter_label())
        self.query_one("#draft-instruction").focus()

    @property
    def draft_text(self) -> str:
        """The draft as it stands (edits included)."""
        return self.query_one("#draft-text", TextArea).text

    def _fields(self) -> tuple[str, str]:
        """To and Subject for the next draft. A value an earlier draft filled in (not typed by the user) is left
        out once the instruction moves on: Subject when the instruction changed, To when it addresses someone
        else ("Ask Priya ..." then "Thank Jonas ..." must not go to Priya)."""
        typed = self.query_one("#draft-instruction", PromptInput).text.strip() or self.instruction

        def value(field: str, stale) -> str:
            v = self.query_one(f"#{field}", Input).value.strip()
            filled = self._filled.get(field)
            return "" if filled and v == filled[0] and stale(filled[1]) else v

        named = backend.addressed_name(typed).lower()
        return (value("draft-to", lambda was: bool(named) and named != backend.addressed_name(was).lower()),
                value("draft-subject", lambda was: was != typed))

    # -- generating ----------------------------------------------------------------------------------------

    # -- ahead of Enter: a pause in typing evaluates the prompt so far, so the draft starts at once -------------

    @on(TextArea.Changed, "#draft-instruction")
    @on(Input.Changed, "#draft-to")
    @on(Input.Changed, "#draft-subject")
    def _typed(self, _event) -> None:
        if self._prefill_timer is not None:
            self._prefill_timer.stop()
        self._prefill_timer = self.set_timer(self.PREFILL_AFTER_S, self._start_prefill)

    def _start_prefill(self) -> None:
        text = self.query_one("#draft-instruction", PromptInput).text.strip()
        if text and not self.streaming:
            to, subject = self._fields()
            self.prefill(text, to, subject, self.thread)

    @work(thread=True, exclusive=True, group="prefill")
    def prefill(self, instruction: str, to: str, subject: str, thread: dict | None) -> None:
        """Plan the draft for the text typed so far and evaluate its prompt (posts Prefilled); errors are left
        for the real draft to report."""
        try:
            n = backend.prefill_draft(instruction, to=to, subject=subject, thread=thread, use_rag=self.app.use_rag,
                                      seed=self.app.seed, settings=self.app.settings)
        except Exception:  # noqa: BLE001 - only a head start: the draft itself shows what went wrong
            return
        self.post_message(Prefilled(instruction, n))

    @on(Prefilled)
    def _prefilled(self, event: Prefilled) -> None:
        self.prefilled = event.instruction

    @on(PromptSubmitted, "#draft-instruction")
    def _submitted(self, event: PromptSubmitted) -> None:
        self.query_one("#draft-instruction", PromptInput).text = event.text  # kept visible for regenerate
        self.action_generate()

    def action_generate(self) -> None:
        """Draft (or re-draft) from the current instruction."""
        typed = self.query_one("#draft-instruction", PromptInput).text.strip()
        self.instruction = typed or self.instruction
        if not self.instruction:
            self.notify("Type what the email should say first.", severity="warning")
            return
        area = self.query_one("#draft-text", TextArea)
        area.clear()
        area.read_only = True
        self.streaming = True
        self.result = None
        to, subject = self._fields()
        self.stream(self.instruction, to, subject, self.thread)

    @work(thread=True, exclusive=True, group="draft")
    def stream(self, instruction: str, to: str, subject: str, thread: dict | None) -> None:
        """Plan (retrieve, adapter), then stream the draft: posts ContextReady, StreamChunk, StreamDone/Failed."""
        worker = get_current_worker()
        try:
            plan = backend.plan_draft(instruction, to=to, subject=subject, thread=thread, use_rag=self.app.use_rag,
                                      seed=self.app.seed, settings=self.app.settings)
            self.post_message(ContextReady(backend.plan_rows(self.app.conn, plan), plan.settings.model,
                                           plan.adapter or "none (base model)", plan.notices))
            gen = backend.stream_draft(plan, cancelled=lambda: worker.is_cancelled)  # escape stops the engine
            try:
                for piece in gen:
                    if worker.is_cancelled:
                        break
                    self.post_message(StreamChunk(piece))
            finally:
                gen.close()
            result = backend.finish_draft(plan)
        except PanzaError as exc:
            self.post_message(StreamFailed(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed
            self.post_message(StreamFailed(f"{type(exc).__name__}: {exc}\n  fix: run `panza doctor`"))
            return
        self.post_message(StreamDone(result.text, stopped=worker.is_cancelled, result=result))

    @on(ContextReady)
    def _show_context(self, event: ContextReady) -> None:
        self.query_one("#draft-side", SidePanel).show_context(event.hits, event.model, event.adapter, event.notices)
        for note in backend.fit_notices(event.notices):
            self.notify(note, title="Too long for the context", severity="warning", timeout=8)

    @on(StreamChunk)
    def _append_chunk(self, event: StreamChunk) -> None:
        area = self.query_one("#draft-text", TextArea)
        area.insert(event.text, area.document.end)

    @on(StreamDone)
    def _stream_done(self, event: StreamDone) -> None:
        self.streaming = False
        self.result = event.result
        area = self.query_one("#draft-text", TextArea)
        area.text = event.text  # the tidied text (a stray "Subject:" line moved into the subject)
        area.read_only = False
        stats = event.result.stats if event.result is not None else {}
        self.query_one("#draft-side", SidePanel).show_speed(stats.get("completion_tokens", 0),
                                                            stats.get("tokens_per_s", 0.0), stats.get("ttft_s", 0.0),
                                                            stats.get("prompt_tokens", 0), stats.get("cached_tokens", 0))
        to, subject = self._fields()
        done = event.result
        if not subject and done is not None:
            self.query_one("#draft-subject", Input).value = done.subject
            self._filled["draft-subject"] = (done.subject, done.instruction)
        if not to and done is not None:  # empty, or filled for an earlier instruction: this draft's recipient
            self.query_one("#draft-to", Input).value = done.to
            self._filled["draft-to"] = (done.to, done.instruction)
        if self.focused is None or self.focused.id == "draft-instruction":  # never steal focus from a typed field
            area.focus()
        self.notify("Draft ready: edit it, then ctrl+s saves .eml, ctrl+o saves to Drafts, f7 copies.",
                    title="Draft", timeout=4)

    @on(StreamFailed)
    def _stream_failed(self, event: StreamFailed) -> None:
        self.streaming = False
        self.query_one("#draft-text", TextArea).read_only = False
        self.app.notify_error(event.error)

    def action_stop(self) -> None:
        for worker in self.workers:
            if worker.group in ("draft", "alternatives"):
                worker.cancel()

    # -- thread, alternatives ------------------------------------------------------------------------------

    @work
    async def action_pick_thread(self) -> None:
        mails = backend.recent_mail(self.app.conn, limit=200)
        if not mails:
            self.app.notify_error("No mail to reply to yet.\n  fix: panza ingest PATH_TO_YOUR_MAIL")
            return
        labels = [f"{(m['date'] or '')[:10]}  {m['from_addr'] or '?'}  {m['subject'] or '(no subject)'}"
                  for m in mails]
        choice = await self.app.push_screen_wait(PickOne("Reply to which email?", labels, searchable=True))
        if choice is None:
            return
        self.thread = mails[choice]
        self._filled.clear()  # the thread's sender and subject are chosen, not filled in
        subject = self.thread["subject"] or ""
        self.query_one("#draft-to", Input).value = self.thread["from_addr"] or ""
        self.query_one("#draft-subject", Input).value = subject if subject.lower().startswith("re:") else f"Re: {subject}"
        self.query_one("#draft-thread", Static).update(f"Replying to: {escape(labels[choice])}")

    def action_alternatives(self) -> None:
        if not self.instruction:
            self.notify("Draft something first (type an instruction, then enter).", severity="warning")
            return
        if self.streaming:
            self.notify("The draft is still being written (escape stops it).", severity="warning")
            return
        self.notify("Writing 3 alternatives…", timeout=3)
        to, subject = self._fields()
        self.make_alternatives(self.instruction, to, subject, self.thread)

    @work(thread=True, exclusive=True, group="alternatives")
    def make_alternatives(self, instruction: str, to: str, subject: str, thread: dict | None) -> None:
        try:
            plan = backend.plan_draft(instruction, to=to, subject=subject, thread=thread, use_rag=self.app.use_rag,
                                      seed=self.app.seed, settings=self.app.settings)
            alts = backend.alternatives(instruction, 3, to=plan.to, subject=plan.subject, reply_to=plan.reply,
                                        use_rag=self.app.use_rag, seed=self.app.seed, settings=self.app.settings)
        except PanzaError as exc:
            self.app.call_from_thread(self.app.notify_error, str(exc))
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._choose_alternative, alts)

    @work
    async def _choose_alternative(self, alts: list) -> None:
        labels = [a.text.strip().replace("\n", " ")[:300] or "(empty)" for a in alts]
        choice = await self.app.push_screen_wait(PickOne("Pick an alternative", labels))
        if choice is not None:
            self.result = alts[choice]
            self.query_one("#draft-text", TextArea).text = alts[choice].text

    # -- output --------------------------------------------------------------------------------------------

    def current_draft(self) -> backend.Draft | None:
        """The draft with the user's edits, or None (with a notification saying why)."""
        if self.streaming:
            self.notify("The draft is still being written (escape stops it).", severity="warning")
            return None
        if self.result is None or not self.draft_text.strip():
            self.notify("There is no draft yet: type an instruction, then enter.", severity="warning")
            return None
        to, subject = self._fields()
        return backend.edited(self.result, self.draft_text, to, subject)

    def action_copy(self) -> None:
        if self.current_draft() is not None:
            self.app.copy_to_clipboard(self.draft_text)
            self.notify("Draft copied to the clipboard.")

    @work
    async def action_save_eml(self) -> None:
        d = self.current_draft()
        if d is None:
            return
        default = str(Path.cwd() / f"draft-{dt.datetime.now():%Y%m%d-%H%M%S}.eml")
        target = await self.app.push_screen_wait(AskText("Save draft as .eml", default))
        if not target:
            return
        try:
            path = backend.save_eml(target, d)
        except OSError as exc:
            self.app.notify_error(f"cannot write {target}: {exc.strerror}\n  fix: choose a writable folder")
            return
        self.notify(f"Saved {path}", title="Saved")

    @work
    async def action_save_drafts(self) -> None:
        d = self.current_draft()
        if d is None:
            return
        target = await self.app.push_screen_wait(AskText("Save into this Maildir's Drafts folder",
                                                         str(Path.home() / "Maildir")))
        if not target:
            return
        try:
            where = backend.save_maildir(target, d)
        except PanzaError as exc:
            self.app.notify_error(str(exc))
            return
        self.notify(f"Saved to Drafts: {where}", title="Saved")

    def action_toggle_side(self) -> None:
        self.query_one("#draft-side").toggle_class("-toggled")
