"""IMAP against a real Dovecot started by the test (TLS with a self-signed certificate made here)."""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from panza_local import imap, store
from panza_local.errors import SourceError
from panza_local.ingest import ingest

pytestmark = pytest.mark.skipif(not shutil.which("dovecot") or not shutil.which("openssl"),
                                reason="needs Dovecot and openssl: apt-get install dovecot-imapd openssl")


class MemoryKeyring:
    """A real keyring backend that keeps secrets in memory (the test must not touch the user's keyring)."""

    def __init__(self):
        import keyring.backend

        class Backend(keyring.backend.KeyringBackend):
            priority = 1

            def __init__(self):
                super().__init__()
                self.store = {}

            def get_password(self, service, username):
                return self.store.get((service, username))

            def set_password(self, service, username, password):
                self.store[(service, username)] = password

            def delete_password(self, service, username):
                self.store.pop((service, username), None)

        self.backend = Backend()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _message(i: int, frm: str = "alice@example.com") -> bytes:
    return (f"From: Alice <{frm}>\r\nTo: bob@example.com\r\nSubject: note {i}\r\n"
            f"Message-ID: <imap-{i}@example.com>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
            f"Hello Bob, this is note number {i} about the budget.\r\n\r\n"
            f"On Sun, Dec 31, 2023 at 9:00 AM Bob <bob@example.com> wrote:\r\n> earlier text {i}\r\n").encode()


@pytest.fixture
def dovecot():
    """A Dovecot IMAPS server on a free localhost port, its CA file, and an admin connection factory."""
    root_user = os.geteuid() == 0
    # Dovecot's auth and mail processes drop privileges; as root they must be able to traverse the folder.
    base = Path(tempfile.mkdtemp(prefix="panza-ingest-dovecot-", dir="/var/tmp" if root_user else None))
    try:
        base.chmod(0o755)
        for d in ("run", "state", "mail"):
            (base / d).mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(base / "key.pem"),
                        "-out", str(base / "cert.pem"), "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        (base / "passwd").write_text("alice:{PLAIN}s3cret\n")
        port = _free_port()
        if root_user:
            import pwd

            mail = pwd.getpwnam("dovecot")
            uid, gid = mail.pw_uid, mail.pw_gid
            os.chown(base / "mail", uid, gid)
            users = "default_login_user = dovenull\ndefault_internal_user = dovecot\n"
            auth_user = "root"
        else:
            import getpass

            uid, gid = os.getuid(), os.getgid()
            me = getpass.getuser()
            users = f"default_login_user = {me}\ndefault_internal_user = {me}\n"
            auth_user = me
        conf = base / "dovecot.conf"
        conf.write_text(f"""protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
ssl = required
ssl_cert = <{base}/cert.pem
ssl_key = <{base}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:{base}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service auth {{
  user = {auth_user}
}}
service auth-worker {{
  user = {auth_user}
}}
{users}""")
        # the daemon keeps inherited pipes open: never capture its output, it would block forever
        subprocess.run(["dovecot", "-c", str(conf)], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        ctx = ssl.create_default_context(cafile=str(base / "cert.pem"))

        def admin() -> imaplib.IMAP4_SSL:
            m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
            m.login("alice", "s3cret")
            return m

        deadline = time.monotonic() + 120  # waits for the server to answer; the limit only bounds a hang
        while True:
            try:
                admin().logout()
                break
            except (OSError, imaplib.IMAP4.error):
                if time.monotonic() > deadline:
                    pytest.fail("dovecot did not start: " + (base / "dovecot.log").read_text()[-2000:])
                time.sleep(0.2)
        yield {"port": port, "cafile": str(base / "cert.pem"), "admin": admin}
    finally:
        pid_file = base / "run" / "master.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().strip())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                except ProcessLookupError:
                    break
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def keyring_memory(monkeypatch):
    import keyring

    kr = MemoryKeyring().backend
    old = keyring.get_keyring()
    keyring.set_keyring(kr)
    yield kr
    keyring.set_keyring(old)


def test_imap_incremental_read_only_sync(dovecot, keyring_memory, home):
    admin = dovecot["admin"]()
    admin.create("Sent")
    for i in range(3):
        admin.append("INBOX", None, None, _message(i, frm="carol@example.com"))
    for i in range(3, 8):
        admin.append("Sent", None, None, _message(i))
    keyring_memory.set_password(imap.KEYRING_SERVICE, "alice@127.0.0.1", "s3cret")
    uri = f"imaps://alice@127.0.0.1:{dovecot['port']}?cafile={dovecot['cafile']}"
    conn = store.connect()
    s = ingest(conn, [uri], ["alice@example.com"])
    assert (s.seen, s.stored, s.mine) == (8, 8, 5)
    row = conn.execute("SELECT body, thread, location FROM messages WHERE subject = 'note 3'").fetchone()
    assert row["body"] == "Hello Bob, this is note number 3 about the budget."
    assert "earlier text 3" in row["thread"] and row["location"].startswith("Sent;UID=")
    # read-only: nothing was marked \Seen on the server
    admin.select("Sent", readonly=True)
    assert admin.uid("SEARCH", None, "SEEN")[1][0] == b""
    # unchanged: nothing fetched
    assert ingest(conn, [uri], ["alice@example.com"]).seen == 0
    # new mail: only it is fetched; an expunged message is marked deleted
    admin.append("Sent", None, None, _message(8))
    admin.select("INBOX")
    admin.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    admin.expunge()
    s = ingest(conn, [uri], ["alice@example.com"])
    assert (s.seen, s.stored, s.deleted) == (1, 1, 1)
    assert conn.execute("SELECT count(*) FROM messages WHERE deleted = 0").fetchone()[0] == 8
    admin.logout()


def test_imap_refuses_bad_certificates_passwords_in_uris_and_missing_secrets(dovecot, keyring_memory, home):
    conn = store.connect()
    with pytest.raises(SourceError, match="certificate"):  # self-signed and no cafile: refused
        ingest(conn, [f"imaps://alice@127.0.0.1:{dovecot['port']}/INBOX"], [])
    with pytest.raises(SourceError, match="password"):
        ingest(conn, [f"imaps://alice:s3cret@127.0.0.1:{dovecot['port']}/INBOX"], [])
    assert conn.execute("SELECT count(*) FROM sources WHERE uri LIKE '%s3cret%'").fetchone()[0] == 0
    with pytest.raises(SourceError, match="keyring"):  # no secret stored and no terminal to ask
        ingest(conn, [f"imaps://alice@127.0.0.1:{dovecot['port']}/INBOX?cafile={dovecot['cafile']}"], [])
    keyring_memory.set_password(imap.KEYRING_SERVICE, "alice@127.0.0.1", "wrong")
    with pytest.raises(SourceError, match="login"):
        ingest(conn, [f"imaps://alice@127.0.0.1:{dovecot['port']}/INBOX?cafile={dovecot['cafile']}"], [])
