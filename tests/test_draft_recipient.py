"""A draft without a recipient: the person the instruction addresses, looked up among the people the user writes
to, and a subject that says what the email is about rather than repeating the order given to the assistant."""

from __future__ import annotations

import pytest
from test_draft import add_message

from panza_local import draft, ingest, profile, prompts, store
from panza_local.sample import write_sample_mailbox


@pytest.mark.parametrize("instruction, subject", [
    ("Ask Bob to move our meeting to Friday", "Move our meeting to Friday"),
    ("Invite Hannah to book club at mine on Thursday at 7:30", "Book club at mine on Thursday at 7:30"),
    ("Thank Jonas for the quick delivery and ask for the invoice", "Thanks for the quick delivery"),
    ("thank tom!", "Thanks"),
    ("Tell Priya I can't make the garden meeting on Wednesday, but Tom can go", "I can't make the garden meeting on Wednesday"),
    ("Ask Hannah if she can bring the new book to club next week", "Bring the new book to club next week"),
    ("Let Sam know that the plans are ready", "The plans are ready"),
    ("Reply to Tom about the invoice", "The invoice"),
    ("Email everyone the minutes", "The minutes"),
    ("Ask the team to send their slides by Thursday for the board review", "Send their slides by Thursday for the board review"),
    ("Tell the board that the audit is done", "The audit is done"),
    ("Ask the question again", "Ask the question again"),  # "the" and no group: as written
    ("Ask Bob.", "Ask Bob"),  # nothing after the person: the instruction itself
    ("Send the invoice to Jonas", "Send the invoice to Jonas"),  # no person after the verb: as written
    ("write a note about the budget review for next quarter and the one after that",
     "Write a note about the budget review for next quarter"),
    ("one two three four five six seven eight nine ten eleven twelve", "One two three four five six seven eight nine ten ..."),
])
def test_subject_says_what_the_email_is_about(instruction, subject):
    assert prompts.subject_line(instruction) == subject


def test_the_person_an_instruction_addresses():
    named = {"Ask Priya to send the list": "Priya", "please let Sam know": "Sam", "Reply to O'Neil about it": "O'Neil",
             "Write back to Jonas": "Jonas", "Follow up with Hannah's team": "Hannah", "Ask him about it": "",
             "Email everyone": "", "Tell the team": "", "Move the meeting to Friday": "", "": ""}
    assert {k: prompts.addressed_name(k) for k in named} == named


@pytest.fixture
def sample_home(home):
    """The quickstart's sample person's mailbox, ingested for real (display names and all)."""
    conn = store.connect()
    box = write_sample_mailbox(home / "sample.mbox")
    ingest.ingest(conn, [str(box)], me=["maya@lindqvist-studio.example"])
    yield conn
    conn.close()


def test_the_named_person_is_found_among_the_people_the_user_writes_to(sample_home):
    conn = sample_home
    to, several = profile.recipient_named("Ask Priya to send me the seed order list by Monday", conn)
    assert several == [] and profile.address_of(to).startswith("priya.") and to.startswith("Priya ")
    assert profile.recipient_named("Thank jonas for the delivery", conn)[0].startswith("Jonas ")
    assert profile.recipient_named("Ask Zed about the car", conn) == ("", [])  # never written to
    assert profile.recipient_named("Move the meeting to Friday", conn) == ("", [])  # names nobody


def test_requests_name_people_as_their_to_header_did(home):
    """A request names the recipient the way the user's own To: headers did ("Email to José Núñez: ..."), in
    the user's own letters (not as an RFC 2047 word); someone only ever written to by address stays an address;
    the draft's To: is what was given."""
    from panza_local import config

    conn = store.connect()
    add_message(conn, "Hola José, the tiles came.", to="José Núñez <jose@example.org>")
    add_message(conn, "Hi, the invoice is attached.", to="desk@example.org")
    add_message(conn, "Hi Jonas, the plans.", to='"Berg, Jonas" <jonas@example.org>')
    assert profile.recipient_named("Ask José about the tiles", conn) == ("José Núñez <jose@example.org>", [])
    assert profile.display_names(conn) == {"jose@example.org": "José Núñez", "jonas@example.org": "Berg, Jonas"}
    # a draft asks for its own recipients' only (any case), from the rows that name them
    assert profile.display_names(addresses=["JOSE@example.org", "desk@example.org", "nobody@example.org"]) == \
        {"jose@example.org": "José Núñez"}
    settings = config.load({"n_ctx": 2048, "threads": 1, "max_tokens": 8, "temperature": 0.0})

    def request(to):
        plan = draft.prepare("Ask about the tiles", to=to, use_rag=False, use_adapter=False, settings=settings)
        assert plan.to == to
        return plan.messages[-1]["content"]

    assert request("jose@example.org").startswith("Email to José Núñez: ")
    assert request("Pepe <jose@example.org>").startswith("Email to Pepe: ")  # a name given is kept
    assert request("desk@example.org").startswith("Email to desk@example.org: ")
    assert request("jonas@example.org").startswith("Email to Berg, Jonas: ")
    assert profile.with_names("jonas@example.org, desk@example.org", profile.display_names(conn)) == \
        '"Berg, Jonas" <jonas@example.org>, desk@example.org'
    add_message(conn, "Hi Desk team, thanks.", to="Desk Team <desk@example.org>")  # new mail names them
    assert request("desk@example.org").startswith("Email to Desk Team: ")


def test_two_people_of_one_name_are_not_guessed_between(home):
    conn = store.connect()
    add_message(conn, "Hi Ann, see you.", to="Ann Lee <ann.lee@example.org>", date="2024-01-01T10:00:00+00:00")
    add_message(conn, "Hi Ann, thanks.", to="Ann Roe <ann.roe@example.org>", date="2024-01-02T10:00:00+00:00")
    to, several = profile.recipient_named("Ask Ann about the report", conn)
    assert to == "" and sorted(several) == ["Ann Lee <ann.lee@example.org>", "Ann Roe <ann.roe@example.org>"]
    for i in range(3):  # written to three times as often as the other Ann: that is the one
        add_message(conn, f"Hi Ann, note {i}.", to="ann.lee@example.org", date=f"2024-02-0{i + 1}T10:00:00+00:00")
    assert profile.recipient_named("Ask Ann about the report", conn) == ("Ann Lee <ann.lee@example.org>", [])


def test_a_draft_without_a_recipient_goes_to_the_person_named(sample_home, monkeypatch):
    from panza_local import config

    settings = config.load({"n_ctx": 2048, "threads": 1, "max_tokens": 8, "temperature": 0.0})
    plan = draft.prepare("Ask Priya to send me the seed order list by Monday", use_rag=False, use_adapter=False,
                         settings=settings)
    assert plan.to and profile.address_of(plan.to).startswith("priya.")
    assert any("the person the instruction names" in n for n in plan.notices)
    assert "Priya" in plan.messages[-1]["content"]  # the request names her: "Email to Priya ...: ..."
    given = draft.prepare("Ask Priya to send the list", to="someone@example.org", use_rag=False, use_adapter=False,
                          settings=settings)
    assert given.to == "someone@example.org"  # a recipient given is never replaced
    assert draft.prepare("Ask Priya to send the list", use_rag=False, use_adapter=False, settings=settings,
                         infer_to=False).to is None


def test_a_person_nobody_has_written_to_is_greeted_by_the_name_given(home):
    from panza_local.prompts import Profile

    maya = Profile(name="Maya", greeting="Hi <name>,", signoff="Cheers,\nMaya")
    assert profile.prompt_profile(None, maya, hint="ask zed about the car").greeting == "Hi Zed,"
    assert profile.prompt_profile(None, maya, hint="Move the meeting to Friday").greeting == "Hi,"
    assert profile.prompt_profile("bob@example.org", maya, hint="Ask Zed about it").greeting == "Hi,"  # to wins


@pytest.mark.parametrize("to, first", [
    ('"Berg, Jonas" <jonas@example.org>', "Jonas"),  # surname first, as address books write it
    ('"Allen, Phillip K." <pallen@enron.com>', "Phillip"),
    ("Jonas Berg <jonas@example.org>", "Jonas"),
    ('"Jonas Berg, PhD" <jonas@example.org>', "Jonas"),  # a comma after the whole name is not a surname
    ("jonas.berg@example.org", "Jonas"),
    ("desk@example.org", ""),
])
def test_the_first_name_greeted_and_matched_is_the_same(home, to, first):
    from panza_local.prompts import Profile

    assert profile.first_name_of(to) == first
    maya = Profile(name="Maya", greeting="Hi <name>,", signoff="Cheers,\nMaya")
    assert profile.prompt_profile(to, maya).greeting == (f"Hi {first}," if first else "Hi,")
    if first and "<" in to:  # the instruction's name finds the same person the greeting names
        conn = store.connect()
        add_message(conn, "Hello.", to=to, date="2024-01-01T10:00:00+00:00")
        assert profile.address_of(profile.recipient_named(f"Ask {first} about the report", conn)[0]) == \
            profile.address_of(to)


@pytest.mark.parametrize("instruction, greeting", [
    ("Email Acme Corp about the overdue invoice", "Hi,"),  # a company
    ("Write to Northfield Builders about the delay", "Hi,"),
    ("Tell HR I'm off sick today", "Hi,"),  # an acronym
    ("email support about the login bug", "Hi,"),  # a role
    ("Ask the landlord to fix the boiler", "Hi,"),
    ("ask zed about the car", "Hi Zed,"),  # a person nobody has written to yet
    ("Remind Mum about Sunday lunch", "Hi Mum,"),
])
def test_a_greeting_names_people_not_companies_or_roles(home, instruction, greeting):
    from panza_local.prompts import Profile

    maya = Profile(name="Maya", greeting="Hi <name>,", signoff="Cheers,\nMaya")
    assert profile.prompt_profile(None, maya, hint=instruction).greeting == greeting
    assert prompts.subject_line(instruction)  # the subject still says what it is about


def test_a_role_still_finds_the_address_written_to_before(home):
    conn = store.connect()
    add_message(conn, "Hello, my login fails.", to="support@example.org", date="2024-01-01T10:00:00+00:00")
    assert profile.recipient_named("email support about the login bug", conn)[0] == "support@example.org"
    assert prompts.subject_line("email support about the login bug") == "The login bug"


def test_the_readme_users_requests_name_nobody(home, shared_data):
    """The README's evaluation users: naming people in requests left their prompts as they were (allen-p's
    sent mail never names a recipient in its To: header; marcus's has no recipients at all)."""
    conn = store.connect()
    boxes = [shared_data / "enron" / "sent" / f"enron.allen-p.{f}.mbox" for f in ("_sent_mail", "sent", "sent_items")]
    ingest.ingest(conn, [str(b) for b in boxes], me=["phillip.allen@enron.com", "k..allen@enron.com"])
    assert conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1").fetchone()[0] > 500
    assert profile.display_names(conn) == {}
