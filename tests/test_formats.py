"""Every container format, written by the project from its sample mailbox (tests/mailformats.py), is ingested
with the same messages, authorship and bodies as the plain mbox; a kill -9 mid-ingest resumes to the same rows.

No `../shared/data` needed: a fresh clone tests every reader here; the shared data adds scale, not coverage.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mailformats as mf
import pytest

from panza_local import store
from panza_local.errors import SourceError
from panza_local.ingest import detect, ingest, takeout
from panza_local.results import IngestResult

COLS = "message_id, is_mine, from_addr, to_addrs, subject, date, body, thread"
KIND = {"mbox": "mbox", "maildir": "maildir", "eml": "eml", "emlx": "emlx", "takeout_zip": "takeout",
        "takeout_tgz": "takeout", "thunderbird_maildir": "thunderbird", "thunderbird_mbox": "thunderbird"}


def _rows(db: Path) -> dict[str, tuple]:
    c = sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in c.execute(f"SELECT {COLS} FROM messages WHERE deleted = 0")}
    finally:
        c.close()


def _ingest(db: Path, path: Path) -> IngestResult:
    conn = store.connect(db)
    try:
        return ingest(conn, [str(path)], [mf.ME])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, tuple]:
    """The sample's rows as the plain mbox reader stores them."""
    tmp = tmp_path_factory.mktemp("reference")
    db = tmp / "ref.db"
    summary = _ingest(db, mf.write_mbox(tmp))
    assert summary.stored == mf.TOTAL
    return _rows(db)


def test_the_reference_is_the_sample(reference):
    mine = {mid: r for mid, r in reference.items() if r[0]}
    assert len(reference) == mf.TOTAL and len(mine) == mf.MINE
    want_mine = {str(m["Message-ID"]).strip("<>") for m in mf.messages() if mf.is_maya(m)}
    assert {mid.strip("<>") for mid in mine} == want_mine
    for body in (r[5] for r in mine.values()):  # her voice, her quoted threads cut away, nothing of a container
        assert body.startswith("Hi ") and "Maya" in body and "\r" not in body and ">From" not in body


@pytest.mark.parametrize("fmt", mf.FORMATS)
def test_each_format_reads_the_same_mail(fmt, reference, tmp_path):
    path = mf.write(fmt, tmp_path / "mail")
    # a folder of .eml files and Apple Mail's tree are read as folders (each file classified), named by what they hold
    assert detect(path) == ("folder" if fmt in ("eml", "emlx") else KIND[fmt])
    db = tmp_path / "panza.db"
    summary = _ingest(db, path)
    assert summary.sources[0]["kind"] == KIND[fmt], summary.sources
    assert summary.stored == mf.TOTAL and summary.duplicates == 0 and summary.errors_total == 0, summary
    skipped = summary.skipped
    assert summary.seen == mf.TOTAL + sum(skipped.values())
    assert skipped in ({}, {"not_mail": 1}), skipped  # emlx: Apple's Envelope Index, counted, never mail
    assert summary.mine == mf.MINE
    got = _rows(db)
    assert got.keys() == reference.keys()
    for mid, row in reference.items():
        assert got[mid] == row, (fmt, mid)  # authorship, addresses, subject, date, cleaned body, thread
    again = _ingest(db, path)  # nothing new the second time
    assert again.stored == 0 and again.files == 0 and again.unchanged_files >= 1, again


def test_folders_keep_their_names(tmp_path):
    """The folder hint follows the container: Maildir++ `.Sent`, Thunderbird's own folder names, Gmail labels."""
    def folders(fmt: str) -> set[str]:
        db = tmp_path / f"{fmt}.db"
        _ingest(db, mf.write(fmt, tmp_path / fmt))
        c = sqlite3.connect(db)
        try:
            return {r[0] for r in c.execute("SELECT DISTINCT folder FROM messages WHERE is_mine = 1")}
        finally:
            c.close()

    assert folders("maildir") == {"Sent"}
    assert folders("thunderbird_maildir") == {"Sent", "2025"}
    assert folders("emlx") == {"Sent Messages"}
    assert folders("takeout_zip") == {"Sent"}


def test_takeout_is_streamed_from_the_archive(tmp_path, monkeypatch):
    """Neither archive is unpacked: no member is extracted to disk and the zip is read member by member."""
    zpath = mf.write_takeout(tmp_path, "zip")
    tpath = mf.write_takeout(tmp_path, "tgz")
    with zipfile.ZipFile(zpath) as zf:
        assert mf.TAKEOUT_MBOX in zf.namelist()
    monkeypatch.setattr(zipfile.ZipFile, "extractall", None)  # any unpacking would now fail loudly
    monkeypatch.setattr(zipfile.ZipFile, "extract", None)
    monkeypatch.setattr(tarfile.TarFile, "extractall", None)
    monkeypatch.setattr(tarfile.TarFile, "extract", None)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for path in (zpath, tpath):
        items = list(takeout.read(path))
        assert len(items) == mf.TOTAL and all(i.raw and i.skip is None for i in items)
        assert all(i.location.startswith(f"{path}:{mf.TAKEOUT_MBOX}:") for i in items)
        ends = [i.end for i in items]
        assert ends == sorted(ends) and ends[-1] < path.stat().st_size  # mid-archive commit points
        assert b"\r\n" in items[0].raw and not items[0].raw.startswith(b"From ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written beside the archives


def test_takeout_in_a_downloads_folder_and_bad_archives(tmp_path):
    downloads = tmp_path / "Downloads"
    mf.write_takeout(downloads, "tgz")
    with zipfile.ZipFile(downloads / "photos.zip", "w") as zf:
        zf.writestr("Takeout/Google Photos/a.json", "{}")
    (downloads / "cut-short.zip").write_bytes(mf.write_takeout(tmp_path / "full", "zip").read_bytes()[:5000])
    summary = _ingest(tmp_path / "panza.db", downloads)
    assert summary.stored == mf.TOTAL and summary.mine == mf.MINE
    assert summary.skipped == {"archive_without_mail": 1, "damaged_archive": 1}, summary.skipped
    with pytest.raises(SourceError) as err:  # pointed at an archive with no mail: says so, names the file
        detect(downloads / "photos.zip")
    assert "photos.zip" in str(err.value) and "archive_without_mail" in str(err.value)
    assert "Takeout" in str(err.value.fix)


# -- kill -9 mid-ingest, then the same command ------------------------------------------------------------

CHILD = """
import sys
import panza_local.ingest as ing
from panza_local import store
ing.BATCH = 25  # small batches so the kill lands between commits
ing.BATCH_SECONDS = 1e9  # ... counted, never timed: where the kill lands does not depend on the machine's speed
ing.ingest(store.connect(sys.argv[1]), sys.argv[2:], [{me!r}])
"""


@pytest.mark.parametrize(("fmt", "point"), [("maildir", "ingest.file:60"), ("takeout_zip", "ingest.batch:2")])
def test_kill_mid_ingest_then_resume(fmt, point, reference, home, tmp_path):
    """SIGKILL at a failpoint (after the 60th file of a Maildir; after the 2nd batch committed inside a Takeout
    archive), then the same ingest: the rows equal an uninterrupted run's, nothing doubled, nothing lost."""
    path = mf.write(fmt, tmp_path / "mail")
    db = tmp_path / "panza.db"
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_FAILPOINT": point}
    r = subprocess.run([sys.executable, "-c", CHILD.format(me=mf.ME), str(db), str(path)], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    partial = _rows(db)
    assert 25 <= len(partial) < 60, len(partial)  # whole batches committed before the kill, the rest lost
    assert all(reference[mid] == row for mid, row in partial.items())
    resumed = _ingest(db, path)
    done = len(partial)
    if fmt == "maildir":  # committed files are not read again
        assert resumed.unchanged_files == done and resumed.seen == mf.TOTAL - done, resumed
    else:  # an archive is read again; what was stored counts once
        assert resumed.duplicates == done and resumed.stored == mf.TOTAL - done, resumed
    assert _rows(db) == reference
    c = sqlite3.connect(db)
    try:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == mf.TOTAL
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        c.close()
