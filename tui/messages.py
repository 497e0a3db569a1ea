"""Messages widgets and workers post; screens handle them with @on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message
from textual.widget import Widget

if TYPE_CHECKING:
    from panza_local.results import RetuneResult


class PromptSubmitted(Message):
    """The user pressed enter in a prompt box (`control` is that box, so @on can select it)."""

    def __init__(self, prompt: Widget, text: str) -> None:
        super().__init__()
        self.prompt = prompt
        self.text = text

    @property
    def control(self) -> Widget:
        return self.prompt


class ConversationPicked(Message):
    """A conversation was chosen in the list."""

    def __init__(self, conversation_id: int) -> None:
        super().__init__()
        self.conversation_id = conversation_id


class SearchChanged(Message):
    """The conversation search box changed."""

    def __init__(self, query: str) -> None:
        super().__init__()
        self.query = query


class Prefilled(Message):
    """The draft form's prompt for `instruction` is in the engine's KV cache (`tokens` evaluated for it)."""

    def __init__(self, instruction: str, tokens: int) -> None:
        super().__init__()
        self.instruction = instruction
        self.tokens = tokens


class StreamChunk(Message):
    """A piece of generated text arrived from a worker."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class StreamDone(Message):
    """Generation finished (or was stopped); `text` is all of it, `result` the finished Draft if any."""

    def __init__(self, text: str, stopped: bool = False, result=None) -> None:
        super().__init__()
        self.text = text
        self.stopped = stopped
        self.result = result


class StreamFailed(Message):
    """Generation failed; `error` says why and what fixes it."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ContextReady(Message):
    """What a reply or draft is built from: retrieved hits, model, adapter."""

    def __init__(self, hits: list[dict], model: str, adapter: str, notices: list[str] | None = None) -> None:
        super().__init__()
        self.hits = hits
        self.model = model
        self.adapter = adapter
        self.notices = notices or []


class RetuneProgress(Message):
    """Progress of a running re-tune."""

    def __init__(self, done: int, total: int | None, note: str) -> None:
        super().__init__()
        self.done = done
        self.total = total
        self.note = note


class RetuneDone(Message):
    """A re-tune finished with this summary (or an error)."""

    def __init__(self, summary: RetuneResult | None, error: str = "") -> None:
        super().__init__()
        self.summary = summary
        self.error = error
