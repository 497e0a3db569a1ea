"""Speed and memory figures live in bench/results beside their baseline, not in the code, where they go
stale ("~1.8x" in a docstring beside a measured 2.2x): no speed-up factors in docstrings, comments or help."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACTOR = re.compile(r"~ ?\d+(?:\.\d+)?x\b|\b\d+(?:\.\d+)?x (?:faster|slower|quicker|less|more)\b"
                    r"|\b\d+(?:\.\d+)? times (?:faster|slower|quicker)\b|\(\d+(?:\.\d+)?x\)", re.IGNORECASE)


def test_no_speedup_factors_in_the_code():
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
            for pkg in ("panza_local", "tui") for p in sorted((REPO / pkg).rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if FACTOR.search(line)]
    assert hits == [], "move these figures to bench/results (and point there):\n" + "\n".join(hits)


def test_the_pattern_catches_the_usual_forms():
    for text in ("~1.8x faster", "about 6x faster than", "is 2 times slower", "in bulk there (1.6x)", "~40x"):
        assert FACTOR.search(text), text
    for text in ("a 4x4 matrix", "576x1536 layer", "0x1F", "Q4_K_M"):
        assert not FACTOR.search(text), text
