"""The help screen: every key, by screen, and where the pieces come from."""

from __future__ import annotations

from typing import ClassVar

from rich import box
from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("anywhere", [("F1", "this help"), ("F2 / F3 / F4", "chat / draft / status"), ("F6", "change theme"),
                  ("ctrl+p", "command palette: every action, themes"), ("tab / shift+tab", "next / previous box"),
                  ("ctrl+q", "quit")]),
    ("chat", [("enter", "send"), ("ctrl+j", "new line in the message"), ("escape", "stop the reply"),
              ("ctrl+n", "new conversation"), ("ctrl+r", "rename it"), ("F8", "delete it"),
              ("ctrl+f", "search conversations"), ("ctrl+b", "show/hide the side panel")]),
    ("draft", [("enter", "draft from the instruction"), ("ctrl+g", "regenerate"), ("escape", "stop"),
               ("ctrl+t", "pick an email to reply to"), ("ctrl+l", "three alternatives"),
               ("ctrl+s", "save as .eml"), ("ctrl+o", "save to a Maildir Drafts folder"),
               ("F7", "copy to the clipboard"), ("ctrl+b", "show/hide the side panel")]),
    ("status", [("r", "re-tune now (runs in the background)"), ("F5", "refresh")]),
]

ABOUT = ("Drafts come from the base model plus your adapter ([b]panza train[/]), with past emails from your "
         "index ([b]panza index[/]) as style examples; the side panel shows which, and how fast.")


def keys_table() -> Table:
    """All keys, grouped by screen."""
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("does")
    for section, rows in KEYS:
        table.add_row(f"[reverse] {section} [/]", "")
        for key, what in rows:
            table.add_row(key, what)
    return table


class HelpScreen(ModalScreen):
    """Keys and hints; escape, q or F1 closes it."""

    BINDINGS: ClassVar = [Binding("escape,q,f1", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Help"
            box.border_subtitle = "escape closes"
            yield Static("[b]panza: keys[/]  (no mouse needed)", id="help-title")
            yield Static(keys_table(), id="help-keys")
            yield Static(ABOUT, id="help-about")

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()
