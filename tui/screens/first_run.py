"""First run: the store is empty, so guide the user through ingest → playback → train."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Markdown

from .. import backend

STEPS = [
    ("messages", "Ingest your mail", "panza ingest ~/Mail/Sent --me you@example.com",
     "reads mbox, Maildir, .eml, Apple Mail, Thunderbird, Takeout or IMAP; keeps what you wrote"),
    ("pairs", "Play it back", "panza playback",
     "writes the instruction each of your emails answers (the training data)"),
    ("indexed", "Index it", "panza index", "lets drafts quote your own past emails as style examples"),
    ("adapters", "Train your adapter", "panza train", "fine-tunes a small adapter on your voice (QLoRA)"),
]


def guide(counts: dict) -> str:
    """The first-run page as Markdown, each step ticked when the store shows it done."""
    lines = ["# Welcome to panza", "",
             "panza learns how you write from your own mail and drafts in your voice, on this machine only.",
             "Nothing has been ingested yet. In another terminal, run these steps in order:", ""]
    for i, (key, title, cmd, why) in enumerate(STEPS, 1):
        mark = "✔" if counts.get(key, 0) else "○"
        lines += [f"{i}. {mark} **{title}**: `{cmd}`  ", f"   {why} ({counts.get(key, 0)} so far)"]
    lines += ["", "Or try everything on a sample mailbox: `panza quickstart`.", "",
              "Press **F5** to check again, **enter** to start chatting with the base model now."]
    return "\n".join(lines)


class FirstRunScreen(Screen):
    """Shown at start when no mail has been ingested."""

    BINDINGS: ClassVar = [Binding("enter,escape", "app.pop_screen", "Continue"), Binding("f5", "recheck", "Check again")]

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="first-run"):
            yield Markdown(guide(backend.counts(self.app.conn)), id="first-run-guide")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "getting started"
        self.query_one("#first-run").focus()

    async def action_recheck(self) -> None:
        counts = backend.counts(self.app.conn)
        await self.query_one("#first-run-guide", Markdown).update(guide(counts))
        if counts["messages"]:
            self.notify("Mail found: you can draft now (F3).", title="Ready")
