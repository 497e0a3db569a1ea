"""Crash points: armed by PANZA_FAILPOINT, they SIGKILL the process at the Nth hit of a named point, no sooner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CODE = """
from panza_local import failpoint
for i in range(1, 6):
    failpoint.hit("other")
    failpoint.hit("index.batch")
    print(i, flush=True)
"""


def _run(spec: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PANZA_FAILPOINT"}
    if spec is not None:
        env["PANZA_FAILPOINT"] = spec
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_unarmed_points_do_nothing():
    r = _run(None)
    assert r.returncode == 0 and r.stdout.split() == ["1", "2", "3", "4", "5"]
    r = _run("ingest.file:1")  # armed elsewhere
    assert r.returncode == 0 and r.stdout.split() == ["1", "2", "3", "4", "5"]


def test_the_nth_hit_kills_with_sigkill():
    r = _run("index.batch:3")
    assert r.returncode == -signal.SIGKILL and r.stdout.split() == ["1", "2"]
    r = _run("ingest.file, index.batch")  # no count: the first hit
    assert r.returncode == -signal.SIGKILL and r.stdout.split() == []
