"""The Textual app (`panza chat`). Installed as `panza_local.tui`; imports only panza_local's public API."""

from __future__ import annotations


def run(**kwargs) -> None:
    """Open the app (Textual is imported here, so `import panza_local.tui` stays cheap)."""
    from .app import PanzaApp

    PanzaApp(**kwargs).run()
