"""Live IMAP, read-only and over TLS, incremental by UIDVALIDITY/UID.

URI: `imaps://USER@HOST[:PORT][/MAILBOX][?cafile=PATH]` (implicit TLS, port 993) or `imap://...` (STARTTLS,
port 143, refused when the server does not offer it). No MAILBOX: every selectable mailbox but Junk and
Trash. Mailboxes are opened with EXAMINE, messages fetched with BODY.PEEK, so nothing on the server
changes (not even the \\Seen flag). The password comes from the OS keyring (service `panza-local`,
user `USER@HOST`) or a prompt, and is never written anywhere by panza.
"""

from __future__ import annotations

import imaplib
import json
import re
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .. import store
from ..errors import SourceError
from .parse import Item

KEYRING_SERVICE = "panza-local"
CHUNK = 100
_SKIP_FLAGS = ("\\junk", "\\trash", "\\noselect", "\\nonexistent", "\\all", "\\flagged")


def detect(path) -> bool:
    return str(path).startswith(("imap://", "imaps://"))


def files(root: Path):
    return iter(())


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
    except Exception:  # no usable keyring backend on this machine: fall back to the prompt
        secret = None
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise SourceError(f"no password for {account} in the OS keyring and no terminal to ask for one",
                          fix=f"keyring set {KEYRING_SERVICE} {account}   (then run the same command again)")
    import getpass

    secret = getpass.getpass(f"IMAP password for {account}: ")
    try:
        import keyring

        if input("Save it in the OS keyring? [y/N] ").strip().lower() in ("y", "yes"):
            keyring.set_password(KEYRING_SERVICE, account, secret)
    except Exception:  # saving is a convenience; the run goes on without it
        pass
    return secret


def connect(cfg: dict) -> imaplib.IMAP4:
    """A logged-in, TLS-protected IMAP connection (certificate and host name verified)."""
    ctx = ssl.create_default_context(cafile=cfg["cafile"]) if cfg["cafile"] else ssl.create_default_context()
    where = f"{cfg['host']}:{cfg['port']}"
    try:
        if cfg["implicit_tls"]:
            imap = imaplib.IMAP4_SSL(cfg["host"], cfg["port"], ssl_context=ctx, timeout=60)
        else:
            imap = imaplib.IMAP4(cfg["host"], cfg["port"], timeout=60)
            if "STARTTLS" not in imap.capabilities:
                imap.logout()
                raise SourceError(f"IMAP server {where} does not offer STARTTLS; panza never sends a password "
                                  "in clear text", fix="use imaps:// (port 993) if the server supports it")
            imap.starttls(ssl_context=ctx)
    except ssl.SSLCertVerificationError as exc:
        raise SourceError(f"the TLS certificate of {where} cannot be verified ({exc.verify_message})",
                          fix="add ?cafile=/path/to/ca.pem to the URI for a private CA") from None
    except OSError as exc:
        raise SourceError(f"cannot reach IMAP server {where} ({exc})",
                          fix="check the host and port, and that you are online") from None
    try:
        imap.login(cfg["user"], password(cfg["user"], cfg["host"]))
    except imaplib.IMAP4.error as exc:
        raise SourceError(f"IMAP login to {where} failed ({exc})",
                          fix=f"update the password: keyring set {KEYRING_SERVICE} {cfg['user']}@{cfg['host']}") from None
    return imap


def mailboxes(imap: imaplib.IMAP4) -> list[str]:
    """Every selectable mailbox except Junk and Trash."""
    _, data = imap.list()
    out = []
    for line in data or []:
        if not line:
            continue
        text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else str(line)
        m = re.match(r'\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$', text)
        if not m:
            continue
        flags = m.group("flags").lower()
        name = m.group("name").strip()
        name = name[1:-1].replace('\\"', '"') if name.startswith('"') else name
        if any(f in flags for f in _SKIP_FLAGS) or name.lower() in ("junk", "spam", "trash"):
            continue
        out.append(name)
    return out


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ingest(conn, sid: int, uri: str, store_item: Callable[[Item], None], summary: dict,
           on_progress=None) -> None:
    """Fetch what is new in each mailbox since the stored UID cursor; mark expunged messages deleted."""
    cfg = parse_uri(uri)
    row = conn.execute("SELECT cursor FROM sources WHERE id = ?", (sid,)).fetchone()
    cursor = json.loads(row[0]) if row and row[0] else {}
    imap = connect(cfg)
    try:
        boxes = [cfg["mailbox"]] if cfg["mailbox"] else mailboxes(imap)
        for box in boxes:
            _sync_mailbox(conn, sid, imap, box, cursor, store_item, summary, on_progress)
    finally:
        try:
            imap.logout()
        except Exception:  # the connection may already be gone; nothing to clean up
            pass


def _sync_mailbox(conn, sid, imap, box, cursor, store_item, summary, on_progress) -> None:
    typ, _ = imap.select(_quote(box), readonly=True)  # EXAMINE: nothing on the server changes
    if typ != "OK":
        summary["errors_total"] += 1
        summary["errors"].append({"path": box, "reason": "mailbox cannot be opened"})
        return
    validity = int((imap.untagged_responses.get("UIDVALIDITY") or [b"0"])[-1])
    state = cursor.get(box) or {}
    if state.get("uidvalidity") != validity:  # UIDs were renumbered: start over (Message-IDs de-dup)
        state = {"uidvalidity": validity, "last_uid": 0}
    typ, data = imap.uid("SEARCH", None, "ALL")
    all_uids = [int(x) for x in (data[0] or b"").split()] if typ == "OK" else []
    prefix = f"{box};UID="
    gone = _expunged(conn, sid, prefix, set(all_uids))
    if gone:
        with store.transaction(conn):
            for mid in gone:
                conn.execute("UPDATE messages SET deleted = 1 WHERE id = ?", (mid,))
        summary["deleted"] += len(gone)
    new = [u for u in all_uids if u > state["last_uid"]]
    for i in range(0, len(new), CHUNK):
        chunk = new[i:i + CHUNK]
        typ, data = imap.uid("FETCH", ",".join(map(str, chunk)), "(UID BODY.PEEK[])")
        with store.transaction(conn):
            for uid, raw in _fetched(data):
                store_item(Item(location=f"{prefix}{uid}", raw=raw, folder=box))
            state["last_uid"] = chunk[-1]
            cursor[box] = state
            conn.execute("UPDATE sources SET cursor = ?, last_sync = ? WHERE id = ?",
                         (json.dumps(cursor), store.now(), sid))
        if on_progress:
            on_progress(i + len(chunk), len(new), box)
    cursor[box] = state
    conn.execute("UPDATE sources SET cursor = ?, last_sync = ? WHERE id = ?", (json.dumps(cursor), store.now(), sid))


def _fetched(data) -> list[tuple[int, bytes]]:
    out = []
    for part in data or []:
        if isinstance(part, tuple) and len(part) >= 2:
            m = re.search(rb"UID (\d+)", part[0])
            if m:
                out.append((int(m.group(1)), part[1]))
    return out


def _expunged(conn, sid: int, prefix: str, live: set[int]) -> list[int]:
    rows = conn.execute("SELECT id, location FROM messages WHERE source_id = ? AND deleted = 0 AND "
                        "substr(location, 1, ?) = ?", (sid, len(prefix), prefix)).fetchall()
    return [r["id"] for r in rows if int(r["location"][len(prefix):]) not in live]
