"""Playback with the real embedded model: pairs stored once per (email, config), resumable, honest sources, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from test_playback_quality import add_message

from panza_local import playback, store
from panza_local.cli import main
from panza_local.playback import scoring as q

MAIL = [
    (("Dear Tom,\n\nWould it be possible to reactivate Peter's IT account? He needs to run some additional "
      "experiments on the cluster.\n\nBest regards,\nDavid"), "Re: Peter's account", "tom@lab.org"),
    (("Hi Sara,\n\nThe ISDA draft looks fine to me, but please change the termination date to 30 June and send "
      "it back to legal.\n\nThanks,\nDavid"), "ISDA draft", "sara@bank.com"),
    (("Dear Stephan,\n\nThank you for the invitation. Unfortunately I cannot be in Paris in December since I "
      "am travelling to New York, but I could give an online talk.\n\nBest,\nDavid"), "Re: Invitation", "s@uni.fr"),
    (("Ina,\n\nPlease send the gas storage report for the Permian pipeline to Keith before the Friday "
      "meeting.\n\nPhillip"), "storage report", "ina@enron.com"),
]


@pytest.fixture
def mailbox(home, monkeypatch):
    """A store holding four real-looking emails of the user, one thread, one message from someone else."""
    monkeypatch.setenv("PANZA_THREADS", "1")  # the machine is shared: one thread avoids spin-wait collapse
    conn = store.connect()
    for i, (body, subject, to) in enumerate(MAIL):
        add_message(conn, body, date=f"2024-05-0{i + 1}T09:00:00+00:00", subject=subject, to=to,
                    thread="Can you look at Peter's account?" if i == 0 else None)
    add_message(conn, "Someone else's email about lunch.", mine=0)
    yield conn
    conn.close()


def test_run_generates_checked_pairs_then_reuses_them(mailbox, monkeypatch):
    out = playback.run(mailbox, limit=2)  # the real model on two emails (the rest of the file is model-free)
    assert (out.generated, out.reused, out.failed) == (2, 0, 0)
    assert out.model + out.fallback == 2
    assert set(out.to_dict()) >= {"generated", "reused", "failed", "recall_at_1", "copy_ratio_median"}
    rows = mailbox.execute("SELECT p.*, m.body, m.to_addrs FROM pairs p JOIN messages m ON m.id = p.message_id "
                           "ORDER BY p.id").fetchall()
    assert len(rows) == 2
    for r in rows:
        assert r["status"] == "ok" and r["source"] in ("model", "fallback")
        assert r["copy_ratio"] == pytest.approx(q.copy_ratio(r["instruction"], r["body"]))
        assert r["copy_ratio"] <= 0.35
        assert q.first_name(q.recipient(r["body"], r["to_addrs"])) in r["instruction"]  # names the recipient
        assert r["instruction"].split()[0] in ("Ask", "Tell", "Thank", "Reply", "Write", "Remind", "Update",
                                               "Invite", "Let", "Send", "Confirm", "Inform", "Apologize",
                                               "Congratulate", "Answer")
        assert r["recall_hit"] in (0, 1)
    assert 0.0 <= out.recall_at_1 <= 1.0

    from panza_local import engine

    def broken(*a, **k):
        raise RuntimeError("llama_decode returned -1")

    monkeypatch.setattr(engine, "chat", broken)  # an engine failure: counted, the batch goes on (fallback)
    again = playback.run(mailbox, parallel=1)  # the one-at-a-time path calls engine.chat
    assert (again.generated, again.reused, again.fallback) == (2, 2, 2)
    assert {r[0] for r in mailbox.execute("SELECT reason FROM pairs WHERE source = 'fallback'")} == {
        ";".join(["engine_error:RuntimeError"] * playback.ATTEMPTS)}
    last = playback.run(mailbox)
    assert (last.generated, last.reused, last.failed) == (0, 4, 0)
    assert mailbox.execute("SELECT count(*) FROM pairs").fetchone()[0] == 4
    assert last.recall_at_1 == again.recall_at_1


def test_interrupted_run_resumes_without_regenerating(mailbox, monkeypatch):
    monkeypatch.setattr(playback, "ATTEMPTS", 0)  # resumability is about commits: the kill -9 test uses the model
    def stop_after_two(done, total=None, note=None):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        playback.run(mailbox, on_progress=stop_after_two)
    first = {r[0]: r[1] for r in mailbox.execute("SELECT content_hash, created_at FROM pairs")}
    assert len(first) == 2
    assert mailbox.execute("SELECT status FROM runs WHERE stage = 'playback'").fetchone()[0] == "interrupted"
    out = playback.run(mailbox)
    assert (out.generated, out.reused) == (2, 2)
    after = {r[0]: r[1] for r in mailbox.execute("SELECT content_hash, created_at FROM pairs")}
    assert len(after) == 4 and all(after[h] == first[h] for h in first)


def test_changed_prompt_regenerates_and_latest_pair_wins(mailbox, monkeypatch):
    monkeypatch.setattr(playback, "ATTEMPTS", 0)  # extractive only: this test is about keys, not the model
    assert playback.run(mailbox).generated == 4
    monkeypatch.setattr(playback, "SYSTEM", playback.SYSTEM + " Keep it short.")
    monkeypatch.setattr(playback, "SPECIFICS", 3)
    out = playback.run(mailbox)
    assert (out.generated, out.reused) == (4, 0)
    assert mailbox.execute("SELECT count(DISTINCT gen_config) FROM pairs").fetchone()[0] == 2
    assert all(p["instruction"].count(",") <= 4 for p in playback.pairs(mailbox))  # the newer (shorter) ones


def test_fallback_is_recorded_honestly_and_a_bad_email_does_not_stop_the_batch(mailbox, monkeypatch):
    add_message(mailbox, "   \n  ", date="2024-06-01T00:00:00+00:00")  # empty after stripping
    from panza_local import engine

    def parrot(messages, **kwargs):  # what the 135M model does when asked naively: copy the email
        email = messages[-1]["content"].split("Email:\n", 1)[1].split("\n\n(")[0]  # not a retry's hint
        return "Tell them " + email[:180]

    monkeypatch.setattr(engine, "chat", parrot)
    out = playback.run(mailbox, parallel=1)
    assert (out.generated, out.failed, out.fallback, out.model) == (4, 1, 4, 0)
    assert out.fail_reasons == {"empty_email": 1}
    for reason, instruction, body in mailbox.execute(
            "SELECT p.reason, p.instruction, m.body FROM pairs p JOIN messages m ON m.id = p.message_id "
            "WHERE p.source = 'fallback'"):
        assert set(reason.split(";")) <= {"copies_email", "too_long", "no_recipient"}
        assert q.copy_ratio(instruction, body) < 0.2
    assert playback.run(mailbox).generated == 0  # failed pairs are keyed too: not retried each run


def test_cli_json_and_export(mailbox, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(playback, "ATTEMPTS", 0)
    assert main(["playback", "--limit", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["generated"] == 2 and out["todo_total"] == 4
    assert main(["playback", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] == 2
    assert main(["playback", "export", str(tmp_path / "ds"), "--json"]) == 0
    exp = json.loads(capsys.readouterr().out)
    assert exp["train"] == 4 and (tmp_path / "ds" / "valid.jsonl").exists()
    assert main(["playback", "--limit", "-1"]) == 1


def test_no_mail_is_a_clear_error(home, capsys):
    assert main(["playback"]) == 1
    assert "panza ingest" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_generates_each_pair_once(mailbox, home):
    # killed by the failpoint right after the 2nd pair is saved (not a timer racing the model)
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_THREADS": "1", "PANZA_FAILPOINT": "playback.pair:2"}
    proc = subprocess.run([sys.executable, "-m", "panza_local", "playback", "--json"], env=env, check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == -signal.SIGKILL, "playback was not killed mid-run"
    before = mailbox.execute("SELECT count(*) FROM pairs").fetchone()[0]
    assert before == 2
    out = playback.run(mailbox)
    assert out.generated + before == 4 and out.reused == before
    dupes = mailbox.execute("SELECT count(*) FROM pairs GROUP BY content_hash HAVING count(*) > 1").fetchall()
    assert dupes == []


def test_stop_words_are_scikit_learns():
    """The project's copy (no scikit-learn import on the draft path) is scikit-learn's list, word for word."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from panza_local.playback.stopwords import ENGLISH

    assert ENGLISH == ENGLISH_STOP_WORDS
