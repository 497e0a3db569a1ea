"""Re-tune decisions, watch mode and the pass log: fast tests on a real store (no training here).

The end-to-end passes (real ingest, playback, index, training, scoring, kill -9, serving) are in
test_retune_e2e.py, marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import loras
import pytest
import usermail
from test_ingest_imap import dovecot, keyring_memory  # noqa: F401  (the IMAP suite's real Dovecot fixture)

from panza_local import retune, store
from panza_local.results import RetuneResult


def _add_pairs(conn, n: int, start: int = 0, created: str = "2026-01-01T00:00:00+00:00") -> None:
    """n emails of the user's with ok pairs (decision tests only: the pairs' text is never trained on)."""
    for i in range(start, start + n):
        mid = conn.execute("INSERT INTO messages (content_hash, date, body, is_mine, ingested_at) "
                           "VALUES (?, ?, ?, 1, ?)", (f"h{i}", f"2001-01-{1 + i % 28:02d}T00:00:{i % 60:02d}",
                                                      f"email {i}", created)).lastrowid
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (?, ?, 'g', 'ok', ?, ?)", (mid, f"h{i}", f"write email {i}", created))


def _adapter(conn, aid: str, created: str, *, init_from=None, n_train=20, base=None, current=False) -> None:
    from panza_local import catalogue, config, paths
    from panza_local.train import base_sha256, registry

    model = config.load().model
    sha = base or base_sha256(catalogue.resolve(model))
    folder = paths.ensure_dir(registry.adapter_dir(aid))
    (folder / "adapter.gguf").write_bytes(b"GGUF")
    conn.execute("INSERT INTO adapters (id, base_model, base_sha256, data_hash, config, path, status, created_at) "
                 "VALUES (?, ?, ?, 'd', ?, ?, 'ready', ?)",
                 (aid, model, sha, json.dumps({"init_from": init_from, "n_train": n_train, "n_val": 2}),
                  str(folder), created))
    if current:
        registry.use(aid, conn)


def _judge(conn, aid: str, promoted: bool = True) -> None:
    conn.execute("INSERT INTO retune_gate (adapter_id, n_test, promoted, reason, decided_at) VALUES (?, 2, ?, 'x', ?)",
                 (aid, int(promoted), store.now()))


def test_plan_trains_only_on_enough_new_pairs_and_picks_warm_or_full(home, monkeypatch):
    monkeypatch.setenv("PANZA_RETUNE_MIN_NEW", "3")
    conn = store.connect()
    _add_pairs(conn, 5)
    d = retune.plan(conn)
    assert not d["train"] and "5 training pairs (< 8" in d["why"]
    _add_pairs(conn, 20, start=5)
    d = retune.plan(conn)
    assert d["train"] and d["why"] == "no adapter yet" and d["init_from"] is None and d["new_for_training"] == 25
    _adapter(conn, "ad-one", "2026-01-02T00:00:00+00:00", current=True)
    _judge(conn, "ad-one")
    d = retune.plan(conn)
    assert not d["train"] and d["new_for_training"] == 0 and "retune_min_new = 3" in d["why"]
    _add_pairs(conn, 3, start=25, created="2026-01-03T00:00:00+00:00")
    d = retune.plan(conn)
    assert d["train"] and d["why"] == "3 new pairs" and d["init_from"] == "ad-one" and d["mode"] == "warm"
    # a rejected candidate is judged too: its pairs are not new any more
    _adapter(conn, "ad-two", "2026-01-04T00:00:00+00:00", init_from="ad-one")
    _judge(conn, "ad-two", promoted=False)
    assert not retune.plan(conn)["train"]
    # large drift (more new pairs than half of what the current adapter saw): full retrain
    _add_pairs(conn, 23, start=28, created="2026-01-05T00:00:00+00:00")
    d = retune.plan(conn)
    assert d["train"] and d["init_from"] is None and "large drift (23 new pairs > 100% of the 22" in d["mode_why"]


def test_full_retrain_after_warm_start_chain_and_on_base_change(home, monkeypatch):
    monkeypatch.setenv("PANZA_RETUNE_MIN_NEW", "1")
    conn = store.connect()
    _add_pairs(conn, 10)
    prev = None
    for i in range(retune.FULL_EVERY + 1):  # ad-0 (full) then FULL_EVERY warm starts, each from the previous
        _adapter(conn, f"ad-{i}", f"2026-01-0{2 + i}T00:00:00+00:00", init_from=prev, n_train=100, current=True)
        _judge(conn, f"ad-{i}")
        prev = f"ad-{i}"
    _add_pairs(conn, 2, start=10, created="2026-02-01T00:00:00+00:00")
    d = retune.plan(conn)
    assert d["train"] and d["init_from"] is None and f"after {retune.FULL_EVERY} warm starts" in d["mode_why"]
    _adapter(conn, "ad-other-base", "2026-02-02T00:00:00+00:00", base="0" * 64, n_train=100, current=True)
    _judge(conn, "ad-other-base")
    _add_pairs(conn, 2, start=12, created="2026-02-03T00:00:00+00:00")
    d = retune.plan(conn)
    assert d["train"] and d["init_from"] is None and d["mode_why"] == "full: the base model changed"


def test_watch_debounces_waits_the_interval_and_ignores_reads(home, tmp_path):
    """Real watchdog on a real folder source; the pass itself is a recorder (watch's own extension point)."""
    mail = tmp_path / "mail"
    for sub in ("cur", "new", "tmp"):
        (mail / sub).mkdir(parents=True)
    conn = store.connect()
    conn.execute("INSERT INTO sources (uri, kind, registered, added_at) VALUES (?, 'maildir', 1, ?)",
                 (str(mail), store.now()))
    conn.close()
    passes: list[float] = []
    stop = threading.Event()

    def record():
        passes.append(time.monotonic())
        for f in (mail / "cur").iterdir():
            f.read_bytes()  # what ingest does: reading must not count as new mail
        return RetuneResult(reason="recorded")

    said: list[str] = []
    t = threading.Thread(target=lambda: retune.watch(debounce_s=1.0, poll_s=3600, min_interval_s=3.0,
                                                      say=said.append, stop=stop.is_set, pass_fn=record))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while not passes and time.monotonic() < deadline:  # catch-up pass at start
            time.sleep(0.05)
        assert len(passes) == 1
        # a burst of writes, 0.3 s apart: one pass, >= 1 s after the last write and >= 3 s after the first pass
        for i in range(4):
            (mail / "cur" / f"m{i}:2,S").write_text(f"From: a@b\n\nhello {i}\n")
            time.sleep(0.3)
        last_write = time.monotonic()
        deadline = time.monotonic() + 15
        while len(passes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(passes) == 2
        assert passes[1] - last_write >= 0.95 and passes[1] - passes[0] >= 3.0
        time.sleep(4.5)  # reads by the pass and the quiet folder: no further pass
        assert len(passes) == 2, said
    finally:
        stop.set()
        t.join(10)
    assert said[0].startswith("watching 1 folder/file source(s) and 0 IMAP mailbox(es); polling 0")


def test_a_pass_without_own_mail_is_recorded_and_log_shows_killed_passes(home, tmp_path, capsys, monkeypatch):
    """Real ingest of received mail only (nothing the user wrote): the pass stops honestly before playback."""
    from panza_local import cli

    monkeypatch.setenv("PANZA_ME", "nobody@example.org")  # the sample person's mail, as someone else's
    mail = usermail.maildir(tmp_path / "mail", 5)
    assert cli.main(["sources", "add", str(mail)]) == 0
    out = retune.run_once()
    ing = out.ingest
    assert ing["seen"] == 5 and out.new_messages == ing["stored"] >= 3 and not out.trained
    assert out.new_pairs == 0
    assert out.reason.startswith("nothing to learn from") and set(out.steps) == {"ingest", "playback"}
    conn = store.connect()  # a pass killed mid-way leaves a 'running' row and no lock holder
    conn.execute("INSERT INTO runs (stage, started_at, summary) VALUES ('retune', ?, ?)",
                 (store.now(), json.dumps({"new_messages": 3, "steps": {"ingest": 0.5}})))
    capsys.readouterr()
    assert cli.main(["retune", "log", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["killed", "done"] and rows[1]["new_messages"] == ing["stored"]
    assert cli.main(["retune", "log"]) == 0
    text = capsys.readouterr().out
    assert "killed" in text and "steps: ingest" in text and "nothing to learn from" in text
    again = retune.run_once()
    assert again.new_messages == 0 and again.ingest["unchanged_files"] == 5


def test_cli_refuses_a_second_pass_while_one_runs(home):
    """Two real processes: the second `panza retune` exits 1 with the lock message."""
    env = {**os.environ, "PANZA_HOME": str(home)}
    code = ("import time\nfrom panza_local import retune\n"
            "with retune.lock():\n    print('held', flush=True)\n    time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert retune.busy()
        r = subprocess.run([sys.executable, "-m", "panza_local", "retune", "--json"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 1 and "another `panza retune` pass is running" in (r.stdout + r.stderr)
    finally:
        holder.kill()
        holder.wait()
    assert not retune.busy()
    assert Path(home / "retune.lock").exists()


@pytest.mark.skipif(not shutil.which("dovecot") or not shutil.which("openssl"),
                    reason="needs Dovecot and openssl: apt-get install dovecot-imapd openssl")
def test_watch_wakes_on_imap_idle_and_the_pass_fetches_the_new_message(dovecot, keyring_memory, home,  # noqa: F811
                                                                        monkeypatch):
    """A real Dovecot: with polling off (1 h), only IDLE can start the second pass, which is a real pass."""
    from test_ingest_imap import _message

    from panza_local import imap

    monkeypatch.setenv("PANZA_ME", "alice@example.com")
    admin = dovecot["admin"]()
    admin.append("INBOX", None, None, _message(0, frm="carol@example.com"))
    keyring_memory.set_password(imap.KEYRING_SERVICE, "alice@127.0.0.1", "s3cret")
    uri = f"imaps://alice@127.0.0.1:{dovecot['port']}/INBOX?cafile={dovecot['cafile']}"
    assert imap.idle_wait(uri, 0.5) is False  # IDLE offered, nothing new within the timeout
    conn = store.connect()
    conn.execute("INSERT INTO sources (uri, kind, registered, added_at) VALUES (?, 'imap', 1, ?)", (uri, store.now()))
    conn.close()
    idling = threading.Event()  # set while the server has IDLE in place, cleared when the wait returns
    real_idle_wait = imap.idle_wait

    def idle_wait(uri, timeout, ready=None):
        try:
            return real_idle_wait(uri, timeout, ready=idling.set)
        finally:
            idling.clear()

    monkeypatch.setattr(imap, "idle_wait", idle_wait)
    said: list[str] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: retune.watch(debounce_s=0.5, poll_s=3600, min_interval_s=0,
                                                      say=said.append, stop=stop.is_set, max_passes=2))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not any(s.startswith("pass done") for s in said) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "pass done: 1 new messages" in " ".join(said), said
        assert idling.wait(60), said  # the IDLE command is in place: the next message wakes it
        t0 = time.monotonic()
        admin.append("INBOX", None, None, _message(1, frm="dave@example.com"))
        t.join(60)
        assert not t.is_alive(), said
        assert time.monotonic() - t0 < 30
    finally:
        stop.set()
        t.join(10)
        admin.logout()
    done = [s for s in said if s.startswith("pass done")]
    assert said[0].startswith("watching 0 folder/file source(s) and 1 IMAP mailbox(es)")
    assert len(done) == 2 and done[1].startswith("pass done: 1 new messages"), said


def test_a_held_out_email_is_scored_once_per_scorer_and_prompt(home, monkeypatch):
    """The gate re-scores the current adapter only on test pairs it has not scored with the same prompt."""
    from panza_local import engine

    conn = store.connect()
    _add_pairs(conn, 40)
    test, _ = retune.test_pairs(conn)
    assert len(test) >= 3
    calls: list[str] = []
    real = engine.target_nll

    def spy(messages, target, *a, **kw):
        calls.append(target)
        return real(messages, target, *a, **kw)

    monkeypatch.setattr(engine, "target_nll", spy)
    first = retune.score(conn, None, test=test[:3])
    assert len(calls) == 3 and first > 0
    assert retune.score(conn, None, test=test[:3]) == first and len(calls) == 3  # all three kept
    changed = [dict(test[0], instruction=test[0]["instruction"] + " Keep it short.")] + test[1:3]
    assert retune.score(conn, None, test=changed) != first
    assert calls[3:] == [test[0]["email"]]  # only the pair whose prompt changed was scored again
    n_rows = conn.execute("SELECT count(*) FROM retune_scores").fetchone()[0]
    assert n_rows == 4 and not conn.execute("SELECT 1 FROM retune_scores WHERE key LIKE '%email%'").fetchone()


@pytest.mark.parametrize("std,clear", [(0.3, True), (0.0, False)], ids=["much-worse", "the-same"])
def test_the_gate_stops_once_the_paired_difference_is_clear(home, monkeypatch, embedded_model, std, clear):
    """A candidate far worse than the base model is judged on EARLY_MIN emails; one that scores the same as the
    base model (a LoRA of zeros) on every email is scored on all of them, then promoted ("at least as good")."""
    from panza_local import engine

    monkeypatch.setenv("PANZA_THREADS", "1")
    conn = store.connect()
    _add_pairs(conn, 140)
    test, _ = retune.test_pairs(conn)
    assert len(test) > retune.EARLY_MIN
    _adapter(conn, "cand", "2026-02-01T00:00:00+00:00")
    from panza_local.train import registry

    loras.random_lora(embedded_model, Path(registry.get("cand", conn)["gguf"]), std=std)
    calls: list[str | None] = []
    real = engine.target_nll
    monkeypatch.setattr(engine, "target_nll", lambda m, t, model, lora, **kw: calls.append(lora) or real(m, t, model, lora, **kw))
    seen: list[tuple[int, int]] = []
    g = retune.gate(conn, "cand", on_progress=lambda done, total, note: seen.append((done, total)))
    print(json.dumps(g))
    n = retune.EARLY_MIN if clear else len(test)
    assert g["n_test"] == n and len(calls) == 2 * n and calls[:2] == [str(registry.get("cand", conn)["gguf"]), None]
    assert seen[-1] == (2 * n, 2 * len(test))
    assert g["promoted"] is not clear and (g["score_new"] > g["score_current"]) is clear
    assert g["test_hash"] == retune._hash(test[:n]) and (f"(clear after {n} of {len(test)})" in g["reason"]) is clear
    # the recorded scores are those of the pairs the gate scored, as `score` gives them
    assert retune.score(conn, None, test=test[:n]) == pytest.approx(g["score_current"], abs=1e-9)
    row = conn.execute("SELECT n_test, promoted FROM retune_gate WHERE adapter_id = 'cand'").fetchone()
    assert tuple(row) == (n, int(not clear))
