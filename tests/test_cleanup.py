"""The draft clean-up on the embedded model's real bad outputs, streamed in any chunking."""

from __future__ import annotations

import random
import re

import pytest

from panza_local import cleanup
from panza_local.prompts import Profile

MAYA = Profile(name="Maya Lindqvist", greeting="Hi Bob,", signoff="Cheers,\nMaya", typical_words=50)
TO = "bob@example.com"
# Real drafts of the embedded SmolLM2-135M in the quickstart home (issue 21), for "Ask Bob to move our
# meeting to Friday"; the second as the model laid it out, then as the issue quoted it on one line.
ECHO = ("You can't ask for a meeting on Friday.\n\nThe answer is:\nNo, I'm not going to the meeting tomorrow.\n\n"
        "I'll send you a reminder later today.\n\nCheers,\nBob")
SCAFFOLD = ("Here's a sample of a message I sent to Bob:\n\n**Subject: Request for a Meeting on Friday at 10am**\n\n"
            "---\n\nChat History:\n[Bob@example.com]\n\n---\n\nMessage Body:\nDear Mr. Smith,\n\nI hope this email "
            "finds you well. Could we move our meeting to Friday at 10am?\n\nBest regards,\nBob **\n[Your Name]\n---")
SCAFFOLD_ONE_LINE = ("Here's a sample of a message I sent to Bob: **Subject: Request for a Meeting on Friday at 10am** "
                     "--- Chat History: [Bob@example.com] --- Message Body: Dear Mr. Smith, could we move our "
                     "meeting to Friday? Bob ** [Your Name] ---")
FROM_BOB = "The message is from Bob."
WELCOME = ("You're welcome. I'll be in touch tomorrow at 10:30am to discuss the project details.\n\n"
           "Best regards,\nBob")
MENTION = "Hi Bob,\n\nFriday works for me.\nMention: Friday, meeting, move.\n\nCheers,\nMaya"
SUBJECT_FIRST = ('Subject: Draft a sample message to Bob, with a subject line of "Lunch"\n\nHere\'s the email:\n\n'
                 "Dear Bob,\n\nI am writing to ask whether you are free for lunch on Thursday.")
LEAKS = re.compile(r"^\w+: |^- (?:changed|added) |mention:|subject:|chat history|^(?:hi|hello)\b.*\n(?:.*\n)*(?:hi|hello)\b|message body|\[your name\]|\*\*|^#|---|\bhere'?s a\b|the message is from",
                   re.IGNORECASE | re.MULTILINE)
# The stock model's draft in the quickstart (issue 21 layout): a second greeting, a bare label, more lines.
STOCK_REPEAT = ("Hi Hannah,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club "
                "at my home on Thursday at 7:30pm.\n\nChair: Hi Hannah,\nHello,\nHi,\n\nChat History\n\nCheers,\nMaya")
# The stock model's draft for the same invitation in a fresh-clone quickstart carried a line "-Chat History:"
# (a label as a list item); the rest here is the stock draft of another run (a label's line was all we kept).
STOCK_BULLET = ("Hi Hannah,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club "
                "at my home on Thursday at 7:30pm. What do you think?\n-Chat History:\n- [hannah.cole@postbox.example]"
                "\n\nBest,\nMaya")
# The stock model's invitation in a quickstart of 2026-12-04: a numbered list of greetings until max_tokens.
STOCK_LOOP = ("Hi Hannah,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club on "
              "Thursday at 7:30pm. It's a great idea to join a community of fellow readers!\n\n1. Hello,\n2. Hi,\n"
              + "".join(f"{i}. Hello,\n" for i in range(3, 28)) + "2")
# ... and its note to Jonas, which closed with a phrase of its own before her name.
STOCK_CLOSING = ("Hi Jonas,\nI'm sure they're going to be delivered in time for the upcoming Oakwood Festival.\n\n"
                 "Looking forward to seeing you soon,\nMaya")
# ... and in the CI run of 2026-12-05: a speaker's label, a greeting and a sentence (another turn begins).
STOCK_TURN = ("Hi Hannah,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club on "
              "Thursday at 7:30 at the Bluebird Inn. It's a great opportunity for her to meet some of the best in the "
              "book world!\n\nChair: Hi, I hope you're doing well.\n\nCheers,\nMaya")
# ... and in the next: the model's notes on its own edits as a list after the body.
STOCK_NOTES = ("Hi Hannah,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club on "
               "Thursday at 7:30pm at the Hannah Cole Book Clubs in New York City. It's a great opportunity for her to "
               "meet some of the best and make new friends!\n\n- Changed \"Hi\" to \"I hope you're doing well\"\n"
               "- Added \"in New York City\" to \"New York City\"\n\nCheers,\nMaya")
ALL = [STOCK_REPEAT, ECHO, SCAFFOLD, SCAFFOLD_ONE_LINE, FROM_BOB, WELCOME, SUBJECT_FIRST, MENTION, STOCK_BULLET,
       STOCK_LOOP, STOCK_CLOSING, STOCK_TURN, STOCK_NOTES]


def streamed(text: str, rng: random.Random, profile=MAYA, to=TO) -> tuple[str, list[str]]:
    c = cleanup.Cleaner(profile, to)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 9)
        pieces.append(c.feed(text[i:i + n]))
        i += n
    pieces.append(c.close())
    return "".join(pieces).strip(), pieces


@pytest.mark.parametrize("text", ALL, ids=["stock-repeat", "echo", "scaffold", "one-line", "from-bob", "welcome", "subject", "mention",
                                       "stock-bullet", "stock-loop", "stock-closing", "stock-turn",
                                       "stock-notes"])
def test_real_bad_outputs_become_clean_emails(text):
    out = cleanup.clean(text, MAYA, TO)
    assert not LEAKS.search(out), out
    assert not re.search(r"^\s*bob\s*$", out, re.IGNORECASE | re.MULTILINE)  # never signed by the recipient
    if text is FROM_BOB:
        assert out == ""  # nothing in it was an email: no email, rather than a greeting and a sign-off
        return
    ending = {id(STOCK_BULLET): "\n\nBest,\nMaya", id(STOCK_CLOSING): "\n\nLooking forward to seeing you soon,\nMaya"}
    assert out.endswith(ending.get(id(text), "\n\nCheers,\nMaya"))  # hers kept, or hers put
    assert out.count("Cheers,") + out.count("Best,") + out.count("Looking forward") == 1  # one closing
    if text in (SCAFFOLD, SCAFFOLD_ONE_LINE):
        assert out.startswith("Hi Bob,\n\n") and "Friday" in out  # her greeting, the content kept


def test_the_quoted_drafts_exactly():
    assert cleanup.clean(SCAFFOLD, MAYA, TO) == ("Hi Bob,\n\nI hope this email finds you well. Could we move our "
                                                 "meeting to Friday at 10am?\n\nCheers,\nMaya")
    assert cleanup.clean(SCAFFOLD_ONE_LINE, MAYA, TO) == "Hi Bob,\n\nCould we move our meeting to Friday?\n\nCheers,\nMaya"
    assert cleanup.clean(STOCK_REPEAT, MAYA, "hannah@x.org") == (
        "Hi Bob,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club at my home "
        "on Thursday at 7:30pm.\n\nCheers,\nMaya")
    assert cleanup.clean(ECHO, MAYA, TO) == ("You can't ask for a meeting on Friday.\n\nNo, I'm not going to the meeting "
                                             "tomorrow.\n\nI'll send you a reminder later today.\n\nCheers,\nMaya")
    c = cleanup.Cleaner(MAYA, TO)
    c.feed(SUBJECT_FIRST)
    c.close()
    assert c.subject.startswith("Draft a sample message to Bob")  # the subject the model wrote is kept apart


@pytest.mark.parametrize("seed", range(12))
def test_streaming_gives_the_same_text_in_any_chunking(seed):
    rng = random.Random(seed)
    extra = ["Hi Bob,\n\nThanks!\n\nCould we move it to Friday? Thursday is full.\n\nCheers,\nMaya\n\nHi Jonas,\n\nMore.",
             "Hi Bob, could we meet on Friday at ten instead of Thursday afternoon?\nThanks,\nMaya Lindqvist",
             "Dear Bob,\n\nThe plan is to meet on Friday.\n\nSee you then\n\nBest,\n[Your Name]"]
    for text in ALL + extra:
        assert streamed(text, rng)[0] == cleanup.clean(text, MAYA, TO)


def test_streaming_holds_back_only_what_it_must():
    c = cleanup.Cleaner(MAYA, TO)
    assert c.feed("Hi Bob,\n") == ""  # a greeting alone may be all there is: held until the body starts
    assert c.feed("\nCould ") == "Hi Bob,\n"  # ... which its first word shows
    assert c.feed("we move our meeting to Fri") == "\nCould we move our meeting to"  # mid-line
    assert c.feed("day?\n") == " Friday?"
    assert c.feed("Thursday is packed on my side.\n\nCheers,\n") == "\nThursday is packed on my side."
    assert c.feed("Bob\n") == ""  # a possible sign-off: held until the end
    assert c.close() == "\n\nCheers,\nMaya"
    # a line that may turn out to be scaffolding is held until it ends
    c = cleanup.Cleaner(MAYA, TO)
    assert c.feed("Here is the email I would send to Bob about") == ""
    assert c.feed(" it: Hi Bob,\nCould we meet?\n") == "Hi Bob,\nCould we meet?"
    assert c.feed("Thursday is packed on my side, so we") == "\nThursday is packed on my side, so"  # streams again
    # a line opening with "The", "This", "I" or "I've" streams once its next word shows it is no scaffolding
    c = cleanup.Cleaner(MAYA, TO)
    assert c.feed("Hi Bob,\n\nI've attached the revised drawings for the") == "Hi Bob,\n\nI've attached the revised drawings for"
    c = cleanup.Cleaner(MAYA, TO)
    assert c.feed("Could we meet?\nThe email is below and I think you") == "Could we meet?"  # held until it ends


def test_a_greeting_waits_for_a_word_that_begins_the_body():
    """The greeting is shown with the next line's first word unless that word may begin a sign-off, a label,
    a preamble or another greeting: then what the whole line is decides, as in `clean`."""
    for then, shown in [("Could ", "Hi Bob,\n"), ("Quick ", "Hi Bob,\n"), ("Thanks ", ""), ("All ", ""),
                        ("Subject: ", ""), ("Of ", ""), ("I ", ""), ("Hello ", ""), ("[Your ", ""), ("Here ", ""),
                        ("Looking ", ""), ("Cheers", ""), ("I've ", ""), ("The ", ""), ("This ", ""),
                        ("I have ", ""), ("The email ", ""), ("This is ", ""), ("I've written ", ""),
                        ("I have written ", ""), ("I've attached ", "Hi Bob,\n"), ("I have attached ", "Hi Bob,\n"),
                        ("I hope ", "Hi Bob,\n"), ("The drawings ", "Hi Bob,\n"), ("This week ", "Hi Bob,\n"),
                        # a sign-off word, then a word no sign-off or closing has: the body
                        ("Thanks for ", "Hi Bob,\n"), ("Thank you for ", "Hi Bob,\n"), ("Best of luck ", "Hi Bob,\n"),
                        ("Thanks, ", ""), ("Thank you so ", ""), ("Thanks Bob ", ""), ("Many thanks ", ""),
                        ("Looking forward to the ", ""), ("See you on ", "")]:
        c = cleanup.Cleaner(MAYA, TO)
        assert c.feed("Hi Bob,\n\n" + then) == shown, then
    for text in ["Hi Bob,\n\nThanks,\nMaya", "Hi Bob,\n\nAll the best,\nMaya", "Hi Bob,\n\nOf course, here is the email:",
                 "Hi Bob,\n\nI have written the email below:\n", "Hi Bob,\n\nSubject: Friday\n\nCheers,\nMaya",
                 "Hi Bob,\n\nLooking forward to it,\nMaya", "Hi Bob,\n\n\nCould we meet Friday?\n\nBob Smith\nCheers",
                 "Hi Bob,\n\nThe email is below:\n\nHi Bob,\n\nCould we meet Friday?", "Hi Bob,\n\nThis is the draft:\nHi Bob,",
                 "Hi Bob,\n\nThe message is from Bob.", "Hi Bob,\n\nI've written the email below:\n\nHi Bob,\nFriday?",
                 "Hi Bob,\n\nI've attached the drawings.\n\nCheers,\nMaya", "Hi Bob,\n\nThe drawings are in.\nCheers,",
                 "Hi Bob,\n\nThanks for the drawings.\n\nCheers,\nMaya", "Hi Bob,\n\nThanks for everything,\nMaya",
                 "Hi Bob,\n\nThank you for the update, see you Friday.\n\nBest,\nMaya",
                 "Hi Bob,\n\nLooking forward to the visit,\nMaya", "Hi Bob,\n\nThanks so much for it.\nBest,"]:
        for seed in range(20):
            assert streamed(text, random.Random(seed))[0] == cleanup.clean(text, MAYA, TO), text


def test_a_word_still_being_written_decides_the_greeting_when_it_can():
    """The model writes a word in pieces ("I", " wa", "s"): once its first letters rule out the word that
    would make the line scaffolding or a sign-off ("wa" is no "have"), the greeting shows a token sooner."""
    for then, shown in [("I wa", "Hi Bob,\n"), ("I h", ""), ("I ha", ""), ("I have wr", ""), ("I have ma", "Hi Bob,\n"),
                        ("I've re", "Hi Bob,\n"), ("I've wri", ""), ("The dr", ""), ("The drawi", "Hi Bob,\n"),
                        ("This i", ""), ("This we", "Hi Bob,\n"), ("Thanks ev", "Hi Bob,\n"), ("Thanks a", ""),
                        ("Thanks fo", "Hi Bob,\n"), ("Thank yo", ""), ("Thank you fo", "Hi Bob,\n"), ("Thank you s", ""),
                        ("Thanks Bo", ""), ("Of co", ""), ("Looking fo", ""), ("Looking forward t", ""), ("Kind re", ""),
                        ("Best wi", ""), ("Best of", "Hi Bob,\n"), ("All the be", ""), ("I", ""), ("The", ""),
                        ("I'd", "Hi Bob,\n"), ("I\u2019m", "Hi Bob,\n"), ("I'll", "Hi Bob,\n"), ("I'", ""), ("I'v", ""),
                        ("Id", ""), ("Could", "")]:
        c = cleanup.Cleaner(MAYA, TO)
        assert c.feed("Hi Bob,\n\n" + then) == shown, then
    for text in ["Hi Bob,\n\nI was at the site.\n\nCheers,\nMaya", "Hi Bob,\n\nThe draft is below:\n\nHi Bob,\nFriday?",
                 "Hi Bob,\n\nThis is the email:\nHi Bob,\nCould we meet?", "Hi Bob,\n\nThanks everyone,\nMaya",
                 "Hi Bob,\n\nThanks again,\nMaya", "Hi Bob,\n\nI have made the changes.\nBest,",
                 "Hi Bob,\n\nThanks for the drawings.", "Hi Bob,\n\nThank you so much,\nMaya",
                 "Hi Bob,\n\nKind regards,\nMaya", "Hi Bob,\n\nAll the best,\nMaya", "Hi Bob,\n\nBest wishes\nMaya",
                 "Hi Bob,\n\nI'd like to order ten.\nCheers,", "Hi Bob,\n\nI'd\n\nCheers,\nMaya",
                 "Hi Bob,\n\nI've written the email:\nHi Bob,\nFriday?",
                 "Hi Bob,\n\nOf course, here is the email:\n\nHi Bob,\nFriday works."]:
        for seed in range(20):
            assert streamed(text, random.Random(seed))[0] == cleanup.clean(text, MAYA, TO), text


def test_a_list_of_the_users_own_stays_and_a_list_of_edits_ends_the_email():
    own = "Hi Bob,\n\nFor Friday:\n- Added the new tree survey\n- Kept the two limes\n\nCheers,\nMaya"
    assert cleanup.clean(own, MAYA, TO) == own
    notes = "Hi Bob,\n\nCould we meet on Friday?\n\n1. Replaced \"Thursday\" with \"Friday\"\n2. Kept the tone"
    assert cleanup.clean(notes, MAYA, TO) == "Hi Bob,\n\nCould we meet on Friday?\n\nCheers,\nMaya"


def test_sign_off_rules():
    assert cleanup.clean("Could we meet Friday?\n\nThanks,\nMaya", MAYA, TO).endswith("Thanks,\nMaya")  # hers: kept
    assert cleanup.clean("Could we meet Friday?\n\nThanks, Bob", MAYA, TO).endswith("?\n\nCheers,\nMaya")
    assert cleanup.clean("Could we meet Friday?", MAYA, TO) == "Could we meet Friday?\n\nCheers,\nMaya"
    assert cleanup.clean("Could we meet Friday?\n\nBob", MAYA, TO) == "Could we meet Friday?\n\nCheers,\nMaya"
    # without a profile: the recipient's name and placeholders go, the model's sign-off words stay
    assert cleanup.clean("Could we meet Friday?\n\nBest,\nBob", None, TO) == "Could we meet Friday?\n\nBest,"
    assert cleanup.clean("Could we meet Friday?\n\nBest,\n[Your Name]", None, TO) == "Could we meet Friday?\n\nBest,"
    named = Profile(name="Ann Lee")
    assert cleanup.clean("Could we meet Friday?\n\nBest,\nBob", named, TO) == "Could we meet Friday?\n\nBest,\nAnn"


def test_what_follows_the_sign_off_is_cut_and_thanks_in_the_body_is_kept():
    out = cleanup.clean("Hi Bob,\n\nFriday works.\n\nCheers,\nMaya\n\nHi Jonas,\n\nAnother email entirely.", MAYA, TO)
    assert out == "Hi Bob,\n\nFriday works.\n\nCheers,\nMaya"
    out = cleanup.clean("Hi Bob,\n\nThanks!\n\nCould we move it to Friday?\n\nCheers,\nMaya", MAYA, TO)
    assert out == "Hi Bob,\n\nThanks!\n\nCould we move it to Friday?\n\nCheers,\nMaya"
    out = cleanup.clean("Hi Bob,\n\nFriday works.\n\nThanks,\nwe can also do Monday if that suits you better.", MAYA, TO)
    assert "Monday" in out and out.endswith("Cheers,\nMaya")


def test_greeting_is_the_users_own_form():
    nameless = Profile(name="Maya Lindqvist", greeting="Hi,", signoff="Cheers,\nMaya")
    assert cleanup.clean("Hi Bob,\n\nFriday?", nameless, TO).startswith("Hi Bob,\n\n")  # same form, name kept
    assert cleanup.clean("Dear Mr. Smith,\n\nFriday?", nameless, TO).startswith("Hi,\n\n")
    assert cleanup.clean("Hi Maya,\n\nFriday?", nameless, TO).startswith("Hi,\n\n")  # never to the user herself
    assert cleanup.clean("Dear Bob, could we meet on Friday?", MAYA, TO).startswith("Hi Bob,\n\nCould we meet")
    assert cleanup.clean("Hello Bob,\n\nFriday?", Profile(), TO).startswith("Hello Bob,")  # no profile: as written
    # a name the model guessed is not kept; one the instruction or the address gives is
    assert cleanup.clean("Hi Re,\n\nFriday?", nameless, "x@y.org").startswith("Hi,\n\n")
    assert cleanup.clean("Hi Jo,\n\nFriday?", nameless, "x@y.org", hint="Reply to Jo").startswith("Hi Jo,")


def test_scaffolding_as_a_list_item_goes_and_the_users_own_list_stays():
    assert cleanup.clean(STOCK_BULLET, MAYA, "hannah.cole@postbox.example") == (
        "Hi Bob,\nI hope you're doing well. I'm Maya Lindqvist and I'll be inviting Hannah to a book club at my "
        "home on Thursday at 7:30pm. What do you think?\n\nBest,\nMaya")  # her greeting's form; her sign-off kept
    listed = "Hi Bob,\n\nFor Friday:\n- the signed contract\n- * Subject: contract\n- the keys\n\nCheers,\nMaya"
    assert cleanup.clean(listed, MAYA, TO) == "Hi Bob,\n\nFor Friday:\n- the signed contract\n- the keys\n\nCheers,\nMaya"
    c = cleanup.Cleaner(MAYA, TO)
    assert c.feed("Hi Bob,\n\nThe plan for Friday is set.\n-Chat History of the") == "Hi Bob,\n\nThe plan for Friday is set."


def test_a_loop_ends_the_email_and_says_so_as_soon_as_it_shows():
    """A line again and again (numbered or not) is the model in a loop: the email ends before it, and `done`
    tells the caller to stop generating the moment nothing more can belong to the email."""
    assert cleanup.clean(STOCK_LOOP, MAYA, "hannah@x.org").endswith("fellow readers!\n\nCheers,\nMaya")
    twice = "I will bring the cake and the plates for everyone.\n" * 2
    text = "Hi Bob,\nFriday works.\n" + twice + "I will bring"
    assert cleanup.clean(text, MAYA, TO) == ("Hi Bob,\nFriday works.\nI will bring the cake and the plates for "
                                              "everyone.\n\nCheers,\nMaya")
    assert cleanup.clean("Hi Bob,\nCan you?\nYes.\nYes.\nYes.", MAYA, TO) == "Hi Bob,\nCan you?\nYes.\n\nCheers,\nMaya"
    # the user's own list stays, even with a line like another's
    items = "Hi Bob,\nFor Friday:\n- 2 eggs\n- 3 eggs\n- flour\n- milk\n\nCheers,\nMaya"
    assert cleanup.clean(items, MAYA, TO) == items
    # done: at the loop, at another email's greeting, at her name under the sign-off; not before
    for case, at in ((text, twice), (STOCK_LOOP, "1. Hello,\n"),
                     ("Hi Bob,\nFriday works.\n\nCheers,\nMaya\nHi Jonas,", "Maya\n")):
        c = cleanup.Cleaner(MAYA, TO)
        end = case.index(at) + len(at)
        c.feed(case[:end - 1])
        assert not c.done
        c.feed(case[end - 1:end])
        assert c.done, at


def test_nothing_but_scaffolding_is_no_email():
    for text in ("", "---\n**Subject: x**\n---", "Hi Bob,\n\nCheers,\nMaya", "[Bob@example.com]"):
        assert cleanup.clean(text, MAYA, TO) == ""


# The sample person's adapter draft in a quickstart home (2026-12-05), as the model wrote it: hard wraps at ~72
# columns, learned from her plain-text mail; a mail client would show "as" / "before." as a broken line.
WRAPPED = ("Hi Jonas,\n\nI've had another look at the oak sleepers for the Brookfield school\ngarden. Delivery on "
           "Tuesday morning is fine - the gate code is the same as\nbefore.\n\nLet me know what you think.\n\n"
           "Cheers,\nMaya")
# Wrapped at 76 as Gmail's plain text is, with a list whose first item wraps, a colon before it and short lines.
WRAPPED_LIST = ("Hi Jonas,\nRegarding the Mill Lane patio, the quote looks right to me but two things are missing\n"
                "from it:\n- the edging stones along the north wall, which we agreed to replace with\n  the "
                "reclaimed brick\n- the drainage channel by the shed\nAlso:\nCould you send the revised quote "
                "by Friday so I can pass it on to the client\nbefore the weekend? The sooner the better.\n"
                "Thanks again\n\nCheers,\nMaya")


def test_wrapped_paragraphs_are_joined_and_other_breaks_kept():
    assert cleanup.clean(WRAPPED, MAYA, TO) == (
        "Hi Bob,\n\nI've had another look at the oak sleepers for the Brookfield school garden. Delivery on Tuesday "
        "morning is fine - the gate code is the same as before.\n\nLet me know what you think.\n\nCheers,\nMaya")
    assert cleanup.clean(WRAPPED_LIST, MAYA, TO) == (
        "Hi Bob,\nRegarding the Mill Lane patio, the quote looks right to me but two things are missing from it:\n"
        "- the edging stones along the north wall, which we agreed to replace with the reclaimed brick\n"
        "- the drainage channel by the shed\nAlso:\nCould you send the revised quote by Friday so I can pass it on "
        "to the client before the weekend? The sooner the better.\nThanks again\n\nCheers,\nMaya")
    # a break between sentences may be the writer's own: kept ("... later." / "Gate code: 4471")
    own = ("Hi Bob,\n\nThe delivery can come on Tuesday morning, the crew will unload it later.\nGate code: 4471, "
           "and the key is with the caretaker\nas before.\n\nCheers,\nMaya")
    assert cleanup.clean(own, MAYA, TO) == own.replace("caretaker\nas", "caretaker as")
    # the setting's off switch keeps the model's own breaks (a plain-text user who wraps by hand)
    assert cleanup.clean(WRAPPED, MAYA, TO, reflow=False) == "Hi Bob" + WRAPPED[len("Hi Jonas"):]
    for seed in range(8):  # streamed in any chunking: the same text, and a break is held one word at most
        rng = random.Random(seed)
        for text in (WRAPPED, WRAPPED_LIST):
            out, _ = streamed(text, rng)
            assert out == cleanup.clean(text, MAYA, TO)
    c = cleanup.Cleaner(MAYA, TO)
    assert c.feed(WRAPPED[:WRAPPED.index("school\n") + 7]).endswith("for the Brookfield school")  # the break waits
    assert c.feed("garden. Delivery on Tuesday morning") == " garden. Delivery on Tuesday"  # ... for the next
    # line's words, which join it


def test_the_terminal_wraps_a_streamed_draft_at_word_boundaries():
    from panza_local.cli.draft import TermWrap

    text = cleanup.clean(WRAPPED, MAYA, TO)
    for width, seed in ((30, 0), (41, 1), (79, 2)):
        rng, wrap, pieces, i = random.Random(seed), TermWrap(width), [], 0
        while i < len(text):
            n = rng.randint(1, 9)
            pieces.append(wrap.feed(text[i:i + n]))
            i += n
        shown = "".join(pieces) + wrap.close()
        assert max(map(len, shown.split("\n"))) <= width
        assert shown.split() == text.split()  # every word, in order, none cut
        assert shown.endswith("\n\nCheers,\nMaya") and "\n\n" in shown.split("Let me know")[0][-3:]  # breaks kept
    assert TermWrap(0).feed(text) == text  # a pipe gets the paragraphs whole


# An Enron user's adapter (allen-p, the README's evaluation home; he greets with the name alone and has no
# seeded greeting), drafts with no recipient given: it greeted the user himself, and a stranger.
PHILLIP = Profile(name="Phillip", greeting="", signoff="", typical_words=30)
SELF_GREETED = "Phillip,\n\nHow about next week?  I'm available to meet on Tuesday morning."
STRANGER = ("Lucy,\n\nI just updated the rent roll to San Marcos.  I want him to review the vacancies\nand check out "
            "the rest of George's property as soon as possible.")


def test_a_greeting_never_names_the_user_or_a_guess():
    keith = "Ask Keith whether the new office in Houston is available next week"
    assert cleanup.clean(SELF_GREETED, PHILLIP, None, keith) == (
        "Keith,\n\nHow about next week?  I'm available to meet on Tuesday morning.")
    george = "Send the updated rent roll for the San Marcos property to George and ask him to review the vacancies"
    assert cleanup.clean(STRANGER, PHILLIP, None, george).startswith("George,\n\nI just updated the rent roll")
    assert cleanup.clean(STRANGER, PHILLIP, "mike.grigsby@enron.com", george).startswith("Mike,\n\n")
    # no name to put instead: the user's own goes, a name that may be theirs stays
    assert cleanup.clean(SELF_GREETED, PHILLIP, None, "Write about next week").startswith("How about next week?")
    assert cleanup.clean(STRANGER, PHILLIP, None, "Write about the rent roll").startswith("Lucy,\n\n")
    assert cleanup.clean("Hi Phillip,\n\nSee you then.", PHILLIP, None, keith).startswith("Hi Keith,\n\n")
    # the recipient, a group, a reply's first word and a sign-off word are no guesses
    for opening in ("Keith,", "All,", "Yes,", "Thanks,", "Hi all,"):
        assert cleanup.clean(f"{opening}\n\nSee you on Tuesday morning then.", PHILLIP, None, keith).startswith(opening)
    for seed in range(6):  # and the same when streamed
        assert streamed(STRANGER, random.Random(seed), PHILLIP, None)[0] == cleanup.clean(STRANGER, PHILLIP, None)
    # a name-alone greeting is held until the body starts, as "Hi Keith," is: draft.stream feeds the opening it
    # gave the engine and shows only what comes after
    c = cleanup.Cleaner(Profile(name="Phillip", greeting="Keith,"), "kholst@enron.com", keith)
    assert c.feed("Keith,\n\n") == ""
    assert (c.feed("How about next week? I can") + c.close()).startswith("Keith,\n\nHow about next week?")
