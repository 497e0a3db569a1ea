"""Run every benchmark and write one table of ratios against their baselines.

    python bench/run_all.py [--quick] [--only engine,draft] [--timeout 1800]

Each bench/<name>.py exposes `main(quick: bool) -> dict` whose "rows" are {name, ours, baseline, ratio,
unit[, note]} (ratio > 1: panza-local is better). Each runs in its own Python process (one bench's loaded
models, environment or crash cannot touch the next) and the results go to bench/out/results.json and
bench/out/results.md, with the machine they ran on. A missing bench, or one without that entry point, is
listed with a note instead of stopping the run; for the latter, rows a previous direct run saved in
bench/out/<name>.json are shown, marked as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import OUT, machine

BENCHES = ["engine", "ingest", "playback", "index", "train", "draft"]
BENCH_DIR = ROOT / "bench"


def _entry(name: str, bench_dir: Path = BENCH_DIR):
    """bench/<name>.py's `main(quick)` if it has that contract, else None (and why)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench.{name}", bench_dir / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    fn = getattr(mod, "main", None)
    if fn is None:
        return None, "has no main()"
    params = inspect.signature(fn).parameters
    if "quick" not in params:
        return None, f"main{inspect.signature(fn)} does not take `quick` (contract: main(quick: bool) -> dict)"
    return fn, ""


def run_one(name: str, quick: bool, out_file: Path, bench_dir: Path = BENCH_DIR) -> None:
    """Child-process side: run one bench and write its result (or the error) as JSON."""
    t0 = time.perf_counter()
    try:
        fn, why = _entry(name, bench_dir)
        if fn is None:
            result = {"status": "skipped", "note": why}
        else:
            got = fn(quick=quick)
            rows = got.get("rows") if isinstance(got, dict) else got
            if not isinstance(rows, list):
                result = {"status": "failed", "note": f"main() returned {type(got).__name__}, not a dict with rows"}
            else:
                extra = {k: v for k, v in got.items() if k != "rows"} if isinstance(got, dict) else {}
                result = {"status": "ok", "rows": rows, "extra": extra}
    except Exception as exc:  # noqa: BLE001 - one bench failing is a row in the report, not the end of the run
        result = {"status": "failed", "note": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out_file.write_text(json.dumps(result, default=str))


def run_bench(name: str, quick: bool, timeout: float, bench_dir: Path = BENCH_DIR, out_dir: Path = OUT) -> dict:
    """Run bench `name` in a child process; its result dict (status ok/skipped/failed/missing)."""
    if not (bench_dir / f"{name}.py").is_file():
        return {"status": "missing", "note": f"bench/{name}.py does not exist yet"}
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(out_file),
               "--bench-dir", str(bench_dir)]
        if quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, check=False, cwd=ROOT, timeout=timeout, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        except subprocess.TimeoutExpired:
            return {"status": "failed", "note": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)}
        if not out_file.exists():
            tail = (proc.stdout or "").strip().splitlines()[-3:]
            return {"status": "failed", "note": f"exit {proc.returncode}: {' | '.join(tail)}",
                    "seconds": round(time.perf_counter() - t0, 1)}
        result = json.loads(out_file.read_text())
    if result["status"] == "skipped":
        saved = out_dir / f"{name}.json"
        if saved.is_file():
            data = json.loads(saved.read_text())
            if isinstance(data.get("rows"), list):
                when = dt.datetime.fromtimestamp(saved.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
                result.update(rows=data["rows"], note=result["note"] + f"; rows from its own run at {when}")
    return result


def markdown(results: dict) -> str:
    """The results as a Markdown table (plus one line per bench that has no rows)."""
    lines = [f"Machine: {results['machine']}. Run: {results['started']} ({'quick' if results['quick'] else 'full'}).",
             "", "| bench | benchmark | ours | baseline | unit | ratio |", "|---|---|---:|---:|---|---:|"]
    notes = []
    for name, r in results["benches"].items():
        for row in r.get("rows") or []:
            ratio = row.get("ratio")
            lines.append(f"| {name} | {row.get('name', '')} | {row.get('ours', '')} | {row.get('baseline', '')} | "
                         f"{row.get('unit', '')} | {ratio if ratio is not None else '-'} |")
        if r["status"] != "ok" or r.get("note"):
            notes.append(f"- {name}: {r['status']}" + (f" ({r['note']})" if r.get("note") else ""))
    lines += ["", "Ratio > 1 means panza-local is better than the baseline (faster, smaller, or more accurate)."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def run_all(quick: bool, only: list[str] | None = None, timeout: float = 1800, echo=print,
            bench_dir: Path = BENCH_DIR, out_dir: Path = OUT) -> dict:
    """Run the benches, write bench/out/results.{json,md}, return the results."""
    results = {"machine": machine(), "started": dt.datetime.now().isoformat(timespec="seconds"), "quick": quick,
               "benches": {}}
    for name in only or BENCHES:
        echo(f"bench {name} ...")
        r = run_bench(name, quick, timeout, bench_dir, out_dir)
        results["benches"][name] = r
        echo(f"  {r['status']}" + (f" in {r['seconds']} s" if "seconds" in r else "") +
             (f": {r['note']}" if r.get("note") else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out_dir / "results.md").write_text(markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each bench's small, fast variant")
    ap.add_argument("--only", default="", help="comma-separated benches (default: all)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one bench may run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--bench-dir", default=str(BENCH_DIR), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_one(args.child, args.quick, Path(args.out), Path(args.bench_dir))
        return 0
    only = [b.strip() for b in args.only.split(",") if b.strip()] or None
    results = run_all(args.quick, only, args.timeout)
    print(markdown(results))
    return 0 if all(r["status"] in ("ok", "skipped", "missing") for r in results["benches"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
