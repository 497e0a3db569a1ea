"""A re-tune pass on new mail, end to end: what a user's background `panza retune` costs when mail arrives.

    python bench/retune.py [--author allen-p] [--base 200] [--new 50] [--threads 2]

An Enron author's own sent mail (../shared/data/enron/sent), de-duplicated and in date order, is split: the
`--base` emails before the newest `--new` go into one mbox, registered as a source, and a first `panza
retune --force` builds the home from it (ingest, playback, index, train, promote). Then the newest `--new`
emails are appended to that same mbox file, as a mail client appends new mail, and two passes are timed as
fresh `panza retune --json` processes, the way the scheduler runs them:
- the pass on the new mail (ingest of what was appended, playback of the new emails, index, training warm-
  started from the current adapter within the `retune_minutes` budget, the held-out gate, promotion);
- a pass with nothing new.
Goals (issue 22): <= 5 minutes for the pass on 50 new emails, <= 2 s for a pass with nothing new. The setup
pass is reported too, but it is not what the goal is about. Writes bench/results/retune.{json,md}.
"""

from __future__ import annotations

import argparse
import email
import email.utils
import json
import mailbox
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ME = {"allen-p": ["phillip.allen@enron.com", "k..allen@enron.com"], "arnold-j": ["john.arnold@enron.com"],
      "bass-e": ["eric.bass@enron.com"]}
GOAL_NEW_S, GOAL_NOTHING_S = 300.0, 2.0


def own_messages(data: Path, author: str) -> list[bytes]:
    """The author's own messages from their sent mboxes, one copy each (by body), oldest first."""
    me = {a.lower() for a in ME[author]}
    seen: set[str] = set()
    out: list[tuple[float, bytes]] = []
    for f in sorted((data / "enron" / "sent").glob(f"enron.{author}.*.mbox")):
        for msg in mailbox.mbox(str(f), create=False):
            sender = email.utils.parseaddr(msg.get("From", ""))[1].lower()
            if sender not in me:
                continue
            body = msg.get_payload() if not msg.is_multipart() else msg.as_string()
            key = " ".join(str(body).split())  # the same email filed in two folders has two Message-IDs
            if key in seen:
                continue
            seen.add(key)
            try:
                when = email.utils.parsedate_to_datetime(msg.get("Date", "")).timestamp()
            except (TypeError, ValueError, IndexError):
                continue
            out.append((when, msg.as_bytes(unixfrom=True)))
    out.sort(key=lambda x: x[0])
    return [raw for _, raw in out]


def write_mbox(path: Path, messages: list[bytes], append: bool = False) -> None:
    with path.open("ab" if append else "wb") as f:
        for raw in messages:
            if not raw.startswith(b"From "):
                raw = b"From bench@localhost Thu Jan  1 00:00:00 2001\n" + raw
            f.write(raw.rstrip(b"\n") + b"\n\n")


def panza(home: Path, threads: int, *args: str) -> tuple[dict, float]:
    """One `panza ... --json` process in `home`: its JSON result and its wall seconds (process start included)."""
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_THREADS": str(threads)}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "panza_local", *args, "--json"], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"`panza {' '.join(args)}` failed ({p.returncode}): {p.stderr[-2000:]}")
    print(f"  panza {' '.join(args)}: {wall:.1f} s", file=sys.stderr, flush=True)
    return json.loads(p.stdout), wall


def run(data: Path, author: str, base: int, new: int, threads: int) -> dict:
    msgs = own_messages(data, author)
    if len(msgs) < base + new:
        raise SystemExit(f"{author} has {len(msgs)} own emails, fewer than --base {base} + --new {new}")
    old, fresh = msgs[-(base + new):-new], msgs[-new:]
    with tempfile.TemporaryDirectory() as tmp:
        home, mbox = Path(tmp) / "home", Path(tmp) / "sent.mbox"
        write_mbox(mbox, old)
        env = {**os.environ, "PANZA_HOME": str(home)}
        for cmd in (["config", "set", "me", ",".join(ME[author])], ["sources", "add", str(mbox)]):
            subprocess.run([sys.executable, "-m", "panza_local", *cmd], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        setup, setup_s = panza(home, threads, "retune", "--force")
        write_mbox(mbox, fresh, append=True)
        on_new, new_s = panza(home, threads, "retune")
        nothing, nothing_s = panza(home, threads, "retune")
    keep = ("new_messages", "new_pairs", "failed_pairs", "indexed", "trained", "promoted", "mode", "reason",
            "steps", "train", "score_new", "score_current", "n_test", "seconds")
    return {"author": author, "base": base, "new": new, "threads": threads,
            "setup": {"wall_s": round(setup_s, 2), **{k: setup.get(k) for k in keep}},
            "new_mail": {"wall_s": round(new_s, 2), **{k: on_new.get(k) for k in keep}},
            "nothing_new": {"wall_s": round(nothing_s, 2), **{k: nothing.get(k) for k in keep}},
            "goals_s": {"new_mail": GOAL_NEW_S, "nothing_new": GOAL_NOTHING_S},
            "load_avg_1m": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(r: dict, machine: str) -> str:
    def row(name: str, p: dict, goal: str) -> str:
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in (p.get("steps") or {}).items())
        tr = p.get("train") or {}
        loss = (f"; val loss {tr.get('val_loss_before'):.3f} -> {tr.get('val_loss_after'):.3f}, {tr.get('steps')} steps"
                if tr.get("val_loss_after") is not None else "")
        return (f"| {name} | {p['wall_s']} | {goal} | {p.get('new_messages')} new messages, {p.get('new_pairs')} new "
                f"pairs, trained {p.get('trained')}{loss}, promoted {p.get('promoted')} ({steps}) |")

    return "\n".join([
        (f"# Re-tune pass on new mail (`python bench/retune.py --author {r['author']} --base {r['base']} "
         f"--new {r['new']}`)"), "",
        (f"{machine}; {r['threads']} threads, embedded model; load average {r['load_avg_1m']} when it ended; "
         f"{r['when']}. Each pass is a fresh `panza retune --json` process (start-up included)."), "",
        "| pass | wall s | goal | what it did |", "|---|---:|---:|---|",
        row(f"setup: the first pass on {r['base']} emails (`--force`)", r["setup"], "-"),
        row(f"{r['new']} new emails appended to the mbox", r["new_mail"], f"<= {r['goals_s']['new_mail']:.0f} s"),
        row("nothing new", r["nothing_new"], f"<= {r['goals_s']['nothing_new']:.0f} s"), "",
        (f"Held-out gate on the new-mail pass: new {r['new_mail'].get('score_new')} vs current "
         f"{r['new_mail'].get('score_current')} on {r['new_mail'].get('n_test')} pairs; reason: "
         f"{r['new_mail'].get('reason')}."), ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--author", default="allen-p", choices=sorted(ME))
    ap.add_argument("--base", type=int, default=200, help="emails in the home before the new mail arrives")
    ap.add_argument("--new", type=int, default=50, help="emails that arrive")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    args = ap.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench._common import enron_data, machine

    data = enron_data(args.data)
    if data is None:
        return 1
    r = run(data, args.author, args.base, args.new, args.threads)
    out = ROOT / "bench" / "results"
    (out / "retune.json").write_text(json.dumps({"machine": machine(), **r}, indent=2, default=str) + "\n")
    (out / "retune.md").write_text(markdown(r, machine()))
    print(markdown(r, machine()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
