"""IMAP, in one place: account URIs, the keyring password, TLS connections, mailbox names, read-only
sync primitives, APPEND of drafts and IDLE.

URI: `imaps://USER@HOST[:PORT][/MAILBOX][?cafile=PATH]` (implicit TLS, port 993) or `imap://...` (STARTTLS,
port 143, refused when the server does not offer it). The password comes from the OS keyring (service
`panza-local`, user `USER@HOST`) or a prompt, and is never written anywhere by panza. Reading opens
mailboxes with EXAMINE and fetches with BODY.PEEK, so nothing on the server changes (not even \\Seen).
Only imaplib's public API is used. Callers: ingest/imap.py (the source), outbox.py (drafts), retune.py (watch).
"""

from __future__ import annotations

import contextlib
import imaplib
import itertools
import re
import ssl
import sys
import time
from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import PanzaError, SourceError

KEYRING_SERVICE = "panza-local"
IDLE_MAX_S = 25 * 60  # RFC 2177: a client re-issues IDLE at least every 29 minutes
_SKIP_FLAGS = ("\\junk", "\\trash", "\\noselect", "\\nonexistent", "\\all", "\\flagged")
_LIST_LINE = re.compile(r'\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')
_IDLE_TAGS = itertools.count(1)


def is_uri(text) -> bool:
    """Whether `text` names an IMAP account (imap:// or imaps://)."""
    return str(text).startswith(("imap://", "imaps://"))


def parse_uri(uri: str) -> dict:
    """Host, port, user, mailbox, TLS mode and CA file of an imap(s):// URI (a password in it is refused)."""
    u = urlsplit(uri)
    if u.scheme not in ("imap", "imaps") or not u.hostname or not u.username:
        raise SourceError(f"{uri!r} is not an IMAP source URI",
                          fix="use imaps://you@imap.example.com/INBOX (user and host are required)")
    if u.password:
        raise SourceError("the IMAP URI contains a password, which would be stored in plain text",
                          fix=f"remove it and store it in the keyring: keyring set {KEYRING_SERVICE} "
                              f"{unquote(u.username)}@{u.hostname}")
    q = parse_qs(u.query)
    return {"host": u.hostname, "port": u.port or (993 if u.scheme == "imaps" else 143),
            "user": unquote(u.username), "mailbox": unquote(u.path.lstrip("/")) or None,
            "implicit_tls": u.scheme == "imaps", "cafile": (q.get("cafile") or [None])[0]}


def password(user: str, host: str) -> str:
    """The IMAP password from the OS keyring, else a prompt (offered to the keyring, never to a file)."""
    account = f"{user}@{host}"
    secret = None
    try:
        import keyring

        secret = keyring.get_password(KEYRING_SERVICE, account)
    except Exception:  # noqa: BLE001 - no usable keyring backend on this machine: fall back to the prompt
        secret = None
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise SourceError(f"no password for {account} in the OS keyring and no terminal to ask for one",
                          fix=f"keyring set {KEYRING_SERVICE} {account}   (then run the same command again)")
    import getpass

    secret = getpass.getpass(f"IMAP password for {account}: ")
    # saving is a convenience: whatever the keyring backend raises, the run goes on without it
    with contextlib.suppress(Exception):
        import keyring

        if input("Save it in the OS keyring? [y/N] ").strip().lower() in ("y", "yes"):
            keyring.set_password(KEYRING_SERVICE, account, secret)
    return secret


def connect(cfg: dict) -> imaplib.IMAP4:
    """A logged-in, TLS-protected IMAP connection (certificate and host name verified)."""
    ctx = ssl.create_default_context(cafile=cfg["cafile"]) if cfg["cafile"] else ssl.create_default_context()
    where = f"{cfg['host']}:{cfg['port']}"
    try:
        if cfg["implicit_tls"]:
            conn = imaplib.IMAP4_SSL(cfg["host"], cfg["port"], ssl_context=ctx, timeout=60)
        else:
            conn = imaplib.IMAP4(cfg["host"], cfg["port"], timeout=60)
            if "STARTTLS" not in conn.capabilities:
                conn.logout()
                raise SourceError(f"IMAP server {where} does not offer STARTTLS; panza never sends a password "
                                  "in clear text", fix="use imaps:// (port 993) if the server supports it")
            conn.starttls(ssl_context=ctx)
    except ssl.SSLCertVerificationError as exc:
        raise SourceError(f"the TLS certificate of {where} cannot be verified ({exc.verify_message})",
                          fix="add ?cafile=/path/to/ca.pem to the URI for a private CA") from None
    except OSError as exc:
        raise SourceError(f"cannot reach IMAP server {where} ({exc})",
                          fix="check the host and port, and that you are online") from None
    try:
        conn.login(cfg["user"], password(cfg["user"], cfg["host"]))
    except imaplib.IMAP4.error as exc:
        raise SourceError(f"IMAP login to {where} failed ({exc})",
                          fix=f"update the password: keyring set {KEYRING_SERVICE} {cfg['user']}@{cfg['host']}") from None
    return conn


@contextlib.contextmanager
def session(cfg: dict):
    """`connect(cfg)`, logged out (or dropped) on the way out whatever happened."""
    conn = connect(cfg)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):  # the connection may already be gone; nothing to clean up
            conn.logout()


# --- mailbox names --------------------------------------------------------------------------------------

def quote(name: str) -> str:
    """`name` as an IMAP quoted string (RFC 3501): backslashes and double quotes escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote_name(text: str) -> str:
    """A mailbox name as a LIST response gives it (quoted or an atom) back as a plain string."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def listing(conn: imaplib.IMAP4) -> list[tuple[str, str]]:
    """(lower-cased flags, name) of every mailbox the server lists."""
    _typ, data = conn.list()
    out = []
    for line in data or []:
        if not line:
            continue
        text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else str(line)
        m = _LIST_LINE.match(text)
        if m:
            out.append((m.group("flags").lower(), unquote_name(m.group("name"))))
    return out


def mailboxes(conn: imaplib.IMAP4) -> list[str]:
    """Every selectable mailbox except Junk and Trash."""
    return [name for flags, name in listing(conn)
            if not any(f in flags for f in _SKIP_FLAGS) and name.lower() not in ("junk", "spam", "trash")]


def drafts_mailbox(conn: imaplib.IMAP4) -> str:
    """The mailbox the server marks \\Drafts (RFC 6154), else one named like Drafts, else "Drafts"."""
    boxes = listing(conn)
    for flags, name in boxes:
        if "\\drafts" in flags:
            return name
    for _flags, name in boxes:
        if name.lower() in ("drafts", "inbox.drafts", "inbox/drafts"):
            return name
    return "Drafts"


# --- reading (read-only) --------------------------------------------------------------------------------

def examine(conn: imaplib.IMAP4, box: str) -> int | None:
    """Open `box` read-only (EXAMINE: nothing on the server changes); its UIDVALIDITY, or None."""
    typ, _ = conn.select(quote(box), readonly=True)
    if typ != "OK":
        return None
    return int((conn.untagged_responses.get("UIDVALIDITY") or [b"0"])[-1])


def uids(conn: imaplib.IMAP4) -> list[int]:
    """Every UID in the open mailbox, ascending."""
    typ, data = conn.uid("SEARCH", None, "ALL")
    return [int(x) for x in (data[0] or b"").split()] if typ == "OK" else []


def fetch(conn: imaplib.IMAP4, chunk: list[int]) -> list[tuple[int, bytes]]:
    """(UID, raw message) for each UID of `chunk`, fetched with BODY.PEEK (the \\Seen flag stays as it was)."""
    _typ, data = conn.uid("FETCH", ",".join(map(str, chunk)), "(UID BODY.PEEK[])")
    out = []
    for part in data or []:
        if isinstance(part, tuple) and len(part) >= 2:
            m = re.search(rb"UID (\d+)", part[0])
            if m:
                out.append((int(m.group(1)), part[1]))
    return out


# --- writing drafts -------------------------------------------------------------------------------------

def append_draft(cfg: dict, raw: bytes, mailbox: str | None = None) -> str:
    """APPEND `raw` with \\Draft \\Seen to `mailbox` (default: the server's Drafts, created when missing);
    return the mailbox name."""
    where = f"{cfg['host']}:{cfg['port']}"
    box = mailbox
    with session(cfg) as conn:
        try:
            box = box or drafts_mailbox(conn)
            flags, when = r"(\Draft \Seen)", imaplib.Time2Internaldate(time.time())
            typ, data = conn.append(quote(box), flags, when, raw)
            if typ != "OK":  # [TRYCREATE]: the mailbox does not exist yet
                conn.create(quote(box))
                typ, data = conn.append(quote(box), flags, when, raw)
            if typ != "OK":
                raise PanzaError(f"the IMAP server {where} refused the draft: {data!r}",
                                 fix=f"check that the mailbox {box!r} exists and is writable")
        except imaplib.IMAP4.error as exc:
            raise PanzaError(f"IMAP error on {where}: {exc}", fix=f"check the mailbox name {box!r}") from None
    return box


# --- watching -------------------------------------------------------------------------------------------

def idle_wait(uri: str, timeout: float, ready: Callable[[], None] | None = None) -> bool | None:
    """Wait on an IMAP mailbox with IDLE until it reports new mail (True) or `timeout` s pass (False).

    `ready` is called once the server has accepted IDLE: from then on new mail wakes the wait.

    None when the server does not offer IDLE (the caller polls instead). Read-only: EXAMINE, never SELECT.
    imaplib (before 3.14) has no IDLE: the command is sent with a tag of our own, and the connection is
    dropped afterwards, never reused, so imaplib's own tag sequence is never confused.
    """
    cfg = parse_uri(uri)
    conn = connect(cfg)
    try:
        if "IDLE" not in conn.capabilities or examine(conn, cfg["mailbox"] or "INBOX") is None:
            return None
        conn.send(f"PZI{next(_IDLE_TAGS)} IDLE\r\n".encode())
        if not conn.readline().startswith(b"+"):
            return None
        if ready is not None:
            ready()
        conn.socket().settimeout(max(0.1, min(timeout, IDLE_MAX_S)))
        try:
            while True:
                line = conn.readline()
                if not line:
                    return False
                if line.startswith(b"* ") and line.rstrip().upper().endswith((b" EXISTS", b" RECENT")):
                    return True
        except (TimeoutError, OSError):
            return False  # the connection is unusable after a timed-out read: closed below, not reused
    finally:
        with contextlib.suppress(Exception):
            conn.shutdown()
