"""The product claim, measured: does adapter+RAG write more like the user than the stock model?

    python bench/eval_claim.py marcus            # a Panza user (../shared/data/panza/marcus_*.jsonl)
    python bench/eval_claim.py allen-p --pairs 200
    python bench/eval_claim.py marcus --model qwen2.5-coder-0.5b   # a catalogue model instead of the embedded one

Runs the real pipeline through the CLI a user would type, in a home of its own
(bench/out/eval_<user>/home, resumable: every step is idempotent, so re-running after a kill goes on
where it stopped): sources add → ingest → playback → index → train → eval (four configurations x seeds)
with a Markdown report and plots. Writes bench/results/eval_<user>.{json,md}.

Needs ../shared/data; takes 20-40 minutes on 2 cores with the embedded model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
USERS = {
    "marcus": [DATA / "panza" / "marcus_anonymous_clean.jsonl"],
    "david": [DATA / "panza" / "david_anonymous_clean.jsonl"],
    "allen-p": [DATA / "enron" / "sent" / f"enron.allen-p.{f}.mbox" for f in ("_sent_mail", "sent", "sent_items")],
    "kay": [DATA / "panza" / "kay_brown_clean.jsonl"],
}
ME = {"allen-p": ["phillip.allen@enron.com", "k..allen@enron.com"]}


def panza(home: Path, *args: str, json_out: bool = True) -> dict:
    """Run one `panza` command in `home`; its --json result (progress goes to this terminal's stderr)."""
    env = {**os.environ, "PANZA_HOME": str(home)}
    cmd = [sys.executable, "-m", "panza_local", *args] + (["--json"] if json_out else [])
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=False, stdout=subprocess.PIPE, text=True)
    print(f"  {' '.join(args)}: rc {out.returncode} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if out.returncode != 0:
        raise SystemExit(f"`panza {' '.join(args)}` failed ({out.returncode}):\n{out.stdout[-2000:]}")
    return json.loads(out.stdout) if json_out and out.stdout.strip() else {}


def pairs_in(home: Path) -> int:
    """Emails already played back in `home` (0 before its first playback)."""
    import sqlite3

    db = home / "panza.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        has = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'pairs'").fetchone()[0]
        return conn.execute("SELECT count(*) FROM pairs").fetchone()[0] if has else 0


def without_mail(report_md: Path) -> None:
    """Drop the report's examples (held-out emails quoted in full): the results live in the repository, and
    ../shared/data is used in place, never copied into it. `panza eval --report` keeps them for a user."""
    if not report_md.exists():
        return
    text = report_md.read_text()
    cut = text.find("## Examples")
    if cut >= 0:
        report_md.write_text(text[:cut] + "## Examples\n\nLeft out here: they quote the held-out emails of "
                             "../shared/data, which stays out of the repository.\n")


def table(result: dict) -> str:
    """Markdown: configuration x metric, mean ± spread across seeds."""
    # bertscore/mauve: the standard packages on roberta-large/gpt2-large (null when not on disk);
    # *_minilm: panza's re-implementations on the embedded MiniLM, not comparable with published scores
    metrics = ("bleu", "rouge1", "rouge2", "rougeL", "bertscore", "mauve", "bertscore_minilm", "mauve_minilm")
    lines = ["| configuration | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, row in result["configs"].items():
        cells = []
        for m in metrics:
            v, s = row.get(m), row.get(f"{m}_std")
            cells.append("—" if v is None else (f"{v:.3f} ± {s:.3f}" if s is not None else f"{v:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("user", choices=sorted(USERS))
    ap.add_argument("--pairs", type=int, default=0, help="playback at most N emails (0 = all)")
    ap.add_argument("--preset", default="standard")
    ap.add_argument("--limit", type=int, default=20, help="held-out emails to draft")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fresh", action="store_true", help="start from an empty home")
    ap.add_argument("--model", default="", help="a catalogue model (`panza models use NAME`); default: the embedded one")
    args = ap.parse_args()
    for f in USERS[args.user]:
        if not f.exists():
            raise SystemExit(f"{f} is missing: this benchmark needs ../shared/data")
    tag = f"{args.user}_{args.model}" if args.model else args.user
    work = ROOT / "bench" / "out" / f"eval_{tag}"
    home = work / "home"
    if args.fresh and home.exists():
        import shutil

        shutil.rmtree(home)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}

    def step(name: str, *cmd: str, json_out: bool = True) -> dict:
        s = time.perf_counter()
        got = panza(home, *cmd, json_out=json_out)
        steps[name] = round(steps.get(name, 0) + time.perf_counter() - s, 1)
        return got

    if args.model:
        step("model", "models", "use", args.model, json_out=False)
    if ME.get(args.user):
        step("config", "config", "set", "me", ",".join(ME[args.user]), json_out=False)
    step("sources", "sources", "add", *map(str, USERS[args.user]), json_out=False)
    ingest = step("ingest", "ingest")
    # --limit is "at most N new pairs": a re-run after a kill asks only for what is missing, so it stays at N
    left = max(0, args.pairs - pairs_in(home)) if args.pairs else None
    pb = step("playback", "playback", *(["--limit", str(left)] if left is not None else []))
    step("index", "index")
    train = step("train", "train", "--preset", args.preset)
    report = ROOT / "bench" / "results" / f"eval_{tag}"   # report.md + plots, kept with the figures
    ev = step("eval", "eval", "--limit", str(args.limit), "--seeds", str(args.seeds), "--report", str(report))
    without_mail(report / "report.md")
    out = {"user": args.user, "model": args.model or "embedded", "sources": [str(p.relative_to(DATA)) for p in USERS[args.user]],
           "mine": ingest.get("mine"), "playback": {k: pb.get(k) for k in ("pairs", "quality", "generated")},
           "train": {k: v for k, v in train.items() if not isinstance(v, (list, dict))},
           "eval": ev, "steps_s": steps, "total_s": round(time.perf_counter() - t0, 1)}
    res = report.parent
    (res / f"eval_{tag}.json").write_text(json.dumps(out, indent=2, default=str))
    md = [f"# Evaluation: {args.user} ({', '.join(out['sources'])})", "",
          (f"{ev.get('n')} held-out emails x {ev.get('seeds')} seeds, {args.model or 'embedded'} model, preset {args.preset}; "
           f"adapter {ev.get('adapter')}."), "", table(ev), "",
          "Scoring models: " + "; ".join(f"{k}: {v}" for k, v in dict(ev.get("scoring_models") or {}).items()), "",
          "Step times (s): " + ", ".join(f"{k} {v}" for k, v in steps.items())]
    (res / f"eval_{tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
