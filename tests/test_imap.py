"""panza_local/imap.py: mailbox-name quoting (unit), and names that need it against a real Dovecot."""

from __future__ import annotations

import shutil

import pytest
from test_ingest_imap import _message, dovecot, keyring_memory  # noqa: F401  (the IMAP suite's real Dovecot)

from panza_local import imap, store
from panza_local.ingest import ingest

NAMES = ["INBOX", "Sent Items", 'Say "hi"', "back\\slash", 'both \\"', "Entwürfe", ""]


@pytest.mark.parametrize("name", NAMES)
def test_quote_escapes_backslashes_and_quotes_and_round_trips(name):
    quoted = imap.quote(name)
    assert quoted.startswith('"') and quoted.endswith('"')
    inner = quoted[1:-1]
    # every quote and backslash inside is escaped: removing the escaped pairs leaves none of either
    bare = inner.replace("\\\\", "").replace('\\"', "")
    assert '"' not in bare and "\\" not in bare
    assert imap.unquote_name(quoted) == name


def test_quote_is_not_fooled_by_a_trailing_backslash():
    # unescaped, `"a\"` would leave the string open and swallow the rest of the command
    assert imap.quote("a\\") == '"a\\\\"'
    assert imap.quote('a"') == '"a\\""'


def test_list_lines_with_escaped_names_and_delimiters_parse():
    class FakeList:
        def list(self):
            return "OK", [b'(\\HasNoChildren \\Drafts) "/" "My \\"Drafts\\""',
                          b'(\\HasNoChildren) "\\\\" "a\\\\b"',
                          b'(\\Noselect) "/" "Archive"',
                          b'(\\Junk) "/" Spam',
                          b'(\\HasNoChildren) NIL INBOX']

    assert imap.listing(FakeList())[:2] == [("\\hasnochildren \\drafts", 'My "Drafts"'),
                                            ("\\hasnochildren", "a\\b")]
    assert imap.mailboxes(FakeList()) == ['My "Drafts"', "a\\b", "INBOX"]
    assert imap.drafts_mailbox(FakeList()) == 'My "Drafts"'


def test_no_private_imaplib_api_is_used():
    import inspect
    import re

    private = re.findall(r"\.(_\w+)", inspect.getsource(imap))  # attribute access to a private name
    assert private == []


@pytest.mark.skipif(not shutil.which("dovecot") or not shutil.which("openssl"),
                    reason="needs Dovecot and openssl: apt-get install dovecot-imapd openssl")
def test_a_mailbox_named_with_a_quote_syncs_and_takes_drafts(dovecot, keyring_memory, home):  # noqa: F811
    admin = dovecot["admin"]()
    box = 'Sent "old"'
    assert admin.create(imap.quote(box))[0] == "OK"
    admin.append(imap.quote(box), None, None, _message(1))
    keyring_memory.set_password(imap.KEYRING_SERVICE, "alice@127.0.0.1", "s3cret")
    uri = f"imaps://alice@127.0.0.1:{dovecot['port']}?cafile={dovecot['cafile']}"
    conn = store.connect()
    s = ingest(conn, [uri], ["alice@example.com"])
    assert s.errors == [] and s.mine == 1
    assert conn.execute("SELECT location FROM messages").fetchone()[0].startswith(f"{box};UID=")
    cfg = imap.parse_uri(uri)
    assert imap.append_draft(cfg, _message(2), box) == box
    admin.select(imap.quote(box), readonly=True)
    assert admin.uid("SEARCH", None, "DRAFT")[1][0].split() == [b"2"]
    admin.logout()
