"""A multi-line prompt box: enter sends, ctrl+j (or shift+enter) starts a new line."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding
from textual.widgets import TextArea

from ..messages import PromptSubmitted


class PromptInput(TextArea):
    """Multi-line input that posts PromptSubmitted on enter."""

    BINDINGS: ClassVar = [
        Binding("enter", "submit", "Send", priority=True),
        Binding("ctrl+j,shift+enter", "newline", "New line", priority=True, show=False),
    ]

    def __init__(self, placeholder: str = "", **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus",
                         placeholder=placeholder, **kwargs)

    def action_submit(self) -> None:
        """Post the text (unless it is blank) and clear the box."""
        text = self.text.strip()
        if text:
            self.post_message(PromptSubmitted(self, text))
            self.clear()

    def action_newline(self) -> None:
        self.insert("\n")
