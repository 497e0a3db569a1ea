"""Where a finished draft goes: an RFC 5322 message (.eml), a Maildir drafts folder, or an IMAP Drafts mailbox."""

from __future__ import annotations

import logging
from pathlib import Path

from .draft import Draft
from .errors import NoDataError, PanzaError

log = logging.getLogger(__name__)

def _sender(sender: str | None, settings=None) -> str:
    """From: the given sender, else the first of settings.me with the profile's name."""
    from email.utils import formataddr

    if sender:
        return sender
    from . import config
    from . import profile as profiles

    settings = settings or config.load()
    addr = settings.me[0] if settings.me else ""
    if not addr:
        import getpass
        import socket

        addr = f"{getpass.getuser()}@{socket.gethostname() or 'localhost'}"
    try:
        name = profiles.load(seed_if_missing=False).name or settings.user_name
    except PanzaError:
        name = settings.user_name
    return formataddr((name, addr)) if name else addr


def to_eml(d: Draft, sender: str | None = None, *, date: str | None = None, settings=None) -> bytes:
    """The draft as an RFC 5322 message (UTF-8 body, CRLF, In-Reply-To/References for replies)."""
    from email import policy
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid, parseaddr

    frm = _sender(sender, settings)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = frm
    if d.to:
        msg["To"] = d.to
    msg["Subject"] = d.subject or ""
    msg["Date"] = date or formatdate(localtime=True)
    domain = parseaddr(frm)[1].rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid(domain=domain)
    if d.in_reply_to:
        msg["In-Reply-To"] = d.in_reply_to
    if d.references:
        msg["References"] = " ".join(d.references)
    msg["X-Mailer"] = "panza-local"
    text = flowed(d.text)
    text = text if text.endswith("\n") else text + "\n"
    cte = "7bit" if text.isascii() and max(map(len, text.splitlines() or [""])) <= 998 else "quoted-printable"
    msg.set_content(text, charset="utf-8", cte=cte, params={"format": "flowed"})
    return msg.as_bytes()


FLOWED_WIDTH = 76


def flowed(text: str, width: int = FLOWED_WIDTH) -> str:
    """`text` as RFC 3676 format=flowed: a draft's paragraphs are one line each (cleanup._Reflow), so each is cut
    into lines of at most `width` characters that end in a space (a soft break, which a mail client joins
    again to rewrap the paragraph as it likes, and a client that does not know the format shows as wrapped
    text); the draft's own line breaks stay hard (no trailing space). Lines that begin with a space, ">" or
    "From " are space-stuffed."""
    out = []
    for line in text.split("\n"):
        line = line.rstrip(" ")
        while len(line) > width:
            cut = line.rfind(" ", 0, width)
            if cut <= 0:  # a word longer than the width: break after it
                cut = line.find(" ", width)
                if cut < 0:
                    break
            out.append(line[:cut + 1])
            line = line[cut + 1:]
        out.append(line)
    return "\n".join(" " + ln if ln.startswith((" ", ">", "From ")) else ln for ln in out)


_DRAFT_FOLDERS = (".Drafts", "Drafts", ".drafts", "drafts", ".INBOX.Drafts")


def drafts_folder(path: str | Path) -> Path:
    """The Maildir a draft goes to: `path` itself if it is a drafts Maildir, else its Drafts folder."""
    import mailbox

    root = Path(path).expanduser()
    if root.name.lower().lstrip(".").endswith("drafts"):
        return root
    for name in _DRAFT_FOLDERS:
        if (root / name / "cur").is_dir():
            return root / name
    if (root / "cur").is_dir():  # a Maildir++ root: add its .Drafts folder
        mailbox.Maildir(str(root), create=False).add_folder("Drafts")
        return root / ".Drafts"
    return root


def save_maildir(d: Draft, path: str | Path, sender: str | None = None, settings=None) -> Path:
    """Store the draft in a Maildir drafts folder with the Draft (D) and Seen (S) flags; return its file."""
    import mailbox

    folder = drafts_folder(path)
    try:
        box = mailbox.Maildir(str(folder), factory=None, create=True)
        msg = mailbox.MaildirMessage(to_eml(d, sender, settings=settings).replace(b"\r\n", b"\n"))
        msg.set_subdir("cur")
        msg.set_flags("DS")
        key = box.add(msg)
        out = folder / "cur" / f"{key}:2,DS"
        out.chmod(0o600)  # a draft is private mail, whatever the umask
    except OSError as exc:
        raise PanzaError(f"cannot write the draft to the Maildir {folder}: {exc}",
                         fix="give a writable Maildir: --save-draft maildir:~/Mail/Drafts") from None
    return out


def imap_account(target: str = "imap") -> tuple[dict, str | None]:
    """(connection settings, mailbox) for `imaps://USER@HOST[:PORT][/Drafts][?cafile=...]`, or for the
    registered IMAP source when `target` is just "imap" (its mailbox is a source, not the drafts: ignored)."""
    from . import imap

    if target in ("imap", "imaps", ""):
        from . import store
        from .ingest import sources

        conn = store.connect()
        try:
            uri = sources.imap_account(conn)
        finally:
            conn.close()
        if uri is None:
            raise NoDataError("no IMAP account is known",
                              fix="use --save-draft imaps://USER@HOST/Drafts, or `panza sources add imaps://USER@HOST`")
        return imap.parse_uri(uri), None
    cfg = imap.parse_uri(target)
    return cfg, cfg["mailbox"]


def save_imap(d: Draft, target: str = "imap", *, mailbox: str | None = None, sender: str | None = None,
              settings=None) -> str:
    """APPEND the draft to the IMAP Drafts mailbox with the \\Draft flag; return the mailbox name.

    The account is `target` (an imaps:// URI) or the registered IMAP source; TLS, certificate checks and
    the keyring password are the IMAP source's own. The mailbox: `mailbox`, the URI's path, the one the
    server marks \\Drafts (RFC 6154), else "Drafts" (created when missing).
    """
    from . import imap

    cfg, box = imap_account(target)
    box = imap.append_draft(cfg, to_eml(d, sender, settings=settings), mailbox or box)
    log.info("draft appended to an IMAP mailbox on %s", cfg["host"] if getattr(settings, "debug", False) else "server")
    return box
