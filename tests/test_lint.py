"""`ruff check` is clean on the whole repository (the rules in pyproject.toml), so lint never piles up."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with `bash install.sh --dev`)")
    r = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                       capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
