"""What a reply or draft was built from: retrieved emails, base model, adapter, speed."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


class SidePanel(VerticalScroll):
    """Right-hand panel; `show_context` and `show_speed` update it."""

    can_focus = True

    def compose(self) -> ComposeResult:
        yield Static("", id="side-model")
        yield Static("[b]Retrieved[/]\n[dim]nothing yet[/]", id="side-hits")
        yield Static("", id="side-speed")

    def show_context(self, hits: list[dict], model: str, adapter: str, notices: list[str] | None = None) -> None:
        """Show the model, adapter and retrieved items: emails (score, date, subject), document passages
        (score, citation: file and paragraphs)."""
        self.query_one("#side-model", Static).update(
            f"[b]Model[/]\n{escape(model)}\n[b]Adapter[/]\n{escape(adapter or 'none (base model)')}")
        if hits:
            lines = [f"[b]{h['score']:.2f}[/] doc\n  {escape(_short_cite(h.get('cite') or h.get('subject') or '?'))}"
                     if h.get("kind") == "doc" else
                     f"[b]{h['score']:.2f}[/] {escape(h.get('date') or '?')}\n  {escape(h.get('subject') or '(no subject)')}"
                     for h in hits]
            body = "\n".join(lines)
        else:
            body = "[dim]none[/]"
        for note in notices or []:
            body += f"\n[dim]{escape(note)}[/]"
        self.query_one("#side-hits", Static).update(f"[b]Retrieved[/]\n{body}")

    def show_speed(self, tokens: int, tokens_per_s: float, ttft_s: float, prompt: int = 0, cached: int = 0) -> None:
        """Show the speed of the last generation (and how much of its prompt was ready before it began)."""
        ready = f"\nprompt {prompt} tokens, {cached} ready" if prompt else ""
        self.query_one("#side-speed", Static).update(
            f"[b]Last reply[/]\n{tokens} tokens\n{tokens_per_s:.1f} tok/s\nfirst token {ttft_s:.2f}s{ready}")


def _short_cite(cite: str) -> str:
    """`/home/me/notes/plan.md ¶3-4` -> `plan.md ¶3-4` (the panel is narrow; the folder says little)."""
    path, _, paras = cite.rpartition(" ")
    return f"{path.rsplit('/', 1)[-1]} {paras}" if path else cite
