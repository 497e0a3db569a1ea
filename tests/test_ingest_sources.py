"""panza_local.ingest.sources: registering, listing and removing a source (a soft delete inside ingest)."""

from __future__ import annotations

import pytest

from panza_local import sample, store
from panza_local.errors import SourceError
from panza_local.ingest import ingest, sources


@pytest.fixture
def mailbox(home, tmp_path, monkeypatch):
    """The sample mailbox registered and ingested; yields (connection, mbox path)."""
    mbox = sample.write_sample_mailbox(tmp_path / "mail" / "maya.mbox")
    conn = store.connect()
    (row,) = sources.register(conn, [str(mbox)])
    assert row["kind"] == "mbox" and row["uri"] == str(mbox.resolve())
    ingest(conn, [str(mbox)], [sample.SAMPLE_ME])
    yield conn, mbox
    conn.close()


def test_remove_by_relative_path_soft_deletes_and_unregisters(mailbox, monkeypatch):
    conn, mbox = mailbox
    (listed,) = sources.list_(conn)
    assert (listed["messages"], listed["registered"]) == (sample.SAMPLE_COUNT, 1)
    monkeypatch.chdir(mbox.parent)
    out = sources.remove(conn, mbox.name)  # relative to the working directory, as typed
    assert out == {"removed": str(mbox.resolve()), "messages_deleted": sample.SAMPLE_COUNT, "documents_deleted": 0}
    (listed,) = sources.list_(conn)
    assert (listed["messages"], listed["registered"]) == (0, 0)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == sample.SAMPLE_COUNT  # kept, marked
    assert conn.execute("SELECT count(*) FROM source_files").fetchone()[0] == 0  # the next ingest re-reads it
    assert sources.remove(conn, str(listed["id"]))["messages_deleted"] == 0  # by id; nothing left to delete


def test_unknown_source_names_the_fix(mailbox):
    conn, _ = mailbox
    with pytest.raises(SourceError) as err:
        sources.remove(conn, "/no/such/mbox")
    assert "panza sources list" in err.value.fix


def test_imap_uri_with_a_password_is_refused_before_it_is_stored(home):
    conn = store.connect()
    with pytest.raises(SourceError, match="password"):
        sources.register(conn, ["imaps://me:secret@imap.example.com/INBOX"])
    assert sources.list_(conn) == [] and sources.imap_account(conn) is None
    (row,) = sources.register(conn, ["imaps://me@imap.example.com/INBOX"])
    assert row["kind"] == "imap" and sources.imap_account(conn) == "imaps://me@imap.example.com/INBOX"
    conn.close()
