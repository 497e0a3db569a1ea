"""bench/pipeline.py: --limit keeps the author's newest emails only, and a limited run is labelled as such."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def test_limit_keeps_the_newest_of_the_authors_emails(home):
    from bench.pipeline import keep_newest
    from panza_local import store

    conn = store.connect()
    for i, mine in enumerate([1, 1, 0, 1, 1]):
        conn.execute("INSERT INTO messages (content_hash, date, body, is_mine, ingested_at) VALUES (?, ?, 'b', ?, ?)",
                     (f"h{i}", f"2001-01-0{i + 1}T00:00:00", mine, store.now()))
    assert keep_newest(conn, 2) == 3
    kept = [r[0] for r in conn.execute("SELECT date FROM messages WHERE deleted = 0 ORDER BY date")]
    assert kept == ["2001-01-04T00:00:00", "2001-01-05T00:00:00"]


def _result(limit, **train) -> dict:
    stage = {"wall_s": 1.0, "cpu_s": 1.0}
    return {"author": "arnold-j", "limit": limit, "emails_used": 40, "threads": 2, "load_avg_1m": 1.0, "cpus": 2,
            "when": "now", "total_s": 4.0, "goal_s": 1800, "preset": "standard", "minutes": 5,
            "stages": {"ingest": {**stage, "seen": 10, "mine": 8}, "playback": {**stage, "emails_per_min": 1},
                       "index": dict(stage), "train": {**stage, **train}}}


def test_a_limited_run_says_so():
    from bench.pipeline import markdown

    r = _result(40)
    text = markdown(r, "a machine")
    assert "LIMITED RUN (--limit 40" in text and "| **total** | **4.0** |" in text
    assert "full run" in markdown({**r, "limit": None}, "a machine")
    assert "Not measured in this run" in text


def test_the_reference_run_gives_a_verdict():
    from bench.pipeline import markdown

    r = {**_result(None, val_loss_after=2.5),
         "reference": {"chosen": 30, "available": 30, "steps": 20, "step_s": 1.0, "wall_s": 20, "stop_reason": "preset",
                       "val_loss_before": 3.0, "val_loss_after": 2.4}}
    assert "2.500, worse than the reference" in markdown(r, "a machine")
    r["stages"]["train"]["val_loss_after"] = 2.4
    assert "2.400, no worse than the reference" in markdown(r, "a machine")


def test_missing_data_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "bench" / "pipeline.py"), "--data", str(tmp_path),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "needs the shared data set" in p.stderr
    assert not (tmp_path / "out").exists()
