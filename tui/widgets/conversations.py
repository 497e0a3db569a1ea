"""The conversation list with its search box."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from ..messages import ConversationPicked, SearchChanged


class ConversationList(Vertical):
    """Search box + list of conversations; posts ConversationPicked and SearchChanged."""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search (ctrl+f)", id="conv-search")
        yield OptionList(id="conv-options")

    def show(self, conversations: list, selected: int | None = None) -> None:
        """Replace the list with `conversations` (chat.Conversation) and highlight `selected`."""
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([Option(f"{c.title}\n[dim]{c.updated_at[:10]} · {c.messages} msgs[/]", id=str(c.id))
                             for c in conversations])
        if not conversations:
            return
        ids = [c.id for c in conversations]
        options.highlighted = ids.index(selected) if selected in ids else 0

    @property
    def highlighted_id(self) -> int | None:
        """Id of the highlighted conversation, if any."""
        options = self.query_one(OptionList)
        if options.highlighted is None or options.option_count == 0:
            return None
        return int(options.get_option_at_index(options.highlighted).id)

    @on(OptionList.OptionSelected, "#conv-options")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(ConversationPicked(int(event.option.id)))

    @on(Input.Changed, "#conv-search")
    def _search(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(SearchChanged(event.value))

    @on(Input.Submitted, "#conv-search")
    def _to_list(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(OptionList).focus()
