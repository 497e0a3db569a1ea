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


def test_a_limited_run_says_so():
    from bench.pipeline import markdown

    stage = {"wall_s": 1.0, "cpu_s": 1.0}
    r = {"author": "arnold-j", "limit": 40, "emails_used": 40, "threads": 2, "load_avg_1m": 1.0, "cpus": 2,
         "when": "now", "total_s": 4.0, "goal_s": 1800, "preset": "standard", "minutes": 5,
         "stages": {"ingest": {**stage, "seen": 10, "mine": 8}, "playback": {**stage, "emails_per_min": 1},
                    "index": dict(stage), "train": dict(stage)}}
    text = markdown(r, "a machine")
    assert "LIMITED RUN (--limit 40" in text and "| **total** | **4.0** |" in text
    assert "full run" in markdown({**r, "limit": None}, "a machine")


def test_missing_data_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "bench" / "pipeline.py"), "--data", str(tmp_path),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "needs the shared data set" in p.stderr
    assert not (tmp_path / "out").exists()
