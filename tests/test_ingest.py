"""Ingest end to end: every importer on real mail, authorship traps, de-dup, incremental re-runs, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import usermail

from panza_local import store
from panza_local.ingest import authorship, detect, ingest, mbox
from panza_local.ingest.clean import residual_markers
from panza_local.ingest.parse import Parsed

ALLEN = ["phillip.allen@enron.com", "k..allen@enron.com"]


def _check_accounting(s: dict) -> None:
    assert s.seen == s.stored + s.duplicates + sum(s.skipped.values()), s
    assert all(isinstance(k, str) and k and v > 0 for k, v in s.skipped.items())


def _residual_share(conn) -> float:
    rows = conn.execute("SELECT body FROM messages WHERE deleted = 0").fetchall()
    return sum(bool(residual_markers(r[0])) for r in rows) / max(1, len(rows))


@pytest.fixture
def conn(home):
    c = store.connect()
    yield c
    c.close()


def _mbox(path: Path, messages: list[tuple[str, str, str]], crlf: bool = False) -> Path:
    """Write an mbox of (from, subject, body) messages, mboxrd-escaping `From ` body lines."""
    out = []
    for i, (frm, subject, body) in enumerate(messages):
        body = "\n".join((">" + ln) if ln.lstrip(">").startswith("From ") else ln for ln in body.split("\n"))
        out.append(f"From {frm} Mon Jan  1 10:00:0{i % 10} 2024\nFrom: {frm}\nTo: bob@example.com\n"
                   f"Subject: {subject}\nMessage-ID: <m{i}.{abs(hash(subject))}@example.com>\n"
                   f"Date: Mon, 1 Jan 2024 10:00:0{i % 10} +0000\n\n{body}\n\n")
    text = "".join(out)
    path.write_bytes(text.replace("\n", "\r\n").encode() if crlf else text.encode())
    return path


# --- formats -------------------------------------------------------------------------------------

def test_mbox_split_handles_rd_content_length_and_unquoted_from(tmp_path):
    body = "line one\nFrom here on we differ.\nline three"
    p = _mbox(tmp_path / "a.mbox", [("me@example.com", "one", body), ("me@example.com", "two", "second body here")])
    items = list(mbox.read(p))
    assert len(items) == 2
    assert b"\nFrom here on we differ." in items[0].raw  # mboxrd escape undone
    # Content-Length (mboxcl2): a body line starting "From " after a blank line is not a separator
    body = b"first\n\nFrom x@y Mon Jan  1 10:00:00 2024\nX-Looks-Like: a header\n"
    msg = b"From: a@example.com\nSubject: cl\nContent-Length: %d\n\n" % len(body) + body
    cl = tmp_path / "cl.mbox"
    cl.write_bytes(b"From a@example.com Mon Jan  1 10:00:00 2024\n" + msg + b"\nFrom b@x Mon Jan  1 10:00:00 2024\n"
                   b"From: b@example.com\nSubject: next\n\nbody b\n")
    got = list(mbox.read(cl))
    assert len(got) == 2 and b"X-Looks-Like" in got[0].raw
    # CRLF mbox (Takeout style)
    crlf = _mbox(tmp_path / "c.mbox", [("x@example.com", f"s{i}", f"body number {i} here") for i in range(3)],
                 crlf=True)
    assert len(list(mbox.read(crlf))) == 3


@pytest.mark.parametrize("fmt,kind", [("maildir", "maildir"), ("eml", "eml"), ("takeout", "mbox"),
                                      ("emlx", "emlx"), ("thunderbird_profile", "thunderbird")])
def test_format_end_to_end(shared_data, conn, fmt, kind):
    """Each importer on allen-p's 1,746 messages: same counts whatever the container."""
    root = shared_data / "enron" / "formats" / fmt
    assert detect(root) in (kind, "folder")
    s = ingest(conn, [str(root)], ALLEN)
    _check_accounting(s)
    assert s.seen == 1746 and s.errors_total == 0
    assert 1040 <= s.stored <= 1060, s
    assert 600 <= s.mine <= 615, s
    mine_from = {r[0] for r in conn.execute("SELECT DISTINCT author FROM messages WHERE is_mine = 1")}
    assert mine_from <= set(ALLEN)
    assert _residual_share(conn) < 0.01
    dates = [r[0] for r in conn.execute("SELECT date FROM messages WHERE date IS NOT NULL")]
    assert len(dates) > 1000 and all(d.endswith("+00:00") for d in dates)  # ISO 8601, UTC
    again = ingest(conn, [str(root)], ALLEN)
    assert again.seen == 0 and again.stored == 0 and again.unchanged_files >= 1


def test_jsonl_corpus_is_all_mine(shared_data, conn):
    src = shared_data / "panza" / "david_anonymous_clean.jsonl"
    lines = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    s = ingest(conn, [str(src)], [])
    _check_accounting(s)
    assert s.seen == len(lines)
    assert s.stored + s.duplicates == len(lines)
    assert conn.execute("SELECT count(*) FROM messages WHERE is_mine = 0").fetchone()[0] == 0
    first = conn.execute("SELECT body, subject FROM messages ORDER BY id LIMIT 1").fetchone()
    assert first["body"].startswith(lines[0]["email"].replace("\r\n", "\n")[:40])
    assert first["subject"] == lines[0]["subject"]


# --- authorship -------------------------------------------------------------------------------------

def test_authorship_rules():
    me = {"boss@example.com"}
    # an assistant sending on the boss's behalf is not the boss
    p = Parsed(from_addr="boss@example.com", sender="assistant@example.com")
    assert not authorship.is_mine(authorship.authors(p), me)
    assert authorship.is_mine(authorship.authors(p), {"assistant@example.com"})
    # list-rewritten From: the author is in Reply-To
    p = Parsed(from_addr="users@lists.example.org", from_name="Boss via Users", list_post="users@lists.example.org",
               list_id="<users.lists.example.org>", reply_to=["boss@example.com"], sender="users-bounces@lists.example.org")
    assert authorship.is_mine(authorship.authors(p), me)
    # a list that does not rewrite From but sets a bounce Sender: still the author's
    p = Parsed(from_addr="boss@example.com", sender="users-bounces@lists.example.org", list_id="<users.example.org>")
    assert authorship.is_mine(authorship.authors(p), me)
    assert authorship.normalise_me(["Boss <BOSS@example.com>", "x"]) == {"boss@example.com"}


def test_allen_full_mailbox_only_his_messages(shared_data, conn):
    s = ingest(conn, [str(shared_data / "enron" / "full" / "allen-p")], ALLEN)
    _check_accounting(s)
    rows = conn.execute("SELECT author, is_mine, from_addr FROM messages").fetchall()
    mine = [r for r in rows if r["is_mine"]]
    assert len(mine) > 550
    assert all(r["author"] in ALLEN for r in mine)
    assert not [r for r in rows if not r["is_mine"] and r["author"] in ALLEN]
    assert len(rows) > len(mine) + 300  # the rest of the mailbox is kept as thread context
    assert _residual_share(conn) < 0.01


def test_lay_k_assistant_is_not_the_boss(shared_data, conn):
    files = sorted(str(p) for p in (shared_data / "enron" / "sent").glob("enron.lay-k.*.mbox"))
    s = ingest(conn, files, ["kenneth.lay@enron.com"])
    _check_accounting(s)
    assert conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1 AND from_addr LIKE 'rosalee%'"
                        ).fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM messages WHERE is_mine = 0 AND from_addr LIKE 'rosalee%'"
                        ).fetchone()[0] > 100
    assert 0 < s.mine <= 13


def test_mailing_list_rewritten_from(shared_data, conn):
    s = ingest(conn, [str(shared_data / "usrp" / "rob_kossler" / "Maildir")], ["rkossler@nd.edu"])
    _check_accounting(s)
    assert s.seen == 648
    assert s.mine >= 630  # ~45% of these have From rewritten to the list address
    assert conn.execute("SELECT count(*) FROM messages WHERE body LIKE '%mailing list%listinfo%'").fetchone()[0] == 0
    assert _residual_share(conn) < 0.01


LIST_FOOTER = ("\n_______________________________________________\nGardeners mailing list\n"
               "gardeners@lists.example.org\nhttps://lists.example.org/mailman/listinfo/gardeners\n")


def _as(raw: bytes, footer: str = "", **headers: str) -> bytes:
    """`raw` with headers replaced (Reply_To -> Reply-To) and a footer under its body."""
    import email

    m = email.message_from_bytes(raw)
    for key, value in headers.items():
        del m[key.replace("_", "-")]
        m[key.replace("_", "-")] = value
    if footer:
        m.set_payload(m.get_payload(decode=True).decode() + footer, "utf-8")
    return m.as_bytes()


def test_assistant_and_list_traps_on_project_mail(tmp_path, conn):
    """The lay-k and mailing-list traps of ../shared, on the sample person's mail: her assistant sends from
    her address (Sender: the assistant) and is not her; a list that rewrites From to its own address (the
    author in Reply-To, a bounce Sender, a Mailman footer) and one that keeps From but sets a bounce Sender
    are both still hers, without the footer."""
    me = usermail.ME
    hers = [r for r in usermail.messages(150) if me.encode() in r.split(b"\n\n", 1)[0].split(b"To:", 1)[0]]
    assert len(hers) >= 120
    third = len(hers) // 3
    bounce = "gardeners-bounces@lists.example.org"
    lst = {"List_Id": "Gardeners <gardeners.lists.example.org>", "List_Post": "<mailto:gardeners@lists.example.org>"}
    raws = ([_as(r, Sender="Ola Berg <ola@lindqvist-studio.example>") for r in hers[:third]]
            + [_as(r, LIST_FOOTER, From="Maya Lindqvist via Gardeners <gardeners@lists.example.org>",
                   Reply_To=f"Maya Lindqvist <{me}>", Sender=bounce, **lst) for r in hers[third:2 * third]]
            + [_as(r, LIST_FOOTER, Sender=bounce, **lst) for r in hers[2 * third:]])
    s = ingest(conn, [str(usermail.mbox(tmp_path / "sent.mbox", raws))], [me])
    _check_accounting(s)
    assert s.stored >= len(raws) - 3, s  # a body repeated within the year is folded, nothing else dropped
    rows = conn.execute("SELECT from_addr, is_mine, body FROM messages").fetchall()
    by_assistant = [r for r in rows if not r["is_mine"]]
    assert len(by_assistant) >= third - 1 and all(r["from_addr"] == me for r in by_assistant)
    assert s.mine == len(rows) - len(by_assistant) >= 2 * third - 2
    assert sum(r["from_addr"] == "gardeners@lists.example.org" for r in rows if r["is_mine"]) >= third - 1
    assert not [r for r in rows if "listinfo" in r["body"] or "mailing list" in r["body"]]


def test_new_address_relabels_without_reparsing(tmp_path, conn):
    p = _mbox(tmp_path / "sent.mbox", [("me@example.com", "a", "first message with enough words"),
                                       ("other@example.com", "b", "second message with enough words")])
    s = ingest(conn, [str(p)], [])
    assert s.mine == 0
    s2 = ingest(conn, [str(p)], ["me@example.com"])
    assert s2.seen == 0 and s2.reassigned == 1
    assert conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1").fetchone()[0] == 1


# --- incremental ----------------------------------------------------------------------------------------

def test_grown_changed_and_deleted_files(tmp_path, conn):
    msgs = [("me@example.com", f"subject {i}", f"message number {i} says something new") for i in range(6)]
    box = _mbox(tmp_path / "sent.mbox", msgs[:4])
    s = ingest(conn, [str(box)], ["me@example.com"])
    assert (s.seen, s.stored) == (4, 4)
    # grown: only the new messages are read
    _mbox(tmp_path / "sent.mbox", msgs)
    s = ingest(conn, [str(box)], ["me@example.com"])
    assert (s.seen, s.stored, s.duplicates) == (2, 2, 0)
    # changed (first message deleted by the mail client): re-read, the gone one marked deleted
    _mbox(tmp_path / "sent.mbox", msgs[1:])
    os.utime(box, ns=(1, 1))
    s = ingest(conn, [str(box)], ["me@example.com"])
    assert s.deleted == 1 and s.stored == 0 and s.duplicates == 5
    live = conn.execute("SELECT count(*) FROM messages WHERE deleted = 0").fetchone()[0]
    assert live == 5
    # a file that disappears: its messages are marked deleted, not left behind
    other = _mbox(tmp_path / "mail" / "x.mbox" if (tmp_path / "mail").mkdir() is None else None,
                  [("me@example.com", "z", "a message in another folder here")])
    ingest(conn, [str(tmp_path / "mail")], ["me@example.com"])
    other.unlink()
    s = ingest(conn, [str(tmp_path / "mail")], ["me@example.com"])
    assert s.deleted == 1


def test_duplicates_across_folders_and_sources(conn, tmp_path):
    files = [str(usermail.mbox(tmp_path / f"{tag}.mbox", usermail.messages(300, tag=tag))) for tag in ("a", "b")]
    s = ingest(conn, files, [usermail.ME])
    _check_accounting(s)
    assert s.duplicates > 250  # the two folders hold the same mail under different Message-IDs
    n = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    s2 = ingest(conn, [str(usermail.maildir(tmp_path / "Sent", 400, tag="c"))], [usermail.ME])
    assert s2.stored < s2.seen // 2  # the same user's mail again, in another container
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] - n == s2.stored


def test_ctrl_c_then_rerun_gives_the_same_counts(tmp_path, conn, monkeypatch):
    import panza_local.ingest as ing

    root = usermail.maildir(tmp_path / "Sent", 300)
    monkeypatch.setattr(ing, "BATCH", 40)
    calls = {"n": 0}

    def interrupt(done, total, note):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(conn, [str(root)], [usermail.ME], interrupt)
    partial = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert 0 < partial
    ingest(conn, [str(root)], [usermail.ME])
    got = conn.execute("SELECT count(*), sum(is_mine) FROM messages").fetchone()
    fresh = store.connect(tmp_path / "fresh.db")
    ingest(fresh, [str(root)], [usermail.ME])
    want = fresh.execute("SELECT count(*), sum(is_mine) FROM messages").fetchone()
    assert tuple(got) == tuple(want)
    assert conn.execute("SELECT count(*) FROM (SELECT content_hash FROM messages GROUP BY content_hash "
                        "HAVING count(*) > 1)").fetchone()[0] == 0
    assert conn.execute("SELECT status FROM runs ORDER BY id LIMIT 1").fetchone()[0] == "interrupted"


# --- robustness ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_tricky_file(shared_data, conn):
    s = ingest(conn, [str(shared_data / "tricky")], [])
    _check_accounting(s)
    n_files = sum(1 for p in (shared_data / "tricky").rglob("*") if p.is_file())
    assert s.seen >= n_files - 5  # every file is seen (mbox files hold several messages)
    assert "unparsable" not in s.skipped, s.errors
    assert s.stored > 300
    assert _residual_share(conn) < 0.01
    # charsets and RFC 2047 subjects come out as text
    subjects = [r[0] for r in conn.execute("SELECT subject FROM messages")]
    assert not [x for x in subjects if x and "=?" in x and "?=" in x]


def test_single_bad_message_is_counted_not_fatal(tmp_path, conn):
    d = tmp_path / "mail"
    d.mkdir()
    (d / "good.eml").write_bytes(b"From: me@example.com\nSubject: hi\nMessage-ID: <g@x>\n\nA good message body here.\n")
    (d / "headers-only.eml").write_bytes(b"From: me@example.com\nSubject: nothing\n\n")
    (d / "bad-charset.eml").write_bytes(b"From: me@example.com\nSubject: =?x-bogus?q?caf=E9?=\n"
                                        b"Content-Type: text/plain; charset=x-bogus\n\ncaf\xe9 au lait pour tous\n")
    (d / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    s = ingest(conn, [str(d)], ["me@example.com"])
    _check_accounting(s)
    assert s.seen == 4 and s.stored == 2
    assert s.skipped == {"empty_after_cleaning": 1, "not_mail": 1}
    body = conn.execute("SELECT body FROM messages WHERE body LIKE 'caf%'").fetchone()[0]
    assert body.startswith("café")


def test_html_only_message_becomes_text(tmp_path, conn):
    html = ("<html><body><p>Hello Bob,</p><p>The <b>meeting</b> moved to Friday.</p>"
            "<div class='gmail_quote'>On Mon, Bob wrote:<blockquote>old text</blockquote></div></body></html>")
    (tmp_path / "h.eml").write_text("From: me@example.com\nSubject: html\nContent-Type: text/html; charset=utf-8\n\n"
                                    + html)
    ingest(conn, [str(tmp_path / "h.eml")], ["me@example.com"])
    row = conn.execute("SELECT body, thread, html_only FROM messages").fetchone()
    assert "moved to Friday" in row["body"] and "<" not in row["body"] and "old text" not in row["body"]
    assert "old text" in row["thread"] and row["html_only"] == 1


def test_documents(tmp_path, conn):
    import docx

    d = tmp_path / "docs"
    d.mkdir()
    (d / "notes.md").write_text("# Trip notes\n\nWe visited the plant on Tuesday.\n")
    (d / "page.html").write_text("<html><head><title>Policy</title></head><body><p>Remote work is fine.</p></body></html>")
    doc = docx.Document()
    doc.add_paragraph("Quarterly plan: hire two engineers.")
    doc.save(d / "plan.docx")
    (d / "utf16.txt").write_bytes("Bonjour à tous".encode("utf-16"))
    (d / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    s = ingest(conn, [str(d)], [])
    _check_accounting(s)
    assert s.documents == 4 and s.skipped == {"unreadable_pdf": 1}
    assert s.errors[0]["path"].endswith("broken.pdf")
    docs = {Path(r["path"]).name: r for r in conn.execute("SELECT * FROM documents")}
    assert docs["notes.md"]["title"] == "Trip notes"
    assert docs["page.html"]["title"] == "Policy" and "Remote work" in docs["page.html"]["text"]
    assert "hire two engineers" in docs["plan.docx"]["text"]
    assert docs["utf16.txt"]["text"] == "Bonjour à tous"
    (d / "notes.md").unlink()
    s = ingest(conn, [str(d)], [])
    assert s.deleted == 1 and s.seen == 0


@pytest.mark.slow
def test_shared_documents(shared_data, conn):
    s = ingest(conn, [str(shared_data / "docs")], [])
    _check_accounting(s)
    assert s.documents > 90
    assert s.skipped.get("encrypted_pdf") == 2
    assert all(e["reason"] for e in s.errors)


# --- CLI ------------------------------------------------------------------------------------------------

def test_cli_ingest_json_and_export(home, tmp_path, capsys):
    from panza_local.cli import main

    src = usermail.mbox(tmp_path / "sent_items.mbox", usermail.messages(150))
    assert main(["ingest", str(src), "--json"]) == 1  # no address known: says what to do
    err = capsys.readouterr().err
    assert "--me" in err and "@" not in err  # no addresses in error messages unless debug
    assert main(["ingest", "--guess-me", str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"][0]["address"] == usermail.ME
    assert main(["ingest", str(src), "--me", usermail.ME, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("seen", "stored", "duplicates", "skipped", "errors"):
        assert key in out
    assert out["seen"] == out["stored"] + out["duplicates"] + sum(out["skipped"].values())
    assert main(["ingest", str(src), "--json"]) == 0  # the addresses were saved
    assert json.loads(capsys.readouterr().out)["seen"] == 0
    dest = tmp_path / "mine.jsonl"
    assert main(["messages", "export", str(dest)]) == 0
    rows = [json.loads(x) for x in dest.read_text().splitlines()]
    assert len(rows) == out["mine"]
    assert set(rows[0]) == {"id", "date", "from", "to", "subject", "body", "thread", "source", "language"}
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert main(["messages", "show", str(rows[0]["id"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["body"] == rows[0]["body"]


def test_cli_sources_add_list_remove(tmp_path, home, capsys):
    from panza_local.cli import main

    box = _mbox(tmp_path / "s.mbox", [("me@example.com", "a", "a registered source message")])
    assert main(["sources", "add", str(box), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"][0]["kind"] == "mbox"
    assert main(["ingest", "--me", "me@example.com", "--json"]) == 0  # no SOURCE: the registered ones
    assert json.loads(capsys.readouterr().out)["stored"] == 1
    assert main(["sources", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"][0]["mine"] == 1
    assert main(["sources", "remove", str(box), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages_deleted"] == 1
    assert main(["ingest", str(tmp_path / "missing.mbox")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_only_mine_and_language_filters_are_counted(tmp_path, conn):
    box = _mbox(tmp_path / "mixed.mbox", [
        ("me@example.com", "en", "Thanks for the update, I will send the report to you on Monday."),
        ("me@example.com", "de", "Vielen Dank, ich schicke dir die Unterlagen und wir sehen uns morgen."),
        ("other@example.com", "x", "Please send me the report for the meeting on Monday."),
    ])
    s = ingest(conn, [str(box)], ["me@example.com"], only_mine=True, languages=["en"])
    _check_accounting(s)
    assert s.skipped == {"not_mine": 1, "language": 1} and s.stored == 1
    s = ingest(fresh := store.connect(tmp_path / "all.db"), [str(box)], ["me@example.com"])
    langs = dict(fresh.execute("SELECT subject, language FROM messages").fetchall())
    assert langs == {"en": "en", "de": "de", "x": "en"} and s.mine == 2
