"""Small modal dialogs: ask for a line of text, confirm, pick an option (thread, alternative)."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option


class AskText(ModalScreen[str | None]):
    """One line of text (enter confirms, escape cancels)."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self._title, self._value, self._placeholder = title, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = self._title
            yield Input(self._value, placeholder=self._placeholder, id="ask-input")
            yield Label("[dim]enter to confirm · escape to cancel[/]")

    @on(Input.Submitted)
    def _ok(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    """A yes/no question (y or enter: yes; n or escape: no)."""

    BINDINGS: ClassVar = [Binding("y,enter", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = "Confirm"
            yield Label(self._question)
            yield Label("[b]y[/] yes · [b]n[/] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PickOne(ModalScreen[int | None]):
    """Choose one of several texts; returns its index (escape: None). An optional filter box narrows them."""

    BINDINGS: ClassVar = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, labels: list[str], *, searchable: bool = False) -> None:
        super().__init__()
        self._title, self._labels, self._searchable = title, labels, searchable

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide") as box:
            box.border_title = self._title
            if self._searchable:
                yield Input(placeholder="filter", id="pick-filter")
            yield OptionList(*self._options(""), id="pick-options")
            yield Label("[dim]↑↓ move · enter choose · escape cancel[/]")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            options.highlighted = 0
        self.query_one("#pick-filter" if self._searchable else "#pick-options").focus()

    def _options(self, query: str) -> list[Option]:
        q = query.lower()
        return [Option(label, id=str(i)) for i, label in enumerate(self._labels) if q in label.lower()]

    @on(Input.Changed, "#pick-filter")
    def _filter(self, event: Input.Changed) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options(self._options(event.value))

    @on(Input.Submitted, "#pick-filter")
    def _to_list(self) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_cancel(self) -> None:
        self.dismiss(None)
