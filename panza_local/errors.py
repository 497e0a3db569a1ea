"""Specific errors whose message names the fix. Only the CLI and the TUI turn them into exit codes."""

from __future__ import annotations


class PanzaError(Exception):
    """Base error: `str(err)` is what the user sees, `fix` is the command or step that resolves it."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class ConfigError(PanzaError):
    """A setting is unknown or has a value of the wrong type."""


class ModelNotFound(PanzaError):
    """The requested base model is neither embedded, pulled, nor added."""


class NotAGGUF(PanzaError):
    """A file given as a model is not a readable GGUF file (or has an unsupported architecture)."""


class OfflineError(PanzaError):
    """A network operation was asked for but the network cannot be reached."""


class NoDataError(PanzaError):
    """A stage needs input an earlier stage has not produced yet."""


class SourceError(PanzaError):
    """A mail or document source cannot be read."""


class StoreError(PanzaError):
    """The database cannot be opened or written (read-only home, disk full, corruption)."""


class AdapterError(PanzaError):
    """An adapter is missing, incompatible with the active base model, or fails to load."""
