"""Background re-tuning: one idempotent pass over the registered sources, promoting only a better adapter.

ingest what is new → playback for new messages → index → train (warm start from the current adapter when
the base model is unchanged) → score candidate and current on the same held-out pairs → promote only if
the candidate is at least as good → atomic switch. A file lock keeps two passes from running at once;
every pass is recorded in `runs` (stage 'retune'), shown by `panza retune log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import config, paths, store
from .errors import PanzaError

Say = Callable[[str], None]


class RetuneBusy(PanzaError):
    """Another re-tune pass holds the lock."""


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """Hold the re-tune lock (a flock on <home>/retune.lock), or raise RetuneBusy at once."""
    import fcntl

    path = paths.home() / "retune.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, paths.FILE_MODE)
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


def registered_sources(conn) -> list[str]:
    """URIs of the sources `panza sources add` registered for re-tuning."""
    return [r[0] for r in conn.execute("SELECT uri FROM sources WHERE registered = 1 ORDER BY id")]


def score(conn, adapter_gguf: str | None, limit: int = 24, settings=None) -> float | None:
    """Mean per-token NLL of the user's held-out (test split) emails under base + adapter; lower is better.

    Scored by llama.cpp on the served bits, with the same prompt builder as training and drafting.
    """
    from . import catalogue, engine, playback, prompts

    settings = settings or config.load()
    test = playback.pairs(conn, split="test")[:limit]
    if not test:
        return None
    model = catalogue.resolve(settings.model)
    total, count = 0.0, 0
    for p in test:
        msgs = prompts.build(p["instruction"], thread=p.get("thread"), to=p.get("to"), subject=p.get("subject"))
        nll, n = engine.target_nll(msgs, p["email"], model, adapter_gguf, threads=settings.threads)
        total, count = total + nll, count + n
    return total / max(count, 1)


def _should_train(conn, new_pairs: int, current: dict | None, settings, force: bool) -> tuple[bool, str]:
    if force:
        return True, "forced"
    ok_pairs = conn.execute("SELECT count(*) FROM pairs WHERE status = 'ok'").fetchone()[0]
    if ok_pairs == 0:
        return False, "no training pairs yet"
    if current is None:
        return True, "no adapter yet"
    if new_pairs < settings.retune_min_new:
        return False, f"{new_pairs} new pairs (< retune_min_new = {settings.retune_min_new})"
    last = conn.execute("SELECT max(finished_at) FROM runs WHERE stage = 'retune' AND summary LIKE "
                        "'%\"trained\": true%'").fetchone()[0]
    if last:
        import datetime as dt

        age_min = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(last)).total_seconds() / 60
        if age_min < settings.retune_interval_min:
            return False, f"last training {age_min:.0f} min ago (< retune_interval_min)"
    return True, f"{new_pairs} new pairs"


def run_once(*, force: bool = False, say: Say | None = None, on_progress=None, settings=None) -> dict:
    """One re-tune pass. Returns new_messages, new_pairs, trained, promoted, reason, seconds (+ details)."""
    from . import index, ingest, playback, train
    from .train import registry

    say = say or (lambda s: None)
    settings = settings or config.load()
    t_start = time.perf_counter()
    out = {"new_messages": 0, "new_pairs": 0, "trained": False, "promoted": False, "reason": "", "steps": {}}
    with lock():
        conn = store.connect()
        try:
            with store.run(conn, "retune") as summary:
                def step(name, fn):
                    t0 = time.perf_counter()
                    result = fn()
                    out["steps"][name] = round(time.perf_counter() - t0, 2)
                    return result

                sources = registered_sources(conn)
                if sources:
                    ing = step("ingest", lambda: ingest.ingest(conn, sources, me=settings.me, on_progress=on_progress))
                    out["new_messages"] = ing.get("stored", 0)
                say(f"ingest: {out['new_messages']} new messages from {len(sources)} source(s)")
                pb = step("playback", lambda: playback.run(conn, on_progress=on_progress))
                out["new_pairs"] = pb.get("generated", 0)
                say(f"playback: {out['new_pairs']} new pairs")
                ix = step("index", lambda: index.sync(conn, on_progress=on_progress))
                say(f"index: {ix.get('embedded', 0)} embedded, {ix.get('removed', 0)} removed")
                current = registry.current()
                do_train, why = _should_train(conn, out["new_pairs"], current, settings, force)
                out["reason"] = why
                if do_train:
                    say(f"train: {why}")
                    res = step("train", lambda: train.train(conn, on_progress=on_progress, **_warm_start(current)))
                    out["trained"], out["adapter_id"] = True, res["adapter_id"]
                    new_gguf = registry.get(res["adapter_id"])["gguf"]
                    cur_gguf = current["gguf"] if current else None
                    s_new = step("eval", lambda: score(conn, new_gguf, settings=settings))
                    s_cur = score(conn, cur_gguf, settings=settings) if current else None
                    s_base = None if current else score(conn, None, settings=settings)
                    out["score_new"], out["score_current"] = s_new, s_cur if current else s_base
                    baseline = out["score_current"]
                    if s_new is None or baseline is None or s_new <= baseline:
                        registry.use(res["adapter_id"])
                        out["promoted"] = True
                        out["reason"] += f"; promoted: held-out loss {_fmt(s_new)} <= {_fmt(baseline)}"
                    else:
                        out["reason"] += f"; kept current: held-out loss {_fmt(s_new)} > {_fmt(baseline)}"
                    say(out["reason"])
                out["seconds"] = round(time.perf_counter() - t_start, 2)
                summary.update(out)
        finally:
            conn.close()
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _warm_start(current: dict | None) -> dict:
    """Warm-start from the current adapter when it was trained on the same base model."""
    if not current:
        return {}
    import inspect

    from . import catalogue, train

    if "init_from" not in inspect.signature(train.train).parameters:
        return {}
    settings = config.load()
    try:
        same_base = current.get("base_model") == settings.model and current.get("base_sha256") in (
            None, "", catalogue.sha256_file(catalogue.resolve(settings.model)))
    except PanzaError:
        same_base = False
    return {"init_from": current["id"]} if same_base else {}


def history(limit: int = 20) -> list[dict]:
    """The last re-tune passes, newest first."""
    conn = store.connect()
    try:
        rows = conn.execute("SELECT id, started_at, finished_at, status, summary FROM runs WHERE stage = 'retune' "
                            "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    finally:
        conn.close()
    return [{**{k: r[k] for k in ("id", "started_at", "finished_at", "status")},
             **json.loads(r["summary"] or "{}")} for r in rows]


def watch(*, debounce_s: float = 30.0, poll_s: float = 60.0, say: Say | None = None,
          stop: Callable[[], bool] | None = None, max_passes: int | None = None) -> int:
    """Watch folder sources (watchdog) and poll the rest; run a pass after new data settles.

    A pass starts once no file event arrived for `debounce_s` and at least `retune_interval_min` minutes
    passed since the last pass (the training decision itself applies `retune_min_new`). Returns the
    number of passes run.
    """
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    say = say or print
    stop = stop or (lambda: False)
    state = {"dirty": True, "last_event": 0.0}

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if not event.is_directory:
                state["dirty"], state["last_event"] = True, time.monotonic()

    conn = store.connect()
    try:
        sources = registered_sources(conn)
    finally:
        conn.close()
    observer = Observer()
    watched = []
    for uri in sources:
        p = Path(uri)
        if p.exists():
            observer.schedule(Handler(), str(p if p.is_dir() else p.parent), recursive=p.is_dir())
            watched.append(uri)
    observer.start()
    say(f"watching {len(watched)} folder source(s); polling {len(sources) - len(watched)} other(s) "
        f"every {poll_s:.0f} s")
    passes, last_pass, last_poll = 0, 0.0, time.monotonic()
    interval = config.load().retune_interval_min * 60
    try:
        while not stop() and (max_passes is None or passes < max_passes):
            now = time.monotonic()
            if len(watched) < len(sources) and now - last_poll >= poll_s:
                state["dirty"], last_poll = True, now
            settled = now - state["last_event"] >= debounce_s
            if state["dirty"] and settled and (passes == 0 or now - last_pass >= interval):
                state["dirty"] = False
                try:
                    res = run_once(say=say)
                    say(f"pass done: {res['new_messages']} new messages, promoted={res['promoted']} ({res['reason']})")
                except RetuneBusy as exc:
                    say(str(exc))
                passes, last_pass = passes + 1, time.monotonic()
            time.sleep(0.2)
    finally:
        observer.stop()
        observer.join(timeout=5)
    return passes
