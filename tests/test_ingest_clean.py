"""Cleaning: one golden fixture per pattern, plus the reply-parser corpora in ../shared/data/tricky."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import usermail
from conftest import SHARED, needs_shared

from panza_local.ingest.clean import clean, content_hash, language, residual_markers

FIXTURES = Path(__file__).parent / "fixtures" / "ingest" / "clean"
NO_THREAD = {"not_a_quote", "sig_dash", "sig_block", "name_card", "mobile_footer", "disclaimer", "list_footer"}
CASES = sorted(p.name[:-len(".in.txt")] for p in FIXTURES.glob("*.in.txt"))


def test_there_is_a_golden_file_per_pattern():
    assert len(CASES) >= 15
    for name in CASES:
        assert (FIXTURES / f"{name}.body.txt").is_file(), name


@pytest.mark.parametrize("name", CASES)
def test_golden(name):
    text = (FIXTURES / f"{name}.in.txt").read_text(encoding="utf-8")
    want = (FIXTURES / f"{name}.body.txt").read_text(encoding="utf-8").strip()
    got = clean(text)
    assert got.body == want
    assert residual_markers(got.body) == []
    if name not in NO_THREAD:
        assert got.thread, "the quoted part is kept as thread context"


def test_thread_keeps_the_quoted_text():
    got = clean((FIXTURES / "on_wrote_en.in.txt").read_text())
    assert "Could you check the Q1 numbers?" in got.thread
    assert "wrote:" in got.thread


def test_crlf_and_control_characters():
    got = clean("Hello there,\r\nall good.\x00\x07\r\n\r\n> quoted\r\n")
    assert got.body == "Hello there,\nall good."


def test_content_hash_ignores_case_spacing_and_punctuation():
    assert content_hash("Hello,  World!\n") == content_hash("hello world")
    assert content_hash("hello world") != content_hash("hello there world")


@pytest.mark.parametrize("text,lang", [
    ("Thanks for the update, I will send the report to you on Monday.", "en"),
    ("Vielen Dank, ich schicke dir die Unterlagen und wir sehen uns auch morgen.", "de"),
    ("Merci pour votre message, je vous envoie le document dans la journée.", "fr"),
    ("Gracias por el mensaje, te envío los documentos para la reunión.", "es"),
    ("Спасибо за письмо, я пришлю документы завтра.", "ru"),
    ("明日の会議の資料を送ります。よろしくお願いします。", "ja"),
])
def test_language(text, lang):
    assert language(text) == lang


def test_reply_parser_corpora(shared_data):
    """Every reply-parser fixture whose reply is the 'Fusce bibendum' paragraph comes out as just that."""
    files = sorted((shared_data / "tricky" / "reply_parsers").rglob("*.txt"))
    assert len(files) > 100
    checked = 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        got = clean(text)
        assert residual_markers(got.body) == [], f.name
        if text.startswith("Fusce bibendum"):
            checked += 1
            assert got.body.startswith("Fusce bibendum"), f.name
            assert len(got.body) < 600, f.name  # the reply is ~560 chars; more means quoted text leaked in
    assert checked >= 40


@pytest.mark.parametrize("corpus", ["project", "panza"])
def test_clean_corpora_pass_through_unchanged(corpus):
    """Clean emails stay whole: the cleaner must not cut anything out of them. `project`: two years of the
    sample person's own emails; `panza`: the Panza corpora in ../shared/data (skipped without it)."""
    import json

    from panza_local.ingest.clean import _tidy, normalise

    if corpus == "panza":
        texts = [json.loads(line)["email"] for f in sorted(needs_shared(SHARED / "panza").glob("*.jsonl"))
                 for line in f.read_text(encoding="utf-8").splitlines()]
        assert len(texts) > 1500
    else:
        texts = [r["email"] for seed in (None, 7) for r in usermail.sample_emails(seed)]
        assert len(texts) > 200
    same = sum(clean(text).body == _tidy(normalise(text)) for text in texts)
    assert same / len(texts) >= 0.99


def test_a_threads_gist_is_what_was_said_without_the_quoted_headers():
    """playback reads a reply's thread through `gist`: the quoted header is ~150 characters of names and dates
    that would take the prompt's budget (and half its tokens) before the first word of the message replied to."""
    from panza_local.ingest.clean import gist

    outlook = ("-----Original Message-----\nFrom: \tFraser, Bryce\nSent:\tWednesday, September 05, 2001 2:26 PM\n"
               "To:\tBass, Eric\nCc: Lee, Ann\nSubject:\tRE: venture\n\nEric - it was good to see you again.\n\n"
               "-----Original Message-----\nFrom: Bass, Eric\nSent: Tuesday\n\nolder words")
    assert gist(outlook, 300) == ("From Bryce Fraser: venture. Eric - it was good to see you again. From Eric Bass: "
                                  "older words")
    assert gist(outlook, 40) == "From Bryce Fraser: venture. Eric - it wa"
    assert gist("From: Larry Bass [mailto:lwb@x.net]\nSent: Monday\nTo: Eric\n\nHow was Austin?", 300) == \
        "From Larry Bass: How was Austin?"
    gmail = "On Mon, 3 Jan 2022 at 10:00, Ann Lee <ann@x.com> wrote:\n> Can we meet on Friday?\n>\n> Ann\n"
    assert gist(gmail, 300) == "Can we meet on Friday? Ann"
    notes = "Phillip K Allen  12/13/2000 02:14 PM\nTo: John Arnold\ncc: \nSubject: gas\n\nPlease call me."
    assert gist(notes, 300) == "gas. Please call me."
    assert gist("", 300) == ""
    for name in CASES:
        if name in NO_THREAD:
            continue
        thread = clean((FIXTURES / f"{name}.in.txt").read_text(encoding="utf-8")).thread
        got = gist(thread, 300)
        assert got and len(got) <= 300, name
        assert not re.search(r"(?i)\b(?:sent|to|cc|date):|original message|\bwrote:|^>|@|mailto", got), (name, got)
