"""Time to first adapter: one author's real sent mailbox through ingest -> playback -> index -> train.

    python bench/pipeline.py [--author arnold-j] [--limit N] [--threads 2] [--preset standard] [--minutes M]
                             [--compare]

The mailbox is one Enron author's three sent folders from ../shared/data/enron/sent (arnold-j: 2,353 messages
with the copies across folders, 1,090 of his own once de-duplicated; allen-p has 606, bass-e 1,245). Every stage runs on the embedded
model in a fresh temporary home with `--threads` threads, as `panza` would run it; the wall time of each stage
and the total go to bench/results/pipeline.json and .md. `--limit N` keeps only the newest N of the author's
emails after ingest (the others are set aside as deleted) so that a shared machine can prove the path works;
such a run is labelled LIMITED in its results and says nothing about the full mailbox's time.

Goal (issue 22): <= 30 minutes in total to a promoted adapter for ~1,000 emails on 2 cores, with the adapter's
held-out validation loss no worse than training on all pairs with the standard preset. `--compare` measures
that second part after the timed run (outside its total): in the same home, `train --preset standard` without a
budget, then both adapters' validation loss on the same held-out rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ME = {"allen-p": ["phillip.allen@enron.com", "k..allen@enron.com"], "arnold-j": ["john.arnold@enron.com"],
      "bass-e": ["eric.bass@enron.com"], "kean-s": ["steven.kean@enron.com"],
      "perlingiere-d": ["debra.perlingiere@enron.com", "darrell.perlingiere@enron.com"]}
GOAL_S = 30 * 60


def keep_newest(conn, n: int) -> int:
    """Set aside (deleted = 1) every message but the author's newest `n`; return how many were set aside."""
    keep = [r[0] for r in conn.execute("SELECT id FROM messages WHERE is_mine = 1 AND deleted = 0 "
                                       "ORDER BY date DESC, id DESC LIMIT ?", (n,))]
    marks = ",".join("?" * len(keep)) or "NULL"
    cur = conn.execute(f"UPDATE messages SET deleted = 1 WHERE deleted = 0 AND id NOT IN ({marks})", keep)
    return cur.rowcount


def run(data: Path, author: str, limit: int | None, threads: int, preset: str, minutes: float | None,
        compare: bool = False) -> dict:
    """Every stage in a fresh home; the figures of each."""
    files = sorted((data / "enron" / "sent").glob(f"enron.{author}.*.mbox"))
    if not files:
        raise FileNotFoundError(f"no sent mboxes for {author} under {data}/enron/sent")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PANZA_HOME"] = tmp
        os.environ["PANZA_THREADS"] = str(threads)
        from panza_local import config, playback, store
        from panza_local.ingest import ingest
        from panza_local.retrieval import index
        from panza_local.train import train

        settings = config.load()
        conn = store.connect()
        stages: dict[str, dict] = {}
        t_all = time.perf_counter()

        def stage(name: str, fn):
            t0, c0 = time.perf_counter(), time.process_time()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            res = fn()
            stages[name] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {stages[name]['wall_s']} s", file=sys.stderr, flush=True)
            return res

        ing = stage("ingest", lambda: ingest(conn, [str(f) for f in files], ME.get(author)))
        mine = conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1 AND deleted = 0").fetchone()[0]
        stages["ingest"].update(seen=ing.seen, stored=ing.stored, mine=mine, duplicates=ing.duplicates)
        set_aside = keep_newest(conn, limit) if limit else 0
        used = conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1 AND deleted = 0").fetchone()[0]
        pb = stage("playback", lambda: playback.run(conn, settings=settings))
        stages["playback"].update({k: getattr(pb, k) for k in ("generated", "reused", "failed", "recall_at_1",
                                                         "copy_ratio_median")})
        stages["playback"]["emails_per_min"] = round(pb.generated / max(stages["playback"]["wall_s"], 1e-9)
                                                     * 60, 1)
        ix = stage("index", lambda: index.sync(conn, settings=settings))
        stages["index"].update({k: getattr(ix, k) for k in ("embedded", "total")})
        def said(done, total=None, note=None):  # the train progress line, to stderr
            print(f"  [{time.strftime('%H:%M:%S')}] train {done}/{total} {note or ''}", file=sys.stderr, flush=True)

        tr = stage("train", lambda: train(conn, preset=preset, minutes=minutes, settings=settings, promote=True,
                                          on_progress=said))
        stages["train"].update({k: getattr(tr, k) for k in (
            "adapter_id", "n_train", "n_val", "steps", "planned_steps", "step_s", "eval_s", "stop_reason", "stop_why",
            "val_loss_before", "val_loss_after", "tokens_per_s", "peak_mem_mb", "promoted", "precision")})
        sel = tr.selection or {}
        stages["train"]["selection"] = {k: sel.get(k) for k in ("available", "chosen", "chosen_by", "dropped", "why")}
        total = round(time.perf_counter() - t_all, 2)
        reference = None
        if compare:  # untimed: what the budget and the selection cost in validation loss
            t0 = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] reference: train --preset standard on all pairs ...",
                  file=sys.stderr, flush=True)
            ref = train(conn, preset="standard", settings=settings, promote=False, on_progress=said)
            reference = {k: getattr(ref, k) for k in ("adapter_id", "n_train", "n_val", "steps", "stop_reason",
                                                      "val_loss_before", "val_loss_after", "step_s")}
            ref_sel = ref.selection or {}
            reference.update(wall_s=round(time.perf_counter() - t0, 1), chosen=ref_sel.get("chosen"),
                             available=ref_sel.get("available"))
        conn.close()
    return {"author": author, "files": [f.name for f in files], "limit": limit, "emails_used": used,
            "set_aside": set_aside, "threads": threads, "preset": preset, "minutes": minutes,
            "stages": stages, "total_s": total, "goal_s": GOAL_S, "reference": reference,
            "promoted": bool(stages["train"].get("promoted")), "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(r: dict, machine: str) -> str:
    """The results table."""
    label = (f"LIMITED RUN (--limit {r['limit']}: the newest {r['emails_used']} of {r['author']}'s emails): proves "
             "the path end to end; its times say nothing about the full mailbox's" if r["limit"] else
             f"full run: all {r['emails_used']} of {r['author']}'s emails")
    lines = [f"# Pipeline: ingest -> playback -> index -> train, {r['author']}, {r['threads']} threads, embedded model",
             "", f"**{label}.**", "",
             f"{machine}; load average {r['load_avg_1m']} on {r['cpus']} cores (a shared machine); {r['when']}.", "",
             "| stage | wall s | CPU s | what |", "|---|---:|---:|---|"]
    s = r["stages"]
    what = {
        "ingest": f"{s['ingest']['seen']} messages read, {s['ingest']['mine']} hers/his after de-duplication",
        "playback": f"{s['playback'].get('generated')} pairs ({s['playback'].get('failed')} failed), "
                    f"{s['playback']['emails_per_min']} emails/min, recall@1 {s['playback'].get('recall_at_1')}, "
                    f"copy {s['playback'].get('copy_ratio_median')}",
        "index": f"{s['index'].get('embedded')} embedded",
        "train": f"{s['train'].get('n_train')} train / {s['train'].get('n_val')} val, {s['train'].get('steps')} of "
                 f"{s['train'].get('planned_steps')} steps at {s['train'].get('step_s')} s, ended: "
                 f"{s['train'].get('stop_reason')}; val loss {_f(s['train'].get('val_loss_before'))} -> "
                 f"{_f(s['train'].get('val_loss_after'))}; promoted {s['train'].get('promoted')}",
    }
    for name in ("ingest", "playback", "index", "train"):
        lines.append(f"| {name} | {s[name]['wall_s']} | {s[name]['cpu_s']} | {what[name]} |")
    lines.append(f"| **total** | **{r['total_s']}** | | goal <= {r['goal_s']} s for ~1,000 emails |")
    note = f"preset {r['preset']}, --minutes {r['minutes']}."
    ref = r.get("reference")
    if ref:
        ours = s["train"].get("val_loss_after")
        verdict = "no worse" if ours is not None and ours <= ref["val_loss_after"] else "worse"
        note += (f" Reference (`--compare`, untimed, same home and held-out rows): `train --preset standard` without a "
                 f"budget on {ref['chosen']} of {ref['available']} train pairs, {ref['steps']} steps at {ref['step_s']} s "
                 f"({ref['wall_s']} s, ended: {ref['stop_reason']}): val loss {_f(ref['val_loss_before'])} -> "
                 f"{_f(ref['val_loss_after'])}. The pipeline's adapter: {_f(ours)}, {verdict} than the reference. "
                 f"Ingest, playback, index and the reference's training: "
                 f"{round(sum(s[k]['wall_s'] for k in ('ingest', 'playback', 'index')) + ref['wall_s'], 1)} s.")
    else:
        note += (" Not measured in this run: the comparison with training on all pairs with the standard preset "
                 "(`--compare`).")
    lines += ["", note]
    return "\n".join(lines) + "\n"


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--author", default="arnold-j", choices=sorted(ME))
    ap.add_argument("--limit", type=int, default=None, help="keep only the newest N of the author's emails")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="standard", choices=["quick", "standard", "thorough"])
    ap.add_argument("--minutes", type=float, default=None, help="training budget (panza train --minutes)")
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data)")
    ap.add_argument("--out", default=None, help="results folder (default: bench/results)")
    ap.add_argument("--compare", action="store_true",
                    help="then train --preset standard on all pairs (untimed) and compare validation losses")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench._common import enron_data, machine

    data = enron_data(args.data)
    if data is None:
        return 1
    r = run(data, args.author, args.limit, args.threads, args.preset, args.minutes, args.compare)
    out = Path(args.out) if args.out else root / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps({"machine": machine(), **r}, indent=2) + "\n")
    (out / "pipeline.md").write_text(markdown(r, machine()))
    print(markdown(r, machine()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
