"""Shared CLI output helpers: JSON or human output, progress bars, argument helpers."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any


def add_json(p) -> None:
    """Add the --json flag every command supports."""
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON object")


def emit(args, data: Any, human: Callable[[Any], None] | None = None) -> None:
    """Print `data` as JSON when --json was given, else through `human` (default: key: value lines).

    A typed stage result (panza_local.results) prints as its `to_dict()`; `human` gets the result itself."""
    if getattr(args, "json", False):
        obj = data.to_dict() if hasattr(data, "to_dict") else data
        print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))
        return
    if human:
        human(data)
        return
    if isinstance(data, dict):
        for k, v in data.items():
            print(f"{k}: {v}")
    else:
        print(data)


def console(stderr: bool = True):
    """A rich console (on stderr by default, so stdout stays clean for pipes and --json)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextlib.contextmanager
def progress(desc: str, enabled: bool = True, eta: bool = True) -> Iterator[Callable[[int, int | None, str | None], None]]:
    """A progress bar with ETA; yields `update(done, total, note)`. Quiet when disabled or not a TTY.

    `eta=False` leaves out rich's own estimate, for a caller whose note carries a better one."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total=None, note=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    cols += [TimeRemainingColumn()] if eta else []
    with Progress(*cols, TextColumn("{task.fields[note]}"), console=console(), transient=False) as bar:
        task = bar.add_task(desc, total=None, note="")

        def update(done: int, total: int | None = None, note: str | None = None) -> None:
            bar.update(task, completed=done, total=total, note=note or "")

        yield update
