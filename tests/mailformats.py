"""Every mail container panza reads, written by the project itself from its own sample mailbox (sample.py).

A fresh clone has no `../shared/data`, so the readers are tested on these: the same 150 messages of Maya's
year (138 by her, 12 to her) laid out as each mail program keeps them. Each writer is deterministic and
returns what to point `panza ingest` at.

    mbox            sample.write_sample_mailbox (mboxrd `>From ` escapes)
    maildir         Maildir++ (mutt, offlineimap): INBOX holds mail to Maya, `.Sent` hers; cur/ with flags
    eml             a folder of `.eml` files (one message each, as a mail client's "save as" writes them)
    emlx            Apple Mail V10: `<account>/Sent Messages.mbox/<uuid>/Data/Messages/N.emlx`, byte count
                    line + message + XML plist; one `.partial.emlx` whose count went stale
    takeout         Gmail Takeout as it downloads: `takeout-…-001.zip` / `.tgz` holding
                    `Takeout/Mail/All mail Including Spam and Trash.mbox` (CRLF lines, X-Gmail-Labels,
                    X-GM-THRID) beside `Takeout/archive_browser.html`
    thunderbird     a profile (prefs.js, Mail/Local Folders, ImapMail/<server>) with folders stored as
                    Maildir (`Sent/cur/…` beside `Sent.msf`, nested `Archives.sbd/2025`) and one IMAP folder
                    still an mbox file; or, with store="mbox", every folder an mbox file (the default store)
"""

from __future__ import annotations

import datetime as dt
import email
import io
import mailbox
import plistlib
import tarfile
import zipfile
from email.generator import BytesGenerator
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path

from panza_local import sample

TOTAL = sample.SAMPLE_COUNT        # messages in every container
MINE = 138                         # written by Maya (sample.SAMPLE_DESCRIPTION)
ME = sample.SAMPLE_ME
FORMATS = ("mbox", "maildir", "eml", "emlx", "takeout_zip", "takeout_tgz", "thunderbird_maildir",
           "thunderbird_mbox")


def messages() -> list[Message]:
    return sample.sample_messages()


def is_maya(msg: Message) -> bool:
    return ME in str(msg["From"])


def as_bytes(msg: Message, crlf: bool = False) -> bytes:
    buf = io.BytesIO()
    BytesGenerator(buf, mangle_from_=False, maxheaderlen=0).flatten(msg)
    data = buf.getvalue()
    return data.replace(b"\n", b"\r\n") if crlf else data


def _when(msg: Message) -> dt.datetime:
    return parsedate_to_datetime(str(msg["Date"]))


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# -- the writers ------------------------------------------------------------------------------------------

def write_mbox(folder: Path) -> Path:
    return sample.write_sample_mailbox(_fresh(folder) / "maya.mbox")


def write_maildir(folder: Path) -> Path:
    root = _fresh(folder) / "Maildir"
    box = mailbox.Maildir(str(root), create=True)
    sent = box.add_folder("Sent")
    for msg in messages():
        m = mailbox.MaildirMessage(msg)
        m.set_subdir("cur")
        m.set_flags("S")  # seen
        (sent if is_maya(msg) else box).add(m)
    return root


def write_eml(folder: Path) -> Path:
    root = _fresh(folder) / "saved"
    root.mkdir()
    for i, msg in enumerate(messages()):
        (root / f"{i:03d}-{_when(msg):%Y%m%d-%H%M}.eml").write_bytes(as_bytes(msg))
    return root


def _emlx(msg: Message, partial: bool = False) -> bytes:
    raw = as_bytes(msg)
    meta = {"date-sent": int(_when(msg).timestamp()), "date-received": int(_when(msg).timestamp()),
            "flags": 8590195713, "subject": str(msg["Subject"]), "sender": str(msg["From"])}
    count = len(raw) + (512 if partial else 0)  # a partial file's count still counts the stripped attachment
    return f"{count}\n".encode() + raw + plistlib.dumps(meta, fmt=plistlib.FMT_XML)


def write_emlx(folder: Path) -> Path:
    root = _fresh(folder) / "Mail" / "V10"
    account = root / "7C2B2F1E-5A3D-4C1B-9E0F-0123456789AB"
    for i, msg in enumerate(messages()):
        box = "Sent Messages.mbox" if is_maya(msg) else "INBOX.mbox"
        data = account / box / "1D4E9A30-0000-4000-8000-00000000CAFE" / "Data" / str(i // 100) / "Messages"
        data.mkdir(parents=True, exist_ok=True)
        partial = i == 7
        (data / f"{1000 + i}{'.partial' if partial else ''}.emlx").write_bytes(_emlx(msg, partial))
    (root / "MailData").mkdir()
    (root / "MailData" / "Envelope Index").write_bytes(b"SQLite format 3\x00")  # not mail: never read as mail
    return root


def takeout_mbox() -> bytes:
    """The mbox Google puts in a Takeout: CRLF lines, `From <thread id>@xxx <date>` separators, labels."""
    out = io.BytesIO()
    for i, msg in enumerate(messages()):
        m = email.message_from_bytes(as_bytes(msg))
        m["X-GM-THRID"] = str(1790000000000000000 + i)
        m["X-Gmail-Labels"] = "Sent" if is_maya(msg) else "Inbox,Opened,Category Personal"
        body = io.BytesIO()
        BytesGenerator(body, mangle_from_=True, maxheaderlen=0).flatten(m)
        when = _when(msg).astimezone(dt.timezone.utc)
        out.write(f"From {1790000000000000000 + i}@xxx {when:%a %b %d %H:%M:%S +0000 %Y}\r\n".encode())
        out.write(body.getvalue().replace(b"\n", b"\r\n"))
        out.write(b"\r\n")
    return out.getvalue()


TAKEOUT_MBOX = "Takeout/Mail/All mail Including Spam and Trash.mbox"
_TAKEOUT_EXTRA = {"Takeout/archive_browser.html": b"<html><body>Your Google data archive</body></html>\n",
                  "Takeout/Mail/user_settings/signatures.json": b"{}\n"}


def write_takeout(folder: Path, kind: str = "zip") -> Path:
    """A Takeout archive as downloaded (`kind` "zip" or "tgz"), never unpacked."""
    members = {"Takeout/archive_browser.html": _TAKEOUT_EXTRA["Takeout/archive_browser.html"],
               TAKEOUT_MBOX: takeout_mbox(), **_TAKEOUT_EXTRA}  # the mail between the other files, as Google does
    path = _fresh(folder) / f"takeout-20260101T120000Z-001.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 12, 0, 0)), data,
                            compress_type=zipfile.ZIP_DEFLATED)
        return path
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1767268800, 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


_PREFS = 'user_pref("mail.server.server1.directory-rel", "[ProfD]Mail/Local Folders");\n'
_MAILDIR_STORE = 'user_pref("mail.serverDefaultStoreContractID", "@mozilla.org/msgstore/maildirstore;1");\n'
_MSF = b'// <!-- <mdb:mork:z v="1.4"/> -->\n< <(a=c)> // (f=iso-8859-1)\n'


def _tb_mbox(path: Path, msgs: list[Message]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for m in msgs:
            fh.write(f"From - {_when(m):%a %b %d %H:%M:%S %Y}\n".encode())  # Thunderbird's own separator
            fh.write(b"X-Mozilla-Status: 0001\nX-Mozilla-Status2: 00000000\n")
            body = io.BytesIO()
            BytesGenerator(body, mangle_from_=True, maxheaderlen=0).flatten(m)
            fh.write(body.getvalue() + b"\n")
    path.with_name(path.name + ".msf").write_bytes(_MSF)


def _tb_maildir(folder: Path, msgs: list[Message]) -> None:
    """Thunderbird's Maildir store: <Folder>/cur/<file> (and an empty tmp/), <Folder>.msf beside it."""
    (folder / "cur").mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(exist_ok=True)
    for m in msgs:
        stamp = int(_when(m).timestamp())
        (folder / "cur" / f"{stamp}.M{stamp % 1000000}P4242.maya-laptop").write_bytes(
            b"X-Mozilla-Status: 0001\n" + as_bytes(m))
    folder.with_name(folder.name + ".msf").write_bytes(_MSF)


def write_thunderbird(folder: Path, store: str = "maildir") -> Path:
    """A Thunderbird profile folder (what `panza ingest ~/.thunderbird/<profile>` is pointed at)."""
    prof = _fresh(folder) / ("k3x9f2ab.default-release" if store == "maildir" else "p7q1w0zz.default")
    prof.mkdir()
    (prof / "prefs.js").write_text(_PREFS + (_MAILDIR_STORE if store == "maildir" else ""))
    (prof / "times.json").write_text('{"created": 1735689600000}\n')
    local = prof / "Mail" / "Local Folders"
    local.mkdir(parents=True)
    mine = [m for m in messages() if is_maya(m)]
    theirs = [m for m in messages() if not is_maya(m)]
    imap_inbox = prof / "ImapMail" / "imap.lindqvist-studio.example" / "INBOX"
    (local / "Trash").write_bytes(b"")  # an empty folder file
    if store == "maildir":
        _tb_maildir(local / "Sent", mine[40:])
        (local / "Archives.sbd").mkdir()
        _tb_maildir(local / "Archives.sbd" / "2025", mine[:40])
        _tb_mbox(imap_inbox, theirs)  # one account whose folders stayed mbox files
    else:
        _tb_mbox(local / "Sent", mine[40:])
        _tb_mbox(local / "Archives.sbd" / "2025", mine[:40])
        _tb_mbox(imap_inbox, theirs)
    return prof


def write(fmt: str, folder: Path) -> Path:
    """Write the sample mailbox as `fmt` (one of FORMATS) under `folder`; return the path to ingest."""
    if fmt.startswith("takeout_"):
        return write_takeout(folder, fmt.split("_", 1)[1])
    if fmt.startswith("thunderbird_"):
        return write_thunderbird(folder, fmt.split("_", 1)[1])
    return {"mbox": write_mbox, "maildir": write_maildir, "eml": write_eml, "emlx": write_emlx}[fmt](folder)
