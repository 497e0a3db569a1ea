"""The help screen: every key, by screen, and where the pieces come from."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# panza: keys

Everything works from the keyboard; **tab** / **shift+tab** move between boxes, **ctrl+p** opens the
command palette (every action below, plus themes).

| anywhere | |
|---|---|
| F1 | this help |
| F2 / F3 / F4 | chat / draft / status |
| F6 | change theme |
| ctrl+p | command palette |
| ctrl+q | quit |

| chat | |
|---|---|
| enter | send |
| ctrl+j | new line in the message |
| escape | stop the reply |
| ctrl+n | new conversation |
| ctrl+r | rename it |
| F8 | delete it |
| ctrl+f | search conversations |
| ctrl+b | show/hide the side panel |

| draft | |
|---|---|
| enter | draft from the instruction |
| ctrl+g | regenerate |
| ctrl+t | pick an email to reply to |
| ctrl+l | three alternatives |
| ctrl+s | save as .eml |
| ctrl+o | save to a Maildir Drafts folder |
| F7 | copy to the clipboard |

| status | |
|---|---|
| r | re-tune now (runs in the background) |
| F5 | refresh |

Drafts come from the base model plus your adapter (`panza train`), with past emails retrieved from
your index (`panza index`) as style examples; the side panel shows which.
"""


class HelpScreen(ModalScreen):
    """Keys and hints; escape, q or F1 closes it."""

    BINDINGS = [Binding("escape,q,f1", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box") as box:
            box.border_title = "Help"
            box.border_subtitle = "escape closes"
            yield Markdown(HELP)
