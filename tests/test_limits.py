"""A full disk and a read-only home: a clear error that names the fix, no traceback, nothing corrupted.

Both run `panza` in a private mount namespace (`unshare -m`): the home sits on a 1 MiB tmpfs, or is
bind-mounted read-only over itself. After the failure the store passes `PRAGMA integrity_check`, and a
re-run with room to write ends with exactly the counts of a run that never failed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import usermail
from conftest import SHARED, needs_shared

ME = usermail.ME


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANZA_") or k == "PANZA_SHARED_DATA"}
    env.update(PANZA_HOME=str(home), PANZA_THREADS="1")
    return env


def _unshare_m() -> None:
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1)")
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], check=False,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"unshare -m with mount is not permitted here ({r.stderr.strip()})")


def _panza(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, "-m", "panza_local", *args])


def _counts(db: Path) -> dict:
    conn = sqlite3.connect(db)
    try:
        return {"integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
                "messages": conn.execute("SELECT count(*) FROM messages").fetchone()[0],
                "distinct": conn.execute("SELECT count(DISTINCT content_hash) FROM messages").fetchone()[0],
                "files": conn.execute("SELECT count(*) FROM source_files").fetchone()[0]}
    finally:
        conn.close()


def _assert_clear(stderr: str, *words: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.startswith("error: ") or "\nerror: " in stderr, stderr[-2000:]
    assert "fix:" in stderr, stderr[-2000:]
    for w in words:
        assert w in stderr, (w, stderr[-2000:])


@pytest.mark.slow
def test_disk_full_during_ingest_is_a_clear_error_and_the_store_resumes(tmp_path):
    _unshare_m()
    mail = usermail.maildir(tmp_path / "mail", 3000)  # ~2 MB of mail and its index: more than the 1 MiB disk
    mnt, saved = tmp_path / "small", tmp_path / "saved"
    mnt.mkdir()
    home = mnt / "home"
    # inside the namespace: ingest onto a 1 MiB disk, then copy what is left to a roomy place
    script = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
              f"{_panza('ingest', str(mail), '--me', ME, '--json')} > {tmp_path / 'out'} 2> {tmp_path / 'err'}; "
              f"echo $? > {tmp_path / 'rc'}; cp -a {home} {saved}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], check=False, env=_env(home), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rc, err = int((tmp_path / "rc").read_text()), (tmp_path / "err").read_text()
    assert rc == 1, f"ingest on a full disk exited {rc}: {err[-2000:]}"
    _assert_clear(err, "is full", "free some disk space")
    after_crash = _counts(saved / "panza.db")
    assert after_crash["integrity"] == "ok" and after_crash["messages"] == after_crash["distinct"]
    # with room again the same command finishes, and ends where a never-failed ingest ends
    done = subprocess.run(shlex.split(_panza("ingest", str(mail), "--me", ME, "--json")), check=False,
                          env=_env(saved), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    ref = tmp_path / "ref"
    r2 = subprocess.run(shlex.split(_panza("ingest", str(mail), "--me", ME, "--json")), check=False,
                        env=_env(ref), capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert _counts(saved / "panza.db") == _counts(ref / "panza.db")
    print(f"disk full: {after_crash['messages']} messages kept at the failure; resumed to "
          f"{_counts(saved / 'panza.db')['messages']} == reference")


@pytest.mark.slow
def test_read_only_home_is_a_clear_error_and_nothing_changes(tmp_path):
    _unshare_m()
    home = tmp_path / "home"
    first = usermail.maildir(tmp_path / "first", 40)
    more = usermail.maildir(tmp_path / "more", 40, start=40)
    ok = subprocess.run(shlex.split(_panza("ingest", str(first), "--me", ME, "--json")), check=False, env=_env(home),
                        capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    before = _counts(home / "panza.db")
    script = (f"mount --bind {home} {home} && mount -o remount,ro,bind {home} && "
              f"{{ {_panza('ingest', str(more), '--me', ME, '--json')} > {tmp_path / 'out'} 2> {tmp_path / 'err'}; "
              f"echo $? > {tmp_path / 'rc'}; "
              f"{_panza('messages', 'list', '--json')} > {tmp_path / 'list'} 2> {tmp_path / 'list_err'}; "
              f"echo $? > {tmp_path / 'list_rc'}; }}")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], check=False, env=_env(home), capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rc, err = int((tmp_path / "rc").read_text()), (tmp_path / "err").read_text()
    assert rc == 1, f"ingest into a read-only home exited {rc}: {err[-2000:]}"
    _assert_clear(err, "writable")
    assert str(home) in err
    list_rc, list_err = int((tmp_path / "list_rc").read_text()), (tmp_path / "list_err").read_text()
    if list_rc != 0:  # reading may need the WAL's shared-memory file; if it cannot, it must say so clearly
        _assert_clear(list_err)
    else:
        assert json.loads((tmp_path / "list").read_text())["messages"]
    assert _counts(home / "panza.db") == before
    print(f"read-only home: ingest rc {rc}: {err.strip()!r}; messages list rc {list_rc}: {list_err.strip()!r}")


_PEAK = ("import json, resource, subprocess, sys\n"
         "r = subprocess.run(json.loads(sys.argv[1]), capture_output=True)\n"
         "print(json.dumps({'rc': r.returncode, 'err': r.stderr.decode(errors='replace')[-2000:],\n"
         "                  'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")


def _peak_rss_mb(cmd: list[str], env: dict) -> float:
    """Peak RSS (MB) of `cmd` alone, measured by a fresh wrapper process (RUSAGE_CHILDREN)."""
    r = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(cmd)], check=False, env=env, capture_output=True,
                       text=True, timeout=900)
    res = json.loads(r.stdout)
    assert res["rc"] == 0, res["err"]
    return res["rss"]


def _write_mbox(path: Path, mb: float) -> int:
    n, size = 0, 0
    with open(path, "w", encoding="ascii") as fh:
        while size < mb * 2**20:
            body = "\n\n".join(f"Paragraph {i} of note {n}: " + " ".join(f"w{(n * 7 + i * 13 + k) % 997}"
                                                                        for k in range(80)) for i in range(20))
            msg = (f"From me@example.org Mon Jan  1 00:00:00 2001\nFrom: me@example.org\nTo: you@example.org\n"
                   f"Subject: note {n}\nMessage-ID: <n{n}@example.org>\n\nHi,\n\n{body}\n\nThanks\n\n")
            fh.write(msg)
            size, n = size + len(msg), n + 1
    return n


@pytest.mark.slow
def test_big_mbox_ingest_runs_in_bounded_memory(tmp_path):
    """A 40 MB mbox costs about what a 1 MB one does: read pages are released as ingest streams through."""
    small, big = tmp_path / "small.mbox", tmp_path / "big.mbox"
    _write_mbox(small, 1)
    n = _write_mbox(big, 40)
    cmd = [sys.executable, "-m", "panza_local", "ingest", "--me", "me@example.org", "--json"]
    base = _peak_rss_mb([*cmd, str(small)], _env(tmp_path / "h1"))
    peak = _peak_rss_mb([*cmd, str(big)], _env(tmp_path / "h2"))
    print(f"peak RSS: {base:.1f} MB for a 1 MB mbox, {peak:.1f} MB for a 40 MB mbox ({n} messages)")
    assert peak < base + 15, f"ingest of a 40 MB mbox peaked at {peak:.1f} MB (1 MB mbox: {base:.1f} MB)"


def _big_message(attachment_mb: int, n: int = 0) -> bytes:
    """One message from me: a short text part and an `attachment_mb` MB base64 attachment."""
    import base64

    blob = base64.encodebytes(os.urandom(attachment_mb * 2**20 * 3 // 4))
    return (f"From: Me <me@example.org>\nTo: you@example.org\nSubject: the big file {n}\n"
            f"Date: Mon, 1 Jan 2001 10:00:00 +0000\nMessage-ID: <big{n}@example.org>\nMIME-Version: 1.0\n"
            "Content-Type: multipart/mixed; boundary=\"BB\"\n\n--BB\nContent-Type: text/plain; charset=us-ascii\n\n"
            f"Here is file {n} with the forecast numbers we discussed on Monday.\n\nThanks\n\n--BB\n"
            "Content-Type: application/octet-stream; name=\"data.bin\"\nContent-Transfer-Encoding: base64\n\n"
            ).encode() + blob + b"\n--BB--\n"


@pytest.mark.parametrize("container", ["eml", "mbox"])
def test_a_huge_message_ingests_in_bounded_memory_and_keeps_its_text(tmp_path, container):
    """A 60 MB message (an .eml file, or one message of an mbox) peaks near a 1 MB input: attachment bodies
    are dropped while streaming from the file's mapping, never parsed; its text is stored in full."""
    small_dir, big_dir = tmp_path / "small", tmp_path / "big"
    for d, mb in ((small_dir, 1), (big_dir, 60)):
        d.mkdir()
        if container == "eml":
            (d / "one.eml").write_bytes(_big_message(mb))
        else:
            with open(d / "mail.mbox", "wb") as fh:
                fh.writelines(b"From me@example.org Mon Jan  1 00:00:00 2001\n" + _big_message(size, i) + b"\n" for i, size in enumerate((0, mb, 0)))
    cmd = [sys.executable, "-m", "panza_local", "ingest", "--me", "me@example.org", "--json"]
    base = _peak_rss_mb([*cmd, str(small_dir)], _env(tmp_path / "h1"))
    peak = _peak_rss_mb([*cmd, str(big_dir)], _env(tmp_path / "h2"))
    print(f"peak RSS: {base:.1f} MB with a 1 MB message, {peak:.1f} MB with a 60 MB one ({container})")
    assert peak < base + 20, f"a 60 MB message peaked at {peak:.1f} MB (1 MB message: {base:.1f} MB)"
    db = sqlite3.connect(tmp_path / "h2" / "panza.db")
    texts = [r[0] for r in db.execute("SELECT body FROM messages WHERE is_mine = 1 ORDER BY subject")]
    assert len(texts) == (1 if container == "eml" else 3)
    assert all("forecast numbers we discussed on Monday" in t for t in texts), texts


@pytest.mark.parametrize("corpus", ["project", "parsers"])
def test_slimming_keeps_what_the_parser_reads(corpus, tmp_path):
    """Forced on every message of a malformed-mail corpus, slimming changes the parsed text, subject, sender
    and id of almost none (the few are text parts over the cap and MIME too broken to have a skeleton).
    `project`: the broken and whole mail tests/usermail.py writes; `parsers`: ~900 messages from 15 mail
    parsers' test suites in ../shared/data/tricky (skipped without it)."""
    from panza_local.ingest.parse import parse
    from panza_local.ingest.slim import slim

    if corpus == "parsers":
        folder, least = needs_shared(SHARED / "tricky"), 900
    else:
        folder, least = usermail.malformed(tmp_path / "tricky"), 300
    same, differ = 0, []
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.suffix in (".tsv", ".md"):
            continue
        raw = f.read_bytes()
        try:
            a = parse(raw)
        except Exception:  # noqa: BLE001, S112 - the parser's own failures are test_fuzz's business
            continue
        b = parse(slim(raw))
        key = lambda p: (p.text.strip(), p.subject, p.from_addr, p.message_id, p.auto)
        if key(a) == key(b):
            same += 1
        else:
            differ.append(f.name)
    print(f"slimmed {same + len(differ)} messages: {len(differ)} parse differently: {differ}")
    assert same > least and len(differ) <= 0.02 * (same + len(differ)), differ
