"""Named crash points, so resilience tests can kill -9 a command at an exact step instead of racing a timer.

`PANZA_FAILPOINT="name:N[,name:N]"` makes the process SIGKILL itself the Nth time `hit(name)` runs (N defaults
to 1). Unset (always, in normal use) a hit costs one environment lookup. The points:

    ingest.file       after each file of a source is read (inside the open batch transaction)
    ingest.batch      after each full batch is committed (also mid-file: an mbox or a Takeout archive)
    playback.pair     after each pair is saved
    index.batch       after each embedded batch is recorded
    train.checkpoint  after each training checkpoint is written
    retune.score      after each held-out email is scored by the re-tune gate
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def hit(name: str) -> None:
    spec = os.environ.get("PANZA_FAILPOINT")
    if not spec:
        return
    for item in spec.split(","):
        point, _, nth = item.strip().partition(":")
        if point == name:
            _hits[name] = _hits.get(name, 0) + 1
            if _hits[name] >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
