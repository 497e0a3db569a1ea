"""bench/train.py refuses a method it does not know instead of timing the baseline under that name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_unknown_method_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "bench" / "train.py"), "--methods", "ours,nosuch",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2
    assert "unknown method(s) nosuch" in p.stderr and "ours-fp32" in p.stderr
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
