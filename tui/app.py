"""The panza app: chat, draft and status modes, help, first run, palette commands and themes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from panza_local import config, store
from panza_local.errors import PanzaError

from . import backend
from .screens.chat import ChatScreen
from .screens.draft import DraftScreen
from .screens.first_run import FirstRunScreen
from .screens.help import HelpScreen
from .screens.status import StatusScreen


class PanzaApp(App):
    """Chat and draft in your own voice."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute, so subclasses (tests) find it too
    TITLE = "panza"
    MODES: ClassVar = {"chat": ChatScreen, "draft": DraftScreen, "status": StatusScreen}
    DEFAULT_MODE = "chat"
    ADAPTER_POLL_S = 3.0
    # Below 110 columns the side panel hides (ctrl+b shows it), so 80x24 keeps a usable transcript.
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (110, "-wide")]
    BINDINGS: ClassVar = [
        Binding("f1", "help", "Help"),
        Binding("f2", "switch_mode('chat')", "Chat"),
        Binding("f3", "switch_mode('draft')", "Draft"),
        Binding("f4", "switch_mode('status')", "Status"),
        Binding("f6", "change_theme", "Theme", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, *, settings=None, first_run: bool | None = None, max_tokens: int | None = None,
                 seed: int | None = None, use_rag: bool = True, check_model: bool = True) -> None:
        super().__init__()
        self.settings = settings or config.load()
        if max_tokens is not None:
            self.settings = dataclasses.replace(self.settings, max_tokens=max_tokens)
        self.seed = seed
        self.use_rag = use_rag
        self._first_run = first_run
        self._check_model = check_model
        self.conn = store.connect()
        self.adapter = backend.current_adapter(self.settings)

    def on_mount(self) -> None:
        # A re-tune in another process (`panza retune`, the schedule) can promote a new adapter at any time:
        # notice it between requests and say so, like `panza serve` does.
        self.set_interval(self.ADAPTER_POLL_S, self.check_adapter)
        if self._check_model:
            try:
                backend.check_model(self.settings)
            except PanzaError as exc:
                self.notify_error(str(exc))
        first = self._first_run
        if first is None:
            first = backend.counts(self.conn)["messages"] == 0
        if first:
            self.push_screen(FirstRunScreen())

    def on_unmount(self) -> None:
        self.conn.close()

    # -- shared helpers for screens ------------------------------------------------------------------------

    def adapter_label(self) -> str:
        """The adapter in use, for display."""
        return self.adapter["id"] if self.adapter else "none (base model)"

    def refresh_adapter(self) -> None:
        """Re-read the promoted adapter (after a re-tune)."""
        self.adapter = backend.current_adapter(self.settings)

    def check_adapter(self) -> None:
        """Switch to a newly promoted adapter (the next reply or draft uses it) and show that it happened."""
        old_id = (self.adapter or {}).get("id")
        if backend.current_adapter_id() == old_id:
            return
        now = backend.current_adapter(self.settings)
        new_id = (now or {}).get("id")
        if new_id == old_id:
            return
        self.adapter = now
        self.notify(f"Drafts now use adapter {new_id or 'none (base model)'} (was {old_id or 'the base model'}).",
                    title="Adapter switched", timeout=10)
        if isinstance(self.screen, StatusScreen):
            self.screen.action_reload()

    def notify_error(self, message: str) -> None:
        """An error notification; the message names the command that fixes it."""
        self.notify(message, title="Error", severity="error", timeout=12)

    # -- actions and palette -------------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Chat", "Chat with panza (F2)", lambda: self.switch_mode("chat"))
        yield SystemCommand("Draft", "Draft an email in your voice (F3)", lambda: self.switch_mode("draft"))
        yield SystemCommand("Status", "Sources, counts, adapters, re-tune (F4)", lambda: self.switch_mode("status"))
        yield SystemCommand("Help", "All keys (F1)", self.action_help)
        yield SystemCommand("Getting started", "The ingest → playback → train guide",
                            lambda: self.push_screen(FirstRunScreen()))
        if isinstance(screen, ChatScreen):
            yield SystemCommand("New conversation", "Start a new chat (ctrl+n)", screen.action_new)
            yield SystemCommand("Rename conversation", "Rename this chat (ctrl+r)", screen.action_rename)
            yield SystemCommand("Delete conversation", "Delete this chat (F8)", screen.action_delete)
        if isinstance(screen, DraftScreen):
            yield SystemCommand("Regenerate draft", "Draft again (ctrl+g)", screen.action_generate)
            yield SystemCommand("Alternatives", "Three alternative drafts (ctrl+l)", screen.action_alternatives)
            yield SystemCommand("Save as .eml", "Write the draft to a file (ctrl+s)", screen.action_save_eml)
            yield SystemCommand("Save to Drafts", "Into a Maildir Drafts folder (ctrl+o)", screen.action_save_drafts)
            yield SystemCommand("Copy draft", "To the clipboard (F7)", screen.action_copy)
        if isinstance(screen, StatusScreen):
            yield SystemCommand("Re-tune now", "ingest → playback → index → train (r)", screen.action_retune)
