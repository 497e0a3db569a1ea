"""The bundled sample mailbox: parses with the stdlib, is deterministic, and has one consistent voice."""

from __future__ import annotations

import datetime as dt
import email.utils
import mailbox
import statistics
from collections import Counter

import pytest

from panza_local import sample


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    path = sample.write_sample_mailbox(tmp_path_factory.mktemp("mail") / "maya.mbox")
    return path, list(mailbox.mbox(str(path)))


def _own_text(msg) -> str:
    """Maya's part of a message: everything above the quoted thread."""
    body = msg.get_payload()
    for marker in ("\nOn ", "-----Original Message-----"):
        body = body.split(marker)[0]
    return body.strip()


def _mine(msgs):
    return [m for m in msgs if sample.SAMPLE_ME in m["From"]]


def test_parses_with_stdlib_and_has_the_advertised_shape(box):
    path, msgs = box
    assert path.name == "maya.mbox"
    assert len(msgs) == sample.SAMPLE_COUNT == 150
    for m in msgs:
        for header in ("From", "To", "Date", "Subject", "Message-ID"):
            assert m[header], f"{header} missing"
        assert email.utils.parsedate_to_datetime(m["Date"]).tzinfo is not None
    assert len({m["Message-ID"] for m in msgs}) == len(msgs)
    mine = _mine(msgs)
    others = [m for m in msgs if sample.SAMPLE_ME not in m["From"]]
    assert len(mine) == 138 and len(others) == 12
    # Messages to Maya are addressed to her, and each is answered by one of hers (a real thread).
    ids = {m["Message-ID"] for m in others}
    assert all(sample.SAMPLE_ME in m["To"] for m in others)
    assert {m["In-Reply-To"] for m in mine if m["In-Reply-To"]} == ids


def test_is_deterministic(tmp_path):
    a = sample.write_sample_mailbox(tmp_path / "a.mbox").read_bytes()
    folder = tmp_path / "dir"
    folder.mkdir()
    b_path = sample.write_sample_mailbox(folder)
    assert b_path == folder / "sample.mbox"
    assert a == b_path.read_bytes()


def test_dates_spread_over_a_year_in_order(box):
    _, msgs = box
    dates = [email.utils.parsedate_to_datetime(m["Date"]) for m in msgs]
    assert dates == sorted(dates)
    assert (dates[-1] - dates[0]) > dt.timedelta(days=300)
    assert len({d.month for d in dates}) == 12


def test_replies_carry_quoted_threads_in_both_styles(box):
    _, msgs = box
    replies = [m for m in _mine(msgs) if m["Subject"].startswith("Re: ")]
    assert len(replies) == 20
    gmail = [m for m in replies if "wrote:\n>" in m.get_payload()]
    outlook = [m for m in replies if "-----Original Message-----" in m.get_payload()]
    assert len(gmail) + len(outlook) == 20 and len(gmail) >= 10 and len(outlook) >= 5
    fresh = [m for m in _mine(msgs) if not m["Subject"].startswith("Re: ")]
    assert not any(">" in m.get_payload() or "Original Message" in m.get_payload() for m in fresh)


def test_voice_is_consistent(box):
    _, msgs = box
    own = [_own_text(m) for m in _mine(msgs)]
    # Greeting: always "Hi <first name of the recipient>,"
    for m, text in zip(_mine(msgs), own):
        first = m["To"].split()[0]
        assert text.startswith(f"Hi {first},\n"), text[:40]
    assert all(t.endswith("Cheers,\nMaya") for t in own)
    assert sum("Let me know" in t for t in own) == len(own)
    words = [len(t.split()) for t in own]
    assert 40 <= statistics.median(words) <= 65
    assert min(words) >= 15 and max(words) <= 110
    assert statistics.pstdev(words) < 20
    # A handful of recurring correspondents, each written to more than once.
    counts = Counter(email.utils.parseaddr(m["To"])[1] for m in _mine(msgs))
    assert 5 <= len(counts) <= 8 and min(counts.values()) >= 5
    # Others do not write like Maya (so a style metric can tell them apart).
    theirs = [m.get_payload() for m in msgs if sample.SAMPLE_ME not in m["From"]]
    assert not any(t.rstrip().endswith("Cheers,\nMaya") for t in theirs)
    assert sum(t.startswith("Hi ") for t in theirs) < len(theirs) / 2


def test_topics_recur(box):
    _, msgs = box
    subjects = Counter(m["Subject"].removeprefix("Re: ").split(" - ")[0] for m in _mine(msgs))
    assert subjects.most_common(1)[0][1] >= 4
