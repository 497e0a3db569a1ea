"""The bundled sample mailbox: a fictional person's year of mail, written deterministically (no model).

Maya Lindqvist runs a small landscape-architecture studio. She writes short, friendly, practical
emails: always "Hi <first name>," on top, "Cheers,\\nMaya" at the bottom, 25-80 words (about 50),
dashes rather than semicolons, and a closing "Let me know ..." line. She writes to a handful of people
about a handful of recurring things (site visits, permits, plant orders, drawings, invoices, book club).
About 20 of her emails are replies that carry the quoted thread below her text (Gmail-style
"On ... wrote:" with `>` lines, or Outlook-style "-----Original Message-----"), and a dozen messages in
the mailbox were written *to* her by others, so "keep only what the user wrote" has something to filter.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass
from email.generator import Generator
from email.message import Message
from email.utils import format_datetime
from io import StringIO
from pathlib import Path

SAMPLE_ME = "maya@lindqvist-studio.example"
SAMPLE_NAME = "Maya Lindqvist"
SAMPLE_SIGNOFF = "Cheers,\nMaya"
SAMPLE_DESCRIPTION = (
    "A year (2025) of mail of Maya Lindqvist <maya@lindqvist-studio.example>, a fictional landscape "
    "architect: 150 messages, 138 written by her to six recurring correspondents (a builder, a council "
    "planner, her junior designer, a plant nursery, a client and a friend) about site visits, permits, "
    "plant orders, drawings, invoices and a book club; always \"Hi <name>,\" and \"Cheers, Maya\", "
    "about 50 words; 20 replies carry quoted threads (\"On ... wrote:\" or Outlook's \"Original Message\"), "
    "and 12 messages were written to her by others, so authorship filtering has work to do."
)
SAMPLE_COUNT = 150
_SEED = 20250101
_TZ = dt.timezone(dt.timedelta(hours=1))


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    email: str
    topics: tuple[str, ...]
    greeting: str  # how this person opens emails to Maya
    signoff: str

    @property
    def display(self) -> str:
        return f"{self.first} {self.last} <{self.email}>"


PEOPLE = (
    Person("Jonas", "Berg", "jonas.berg@northfield-builders.example", ("site", "materials"),
           "Dear Maya,", "Best regards,\nJonas Berg\nNorthfield Builders"),
    Person("Priya", "Natarajan", "priya.natarajan@greenway-council.example", ("permit",),
           "Hello Maya,", "Kind regards,\nPriya Natarajan\nPlanning Officer"),
    Person("Tom", "Okafor", "tom@lindqvist-studio.example", ("drawings", "site"),
           "Hey Maya,", "Thanks!\nTom"),
    Person("Elena", "Rossi", "orders@rossi-nursery.example", ("plants",),
           "Good morning Maya,", "Many thanks,\nElena\nRossi Nursery"),
    Person("Sam", "Whitaker", "sam.whitaker@fastmail.example", ("client", "invoice"),
           "Hi Maya,", "Thanks so much,\nSam"),
    Person("Hannah", "Cole", "hannah.cole@postbox.example", ("bookclub",),
           "Maya!", "xx Hannah"),
)
PROJECTS = ("Harbour Park", "the Ellery Street courtyard", "the Brookfield school garden",
            "the Whitaker garden", "the Mill Lane rooftop")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
TIMES = ("8:30", "9:00", "10:00", "11:30", "2:00", "3:30", "4:00")
PLANTS = ("hornbeam hedging", "field maples", "Stipa tenuissima", "lavender plugs", "box balls",
          "silver birches", "hellebores", "wildflower turf")
MATERIALS = ("the reclaimed brick", "the oak sleepers", "the resin-bound gravel", "the corten edging",
             "the granite setts", "the drainage crates")
BOOKS = ("The Overstory", "Klara and the Sun", "Braiding Sweetgrass", "Piranesi", "The Dutch House",
         "Lessons in Chemistry", "Tomorrow, and Tomorrow, and Tomorrow")

# Maya's voice, by topic: (subject templates, opening lines, detail lines, asks). Slots are filled below.
TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "site": {
        "subject": ("Site visit {day}", "{project} - site meeting", "Visit to {project} on {day}"),
        "open": ("Quick one about {project}.", "Thanks for walking the site with me last week.",
                 "I was at {project} this morning - it's coming along."),
        "detail": (("Could we meet there on {day} at {time}? I'd like to check the levels before the "
                   "paving goes down."), ("The drainage on the north side still looks wrong to me - water "
                   "is sitting by the wall after rain."), ("I'll bring the revised planting plan so we can "
                   "mark out the beds on the ground."), ("Tom will come along too and take photos for "
                   "the record."), "If the weather turns we can push it to the following {day}."),
        "ask": ("Let me know if {day} works for you.", "Let me know what time suits your crew.",
                "Let me know if you need anything from me before then."),
    },
    "materials": {
        "subject": ("Samples for {project}", "{material} - delivery", "Question on {material}"),
        "open": ("I've had another look at {material} for {project}.", "Quick question on {material}.",
                 "Thanks for sending the samples over."),
        "detail": (("The colour is a bit too warm next to the existing wall - could you get a sample of "
                   "something greyer?"), ("I'd rather we ordered {n} pallets now than wait and pay more "
                   "in spring."), "Delivery on {day} morning is fine - the gate code is the same as before.",
                   "Please keep the offcuts, we can use them for the edging by the shed."),
        "ask": ("Let me know the lead time when you have it.", "Let me know what you think.",
                "Let me know if the price has changed."),
    },
    "permit": {
        "subject": ("{project} - planning application", "Tree survey for {project}",
                    "Follow-up on our application"),
        "open": ("Thanks for the quick reply on {project}.", "Following up on the application for {project}.",
                 "I hope your week is going well."),
        "detail": ("I've attached the updated tree survey - the two limes by the entrance are now kept.",
                   "We've reduced the hard surface by about {n} percent, as you suggested.",
                   "Is there anything else the committee needs before the meeting on the {date}?",
                   "I'm happy to come in on {day} to go through the drainage strategy in person."),
        "ask": ("Let me know if I've missed anything.", "Let me know when you expect a decision.",
                "Let me know if a call would be easier."),
    },
    "drawings": {
        "subject": ("Drawings for {project}", "{project} plans - comments", "Before Friday's issue"),
        "open": ("I've gone through the drawings for {project}.", "Nice work on the {project} set.",
                 "A few comments on the latest plans."),
        "detail": ("Can you move the bench two metres east so it gets the afternoon sun?",
                   "The section through the rain garden needs dimensions - the builder will ask.",
                   "Please add the tree protection zones to sheet {n}.",
                   "Let's issue on {day} rather than rushing it tonight.",
                   "Use the new title block - the old one still has the Harbour Street address."),
        "ask": ("Let me know when the next version is up.", "Let me know if any of that is unclear.",
                "Let me know if you want to go through it together."),
    },
    "plants": {
        "subject": ("Order for {project}", "{plant} - availability", "Plant order, week of the {date}"),
        "open": ("I'd like to place an order for {project}.", "Quick check on {plant}.",
                 "Thanks for the lovely stock last time."),
        "detail": ("We need {n} of the {plant}, root-balled if you have them.",
                   "Could you hold them until the {date}? The beds won't be ready before then.",
                   "Delivery to site on {day} morning please - Jonas's team will unload.",
                   "If the {plant} are short, we can swap half of them for hellebores."),
        "ask": ("Let me know the total and I'll send a PO.", "Let me know what you can do.",
                "Let me know if the date is a problem."),
    },
    "client": {
        "subject": ("Your garden - next steps", "Update on the works", "Planting day"),
        "open": ("Just a quick update on the garden.", "Thanks for having us over on {day}.",
                 "Good news on the garden."),
        "detail": ("The builders should finish the paving by the end of next week, weather permitting.",
                   "Planting is booked for {day} the {date} - it takes about two days.",
                   "I've kept the old apple tree in the plan, as you asked.",
                   "The lighting quote came in a little under budget, which is nice."),
        "ask": ("Let me know if you have any questions.", "Let me know if that date suits you.",
                "Let me know if you'd like to see the planting list first."),
    },
    "invoice": {
        "subject": ("Invoice {n}", "Stage {n} invoice", "Payment for the design stage"),
        "open": ("Please find the invoice for the design stage attached.", "Quick one about invoice {n}.",
                 "Thanks for settling the last invoice so quickly."),
        "detail": ("It covers the survey, the concept and two rounds of changes.",
                   "Payment within 30 days is fine, as usual.",
                   "The plant costs are listed separately at cost price."),
        "ask": ("Let me know if anything looks off.", "Let me know if you need it split differently."),
    },
    "bookclub": {
        "subject": ("Book club", "{book}", "Next month's book"),
        "open": ("I finally finished {book}.", "Book club is at mine this time.",
                 "Sorry I missed last month - work was mad."),
        "detail": ("I'll make the lemon cake again, since it went so fast.",
                   "How about {book} for next time? It's short enough that we'll all finish it.",
                   "Shall we say {day} at 7:30?", "I loved the ending, but I want to hear what you thought."),
        "ask": ("Let me know if you can make it.", "Let me know what you think.",
                "Let me know if you want me to pick you up."),
    },
}
# What correspondents write to Maya (the originals she replies to, also kept as separate messages).
INCOMING: dict[str, tuple[str, ...]] = {
    "site": (("Could you come by {project} on {day}? We've hit a snag with the levels near the wall and I'd "
             "like your view before we pour anything."),
             "The crew is back at {project} from {day}. Can you check the setting-out with us at {time}?"),
    "materials": (("The supplier says the lead time for {material} is now {n} weeks. Do you want us to go "
                  "ahead with the order or look at alternatives?"),
                  "Samples of {material} arrived today. Shall I drop them at the studio on {day}?"),
    "permit": (("The committee has asked for a revised tree survey for {project} before the meeting on the "
               "{date}. Please send it to me directly and I will add it to the file."),
               "I am reviewing the application for {project}. Could you confirm the area of new paving?"),
    "drawings": (("I've uploaded the new set for {project}. I wasn't sure about sheet {n}, the levels don't "
                 "quite tie in with the survey. Could you have a look when you get a minute?"),
                 "Quick question on {project}: do you want the planting plan at 1:{n}0 or 1:200?"),
    "plants": (("We have {n} of the {plant} in stock now but they are going quickly. Shall we reserve them "
               "for {project}?"),
               "Your order for {project} is ready. Can we deliver on {day}, or would the {date} suit better?"),
    "client": (("We're so happy with how it's looking! One question: could we add a small bench under the "
               "apple tree? And when do you think it'll all be finished?"),
               "The builders left a pile of rubble by the gate on {day}. Is that staying?"),
    "invoice": ("I can't find invoice {n} in my inbox. Would you mind sending it again? Sorry!",
                "Just checking: is invoice {n} the final one for the design stage?"),
    "bookclub": ("Are we still on for book club? I'm only halfway through {book}, don't tell anyone.",
                 "Can I bring my sister to book club on {day}? She loved {book}."),
}


def _slots(rng: random.Random, project: str) -> dict[str, object]:
    """The facts one email (and the message it answers) talks about, drawn once so they agree."""
    start = dt.date(2025, 1, 6) + dt.timedelta(days=rng.randrange(330))
    return {"day": rng.choice(DAYS), "time": rng.choice(TIMES), "project": project,
            "plant": rng.choice(PLANTS), "material": rng.choice(MATERIALS), "book": rng.choice(BOOKS),
            "n": rng.randrange(2, 40), "date": f"{start.day}{_ordinal(start.day)}"}


def _fill(template: str, slots: dict[str, object]) -> str:
    return template.format(**slots)


def _ordinal(day: int) -> str:
    return "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _wrap(text: str, width: int = 72) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _maya_body(rng: random.Random, person: Person, topic: str, slots: dict[str, object]) -> str:
    """One of Maya's emails: greeting, 2-4 sentences in one or two paragraphs, an ask, her sign-off."""
    bank = TOPICS[topic]
    n_detail = rng.choice((1, 2, 2, 3, 3))
    details = rng.sample(bank["detail"], min(n_detail, len(bank["detail"])))
    first = " ".join([_fill(rng.choice(bank["open"]), slots)] + [_fill(d, slots) for d in details[:1]])
    paras = ["\n".join(_wrap(first))]
    if details[1:]:
        paras.append("\n".join(_wrap(" ".join(_fill(d, slots) for d in details[1:]))))
    paras.append(_fill(rng.choice(bank["ask"]), slots))
    return f"Hi {person.first},\n\n" + "\n\n".join(paras) + f"\n\n{SAMPLE_SIGNOFF}\n"


def _incoming_body(person: Person, topic: str, slots: dict[str, object], variant: int) -> str:
    text = "\n".join(_wrap(_fill(INCOMING[topic][variant % len(INCOMING[topic])], slots)))
    return f"{person.greeting}\n\n{text}\n\n{person.signoff}\n"


def _msgid(i: int, sender: str) -> str:
    digest = hashlib.sha1(f"{_SEED}:{i}:{sender}".encode()).hexdigest()[:16]
    return f"<{digest}.{i}@{sender.split('@')[1]}>"


def _quote_gmail(original: str, who: Person, when: dt.datetime) -> str:
    stamp = when.strftime("%a, %-d %b %Y at %H:%M")
    quoted = "\n".join(f"> {line}" if line else ">" for line in original.rstrip("\n").split("\n"))
    return f"On {stamp}, {who.display} wrote:\n{quoted}\n"


def _quote_outlook(original: str, who: Person, when: dt.datetime, subject: str) -> str:
    stamp = when.strftime("%A, %B %-d, %Y %-I:%M %p")
    return ("-----Original Message-----\n"
            f"From: {who.first} {who.last} [mailto:{who.email}]\nSent: {stamp}\n"
            f"To: {SAMPLE_NAME}\nSubject: {subject}\n\n{original}")


def _message(sender: str, to: str, subject: str, when: dt.datetime, msgid: str, body: str,
             in_reply_to: str | None = None) -> Message:
    msg = Message()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = msgid
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = 'text/plain; charset="us-ascii"'
    msg["Content-Transfer-Encoding"] = "7bit"
    msg.set_payload(body)
    return msg


def _timestamps(rng: random.Random, n: int) -> list[dt.datetime]:
    """`n` distinct working-hours times on weekdays of 2025, sorted."""
    out: set[dt.datetime] = set()
    while len(out) < n:
        day = dt.date(2025, 1, 2) + dt.timedelta(days=rng.randrange(350))
        if day.weekday() >= 5:
            continue
        hour, minute = rng.randrange(8, 19), rng.randrange(60)
        out.add(dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=_TZ))
    return sorted(out)


def sample_messages(seed: int = _SEED) -> list[Message]:
    """The sample mailbox as email.message.Message objects, in date order (deterministic)."""
    rng = random.Random(seed)
    n_replies, n_incoming = 20, 12
    n_maya = SAMPLE_COUNT - n_incoming
    times = _timestamps(rng, n_maya)
    # Pick which of Maya's emails are replies; the first 12 replies answer a message kept in the mailbox.
    reply_idx = sorted(rng.sample(range(5, n_maya), n_replies))
    maya = f"{SAMPLE_NAME} <{SAMPLE_ME}>"
    out: list[tuple[dt.datetime, Message]] = []
    seen: set[str] = set()
    for i, when in enumerate(times):
        # Recurring correspondents, unevenly (Tom and Jonas get the most mail, Hannah the least).
        person = rng.choices(PEOPLE, weights=(6, 3, 6, 3, 4, 2))[0]
        topic = rng.choice(person.topics)
        project = "the Whitaker garden" if person.first == "Sam" else rng.choice(PROJECTS)
        slots = _slots(rng, project)
        subject = _fill(rng.choice(TOPICS[topic]["subject"]), slots)
        subject = subject[0].upper() + subject[1:]
        body = _maya_body(rng, person, topic, slots)
        while body in seen:  # every email distinct, so de-duplication has only real duplicates to find
            body = _maya_body(rng, person, topic, slots)
        seen.add(body)
        msgid = _msgid(i, SAMPLE_ME)
        parent_id = None
        if i in reply_idx:
            k = reply_idx.index(i)
            asked = when - dt.timedelta(hours=rng.randrange(2, 40), minutes=rng.randrange(60))
            original = _incoming_body(person, topic, slots, k)
            subject = f"Re: {subject}"
            if k % 3 == 2:  # every third reply is Outlook-style, the others Gmail-style
                body += "\n" + _quote_outlook(original, person, asked, subject[4:])
            else:
                body += "\n" + _quote_gmail(original, person, asked)
            if k < n_incoming:
                parent_id = _msgid(1000 + k, person.email)
                out.append((asked, _message(person.display, maya, subject[4:], asked, parent_id, original)))
        out.append((when, _message(maya, person.display, subject, when, msgid, body, parent_id)))
    out.sort(key=lambda pair: pair[0])
    return [m for _, m in out]


def write_sample_mailbox(path: str | Path) -> Path:
    """Write the sample mbox to `path` (a file, or a folder that gets `sample.mbox`) and return its path."""
    path = Path(path)
    if path.is_dir():
        path = path / "sample.mbox"
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = StringIO()
    for msg in sample_messages():
        sender = msg["From"].split("<")[-1].rstrip(">")
        when = dt.datetime.strptime(msg["Date"], "%a, %d %b %Y %H:%M:%S %z")
        buf.write(f"From {sender} {when.strftime('%a %b %d %H:%M:%S %Y')}\n")
        Generator(buf, mangle_from_=True, maxheaderlen=0).flatten(msg)
        buf.write("\n")
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path
