"""Bounded memory: peak RSS of `panza ingest` on a 200 MB mbox and on one 50 MB message, vs stdlib loops.

    python bench/limits.py [--mbox-mb 200] [--message-mb 50] [--json]

Both inputs are generated on the fly in a temp dir (never kept): an mbox of ~20 KB plain-text messages, all
different, written as if by the user; and one message with a 50 MB base64 attachment and a short text part.
Each run is its own child process, whose peak RSS comes from `wait4` (ru_maxrss), so nothing in this
process counts. Baselines: the plain stdlib `mailbox.mbox` loop (parse + decode every text part), and
`email.message_from_binary_file` on the single message. Streaming means panza's peak stays near a
constant (the runtime plus one batch), not the input's size.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_rows, row, save

ME = "me@example.org"
WORDS = ["the", "meeting", "budget", "forecast", "deal", "gas", "price", "contract", "desk", "trade", "please", "call", "review", "numbers", "friday", "monday", "team", "report", "attached", "draft", "agree", "schedule", "later", "thanks", "update", "market", "position", "risk"]

BASELINE_MBOX = """
import mailbox, sys
n = 0
for msg in mailbox.mbox(sys.argv[1], create=False):
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            part.get_payload(decode=True)
    _ = msg["From"], msg["Subject"], msg["Date"], msg["Message-ID"]
    n += 1
print(n)
"""

BASELINE_ONE = """
import email, sys
with open(sys.argv[1], "rb") as fh:
    msg = email.message_from_binary_file(fh)
for part in msg.walk():
    if part.get_content_maintype() == "text":
        part.get_payload(decode=True)
print(1)
"""


def write_mbox(path: Path, target_mb: int, seed: int = 1) -> int:
    """An mbox of distinct ~20 KB messages from ME, `target_mb` MB in all; returns the message count."""
    rng = random.Random(seed)
    n, size, target = 0, 0, target_mb * 2**20
    with open(path, "w", encoding="ascii") as fh:
        while size < target:
            paras = "\n\n".join(" ".join(rng.choices(WORDS, k=60)) for _ in range(45))
            msg = (f"From {ME} Mon Jan  1 00:00:00 2001\n"
                   f"From: Me <{ME}>\nTo: colleague{n % 97}@example.org\nSubject: update {n}\n"
                   f"Date: Mon, 1 Jan 2001 {n % 24:02d}:{n % 60:02d}:00 +0000\nMessage-ID: <m{n}@example.org>\n"
                   f"Content-Type: text/plain; charset=us-ascii\n\nHi,\n\nNote {n}. {paras}\n\nThanks\n\n")
            fh.write(msg)
            size += len(msg)
            n += 1
    return n


def write_big_message(path: Path, mb: int) -> None:
    """One message with a short text part and an `mb` MB base64 attachment."""
    blob = base64.encodebytes(os.urandom(mb * 2**20 * 3 // 4))
    head = (f"From: Me <{ME}>\nTo: someone@example.org\nSubject: the big file\nDate: Mon, 1 Jan 2001 10:00:00 +0000\n"
            "Message-ID: <big@example.org>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BB\"\n\n"
            "--BB\nContent-Type: text/plain; charset=us-ascii\n\nHere is the file we talked about on Monday, "
            "with the numbers for the forecast.\n\nThanks\n\n"
            "--BB\nContent-Type: application/octet-stream; name=\"data.bin\"\nContent-Transfer-Encoding: base64\n\n")
    with open(path, "wb") as fh:
        fh.write(head.encode())
        fh.write(blob)
        fh.write(b"\n--BB--\n")


def run_one(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Measure `cmd` through a fresh wrapper so RUSAGE_CHILDREN holds that command alone."""
    wrapper = ("import json, resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "r = subprocess.run(json.loads(sys.argv[1]), capture_output=True)\n"
               "s = time.perf_counter() - t\n"
               "sys.stderr.buffer.write(r.stderr[-3000:])\n"
               "print(json.dumps({'rc': r.returncode, 's': s, 'out': r.stdout.decode(errors='replace'),\n"
               "                  'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")
    r = subprocess.run([sys.executable, "-c", wrapper, json.dumps(cmd)], env=env, capture_output=True, text=True,
                       check=False)
    res = json.loads(r.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{cmd[:4]} failed: {r.stderr[-2000:]}")
    return res["rss"], res["s"], res["out"]


def run(mbox_mb: int, message_mb: int) -> dict:
    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="panza-limits-") as tmp:
        tmp = Path(tmp)
        mbox = tmp / "big.mbox"
        n = write_mbox(mbox, mbox_mb)
        one = tmp / "one" / "big.eml"
        one.parent.mkdir()
        write_big_message(one, message_mb)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PANZA_")}
        env.update(PANZA_THREADS="1")
        panza = [sys.executable, "-m", "panza_local", "ingest", "--me", ME, "--json"]

        base_rss, base_s, _ = run_one([sys.executable, "-c", BASELINE_MBOX, str(mbox)])
        ours_rss, ours_s, out = run_one([*panza, str(mbox)], env={**env, "PANZA_HOME": str(tmp / "h1")})
        summary = json.loads(out)
        figures["mbox"] = {"mb": round(mbox.stat().st_size / 2**20, 1), "messages": n, "stored": summary["stored"],
                           "panza_peak_rss_mb": round(ours_rss, 1), "panza_s": round(ours_s, 1),
                           "stdlib_peak_rss_mb": round(base_rss, 1), "stdlib_s": round(base_s, 1)}
        rows.append(row(f"peak RSS, ingest {figures['mbox']['mb']} MB mbox ({n} msgs)", ours_rss, base_rss, "MB",
                        higher_is_better=False))

        base_rss, base_s, _ = run_one([sys.executable, "-c", BASELINE_ONE, str(one)])
        ours_rss, ours_s, out = run_one([*panza, str(one.parent)], env={**env, "PANZA_HOME": str(tmp / "h2")})
        summary = json.loads(out)
        figures["message"] = {"mb": round(one.stat().st_size / 2**20, 1), "seen": summary["seen"],
                              "stored": summary["stored"], "skipped": summary["skipped"],
                              "panza_peak_rss_mb": round(ours_rss, 1), "panza_s": round(ours_s, 1),
                              "stdlib_peak_rss_mb": round(base_rss, 1), "stdlib_s": round(base_s, 1)}
        rows.append(row(f"peak RSS, ingest one {figures['message']['mb']} MB message", ours_rss, base_rss, "MB",
                        higher_is_better=False))
        idle_rss, _, _ = run_one([*panza[:3], "--version"], env={**env, "PANZA_HOME": str(tmp / "h3")})
        figures["panza_version_rss_mb"] = round(idle_rss, 1)
    return {"rows": rows, "figures": figures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbox-mb", type=int, default=200)
    ap.add_argument("--message-mb", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.mbox_mb, args.message_mb)
    save("limits", res)
    if args.json:
        print(json.dumps(res))
    else:
        print_rows(res["rows"])
        print(json.dumps(res["figures"], indent=2))


if __name__ == "__main__":
    main()
