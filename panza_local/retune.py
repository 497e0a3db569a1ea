"""Background re-tuning: one idempotent pass over the registered sources, promoting only a better adapter.

ingest what is new → playback for new messages → index → train (warm start from the current adapter when
the base model is unchanged; from scratch every FULL_EVERY warm starts or when the new data is large next
to what the current adapter saw) → score candidate and current on the same held-out pairs → promote only
if the candidate is at least as good → atomic switch. A file lock keeps two passes from running at once.

Every stage commits as it goes, so a pass killed anywhere is finished by the next one: ingest and playback
skip what they stored, training resumes from its checkpoint (same data, same adapter id), and a candidate
trained but never judged is judged. The decision whether to train compares the pairs stored since the
last judged (or current) adapter with `retune_min_new`; gate decisions live in `retune_gate`, passes in
`runs` (stage 'retune'), shown by `panza retune log`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config, failpoint, paths, store
from .errors import NoDataError, PanzaError
from .results import RetuneResult

Say = Callable[[str], None]

FULL_EVERY = 4   # warm starts in a row before a full retrain from scratch (warm starts drift from a clean fit)
DRIFT = 1.0      # new pairs above this share of what the current adapter saw: retrain from scratch
GATE_MIN = 6      # fewest held-out pairs a promotion decision is made on (test split topped up from valid)
SCORE_LIMIT = 24  # held-out pairs scored per adapter (the newest; scoring is llama.cpp, a few s each)
EARLY_MIN = 8     # the gate may stop before SCORE_LIMIT pairs once this many show a clear difference ...
EARLY_Z = 3.0     # ... a mean paired difference this many standard errors from zero


class RetuneBusy(PanzaError):
    """Another re-tune pass holds the lock."""


def _lock_path() -> Path:
    return paths.home() / "retune.lock"


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """Hold the re-tune lock (a flock on <home>/retune.lock), or raise RetuneBusy at once."""
    import fcntl

    paths.ensure_dir(paths.home())
    fd = os.open(_lock_path(), os.O_RDWR | os.O_CREAT, paths.FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetuneBusy("another `panza retune` pass is running",
                             fix="wait for it to finish (see `panza retune log`)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock, also when the process is killed


def busy() -> bool:
    """True while some process holds the re-tune lock."""
    try:
        with lock():
            return False
    except RetuneBusy:
        return True


# --- scoring and the promotion gate -------------------------------------------------------------------

def test_pairs(conn, limit: int = SCORE_LIMIT) -> tuple[list[dict], str]:
    """The newest `limit` held-out (test split) pairs and a hash naming exactly which they are."""
    from . import playback

    test = playback.pairs(conn, split="test")[-limit:]
    if 0 < len(test) < GATE_MIN:
        # a young mailbox's test split is a pair or two: one email's loss decides nothing, so the newest
        # validation pairs join it (no adapter trained on them; they only chose its best checkpoint)
        test = playback.pairs(conn, split="valid")[-(GATE_MIN - len(test)):] + test
    return test, _hash(test)


def _hash(test: list[dict]) -> str:
    """A hash naming exactly which held-out pairs (and instructions) a score is on."""
    return hashlib.sha256("\n".join(p["content_hash"] + (p["instruction"] or "") for p in test).encode()
                          ).hexdigest()[:16]


def score(conn, adapter_gguf: str | None, limit: int = SCORE_LIMIT, settings=None, test=None,
          on_scored: Callable[[int], None] | None = None) -> float | None:
    """Mean per-token NLL of the user's held-out emails under base + adapter (None: base); lower is better.

    Scored by llama.cpp on the served bits, with the prompt builder training and drafting use. A pair this
    scorer already scored with the same prompt is not scored again (`retune_scores`): a gate killed midway
    goes on where it stopped. (A pass on new mail still scores both adapters on every pair: the test split is
    the newest emails, which the current adapter was never scored on.)
    """
    settings = settings or config.load()
    test = test if test is not None else test_pairs(conn, limit)[0]
    if not test:
        return None
    total, count = 0.0, 0
    for k, (nll, n) in enumerate(_pair_scores(conn, adapter_gguf, test, settings), start=1):
        total, count = total + nll, count + n
        if on_scored is not None:
            on_scored(k)
    return total / max(count, 1)


def _pair_scores(conn, adapter_gguf: str | None, test: list[dict], settings) -> Iterator[tuple[float, int]]:
    """(summed NLL, token count) of each test pair's email under base + adapter, in order (kept ones reused)."""
    from . import catalogue, engine, prompts
    from . import profile as profiles

    model = catalogue.resolve(settings.model)
    # what decides a score besides the prompt: the served bits (a kept score is only reused for the same ones)
    scorer = [model.name, model.stat().st_size, str(adapter_gguf or "base"),
              Path(adapter_gguf).stat().st_size if adapter_gguf else 0]
    base_profile = profiles.load_or_none()
    names = profiles.display_names(conn)
    for p in test:
        # the very prompt training and drafting build (per-recipient profile block included)
        prof = (profiles.prompt_profile(p.get("to"), base_profile, conn=conn, hint=p["instruction"])
                if base_profile else None)
        msgs = prompts.build(p["instruction"], thread=p.get("thread"), to=profiles.with_names(p.get("to"), names),
                             subject=p.get("subject"), profile=prof)
        key = hashlib.sha256(json.dumps([scorer, msgs, p["email"]], sort_keys=True).encode()).hexdigest()[:32]
        hit = conn.execute("SELECT nll, n FROM retune_scores WHERE key = ?", (key,)).fetchone()
        if hit:
            nll, n = hit
        else:
            nll, n = engine.target_nll(msgs, p["email"], model, adapter_gguf, threads=settings.threads)
            conn.execute("INSERT OR REPLACE INTO retune_scores (key, nll, n, scored_at) VALUES (?,?,?,?)",
                         (key, nll, n, store.now()))
        failpoint.hit("retune.score")
        yield nll, n


def decided(diffs: list[float]) -> bool:
    """Whether the paired differences so far (candidate's NLL minus current's, one per email) already show
    which adapter is better: at least EARLY_MIN emails and a mean EARLY_Z standard errors from zero. Emails
    that both adapters score the same (a difference of exactly 0) never decide it."""
    k = len(diffs)
    if k < EARLY_MIN:
        return False
    mean = sum(diffs) / k
    var = sum((d - mean) ** 2 for d in diffs) / (k - 1)
    return mean != 0 and mean * mean * k > EARLY_Z * EARLY_Z * var


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def gate(conn, candidate_id: str, settings=None, say: Say | None = None, on_progress=None) -> dict:
    """Score the candidate and the current adapter (or the base model) on the same held-out pairs; promote
    the candidate when it is at least as good. Records both scores in `retune_gate`; returns the decision.

    The two are scored email by email, side by side, and the gate stops before the last pair once the paired
    differences are clear (`decided`): a candidate much better or much worse is judged on EARLY_MIN emails, a
    close call on all of them. The scores and `n_test` are those of the pairs it scored."""
    from .train import registry

    say = say or (lambda s: None)
    settings = settings or config.load()
    current = registry.adapter_for(settings, conn).row
    cand = registry.get(candidate_id, conn)
    test, thash = test_pairs(conn)
    out = {"candidate": cand["id"], "compared_with": current["id"] if current else "base", "n_test": len(test),
           "test_hash": thash, "score_new": None, "score_current": None}
    if current and current["id"] == cand["id"]:
        out.update(promoted=False, reason=f"the candidate {cand['id']} is already the current adapter")
        return out
    what = current["id"] if current else "the base model"
    # the two adapters scored email by email, side by side, until the paired differences are clear
    new_it = _pair_scores(conn, cand["gguf"], test, settings)
    cur_it = _pair_scores(conn, current["gguf"] if current else None, test, settings)
    sums, count, diffs = [0.0, 0.0], 0, []
    for (a, n), (b, _) in zip(new_it, cur_it):
        sums, count = [sums[0] + a, sums[1] + b], count + n
        diffs.append(a - b)
        if on_progress is not None:
            on_progress(2 * len(diffs), 2 * len(test), f"scoring the candidate and {what}")
        if len(diffs) < len(test) and decided(diffs):
            break
    n_all, test = len(test), test[:len(diffs)]
    thash = _hash(test)
    early = f" (clear after {len(test)} of {n_all})" if len(test) < n_all else ""
    out.update(n_test=len(test), test_hash=thash)
    if test:
        out["score_new"], out["score_current"] = sums[0] / max(count, 1), sums[1] / max(count, 1)
    s_new, s_cur = out["score_new"], out["score_current"]
    if not test:
        out["promoted"] = current is None
        out["reason"] = ("no held-out pairs yet; promoted: no adapter in use" if current is None else
                         f"no held-out pairs to compare on: kept {what}")
    elif s_new <= s_cur:
        out["promoted"], out["reason"] = True, (f"promoted: held-out loss {s_new:.4f} <= {s_cur:.4f} ({what}) "
                                                f"on {len(test)} test pairs{early}")
    else:
        out["promoted"], out["reason"] = False, (f"kept {what}: held-out loss {s_new:.4f} > {s_cur:.4f} "
                                                 f"on {len(test)} test pairs{early}")
    if out["promoted"]:
        registry.use(cand["id"], conn)  # atomic symlink switch: readers see the old or the new adapter
    conn.execute("INSERT OR REPLACE INTO retune_gate (adapter_id, current_id, score_new, score_current, n_test, "
                 "test_hash, promoted, reason, decided_at) VALUES (?,?,?,?,?,?,?,?,?)",
                 (cand["id"], current["id"] if current else None, s_new, s_cur, len(test), thash,
                  int(out["promoted"]), out["reason"], store.now()))
    say(out["reason"])
    return out


# --- whether and how to train -------------------------------------------------------------------------

def _reference(conn, current: dict | None) -> str | None:
    """created_at of the newest adapter already judged (or served): pairs after it are new to training."""
    row = conn.execute("SELECT max(a.created_at) FROM adapters a JOIN retune_gate g ON g.adapter_id = a.id"
                       ).fetchone()[0]
    if current and (row is None or current["created_at"] > row):
        return current["created_at"]
    return row


def plan(conn, settings=None, force: bool = False) -> dict:
    """Whether this pass trains, from what (`init_from`: warm start) and why.

    `new_for_training` counts pairs stored since the newest judged (or served) adapter, so the pairs of a
    pass killed in training or scoring still count: the next pass trains on the same data, which gives the
    same adapter id, so training resumes from its checkpoint (or reuses the finished adapter) and is judged.
    """
    from . import playback
    from .train import MIN_PAIRS, registry

    settings = settings or config.load()
    current = registry.adapter_for(settings, conn).row
    n_ok = len(playback.pairs(conn))
    ref = _reference(conn, current)
    new = n_ok if ref is None else playback.new_since(conn, ref)
    out = {"train": False, "init_from": None, "new_for_training": new, "mode": None}
    if n_ok < MIN_PAIRS:
        out["why"] = f"{n_ok} training pairs (< {MIN_PAIRS} needed)"
        return out
    if force:
        why = "forced"
    elif ref is None:
        why = "no adapter yet"
    elif new >= settings.retune_min_new:
        why = f"{new} new pairs"
    else:
        out["why"] = f"{new} new pairs since the last training (< retune_min_new = {settings.retune_min_new})"
        return out
    out["init_from"], mode_why = _start_from(conn, current, new, settings)
    out.update(train=True, why=why, mode="warm" if out["init_from"] else "full", mode_why=mode_why)
    return out


def _start_from(conn, current: dict | None, new: int, settings) -> tuple[str | None, str]:
    """(adapter id to warm-start from or None, why)."""
    from . import catalogue
    from .train import base_sha256, registry

    if current is None:
        return None, "full: no current adapter"
    try:
        same_base = (current["base_model"] == settings.model
                     and current["base_sha256"] == base_sha256(catalogue.resolve(settings.model)))
    except (PanzaError, OSError):
        same_base = False
    if not same_base:
        return None, "full: the base model changed"
    depth, row = 0, current
    while row and (row.get("config") or {}).get("init_from") and depth < FULL_EVERY:
        depth += 1
        try:
            row = registry.get(row["config"]["init_from"], conn)
        except PanzaError:
            break
    if depth >= FULL_EVERY:
        return None, f"full: scheduled after {FULL_EVERY} warm starts in a row"
    seen = sum((current.get("config") or {}).get(k) or 0 for k in ("n_train", "n_val"))
    if new > DRIFT * max(seen, 1):
        return None, f"full: large drift ({new} new pairs > {DRIFT:.0%} of the {seen} the current adapter saw)"
    return current["id"], f"warm start from {current['id']}"


# --- the pass -----------------------------------------------------------------------------------------

STAGES = ("ingest", "playback", "index", "train", "evaluate", "promote")
"""The stages of a pass, in order, as progress events name them."""

OnStage = Callable[[dict], None]


@dataclass
class _Pass:
    """What the stages of one pass share: the store, the settings, and the pass's own reporting."""

    conn: sqlite3.Connection
    settings: config.Settings
    force: bool
    say: Say
    step: Callable[[str, Callable[[], Any]], Any]
    """step(name, fn): run one stage, timing it and recording the pass so far"""
    prog: Callable[[str], Callable[..., None]]
    """prog(stage): the on_progress callback that stage gets"""
    emit: Callable[..., None]
    """emit(stage, state, done, total, note): one on_stage event"""


def run_once(*, force: bool = False, say: Say | None = None, on_progress=None, settings=None,
             on_stage: OnStage | None = None) -> RetuneResult:
    """One re-tune pass: new_messages, new_pairs, trained, promoted, reason, seconds (+ details).

    `on_progress(done, total, note)` sees every stage's counts in one stream; `on_stage(event)` sees them per
    stage: {stage (one of STAGES), state (running, done, skipped), done, total, note}, each stage ending in a
    done or skipped event whose note carries its counts, so a view can show the whole path (the CLI's and the
    TUI's)."""
    say = say or (lambda s: None)
    settings = settings or config.load()
    t_start = time.perf_counter()
    out = RetuneResult()
    with lock():
        conn = store.connect()
        try:
            with store.run(conn, "retune") as summary:
                run_id = store.last_run_id(conn, "retune")

                def emit(stage: str, state: str, done: int = 0, total: int | None = None, note: str = "") -> None:
                    if on_stage is not None:
                        on_stage({"stage": stage, "state": state, "done": done, "total": total, "note": note})

                def prog(stage: str):
                    """The on_progress a stage gets: the caller's stream, and a running event of this stage."""
                    def cb(done: int, total: int | None = None, note: str | None = None) -> None:
                        if on_progress is not None:
                            on_progress(done, total, note)
                        emit(stage, "running", done, total, note or "")
                    return cb

                def step(name, fn):
                    t0 = time.perf_counter()
                    emit(name, "running")
                    try:
                        return fn()
                    finally:
                        out.steps[name] = round(time.perf_counter() - t0, 2)
                        summary.update(out.to_dict())  # a pass that fails later still records what it had done
                        # ... and one killed later too: its row is written now, not only at the end
                        store.save_run_summary(conn, run_id, out.to_dict())

                _pass(_Pass(conn, settings, force, say, step, prog, emit), out)
                out.seconds = round(time.perf_counter() - t_start, 2)
                summary.update(out.to_dict())
        finally:
            conn.close()
    return out


def _pass(p: _Pass, out: RetuneResult) -> None:
    from . import ingest, playback, train
    from .retrieval import index
    from .train import registry

    conn, settings, say, step, prog, emit = p.conn, p.settings, p.say, p.step, p.prog, p.emit

    def skip_rest(after: str, why: str) -> None:
        for name in STAGES[STAGES.index(after) + 1:]:
            emit(name, "skipped", note=why)

    cur = registry.adapter_for(settings, conn).row
    out.adapter_before = out.adapter_after = cur["id"] if cur else None
    sources = ingest.registered_sources(conn)
    if sources:
        ing = step("ingest", lambda: ingest.ingest(conn, sources, me=settings.me or None, on_progress=prog("ingest")))
        out.new_messages, out.deleted_messages = ing.stored, ing.deleted
        out.ingest = {k: getattr(ing, k) for k in ("seen", "stored", "duplicates", "skipped", "errors_total",
                                                   "unchanged_files", "files")}
        emit("ingest", "done", ing.seen, ing.seen, f"{out.new_messages} new of {ing.seen} seen")
    else:
        emit("ingest", "skipped", note="no registered sources (panza sources add PATH)")
    say(f"ingest: {out.new_messages} new messages from {len(sources)} registered source(s)")
    try:
        pb = step("playback", lambda: playback.run(conn, on_progress=prog("playback"), settings=settings))
    except NoDataError as exc:
        out.reason = f"nothing to learn from: {exc.message}"
        say(out.reason)
        emit("playback", "skipped", note="nothing to learn from")
        skip_rest("playback", "nothing to learn from")
        return
    out.new_pairs, out.failed_pairs, out.reused_pairs = pb.generated, pb.failed, pb.reused
    n_pb = out.new_pairs + out.failed_pairs + out.reused_pairs
    emit("playback", "done", n_pb, n_pb, f"{out.new_pairs} new pairs, {out.reused_pairs} kept, "
                                         f"{out.failed_pairs} failed")
    say(f"playback: {out.new_pairs} new pairs")
    changed_through = _last_store_change(conn)
    if out.new_pairs or not _index_synced_after(conn, changed_through, settings):
        ix = step("index", lambda: index.sync(conn, on_progress=prog("index"), settings=settings))
        _set_state(conn, "index_synced", json.dumps({"ingest_run": changed_through, "model": settings.embedding_model,
                                                     "chroma_url": settings.chroma_url}))
        out.indexed = ix.embedded
        say(f"index: {ix.embedded} embedded, {ix.removed} removed")
        emit("index", "done", ix.total, ix.total, f"{ix.embedded} embedded, {ix.removed} removed, {ix.total} in all")
    else:  # opening Chroma alone costs seconds: skip it when no ingest changed the store since the last sync
        out.indexed = 0
        say("index: up to date")
        emit("index", "skipped", note="up to date")
    decision = plan(conn, settings, p.force)
    out.new_for_training, out.reason = decision["new_for_training"], decision["why"]
    if not decision["train"]:
        say(f"train: skipped ({decision['why']})")
        emit("train", "skipped", note=decision["why"])
        skip_rest("train", "nothing trained")
        return
    out.mode, out.mode_why = decision["mode"], decision["mode_why"]
    say(f"train: {decision['why']}; {decision['mode_why']}")
    res = step("train", lambda: train.train(conn, backend=settings.train_backend, on_progress=prog("train"),
                                            settings=settings, init_from=decision["init_from"],
                                            minutes=settings.retune_minutes or None))
    out.trained, out.adapter_id = True, res.adapter_id
    out.train = {k: getattr(res, k) for k in ("val_loss_before", "val_loss_after", "steps", "resumed_from", "reused",
                                              "stop_reason")}
    steps_done = res.steps or 0
    emit("train", "done", steps_done, res.planned_steps or steps_done,
         f"{res.adapter_id}: validation loss {res.val_loss_before or 0:.3f} -> {res.val_loss_after or 0:.3f}"
         if not res.reused else f"{res.adapter_id} already trained on this data")
    g = step("eval", lambda: gate(conn, res.adapter_id, settings, say, on_progress=prog("evaluate")))
    emit("evaluate", "done", g["n_test"], g["n_test"], f"held-out loss new {_num(g['score_new'])} vs "
                                                       f"{g['compared_with']} {_num(g['score_current'])}")
    emit("promote", "done", int(g["promoted"]), 1, ("promoted " if g["promoted"] else "kept the current: ")
         + (res.adapter_id if g["promoted"] else g["reason"]))
    out.promoted, out.score_new, out.score_current = g["promoted"], g["score_new"], g["score_current"]
    out.compared_with, out.n_test = g["compared_with"], g["n_test"]
    out.reason = f"{decision['why']}; {g['reason']}"
    cur = registry.adapter_for(settings, conn).row
    out.adapter_after = cur["id"] if cur else None


def _last_store_change(conn) -> int:
    """Id of the newest ingest run that changed messages (or was killed, so may have): 0 when none."""
    return store.last_run_that_counted(conn, "ingest", ("stored", "deleted", "reassigned", "documents"))


def _index_synced_after(conn, ingest_run: int, settings) -> bool:
    row = conn.execute("SELECT value FROM retune_state WHERE key = 'index_synced'").fetchone()
    if row is None:
        return False
    st = json.loads(row[0])
    return (st.get("ingest_run", -1) >= ingest_run and st.get("model") == settings.embedding_model
            and st.get("chroma_url") == settings.chroma_url)


def _set_state(conn, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO retune_state (key, value) VALUES (?, ?)", (key, value))


def history(limit: int = 20) -> list[dict]:
    """The last re-tune passes, newest first; a pass whose process died shows status 'killed'."""
    conn = store.connect()
    try:
        rows = store.runs_of(conn, "retune", limit)
    finally:
        conn.close()
    running_now = busy() if any(r["status"] == "running" for r in rows) else False
    out = []
    for i, r in enumerate(rows):
        d = {**{k: r[k] for k in ("id", "started_at", "finished_at", "status")}, **json.loads(r["summary"] or "{}")}
        if d["status"] == "running" and not (i == 0 and running_now):
            d["status"] = "killed"
        out.append(d)
    return out


# --- watch mode ---------------------------------------------------------------------------------------

def watch(*, debounce_s: float = 30.0, poll_s: float = 300.0, min_interval_s: float | None = None,
          say: Say | None = None, stop: Callable[[], bool] | None = None, max_passes: int | None = None,
          pass_fn: Callable[[], RetuneResult] | None = None) -> int:
    """Watch folder and file sources (watchdog) and IMAP ones (IDLE, else polling); run a pass after new
    data settles.

    A pass starts when something changed (a file event, an IDLE notice, or a poll is due), nothing new came
    for `debounce_s`, and `min_interval_s` (default: settings.retune_interval_min) passed since the last pass;
    each pass applies `retune_min_new` to decide whether to train. The first pass runs at once (catch-up).
    Sources registered while watching are picked up after the next pass. Returns the passes run.
    """
    import imaplib
    import threading

    from watchdog.observers import Observer

    from . import imap
    from .ingest import registered_sources

    say = say or print
    stop = stop or (lambda: False)
    pass_fn = pass_fn or (lambda: run_once(say=say))
    interval = config.load().retune_interval_min * 60 if min_interval_s is None else min_interval_s
    state = {"dirty": True, "last_event": 0.0, "events": 0}
    quit_ = threading.Event()
    observer = Observer()
    observer.start()
    watched: dict[str, object] = {}
    imap_threads: dict[str, threading.Thread] = {}
    polled: list[str] = []

    def changed() -> None:
        state["dirty"], state["last_event"] = True, time.monotonic()
        state["events"] += 1

    def idle_loop(uri: str) -> None:
        while not quit_.is_set():
            try:
                got = imap.idle_wait(uri, poll_s)
            except (PanzaError, OSError, imaplib.IMAP4.error) as exc:  # server away: poll at the interval
                say(f"IMAP watch: {type(exc).__name__}: {exc}; retrying in {poll_s:.0f} s")
                got = None
            if got is None:  # no IDLE (or no connection): a timed poll instead
                if quit_.wait(poll_s):
                    return
                changed()
            elif got:
                changed()

    def rescan() -> None:
        conn = store.connect()
        try:
            sources = registered_sources(conn)  # the sources table is ingest's
        finally:
            conn.close()
        polled.clear()
        for uri in sources:
            p = Path(uri)
            if imap.is_uri(uri):
                if uri not in imap_threads:
                    imap_threads[uri] = threading.Thread(target=idle_loop, args=(uri,), daemon=True,
                                                         name="panza-imap-idle")
                    imap_threads[uri].start()
            elif not p.exists():
                polled.append(uri)  # a folder or file that is not there yet
            elif uri not in watched:
                target = p if p.is_dir() else p.parent
                watched[uri] = observer.schedule(_handler(changed, None if p.is_dir() else p), str(target),
                                                 recursive=p.is_dir())

    rescan()
    say(f"watching {len(watched)} folder/file source(s) and {len(imap_threads)} IMAP mailbox(es); "
        f"polling {len(polled)} other(s) every {poll_s:.0f} s")
    passes, last_pass, last_poll = 0, float("-inf"), time.monotonic()
    try:
        while not stop() and (max_passes is None or passes < max_passes):
            now = time.monotonic()
            if polled and now - last_poll >= poll_s:
                state["dirty"], last_poll = True, now
            settled = now - state["last_event"] >= debounce_s
            if state["dirty"] and settled and now - last_pass >= interval:
                state["dirty"], state["events"] = False, 0
                try:
                    res = pass_fn()
                    say(f"pass done: {res.new_messages} new messages, promoted={res.promoted} ({res.reason})")
                except RetuneBusy as exc:
                    say(str(exc))
                except PanzaError as exc:  # a bad pass is reported; watching goes on
                    say(f"pass failed: {exc}")
                passes, last_pass = passes + 1, time.monotonic()
                rescan()
            time.sleep(0.2)
    finally:
        quit_.set()
        observer.stop()
        observer.join(timeout=5)
    return passes


def _handler(changed: Callable[[], None], only: Path | None):
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.is_directory or event.event_type in ("opened", "closed_no_write"):
                return  # reads (ours included) are not new data
            if only is not None and Path(event.src_path) != only:
                return  # a file source: other files in its folder do not matter
            changed()

    return Handler()
