"""The writing profile: seeded from the user's mail (greeting, sign-off, name, length, languages), stored, edited."""

from __future__ import annotations

import json

from test_draft import add_message

from panza_local import profile, store
from panza_local.prompts import Profile


def _mail(conn):
    for i in range(6):
        add_message(conn, f"Hi Bob,\n\nThe numbers for week {i} are in the shared folder, see tab {i}.\n\nThanks,\nPhillip",
                    to="Bob <bob@example.org>", date=f"2001-0{i + 1}-02T10:00:00+00:00")
    for i in range(3):
        add_message(conn, f"Hello Jane,\n\nPlease review the gas curve {i} before noon and call me.\n\nThanks,\nPhillip",
                    to="jane@example.org")
    add_message(conn, "Grüße aus Houston, bis bald.\n\nPhillip", to="k@example.de")
    add_message(conn, "Not mine at all, from someone else entirely.", mine=False)
    conn.execute("UPDATE messages SET language = CASE WHEN body LIKE 'Grüße%' THEN 'de' ELSE 'en' END")


def test_seed_from_mail(home):
    conn = store.connect()
    _mail(conn)
    p = profile.seed(conn)
    assert p.greeting == "Hi <name>," and p.signoff == "Thanks,\nPhillip" and p.name == "Phillip"
    assert 10 <= p.typical_words <= 20 and p.languages[0] == "en"
    assert profile.greeting_for("Bob Stone <bob@example.org>", conn) == "Hi Bob,"
    assert profile.greeting_for("jane@example.org", conn) == "Hello Jane,"
    assert profile.greeting_for("nobody@example.org", conn) is None


def test_the_seeded_length_is_a_round_number_that_a_few_new_emails_do_not_move(home):
    assert [profile.round_words(n) for n in (0, 7, 31, 33, 47, 152, 437)] == [0, 7, 30, 35, 45, 150, 450]
    conn = store.connect()
    for i in range(9):  # bodies of 29 to 37 words: median 33
        add_message(conn, " ".join(["word"] * (29 + i)), to="bob@example.org", date=f"2001-01-{i + 1:02d}T10:00:00+00:00")
    before = profile.seed(conn).typical_words
    add_message(conn, " ".join(["word"] * 40), to="bob@example.org")  # the median moves to 33.5
    assert before == profile.seed(conn).typical_words == 35


def test_empty_store_gives_empty_profile_and_files_are_private(home):
    assert profile.load() == Profile()
    p = profile.set_value("signoff", "Best,\\nAnn")
    assert p.signoff == "Best,\nAnn" and profile.load(seed_if_missing=False).signoff == "Best,\nAnn"
    assert profile.path().stat().st_mode & 0o077 == 0


def test_profile_cli(home, capsys):
    from panza_local.cli import main

    conn = store.connect()
    _mail(conn)
    assert main(["profile", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["signoff"] == "Thanks,\nPhillip" and "not saved" in shown["source"]
    assert main(["profile", "set", "role", "Trader, West desk"]) == 0
    assert main(["profile", "set", "typical_words", "many"]) == 1
    assert "typical_words" in capsys.readouterr().err
    assert main(["profile", "set", "shoe_size", "9"]) == 1
    assert main(["profile", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["role"] == "Trader, West desk" and shown["source"] == str(profile.path())
    assert shown["greeting"] == "Hi <name>,"  # set started from the seeded profile, so nothing was lost


def test_seeded_greeting_is_filled_for_the_recipient(home):
    from panza_local import draft

    assert profile._named("Hi <name>,", "Carol Diaz <carol@example.org>") == "Hi Carol,"
    assert profile._named("Hi <name>,", "carol@example.org") == "Hi,"
    conn = store.connect()
    _mail(conn)
    plan = draft.prepare("Ask about lunch", to="Carol Diaz <carol@example.org>", use_rag=False, use_adapter=False)
    assert 'Start with "Hi Carol,"' in plan.messages[0]["content"] and "<name>" not in str(plan.messages)


def test_a_greeting_of_the_name_alone_is_filled_for_the_recipient(home):
    """allen-p opens 390 of his 606 emails with the name alone ("Lucy,"). Seeding does not learn it (given as the
    adapter's opening, it scored lower in his evaluation); set by hand ("<name>,"), it is filled like "Hi <name>,"."""
    from panza_local import draft, prompts

    conn = store.connect()
    for i, (name, addr) in enumerate([("Lucy", "lucy.gonzalez@enron.com"), ("Jeff", "jeff.richter@enron.com")] * 3):
        add_message(conn, f"{name},\n\nThe rent roll for week {i} is attached.  Call me with questions.\n\nPhillip",
                    to=addr, date=f"2001-0{i + 1}-02T10:00:00+00:00")
    assert profile.seed(conn).greeting == "" and profile.greeting_for("lucy.gonzalez@enron.com", conn) is None
    assert [profile.bare_name(x) for x in ("Lucy,", "John and Greg,", "Yes,", "Thanks,", "Hi,", "All,")] == \
        [True, True, False, False, False, False]
    profile.save(Profile(name="Phillip", greeting="<name>,"))
    assert profile._named("<name>,", "Keith Holst <kholst@enron.com>") == "Keith,"
    assert profile._named("<name>,", "pallen70@hotmail.com") == ""  # no name known: no greeting, not a bare ","
    plan = draft.prepare("Ask Keith whether the office is free", to="Keith Holst <kholst@enron.com>",
                         use_rag=False, use_adapter=False)
    assert 'Start with "Keith,"' in plan.messages[0]["content"] and prompts.opening(plan.profile) == "Keith,\n\n"
    plan = draft.prepare("Send the rent roll", to="pallen70@hotmail.com", use_rag=False, use_adapter=False)
    assert "Start with" not in plan.messages[0]["content"] and prompts.opening(plan.profile) == ""


def test_a_seeded_profile_follows_the_mail_as_it_comes_in(home):
    """Without profile.toml every draft's profile is seeded from the mail: kept while the store is unchanged
    (a warm server does not re-read thousands of emails per draft), read again once new mail is in."""
    conn = store.connect()
    _mail(conn)
    first = profile.load()
    assert first.signoff == "Thanks,\nPhillip" and profile.load() == first
    profile.load().languages.append("xx")  # a caller's copy
    assert "xx" not in profile.load().languages and profile.load() == first
    for i in range(30):
        add_message(conn, f"Hey Bob,\n\nWeek {i} is done, the curve {i} is in the folder.\n\nBest,\nPhil",
                    to="bob@example.org", date=f"2002-01-{i + 1:02d}T10:00:00+00:00")
    assert profile.load().signoff == "Best,\nPhil"
