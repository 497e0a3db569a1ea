"""Re-tune end to end on a copy of a shared Maildir: real ingest, playback, index, training, llama.cpp scoring.

One first pass (`panza sources add` + `panza retune`, as a user would run them) is made once per module and
snapshotted; every test starts from that snapshot at the same paths, then adds new mail and runs passes:
- new mail in → only it is processed → a new (warm-started) adapter promoted → a third pass does nothing fast;
- an adapter trained on shuffled pairs loses the gate on the same held-out pairs, both scores recorded;
- kill -9 in ingest, playback, index, train and scoring, each followed by the same command: the pass
  completes, nothing is duplicated, and the served adapter stays loadable by llama.cpp throughout;
- a server keeps answering during a pass and drafts with the new adapter once it is promoted.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# one real pass on a loaded 2-core machine takes 6-10 min (playback and training dominate)
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(2400)]

SENT = "enron/formats/maildir/.Sent/cur"
TRASH = "enron/formats/maildir/.Trash/cur"
N_BASE, N_NEW = 14, 6
ME = "phillip.allen@enron.com,k..allen@enron.com"


def _q(name: str) -> int:
    return int(re.search(r"Q(\d+)", name).group(1))


def _header(path: Path, name: str) -> str:
    with open(path, "rb") as fh:
        return str(email.message_from_binary_file(fh, policy=email.policy.default).get(name, ""))


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANZA_") or k == "PANZA_SHARED_DATA"}
    env.update(PANZA_HOME=str(home), PANZA_THREADS="1", PANZA_ME=ME, PANZA_TRAIN_PRESET="quick",
               PANZA_RETUNE_MIN_NEW="3")
    return env


def _panza(env: dict, *args: str, timeout: int = 1200) -> dict:
    r = subprocess.run([sys.executable, "-m", "panza_local", *args, "--json"], env=env, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


class World:
    """The module's paths (fixed, so sources and the `current` link stay valid across restores)."""

    def __init__(self, root: Path, data: Path):
        self.root, self.home, self.mail = root, root / "home", root / "mail"
        files = sorted((data / SENT).iterdir(), key=lambda p: _q(p.name))
        self.base, self.new = files[:N_BASE], files[N_BASE:N_BASE + N_NEW]
        # mail others sent him (every Trash header names Allen somewhere: X-Folder, X-Origin; judge by From)
        self.received = [p for p in sorted((data / TRASH).iterdir(), key=lambda p: _q(p.name))
                         if "allen" not in _header(p, "From").lower()][:150]
        assert len(self.received) == 150
        self.env = _env(self.home)
        self.first: dict = {}

    def add(self, files) -> None:
        for f in files:
            shutil.copy(f, self.mail / "cur" / f.name)

    def snapshot(self) -> None:
        for name in ("home", "mail"):
            shutil.copytree(self.root / name, self.root / f"{name}.snap", symlinks=True)

    def restore(self) -> None:
        for name in ("home", "mail"):
            shutil.rmtree(self.root / name, ignore_errors=True)
            shutil.copytree(self.root / f"{name}.snap", self.root / name, symlinks=True)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.home / "panza.db", timeout=30)
        conn.row_factory = sqlite3.Row
        return conn


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_data):
    w = World(tmp_path_factory.mktemp("retune"), shared_data)
    for sub in ("cur", "new", "tmp"):
        (w.mail / sub).mkdir(parents=True)
    w.add(w.base)
    added = _panza(w.env, "sources", "add", str(w.mail))
    assert added["added"][0]["kind"] == "maildir"
    t0 = time.monotonic()
    w.first = _panza(w.env, "retune")
    w.first["wall_s"] = round(time.monotonic() - t0, 1)
    print("first pass:", json.dumps(w.first))
    w.snapshot()
    return w


@pytest.fixture
def fresh(world, monkeypatch):
    world.restore()
    for k, v in world.env.items():
        if k.startswith("PANZA_"):
            monkeypatch.setenv(k, v)
    from panza_local import engine

    engine.unload_all()
    yield world
    engine.unload_all()


def _assert_current_loads(expect: str | None = None) -> str | None:
    """The served adapter (if any) loads in llama.cpp on its base and answers."""
    from panza_local import catalogue, config, engine
    from panza_local.train import registry

    cur = registry.current()
    if expect is not None:
        assert cur is not None and cur["id"] == expect
    if cur is None:
        return None
    text = engine.chat([{"role": "user", "content": "Say hi"}], model_path=catalogue.resolve(config.load().model),
                       lora_path=cur["gguf"], max_tokens=2, temperature=0.0, seed=1)
    assert isinstance(text, str)
    return cur["id"]


def test_first_pass_learns_then_only_new_mail_is_processed_then_nothing_is_done(fresh):
    w = fresh
    first = w.first
    assert first["new_messages"] == first["ingest"]["stored"] >= 8
    assert first["trained"] and first["mode"] == "full" and first["compared_with"] == "base"
    assert first["promoted"], first["reason"]
    assert first["score_new"] <= first["score_current"] and first["n_test"] >= 1
    assert set(first["steps"]) == {"ingest", "playback", "index", "train", "eval"}
    pairs_before = first["new_pairs"]

    w.add(w.new)
    second = _panza(w.env, "retune")
    print("second pass:", json.dumps(second))
    assert second["ingest"]["unchanged_files"] == N_BASE and second["ingest"]["files"] == N_NEW
    assert second["new_messages"] == second["ingest"]["stored"] >= 3
    assert second["reused_pairs"] == pairs_before
    assert second["new_pairs"] + second["failed_pairs"] == second["new_messages"] and second["new_pairs"] >= 3
    assert second["trained"] and second["mode"] == "warm" and second["mode_why"] == f"warm start from {first['adapter_id']}"
    assert second["adapter_id"] != first["adapter_id"] and second["compared_with"] == first["adapter_id"]
    assert second["promoted"], second["reason"]
    assert second["score_new"] <= second["score_current"]
    assert second["adapter_after"] == second["adapter_id"]
    _assert_current_loads(second["adapter_id"])
    from panza_local.train import registry

    assert registry.get(second["adapter_id"])["config"]["init_from"] == first["adapter_id"]

    t0 = time.monotonic()
    third = _panza(w.env, "retune")
    wall = time.monotonic() - t0
    print(f"third pass: {wall:.1f} s wall, {json.dumps(third)}")
    assert wall < 10, f"a pass with nothing new took {wall:.1f} s"
    assert (third["new_messages"], third["new_pairs"], third["trained"], third["promoted"]) == (0, 0, False, False)
    assert "new pairs since the last training" in third["reason"] and set(third["steps"]) == {"ingest", "playback"}

    log = _panza(w.env, "retune", "log")
    assert [r["status"] for r in log] == ["done"] * 3
    assert [r["promoted"] for r in log] == [False, True, True]
    assert log[1]["score_new"] == second["score_new"] and log[1]["score_current"] == second["score_current"]
    human = subprocess.run([sys.executable, "-m", "panza_local", "retune", "log"], env=w.env, capture_output=True,
                           text=True, timeout=120, check=False).stdout
    assert human.count("promoted: held-out loss") == 2 and "steps: ingest" in human and "warm start from" in human


def test_adapter_trained_on_shuffled_pairs_is_not_promoted(fresh):
    from panza_local import retune, store, train
    from panza_local.train import data, registry

    w = fresh
    current = w.first["adapter_id"]
    conn = store.connect()
    tr = data.examples(conn, "train")
    exs = tr  # only training emails: the gate scores on test (and, for a tiny split, validation) emails,
    # which a bad candidate must not have seen either
    rng = random.Random(7)
    perm = list(range(len(exs)))
    while any(i == p for i, p in enumerate(perm)):  # a derangement: no prompt keeps its own email
        rng.shuffle(perm)
    shuffled = [data.Example(messages=e.messages, target=exs[perm[i]].target, key=f"shuffled-{i}")
                for i, e in enumerate(exs)]
    # Trained as lightly as the current adapter, a shuffled one mostly learns the same greeting, sign-off and
    # length (the emails are still the user's) and the two differ by noise. Trained hard on the wrong
    # mapping, it memorises emails for the wrong instructions: what a bad candidate looks like. (Validated on
    # its own training pairs, so best-state selection keeps the overfit end, not an early near-base state.)
    res = train.train(conn, train_examples=shuffled[: len(tr)], val_examples=shuffled[: len(tr)],
                      overrides={"seed": 3, "epochs": 12.0, "lr": 3e-3, "grad_accum": 1, "patience": 100})
    assert res.adapter_id != current
    decision = retune.gate(conn, res.adapter_id)
    print("shuffled-pairs gate:", json.dumps(decision))
    assert not decision["promoted"] and decision["reason"].startswith(f"kept {current}: held-out loss")
    assert decision["score_new"] > decision["score_current"]
    row = conn.execute("SELECT * FROM retune_gate WHERE adapter_id = ?", (res.adapter_id,)).fetchone()
    assert row["score_new"] == decision["score_new"] and row["score_current"] == decision["score_current"]
    assert row["current_id"] == current and row["promoted"] == 0 and row["n_test"] == decision["n_test"] >= 1
    assert registry.current_id() == current
    _assert_current_loads(current)
    # the honest adapter, re-scored on the same pairs (its kept scores dropped), is what the gate compared with
    conn.execute("DELETE FROM retune_scores")
    scored = retune.test_pairs(conn)[0][:decision["n_test"]]  # the gate may stop before the last pair
    assert abs(retune.score(conn, registry.current()["gguf"], test=scored) - decision["score_current"]) < 1e-4  # summation order may differ with the kept prefix


def _steps(conn) -> dict:
    """Steps the newest pass has finished (its partial record, written after each step)."""
    row = conn.execute("SELECT summary FROM runs WHERE stage = 'retune' ORDER BY id DESC LIMIT 1").fetchone()
    return json.loads(row[0] or "{}").get("steps", {}) if row else {}


def _killed_at(env: dict, conn, point: str, stage: str) -> dict:
    """Run `panza retune` with a crash point armed (see panza_local.failpoint): it must die by SIGKILL inside
    `stage`, whose run row stays open with the pass's; return the steps the pass had finished."""
    last = conn.execute("SELECT coalesce(max(id), 0) FROM runs").fetchone()[0]
    r = subprocess.run([sys.executable, "-m", "panza_local", "retune", "--json"], env={**env, "PANZA_FAILPOINT": point},
                       capture_output=True, text=True, timeout=1800, check=False)
    assert r.returncode == -signal.SIGKILL, f"{point} was never reached (exit {r.returncode}): {r.stderr[-2000:]}"
    rows = conn.execute("SELECT stage, status FROM runs WHERE id > ? ORDER BY id", (last,)).fetchall()
    still_open = [x["stage"] for x in rows if x["status"] == "running"]  # index and scoring log under the pass
    assert still_open == (["retune"] if stage == "retune" else ["retune", stage]), [tuple(x) for x in rows]
    return _steps(conn)


def test_kill_9_in_each_step_then_the_same_command_completes(fresh):
    w = fresh
    old = w.first["adapter_id"]
    env = {**w.env, "PANZA_TRAIN_PRESET": "standard"}  # enough optimizer steps for a checkpoint mid-training
    w.add(w.new)
    w.add(w.received)  # received mail: a longer ingest and index, no extra playback
    conn = w.db()
    pairs0 = conn.execute("SELECT count(*) FROM pairs").fetchone()[0]
    killed = []
    # each kill lands one step further: what a killed pass committed is kept, so the next pass moves on
    order = ["ingest", "playback", "index", "train", "eval"]  # the pass's steps; the kills, one in each:
    for i, (point, stage) in enumerate((("ingest.file:40", "ingest"), ("playback.pair:2", "playback"),
                                        ("index.batch:1", "retune"), ("train.checkpoint:1", "train"),
                                        ("retune.score:2", "retune"))):
        steps = _killed_at(env, conn, point, stage)
        killed.append((point, steps))
        # the step before it finished (index is skipped once nothing changed), the killed one did not
        assert (i == 0 or order[i - 1] in steps) and order[i] not in steps, (point, steps)
        _assert_current_loads(old)
    assert conn.execute("SELECT count(*) FROM pairs").fetchone()[0] > pairs0
    print("killed:", killed)

    last = _panza(env, "retune")
    print("pass after the kills:", json.dumps(last))
    assert last["trained"] and last["train"]["reused"], "the finished candidate is judged, not trained again"
    assert last["new_messages"] == 0 and last["new_pairs"] == 0
    assert last["promoted"] == (last["score_new"] <= last["score_current"])
    _assert_current_loads(last["adapter_after"])

    trains = conn.execute("SELECT status, summary FROM runs WHERE stage = 'train' ORDER BY id").fetchall()
    resumed = [json.loads(r[1] or "{}").get("resumed_from") for r in trains if r[0] == "done"]
    assert resumed[-1] and resumed[-1] > 0, f"the killed training did not resume from its checkpoint: {resumed}"
    dup = conn.execute("SELECT count(*) - count(DISTINCT content_hash) FROM messages").fetchone()[0]
    per_msg = conn.execute("SELECT max(c) FROM (SELECT count(*) c FROM pairs GROUP BY message_id, gen_config)"
                           ).fetchone()[0]
    assert dup == 0 and per_msg == 1
    mine = conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1 AND deleted = 0").fetchone()[0]
    assert conn.execute("SELECT count(DISTINCT message_id) FROM pairs").fetchone()[0] == mine
    n_msgs = conn.execute("SELECT count(*) FROM messages WHERE deleted = 0").fetchone()[0]
    assert n_msgs >= len(w.received) // 2
    items = conn.execute("SELECT count(*), count(DISTINCT item_id) FROM index_items").fetchone()
    assert items[0] == items[1] >= n_msgs
    # counted by a fresh process: this one's Chroma system for the path predates the snapshot restore
    code = ("from panza_local import config; from panza_local.retrieval import chroma_store; s = config.load(); "
            "cols = chroma_store.get_collections(s.chroma_url, s.embedding_model, ('sent', 'thread', 'doc')); "
            "print(sum(c.count() for c in cols.values()))")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip().splitlines()[-1]) == items[0]
    statuses = [r["status"] for r in _panza(env, "retune", "log")]
    assert statuses == ["done"] + ["killed"] * 5 + ["done"]
    conn.close()


def _ask(base: str) -> tuple[int, str | None]:
    body = json.dumps({"model": "panza-norag", "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": "Tell John the meeting moved to 3pm"}]}).encode()
    req = urllib.request.Request(f"{base}/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.status, json.loads(r.read())["panza"]["adapter"]


def test_server_keeps_answering_during_a_pass_and_switches_after_promotion(fresh):
    from panza_local import serve

    w = fresh
    old = w.first["adapter_id"]
    w.add(w.new)
    answers = []
    with serve.running() as base:
        assert _ask(base) == (200, old)
        proc = subprocess.Popen([sys.executable, "-m", "panza_local", "retune", "--json"], env=w.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None:
                answers.append(_ask(base))
                time.sleep(0.5)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err[-2000:]
        res = json.loads(out)
        after = _ask(base)
    print(f"{len(answers)} answers during the pass; pass: {json.dumps(res)}")
    assert len(answers) >= 3 and all(status == 200 for status, _ in answers)
    assert res["promoted"], res["reason"]
    assert after == (200, res["adapter_id"]) and res["adapter_id"] != old
    # before the switch every answer used the old adapter; after it, the new one (never a mix or a failure)
    ids = [a for _, a in answers]
    switch = ids.index(res["adapter_id"]) if res["adapter_id"] in ids else len(ids)
    assert set(ids[:switch]) == {old} and set(ids[switch:]) <= {res["adapter_id"]}
