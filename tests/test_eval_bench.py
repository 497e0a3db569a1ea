"""bench/run_all.py: runs each bench in its own process, tolerates missing and broken ones, writes the table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


GOOD = '''
import os
def main(quick: bool = False) -> dict:
    return {"bench": "good", "rows": [
        {"name": "widgets/s", "ours": 20.0 if quick else 40.0, "baseline": 10.0, "ratio": 2.0 if quick else 4.0,
         "unit": "1/s"}], "pid": os.getpid()}
'''
OLD_STYLE = '''
def main(argv=None) -> int:
    raise SystemExit("must not be called: it would run the full argparse bench")
'''
BROKEN = '''
def main(quick: bool = False) -> dict:
    raise RuntimeError("boom")
'''


def test_run_all_table_and_json(tmp_path):
    ra = _run_all()
    benches, out = tmp_path / "bench", tmp_path / "out"
    benches.mkdir()
    (benches / "engine.py").write_text(GOOD)
    (benches / "ingest.py").write_text(OLD_STYLE)
    (benches / "train.py").write_text(BROKEN)
    out.mkdir()
    (out / "ingest.json").write_text(json.dumps({"rows": [{"name": "msgs/s", "ours": 900, "baseline": 8500,
                                                            "ratio": 0.11, "unit": "msg/s"}]}))
    lines: list[str] = []
    res = ra.run_all(True, timeout=120, echo=lines.append, bench_dir=benches, out_dir=out)
    b = res["benches"]
    assert b["engine"]["status"] == "ok" and b["engine"]["rows"][0]["ours"] == 20.0  # quick was passed
    assert b["engine"]["extra"]["pid"] != __import__("os").getpid()  # ran in its own process
    assert b["ingest"]["status"] == "skipped" and "quick" in b["ingest"]["note"]
    assert b["ingest"]["rows"][0]["name"] == "msgs/s" and "its own run" in b["ingest"]["note"]
    assert b["train"]["status"] == "failed" and "RuntimeError: boom" in b["train"]["note"]
    for name in ("playback", "index", "draft"):
        assert b[name]["status"] == "missing"
    md = (out / "results.md").read_text()
    assert "| engine | widgets/s | 20.0 | 10.0 | 1/s | 2.0 |" in md
    assert "| ingest | msgs/s | 900 | 8500 | msg/s | 0.11 |" in md
    assert "- train: failed (RuntimeError: boom)" in md and "Machine:" in md
    assert json.loads((out / "results.json").read_text())["quick"] is True
