"""Shared benchmark helpers: timing, peak RSS, machine description, row format."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SHARED = Path(os.environ.get("PANZA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def enron_data(arg: str | None) -> Path | None:
    """The shared data folder (`--data`, else ../shared/data) when it holds the Enron sent mboxes; else None,
    having said so on stderr (a fresh clone has no ../shared)."""
    import sys

    data = Path(arg) if arg else SHARED
    if (data / "enron" / "sent").is_dir():
        return data
    print(f"needs the shared data set at {data} (absent in a fresh clone): pass --data", file=sys.stderr)
    return None


def scratch(prefix: str) -> Path:
    """A temporary folder for a benchmark's home or files, removed when the process exits (homes hold serving
    copies and models of ~250 MB each: left behind, a few benchmark runs fill a disk)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def row(name: str, ours: float, baseline: float, unit: str, higher_is_better: bool = True, note: str = "") -> dict:
    """One result row: ratio > 1 always means panza-local is better."""
    if ours and baseline:
        ratio = ours / baseline if higher_is_better else baseline / ours
    else:
        ratio = None
    return {"name": name, "ours": round(ours, 4), "baseline": round(baseline, 4), "unit": unit,
            "ratio": round(ratio, 2) if ratio else None, "note": note}


def machine() -> str:
    """One line describing the machine the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def run_child(cmd: list[str]) -> dict:
    """Run a benchmark child process (its peak RSS is its own) that prints one `RESULT {json}` line;
    that dict, or {"error": the end of its stderr} when it printed none."""
    import subprocess

    p = subprocess.run(cmd, check=False, capture_output=True, text=True)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else {"error": p.stderr[-2000:]}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def save(name: str, data: dict) -> Path:
    OUT.mkdir(exist_ok=True)
    p = OUT / f"{name}.json"
    p.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    return p


def publish(name: str, data: dict, command: str) -> Path:
    """Keep a run's rows as the README's evidence: bench/results/<name>.json and a .md table, each naming the
    machine and the command that wrote it."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    full = {"machine": machine(), "command": command, **data}
    (results / f"{name}.json").write_text(json.dumps(full, indent=2) + "\n")
    lines = [f"# {name} (`{command}`)", "", f"{full['machine']}; load average {os.getloadavg()[0]:.1f} at the end.",
             "", "| benchmark | ours | baseline | unit | ratio | note |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['ours']} | {r['baseline']} | {r['unit']} | {r['ratio'] or '-'} | {r.get('note', '')} |"
              for r in data.get("rows", [])]
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    return results / f"{name}.json"


def write_result(name: str, data: dict, md: str) -> None:
    """bench/results/<name>.json (the figures) and .md (the bench's own table), and the table on stdout."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(data, indent=2))
    (results / f"{name}.md").write_text(md)
    print(md)


def print_rows(rows: list[dict]) -> None:
    print(f"{'benchmark':52} {'ours':>12} {'baseline':>12} {'unit':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['name']:52} {r['ours']:>12} {r['baseline']:>12} {r['unit']:>10} {r['ratio'] or '-':>7}")
