"""Draft mode: instruction (+ recipient, subject, thread) → streamed draft → edit, copy, save, regenerate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TextArea
from textual.worker import get_current_worker

from panza_local import chat, engine
from panza_local.errors import PanzaError

from .. import backend
from ..messages import ContextReady, PromptSubmitted, StreamChunk, StreamDone, StreamFailed
from ..widgets.prompt import PromptInput
from ..widgets.side_panel import SidePanel
from .dialogs import AskText, PickOne


class DraftScreen(Screen):
    """Write an email in the user's voice."""

    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate"),
        Binding("ctrl+t", "pick_thread", "Reply to…"),
        Binding("ctrl+l", "alternatives", "Alternatives"),
        Binding("ctrl+s", "save_eml", "Save .eml"),
        Binding("ctrl+o", "save_drafts", "To Drafts"),
        Binding("f7", "copy", "Copy"),
        Binding("ctrl+b", "toggle_side", "Side panel"),
        Binding("escape", "stop", "Stop", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.thread: dict | None = None
        self.instruction = ""
        self.streaming = False
        self.hits: list[dict] = []

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
        yield Footer()

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

    def _headers(self) -> dict:
        h = {"to": self.query_one("#draft-to", Input).value.strip(),
             "subject": self.query_one("#draft-subject", Input).value.strip()}
        if self.thread and self.thread.get("message_id"):
            h["in_reply_to"] = self.thread["message_id"]
            h["references"] = self.thread.get("refs") or ""
        return h

    # -- generating ----------------------------------------------------------------------------------------

    @on(PromptSubmitted, "#draft-instruction")
    def _submitted(self, event: PromptSubmitted) -> None:
        self.instruction = event.text
        self.query_one("#draft-instruction", PromptInput).text = event.text  # keep it visible for regenerate
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
        h = self._headers()
        self.stream(self.instruction, h["to"], h["subject"], (self.thread or {}).get("body", ""))

    @work(thread=True, exclusive=True, group="draft")
    def stream(self, instruction: str, to: str, subject: str, thread: str) -> None:
        """Retrieve, then stream the draft (posts ContextReady, StreamChunk, StreamDone or StreamFailed)."""
        worker = get_current_worker()
        parts: list[str] = []
        try:
            hits = backend.retrieve(instruction, to=to or None) if self.app.use_rag else []
            self.post_message(ContextReady(hits, backend.model_name(self.app.settings), self.app.adapter_label()))
            gen = backend.stream_draft(instruction, to=to, subject=subject, thread=thread, hits=hits,
                                       max_tokens=self.app.max_tokens, seed=self.app.seed, settings=self.app.settings)
            try:
                for piece in gen:
                    if worker.is_cancelled:
                        break
                    parts.append(piece)
                    self.post_message(StreamChunk(piece))
            finally:
                gen.close()
        except PanzaError as exc:
            self.post_message(StreamFailed(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed
            self.post_message(StreamFailed(f"{type(exc).__name__}: {exc}\n  fix: run `panza doctor`"))
            return
        self.post_message(StreamDone("".join(parts), stopped=worker.is_cancelled))

    @on(ContextReady)
    def _context(self, event: ContextReady) -> None:
        self.hits = event.hits
        self.query_one("#draft-side", SidePanel).show_context(event.hits, event.model, event.adapter)

    @on(StreamChunk)
    def _chunk(self, event: StreamChunk) -> None:
        area = self.query_one("#draft-text", TextArea)
        area.insert(event.text, area.document.end)

    @on(StreamDone)
    def _done(self, event: StreamDone) -> None:
        self.streaming = False
        area = self.query_one("#draft-text", TextArea)
        area.read_only = False
        stats = engine.last_stats
        self.query_one("#draft-side", SidePanel).show_speed(stats.completion_tokens, stats.tokens_per_s,
                                                            stats.ttft_s)
        if not self.query_one("#draft-subject", Input).value and not self.thread:
            self.query_one("#draft-subject", Input).value = chat.title_for(self.instruction, 60)
        area.focus()
        self.notify("Draft ready: edit it, then ctrl+s saves .eml, ctrl+o saves to Drafts, f7 copies.",
                    title="Draft", timeout=4)

    @on(StreamFailed)
    def _failed(self, event: StreamFailed) -> None:
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
        mails = chat.recent_mail(self.app.conn, limit=200)
        if not mails:
            self.app.notify_error("No mail to reply to yet.\n  fix: panza ingest PATH_TO_YOUR_MAIL")
            return
        labels = [f"{(m['date'] or '')[:10]}  {m['from_addr'] or '?'}  {m['subject'] or '(no subject)'}"
                  for m in mails]
        choice = await self.app.push_screen_wait(PickOne("Reply to which email?", labels, searchable=True))
        if choice is None:
            return
        self.thread = mails[choice]
        subject = self.thread["subject"] or ""
        self.query_one("#draft-to", Input).value = self.thread["from_addr"] or ""
        self.query_one("#draft-subject", Input).value = subject if subject.lower().startswith("re:") else f"Re: {subject}"
        self.query_one("#draft-thread", Static).update(f"Replying to: {labels[choice]}")

    def action_alternatives(self) -> None:
        if not self.instruction:
            self.notify("Draft something first (type an instruction, then enter).", severity="warning")
            return
        self.notify("Writing 3 alternatives…", timeout=3)
        h = self._headers()
        self.make_alternatives(self.instruction, h["to"], h["subject"], (self.thread or {}).get("body", ""))

    @work(thread=True, exclusive=True, group="alternatives")
    def make_alternatives(self, instruction: str, to: str, subject: str, thread: str) -> None:
        try:
            alts = backend.alternatives(instruction, 3, to=to, subject=subject, thread=thread, hits=self.hits,
                                        max_tokens=self.app.max_tokens, seed=self.app.seed,
                                        settings=self.app.settings)
        except PanzaError as exc:
            self.app.call_from_thread(self.app.notify_error, str(exc))
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._choose_alternative, alts)

    @work
    async def _choose_alternative(self, alts: list[str]) -> None:
        labels = [a.strip().replace("\n", " ")[:300] or "(empty)" for a in alts]
        choice = await self.app.push_screen_wait(PickOne("Pick an alternative", labels))
        if choice is not None:
            self.query_one("#draft-text", TextArea).text = alts[choice].strip()

    # -- output --------------------------------------------------------------------------------------------

    def _ready(self) -> bool:
        if self.streaming:
            self.notify("The draft is still being written (escape stops it).", severity="warning")
            return False
        if not self.draft_text.strip():
            self.notify("There is no draft yet: type an instruction, then enter.", severity="warning")
            return False
        return True

    def action_copy(self) -> None:
        if self._ready():
            self.app.copy_to_clipboard(self.draft_text)
            self.notify("Draft copied to the clipboard.")

    @work
    async def action_save_eml(self) -> None:
        if not self._ready():
            return
        default = str(Path.cwd() / f"draft-{dt.datetime.now():%Y%m%d-%H%M%S}.eml")
        target = await self.app.push_screen_wait(AskText("Save draft as .eml", default))
        if not target:
            return
        try:
            path = backend.save_eml(target, self.draft_text, **self._headers())
        except OSError as exc:
            self.app.notify_error(f"cannot write {target}: {exc.strerror}\n  fix: choose a writable folder")
            return
        self.notify(f"Saved {path}", title="Saved")

    @work
    async def action_save_drafts(self) -> None:
        if not self._ready():
            return
        target = await self.app.push_screen_wait(AskText("Save to the Drafts folder of this Maildir",
                                                         str(Path.home() / "Maildir" / "Drafts")))
        if not target:
            return
        try:
            where = backend.save_maildir(target, self.draft_text, **self._headers())
        except (OSError, PanzaError) as exc:
            self.app.notify_error(f"cannot save to {target}: {exc}\n  fix: pick a Maildir folder you can write")
            return
        self.notify(f"Saved to Drafts: {where}", title="Saved")

    def action_toggle_side(self) -> None:
        self.query_one("#draft-side").toggle_class("-toggled")
