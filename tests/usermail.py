"""A user's own emails for tests that need real writing: from ../shared/data when it is there, else the
project's sample mailbox (sample.py), so that a fresh clone runs these tests instead of skipping them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SHARED, needs_shared

MARCUS = SHARED / "panza" / "marcus_anonymous_clean.jsonl"


def sample_emails(seed: int | None = None, *, mine_only: bool = True) -> list[dict]:
    """{"subject", "email"} of the sample mailbox (`seed`: another year of the same person's mail); with
    `mine_only`, only Maya's own emails that quote no thread."""
    from panza_local import sample

    msgs = sample.sample_messages() if seed is None else sample.sample_messages(seed)
    return [{"subject": m["Subject"], "email": m.get_payload(decode=True).decode("utf-8").strip()} for m in msgs
            if not mine_only or (sample.SAMPLE_ME in m["From"] and not m["Subject"].startswith("Re:"))]


def user_emails(n: int, who: str = "") -> list[dict]:
    """`n` emails of one user: Marcus's from ../shared/data when it is there (or `who="marcus"`, which skips
    without it), else (or `who="maya"`) the sample person's own."""
    if who == "marcus":
        needs_shared(MARCUS)
    if who != "maya" and MARCUS.is_file():
        rows = [json.loads(line) for line in MARCUS.read_text(encoding="utf-8").splitlines()]
        rows = [{"subject": d.get("subject"), "email": d["email"].strip()} for d in rows if d.get("email", "").strip()]
    else:
        rows = sample_emails()
    return rows[:n]


def jsonl(name: str, tmp_dir, rows: int = 200) -> Path:
    """The Panza-style JSONL ../shared/data/panza/`name` when it is there, else one written to `tmp_dir` from
    the sample person's own emails (the same {"subject", "email"} lines)."""
    path = SHARED / "panza" / name
    if path.is_file():
        return path
    out = Path(tmp_dir) / "maya_sample.jsonl"
    out.write_text("".join(json.dumps(d) + "\n" for d in sample_emails()[:rows]), encoding="utf-8")
    return out


ME = "maya@lindqvist-studio.example"  # sample.SAMPLE_ME: the sample person, whose mail mail_files writes


def messages(n: int, start: int = 0, tag: str = "m") -> list[bytes]:
    """Messages `start` to `start + n` of an endless sample mailbox (another year of the sample person's mail,
    her own and the few she received, every 150), as raw bytes, each with a Message-ID of its own (another
    `tag`: the same mail under other Message-IDs, as a second folder of a mail client keeps it). A body can
    repeat across years now and then (ingest folds those, as it folds a real mailbox's copies)."""
    from panza_local import sample

    out: list[bytes] = []
    year = start // sample.SAMPLE_COUNT
    while len(out) < n:
        for i, m in enumerate(sample.sample_messages(1000 + year)):
            k = year * sample.SAMPLE_COUNT + i
            if start <= k < start + n:
                del m["Message-ID"]
                m["Message-ID"] = f"<{tag}{k}@usermail.test>"
                out.append(m.as_bytes())
        year += 1
    return out


def maildir(root: Path, n: int, start: int = 0, tag: str = "m") -> Path:
    """A Maildir at `root` holding `messages(n, start, tag)`."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for k, raw in enumerate(messages(n, start, tag), start):
        (root / "cur" / f"{k}.usermail:2,S").write_bytes(raw)
    return root


def mbox(path: Path, raws: list[bytes]) -> Path:
    """An mbox file of the raw messages (From_ lines quoted as mboxrd does)."""
    import mailbox

    box = mailbox.mbox(str(path))
    for raw in raws:
        box.add(raw)
    box.flush()
    box.close()
    return path


def malformed(root: Path, n_good: int = 300) -> Path:
    """A folder of broken mail as parsers meet it, each kind a few times with the sample person's words in it
    (so that a leak of its subject, address or body can be found), beside `n_good` whole messages: bad and
    unknown charsets, truncated base64 and quoted-printable, a multipart without its closing boundary or with
    no boundary at all, undecodable encoded-words, NUL bytes, 8-bit bodies with no charset, a 5,000-character
    header line, no From, no headers, an empty file and a binary one."""
    root.mkdir(parents=True, exist_ok=True)
    good = messages(n_good, start=5000)
    for k, raw in enumerate(good):
        (root / f"good{k:04d}.eml").write_bytes(raw)
    import email

    for k, raw in enumerate(good[:24]):
        m = email.message_from_bytes(raw)
        subj, frm = str(m["Subject"]), str(m["From"])
        body = m.get_payload(decode=True) or b""
        kind = k % 12
        head = f"From: {frm}\r\nTo: tom.becker@example.org\r\nSubject: {subj} #{k}\r\nDate: Mon, 3 Mar 2025 10:{k:02d}:00 +0000\r\n"
        if kind == 0:
            out = head + "Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n" + body.decode() + "\r\n"
        elif kind == 1:
            import base64

            b64 = base64.b64encode(body).decode()
            out = head + "Content-Transfer-Encoding: base64\r\nContent-Type: text/plain\r\n\r\n" + b64[:len(b64) // 2 - 1]
        elif kind == 2:
            out = (head + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\n--zz\r\n'
                   "Content-Type: text/plain\r\n\r\n" + body.decode() + "\r\n--zz\r\nContent-Type: text/plain\r\n\r\n")
        elif kind == 3:
            out = head + "MIME-Version: 1.0\r\nContent-Type: multipart/alternative\r\n\r\n" + body.decode()
        elif kind == 4:
            out = head.replace(f"Subject: {subj}", f"Subject: =?utf-8?B?{subj[:20]}!!?= =?x-bad?Q?{subj[20:]}?=")
            out += "\r\n" + body.decode()
        elif kind == 5:
            out = head + "\r\n" + body.decode().replace(" ", "\x00 ", 3)
        elif kind == 6:
            data = (head + "Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode()
            (root / f"bad{k:02d}.eml").write_bytes(data + body.replace(b"e", b"\xe9\xff") + b"\r\n")
            continue
        elif kind == 7:
            out = head + "X-Long: " + "x" * 5000 + "\r\n\r\n" + body.decode()
        elif kind == 8:
            out = head.split("\r\n", 1)[1] + "\r\n" + body.decode()  # no From
        elif kind == 9:
            out = body.decode()  # a body and no headers at all
        elif kind == 10:
            out = (head + "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                   + body.decode().replace("e", "=E").replace("a", "=ZZ") + "=")
        else:
            (root / f"bad{k:02d}.eml").write_bytes(b"" if k % 2 else bytes(range(256)) * 40)
            continue
        (root / f"bad{k:02d}.eml").write_text(out, encoding="utf-8")
    return root
