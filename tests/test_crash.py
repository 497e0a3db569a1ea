"""Crash safety: SIGKILL at seeded random points in ingest, playback, index and train, then the same command.

The kill points are failpoints (panza_local/failpoint.py: the Nth file, pair, batch or checkpoint, N drawn
from the seed), not timers: where a kill lands never depends on how fast or busy the machine is.

The mail is 600 of an Enron author's sent files from ../shared/data, or, in a fresh clone without it, the
project's own sample mailbox written as a Maildir (tests/mailformats.py): every stage is killed either way.

After each stage's kills and one uninterrupted re-run: the counts equal those of a run that was never
killed, no row is duplicated, `PRAGMA integrity_check` is ok, Chroma holds exactly the store's indexed
items, and the current adapter loads in llama.cpp. Each test prints how many kills landed mid-run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SENT = "enron/formats/maildir/.Sent/cur"
ME = ["phillip.allen@enron.com", "k..allen@enron.com"]
N_FILES = 600
PAIRS = 8
SEED = int(os.environ.get("PANZA_CRASH_SEED", "12"))


def _env(home: Path, me: list[str] = ME) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANZA_") or k == "PANZA_SHARED_DATA"}
    env.update(PANZA_HOME=str(home), PANZA_THREADS="1", PANZA_TRAIN_PRESET="quick", PANZA_ME=",".join(me))
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "panza_local", *args]


def _panza(env: dict, *args: str, timeout: int = 1800) -> dict:
    r = subprocess.run(_cmd(*args, "--json"), env=env, check=False, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "panza.db", timeout=60)


def _one(home: Path, sql: str, *params):
    conn = _db(home)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def _kill_at(env: dict, args: list[str], point: str, timeout: float = 900) -> bool:
    """Run `panza <args>` armed to SIGKILL itself at failpoint `point` ("name:N"); True if it died there, False
    if it finished first (fewer than N hits were left: counted, not a kill)."""
    r = subprocess.run(_cmd(*args), env={**env, "PANZA_FAILPOINT": point}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout, check=False)
    if r.returncode == -signal.SIGKILL:
        return True
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return False


def _integrity(home: Path) -> None:
    assert _one(home, "PRAGMA integrity_check") == "ok"
    conn = _db(home)
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def _no_duplicates(home: Path) -> None:
    conn = _db(home)
    try:
        assert conn.execute("SELECT count(*) - count(DISTINCT content_hash) FROM messages").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM (SELECT 1 FROM messages WHERE message_id IS NOT NULL "
                            "AND deleted = 0 GROUP BY message_id, location HAVING count(*) > 1)").fetchone()[0] == 0
        assert (conn.execute("SELECT coalesce(max(c), 0) FROM (SELECT count(*) c FROM pairs "
                             "GROUP BY message_id, gen_config)").fetchone()[0]) <= 1
        items = conn.execute("SELECT count(*), count(DISTINCT item_id) FROM index_items").fetchone()
        assert items[0] == items[1]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from conftest import SHARED

    root = tmp_path_factory.mktemp("crash")
    if (SHARED / SENT).is_dir():
        mail, me = root / "mail", ME
        for sub in ("cur", "new", "tmp"):
            (mail / sub).mkdir(parents=True)
        files = sorted((SHARED / SENT).iterdir(), key=lambda p: int(re.search(r"Q(\d+)", p.name).group(1)))
        for f in files[:N_FILES]:
            shutil.copy(f, mail / "cur" / f.name)
    else:  # a fresh clone: the sample mailbox, as a Maildir the project writes itself
        import mailformats

        mail, me = mailformats.write_maildir(root / "sample"), [mailformats.ME]
    ref, home = root / "ref", root / "home"
    reference = _panza(_env(ref, me), "ingest", str(mail))
    return {"root": root, "mail": mail, "home": home, "ref": ref, "reference": reference, "me": me,
            "rng": random.Random(SEED), "kills": {}}


def _ingested(home: Path) -> dict:
    conn = _db(home)
    try:
        q = lambda sql: conn.execute(sql).fetchone()[0]
        return {"messages": q("SELECT count(*) FROM messages WHERE deleted = 0"),
                "mine": q("SELECT count(*) FROM messages WHERE deleted = 0 AND is_mine = 1"),
                "hashes": q("SELECT count(DISTINCT content_hash) FROM messages"),
                "files": q("SELECT count(*) FROM source_files")}
    finally:
        conn.close()


def test_ingest_survives_kills(world):
    home, env, rng = world["home"], _env(world["home"], world["me"]), world["rng"]
    kills = 0
    for i in range(5):
        # after a seeded file (inside the open batch), or right after a batch commit, in turn
        # (the sample's 150 messages fit one batch: its file kills come first, the kill after the commit last)
        small = world["me"] != ME
        point = f"ingest.file:{rng.randint(1, 100)}" if (i < 4 if small else i % 2 == 0) else "ingest.batch:1"
        kills += _kill_at(env, ["ingest", str(world["mail"])], point)
    final = _panza(env, "ingest", str(world["mail"]))
    world["kills"]["ingest"] = kills
    print(f"ingest: {kills} kills mid-run; final run {json.dumps({k: final[k] for k in ('seen', 'stored')})}")
    assert kills >= 2
    assert _ingested(home) == _ingested(world["ref"])
    _integrity(home)
    _no_duplicates(home)
    again = _panza(env, "ingest", str(world["mail"]))
    assert again["stored"] == 0, "a clean re-run after the kills still found work"


def test_playback_survives_kills(world):
    home, env, rng = world["home"], _env(world["home"], world["me"]), world["rng"]

    def pairs() -> int:
        return _one(home, "SELECT count(*) FROM pairs WHERE status = 'ok'")

    kills = 0
    for _ in range(2):  # killed right after the seeded 1st-3rd pair of the 4 is stored
        kills += _kill_at(env, ["playback", "--limit", "4"], f"playback.pair:{rng.randint(1, 3)}")
    world["kills"]["playback"] = kills
    have = pairs()
    assert have >= kills
    res = _panza(env, "playback", "--limit", str(max(0, PAIRS - have)))
    print(f"playback: {kills} kills mid-run; {have} pairs kept across them; final {res['generated']} new")
    # what the kills left is kept and reused; the re-run makes up exactly the rest
    assert pairs() == have + res["generated"]
    assert res["generated"] + res["failed"] == max(0, PAIRS - have)
    _integrity(home)
    _no_duplicates(home)


def test_index_survives_kills(world):
    from panza_local import config
    from panza_local.retrieval import chroma_store, index

    home, env = world["home"], _env(world["home"], world["me"])
    kills = 0
    for _ in range(3):  # right after each run's first embedded batch is recorded (until nothing is left to embed)
        kills += _kill_at(env, ["index"], "index.batch:1")
    world["kills"]["index"] = kills
    assert kills >= 1
    res = _panza(env, "index")
    print(f"index: {kills} kills mid-run; final {json.dumps({k: res[k] for k in ('embedded', 'total')})}")
    _integrity(home)
    _no_duplicates(home)
    stored = _one(home, "SELECT count(*) FROM index_items")
    expect = _one(home, "SELECT count(*) FROM messages WHERE deleted = 0") + \
        _one(home, "SELECT count(*) FROM documents WHERE deleted = 0")
    assert res["total"] == stored >= expect
    old = os.environ.get("PANZA_HOME")
    os.environ["PANZA_HOME"] = str(home)
    chroma_store.forget_clients()
    try:
        s = config.load()
        cols = chroma_store.get_collections(s.chroma_url, s.embedding_model, index.KINDS)
        assert cols and sum(c.count() for c in cols.values()) == stored
    finally:
        chroma_store.forget_clients()
        if old is None:
            os.environ.pop("PANZA_HOME", None)
        else:
            os.environ["PANZA_HOME"] = old
    assert _panza(env, "index")["embedded"] == 0


def test_train_survives_kills(world):
    home, env = world["home"], _env(world["home"], world["me"])
    # train writes few checkpoints: each run is killed right after its first one (no seeded draw)
    kills = _kill_at(env, ["train"], "train.checkpoint:1")
    kills += _kill_at(env, ["train"], "train.checkpoint:1")  # the resumed run, at its next checkpoint
    world["kills"]["train"] = kills
    res = _panza(env, "train")
    print(f"train: {kills} kills mid-run; final {json.dumps({k: res.get(k) for k in ('adapter_id', 'resumed_from')})}")
    print(f"kills survived: {json.dumps(world['kills'])}")
    assert kills >= 1
    _integrity(home)
    _no_duplicates(home)
    code = ("import sys; from panza_local import catalogue, config, engine; from panza_local.train import registry;"
            "cur = registry.current(); assert cur is not None, 'no current adapter';"
            "t = engine.chat([{'role': 'user', 'content': 'Say hi'}], model_path=catalogue.resolve(config.load().model),"
            " lora_path=cur['gguf'], max_tokens=2, temperature=0.0, seed=1); print(cur['id'])")
    r = subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == res["adapter_id"]
