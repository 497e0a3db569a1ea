"""The chat screen: conversations on the left, the transcript and prompt in the middle, context on the right."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Markdown
from textual.worker import get_current_worker

from panza_local.errors import PanzaError

from .. import backend
from ..messages import (
    ContextReady,
    ConversationPicked,
    PromptSubmitted,
    SearchChanged,
    StreamChunk,
    StreamDone,
    StreamFailed,
)
from ..widgets.chat_log import ChatLog
from ..widgets.conversations import ConversationList
from ..widgets.prompt import PromptInput
from ..widgets.side_panel import SidePanel
from .dialogs import AskText, Confirm


class ChatScreen(Screen):
    """Chat with the model about your mail; every conversation is kept in the store."""

    BINDINGS: ClassVar = [
        Binding("ctrl+n", "new", "New chat"),
        Binding("ctrl+r", "rename", "Rename"),
        Binding("f8", "delete", "Delete"),
        Binding("ctrl+f", "search", "Search", show=False),
        Binding("ctrl+b", "toggle_side", "Side panel", show=False),
        Binding("escape", "stop", "Stop", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.conversation_id: int | None = None
        self._md_stream = None
        self._reply_block: Markdown | None = None
        self._query = ""
        self._stats = backend.new_stats()  # the timings of the reply being streamed (one at a time)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-body"):
            yield ConversationList(id="conversations")
            with Vertical(id="chat-main"):
                yield ChatLog(id="chat-log")
                yield PromptInput(placeholder="Message panza (enter sends, ctrl+j new line)", id="chat-input")
            yield SidePanel(id="chat-side")
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        self.sub_title = "chat"
        convs = backend.conversations(self.app.conn)
        await self.open_conversation(convs[0].id if convs else None)
        self.query_one("#chat-side", SidePanel).show_context([], backend.model_name(self.app.settings),
                                                               self.app.adapter_label())
        self.query_one("#chat-input").focus()

    # -- conversations -------------------------------------------------------------------------------------

    def refresh_list(self) -> None:
        """Reload the conversation list (filtered by the search box)."""
        convs = backend.conversations(self.app.conn, self._query)
        self.query_one(ConversationList).show(convs, self.conversation_id)

    async def open_conversation(self, conversation_id: int | None) -> None:
        """Show a conversation's turns (None: an empty, not yet saved conversation)."""
        self.conversation_id = conversation_id
        turns = backend.turns(self.app.conn, conversation_id) if conversation_id else []
        await self.query_one(ChatLog).show(turns)
        self.sub_title = backend.conversation(self.app.conn, conversation_id).title if conversation_id else "new chat"
        self.refresh_list()

    @on(ConversationPicked)
    async def _picked(self, event: ConversationPicked) -> None:
        await self.open_conversation(event.conversation_id)
        self.query_one("#chat-input").focus()

    @on(SearchChanged)
    def _search(self, event: SearchChanged) -> None:
        self._query = event.query
        self.refresh_list()

    async def action_new(self) -> None:
        await self.open_conversation(None)
        self.query_one("#chat-input").focus()

    def action_search(self) -> None:
        self.query_one("#conv-search").focus()

    def action_toggle_side(self) -> None:
        self.query_one("#chat-side").toggle_class("-toggled")

    @work
    async def action_rename(self) -> None:
        if self.conversation_id is None:
            self.notify("Nothing to rename yet: send a message first.", severity="warning")
            return
        current = backend.conversation(self.app.conn, self.conversation_id).title
        title = await self.app.push_screen_wait(AskText("Rename conversation", current))
        if title:
            backend.rename_conversation(self.app.conn, self.conversation_id, title)
            self.sub_title = title
            self.refresh_list()

    @work
    async def action_delete(self) -> None:
        target = self.conversation_id or self.query_one(ConversationList).highlighted_id
        if target is None:
            return
        title = backend.conversation(self.app.conn, target).title
        if await self.app.push_screen_wait(Confirm(f"Delete “{title}” and its messages?")):
            backend.delete_conversation(self.app.conn, target)
            convs = backend.conversations(self.app.conn, self._query)
            await self.open_conversation(convs[0].id if convs else None)
            self.notify(f"Deleted “{title}”.")

    # -- sending and streaming -----------------------------------------------------------------------------

    @on(PromptSubmitted, "#chat-input")
    async def _send(self, event: PromptSubmitted) -> None:
        if self._md_stream is not None:
            self.notify("Still writing the last reply: press escape to stop it.", severity="warning")
            return
        if self.conversation_id is None:
            self.conversation_id = backend.new_conversation(self.app.conn).id
        backend.add_turn(self.app.conn, self.conversation_id, "user", event.text)
        log = self.query_one(ChatLog)
        await log.add("user", event.text)
        self._reply_block = await log.add("assistant", "")
        self._md_stream = Markdown.get_stream(self._reply_block)
        self.refresh_list()
        self.sub_title = backend.conversation(self.app.conn, self.conversation_id).title
        self.generate(backend.turns(self.app.conn, self.conversation_id))

    @work(thread=True, exclusive=True, group="chat-reply")
    def generate(self, history: list) -> None:
        """Retrieve context, then stream the reply from the engine (posts StreamChunk/Done/Failed)."""
        worker = get_current_worker()
        parts: list[str] = []
        try:
            hits, notices = ([], [])
            if self.app.use_rag:
                hits, notices = backend.retrieve(self.app.conn, history[-1].content, self.app.settings)
            fitted = backend.fit_reply(history, hits, self.app.settings)  # ContextTooLong: a notification
            self.post_message(ContextReady(hits, backend.model_name(self.app.settings), self.app.adapter_label(),
                                           notices + fitted.notices))
            adapter = self.app.adapter
            self._stats = backend.new_stats()
            gen = backend.stream_reply(history, fitted=fitted, settings=self.app.settings,
                                       seed=self.app.seed, lora_path=adapter["gguf"] if adapter else None,
                                       stats=self._stats)
            try:
                for piece in gen:
                    if worker.is_cancelled:
                        break
                    parts.append(piece)
                    self.post_message(StreamChunk(piece))
            finally:
                gen.close()  # releases the engine's lock now, not at garbage collection
        except PanzaError as exc:
            self.post_message(StreamFailed(str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed
            self.post_message(StreamFailed(f"{type(exc).__name__}: {exc}\n  fix: run `panza doctor`"))
            return
        self.post_message(StreamDone("".join(parts), stopped=worker.is_cancelled))

    @on(ContextReady)
    def _show_context(self, event: ContextReady) -> None:
        self.query_one("#chat-side", SidePanel).show_context(event.hits, event.model, event.adapter, event.notices)
        self._hits = event.hits
        for note in backend.fit_notices(event.notices):
            self.notify(note, title="Too long for the context", severity="warning", timeout=8)

    @on(StreamChunk)
    async def _append_chunk(self, event: StreamChunk) -> None:
        if self._md_stream is not None:
            await self._md_stream.write(event.text)
            self.query_one(ChatLog).follow()

    @on(StreamDone)
    async def _stream_done(self, event: StreamDone) -> None:
        await self._finish_stream()
        text = event.text.strip() or "(no reply)"
        stats = self._stats
        meta = {"retrieved": [h["id"] for h in getattr(self, "_hits", [])], "adapter": self.app.adapter_label(),
                "tokens": stats.completion_tokens, "tokens_per_s": round(stats.tokens_per_s, 1)}
        if self.conversation_id is not None:
            backend.add_turn(self.app.conn, self.conversation_id, "assistant",
                                 text + ("\n\n*(stopped)*" if event.stopped else ""), meta)
        self.query_one("#chat-side", SidePanel).show_speed(stats.completion_tokens, stats.tokens_per_s,
                                                           stats.ttft_s)
        self.refresh_list()

    @on(StreamFailed)
    async def _stream_failed(self, event: StreamFailed) -> None:
        await self._finish_stream()
        if self._reply_block is not None:
            await self._reply_block.remove()
            self._reply_block = None
        self.app.notify_error(event.error)

    async def _finish_stream(self) -> None:
        if self._md_stream is not None:
            stream, self._md_stream = self._md_stream, None
            await stream.stop()

    def action_stop(self) -> None:
        for worker in self.workers:
            if worker.group == "chat-reply":
                worker.cancel()
