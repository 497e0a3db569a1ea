"""Ingest speed on the Enron sent set: first run, unchanged re-run, and a plain stdlib loop, in one run.

    python bench/ingest.py [--quick] [--data ../shared/data] [--json]

Baseline: `mailbox.mbox` + `email` (compat32) parse + get_payload(decode=True) of every message, i.e. the
least any importer must do. panza's first run also cleans, detects authorship and language,
de-duplicates and writes SQLite; the re-run must do no parsing (target: <= 5% of the first run's time).
"""

from __future__ import annotations

import argparse
import json
import mailbox
import os
import sys
import tempfile
import time
from pathlib import Path

ME = ["phillip.allen@enron.com", "k..allen@enron.com", "john.arnold@enron.com", "darrell.perlingiere@enron.com",
      "debra.perlingiere@enron.com", "steven.kean@enron.com", "eric.bass@enron.com", "jeff.skilling@enron.com",
      "kenneth.lay@enron.com"]


def baseline(files: list[Path]) -> tuple[int, float]:
    """Messages and seconds for a plain mailbox + email loop (parse headers and decode the body)."""
    t = time.perf_counter()
    n = 0
    for f in files:
        for msg in mailbox.mbox(str(f), create=False):
            for part in msg.walk():
                if part.get_content_maintype() == "text":
                    part.get_payload(decode=True)
            _ = msg["From"], msg["Subject"], msg["Date"], msg["Message-ID"]
            n += 1
    return n, time.perf_counter() - t


def run(data: Path, quick: bool = False) -> dict:
    """Baseline loop, first ingest and unchanged re-run on the Enron sent mboxes (quick: allen-p's only)."""
    files = sorted((data / "enron" / "sent").glob("enron.allen-p.*.mbox" if quick else "*.mbox"))
    if not files:
        raise FileNotFoundError(f"no Enron sent mboxes under {data}/enron/sent")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PANZA_HOME"] = tmp
        from panza_local import store
        from panza_local.ingest import ingest
        from panza_local.ingest.clean import residual_markers

        n_base, t_base = baseline(files)
        conn = store.connect()
        t = time.perf_counter()
        first = ingest(conn, [str(f) for f in files], ME)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        again = ingest(conn, [str(f) for f in files], ME)
        t_again = time.perf_counter() - t
        bodies = [r[0] for r in conn.execute("SELECT body FROM messages WHERE is_mine = 1")]
        leftover = sum(bool(residual_markers(b)) for b in bodies) / max(1, len(bodies))
        conn.close()
    return {
        "files": len(files), "messages": first.seen,
        "baseline_messages": n_base, "baseline_msgs_per_s": round(n_base / t_base), "baseline_s": round(t_base, 2),
        "first_msgs_per_s": round(first.seen / t_first), "first_s": round(t_first, 2),
        "rerun_s": round(t_again, 3), "rerun_share_of_first": round(t_again / t_first, 4),
        "rerun_seen": again.seen, "stored": first.stored, "mine": first.mine,
        "duplicates": first.duplicates, "skipped": first.skipped,
        "mine_with_quote_markers": round(leftover, 4), "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(quick: bool = False) -> dict:
    """Entry point for bench/run_all.py: result rows (ratio > 1: panza-local better) plus the raw figures."""
    from bench._common import SHARED, row, save

    r = run(SHARED, quick)
    rows = [
        row(f"ingest first run, {r['messages']} Enron sent msgs, vs mailbox+email parse", r["first_msgs_per_s"],
            r["baseline_msgs_per_s"], "msgs/s",
            note="ours also cleans, attributes, de-dups, detects language and writes SQLite"),
        row("unchanged re-run vs first run (target <= 5%)", r["rerun_s"], r["first_s"], "s", False),
        row("your bodies with quote/forward markers vs Panza extractor", r["mine_with_quote_markers"], 0.35, "share",
            False, note="baseline 35% is DESIGN.md's measured reference, not re-run here"),
    ]
    save("ingest", {"rows": rows, **r})
    return {"rows": rows, **r}


def _cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--quick", action="store_true", help="allen-p's three sent folders only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if args.data:
        os.environ["PANZA_SHARED_DATA"] = args.data
    out = main(args.quick)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        from bench._common import print_rows

        print_rows(out["rows"])
        for k, v in out.items():
            if k != "rows":
                print(f"{k:26} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
