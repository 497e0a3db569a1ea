"""Saving a draft to the IMAP Drafts mailbox of a real local Dovecot (the ingest tests' server fixture)."""

from __future__ import annotations

import email
import re
from email import policy

import pytest
import test_ingest_imap as ingest_imap_tests

from panza_local import draft, imap, outbox, store

# the ingest tests' real Dovecot server and in-memory keyring, and their skip when Dovecot is absent
dovecot = ingest_imap_tests.dovecot
keyring_memory = ingest_imap_tests.keyring_memory
pytestmark = ingest_imap_tests.pytestmark


def _reply() -> draft.Draft:
    return draft.Draft(text="Ja, Donnerstag passt. Grüße, Ann", subject="Re: Termin", to="bob@example.com",
                       adapter=None, retrieved=[], in_reply_to="<m2@example.com>",
                       references=["<m1@example.com>", "<m2@example.com>"])


def test_save_imap_appends_with_the_draft_flag(dovecot, keyring_memory, home):
    keyring_memory.set_password(imap.KEYRING_SERVICE, "alice@127.0.0.1", "s3cret")
    uri = f"imaps://alice@127.0.0.1:{dovecot['port']}/Drafts?cafile={dovecot['cafile']}"
    assert outbox.save_imap(_reply(), uri, sender="alice@example.com") == "Drafts"  # created on first use
    # the registered source is the default account; its own mailbox (INBOX) is not where drafts go
    conn = store.connect()
    conn.execute("INSERT INTO sources (uri, kind, added_at) VALUES (?, 'imap', ?)",
                 (f"imaps://alice@127.0.0.1:{dovecot['port']}/INBOX?cafile={dovecot['cafile']}", store.now()))
    assert outbox.save_imap(_reply(), "imap", sender="alice@example.com") == "Drafts"
    admin = dovecot["admin"]()
    typ, data = admin.select("Drafts", readonly=True)
    assert typ == "OK" and int(data[0]) == 2
    typ, data = admin.fetch("1", "(FLAGS BODY.PEEK[])")
    flags = re.search(rb"FLAGS \(([^)]*)\)", data[0][0]).group(1)
    assert b"\\Draft" in flags
    msg = email.message_from_bytes(data[0][1], policy=policy.default)
    assert msg["In-Reply-To"] == "<m2@example.com>" and msg["Subject"] == "Re: Termin"
    assert "Grüße" in msg.get_content()
    admin.logout()


def test_save_imap_wrong_password_names_the_fix(dovecot, keyring_memory, home):
    from panza_local.errors import PanzaError

    keyring_memory.set_password(imap.KEYRING_SERVICE, "alice@127.0.0.1", "wrong")
    uri = f"imaps://alice@127.0.0.1:{dovecot['port']}/Drafts?cafile={dovecot['cafile']}"
    with pytest.raises(PanzaError, match="keyring set"):
        outbox.save_imap(_reply(), uri)
