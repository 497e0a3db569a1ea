"""The scrolling transcript: one Markdown block per turn, the newest streamed in."""

from __future__ import annotations

from textual.containers import VerticalScroll
from textual.widgets import Markdown, Static


class ChatLog(VerticalScroll):
    """Transcript of one conversation."""

    can_focus = True

    async def show(self, turns: list) -> None:
        """Replace the transcript with `turns` (chat.ChatMessage or dicts with role/content)."""
        await self.remove_children()
        if not turns:
            await self.mount(Static("Ask anything, or press F3 to draft an email in your voice.",
                                    classes="empty-hint"))
            return
        await self.mount_all([self._block(_role(t), _content(t)) for t in turns])
        self.scroll_end(animate=False)

    async def add(self, role: str, content: str) -> Markdown:
        """Append one turn and return its Markdown block."""
        for hint in self.query(".empty-hint"):
            await hint.remove()
        block = self._block(role, content)
        await self.mount(block)
        self.follow()
        return block

    def follow(self) -> None:
        """Keep the newest text in view (anchor() scrolled to a negative offset when the log was short)."""
        self.call_after_refresh(self.scroll_end, animate=False)

    def _block(self, role: str, content: str) -> Markdown:
        block = Markdown(content, classes=f"turn {role}")
        block.border_title = "you" if role == "user" else "panza"
        return block


def _role(t) -> str:
    return t["role"] if isinstance(t, dict) else t.role


def _content(t) -> str:
    return t["content"] if isinstance(t, dict) else t.content
