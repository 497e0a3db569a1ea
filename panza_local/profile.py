"""The user's writing profile: name, role, greeting, sign-off, languages, typical length.

Seeded from the mail the user wrote (`panza profile seed`), stored as `profile.toml` in the home (0600),
edited by hand (`panza profile edit|set`). Drafts put it in the prompt; greetings are also learned per
recipient, so a draft to someone the user has written to before opens the way the user opens with them.
"""

from __future__ import annotations

import copy
import re
import statistics
import sys
from collections import Counter
from dataclasses import asdict, fields, replace
from pathlib import Path

from . import paths, prompts
from .errors import ConfigError, PanzaError
from .prompts import Profile

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FIELDS = [f.name for f in fields(Profile)]
# Opening words of a greeting line, in the languages the cleaner knows (drafts' clean-up uses it too).
GREETING = re.compile(
    r"^(hi|hello|hey|dear|good (?:morning|afternoon|evening)|morning|greetings|hallo|liebe[rs]?|"
    r"sehr geehrte[rs]?|bonjour|salut|cher|chère|ciao|buongiorno|hola|estimad[oa]s?|olá|oi|hej|hoi|beste)\b",
    re.IGNORECASE)
_SIGNOFF = re.compile(
    r"^(thanks|thank you|thx|best|best regards|kind regards|regards|warm regards|cheers|sincerely|"
    r"yours|all the best|talk soon|take care|many thanks|mfg|viele grüße|liebe grüße|gruß|grüße|"
    r"cordialement|bien à vous|saluti|cordiali saluti|un saluto|saludos|un abrazo|atenciosamente|"
    r"met vriendelijke groet|groeten|hälsningar|mvh)\b[ ,.!]*$", re.IGNORECASE)
MIN_SHARE = 0.15  # a habit is one seen in at least this share of emails
# A name alone opening an email, as its greeting ("Lucy," "John and Greg,"): how many people greet (allen-p opens
# 390 of his 606 emails so). Words that open an email with a comma and name no one are not names ("Yes," "All,").
# The clean-up reads it as a greeting; seeding does not learn it as a habit: given as the draft's opening, it
# made allen-p's adapter drafts longer and scored lower (BLEU 0.053 against 0.068, one run, 2026-12-05).
BARE_NAME = re.compile(r"^[A-Z][a-z][\w'-]*(?:\s+(?:and|&)\s+[A-Z][a-z][\w'-]*)?\s*[,:]$")
NOT_NAMES = frozenset("""all everyone everybody folks guys team there both you friends colleagues gentlemen ladies
sir madam yes no sure great ok okay sorry morning also well absolutely agreed done perfect right understood noted
apologies congratulations congrats welcome""".split())  # noqa: SIM905


def bare_name(line: str) -> bool:
    """Whether `line` is a greeting made of a name alone ("Lucy,"), not a sign-off or a reply's first word."""
    if not BARE_NAME.match(line) or _SIGNOFF.match(line) or GREETING.match(line):  # "Hi," is a greeting word
        return False
    return not name_words(line) & NOT_NAMES


def name_words(text: str) -> set[str]:
    """The lower-cased words of a greeting's names ("John and Greg," -> {"john", "and", "greg"})."""
    return {w.lower() for w in re.findall(r"[^\W\d_][\w'-]*", text)}


def path() -> Path:
    """Where the profile lives: profile.toml in the home."""
    return paths.home() / "profile.toml"


def load(*, seed_if_missing: bool = True) -> Profile:
    """The stored profile; without one, a profile seeded from the user's mail (not saved)."""
    p = path()
    if p.exists():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}",
                              fix=f"fix it with `panza profile edit`, or delete {p} and run `panza profile seed`")
        return from_dict(data)
    if not seed_if_missing:
        return Profile()
    from . import config

    settings = config.load()  # a seeded profile is read afresh from the mail, which every draft asks for
    kept = _kept("seed", (settings.user_name,))
    if "profile" not in kept:
        kept["profile"] = seed(settings=settings)
    return copy.deepcopy(kept["profile"])


def load_or_none() -> Profile | None:
    """The profile prompts use (stored, else seeded), or None when it cannot be read: training and scoring
    then build their prompts without a profile block rather than not at all."""
    try:
        return load()
    except PanzaError:
        return None


def from_dict(data: dict) -> Profile:
    """A Profile from a dict, checking field names and types."""
    unknown = set(data) - set(FIELDS)
    if unknown:
        raise ConfigError(f"unknown profile field(s): {', '.join(sorted(unknown))}",
                          fix=f"use only: {', '.join(FIELDS)}")
    out = Profile()
    for name, value in data.items():
        setattr(out, name, coerce(name, value))
    return out


def coerce(name: str, value) -> object:
    """Turn a raw value (CLI string or TOML value) into the type of profile field `name`."""
    if name not in FIELDS:
        raise ConfigError(f"unknown profile field {name!r}", fix=f"use one of: {', '.join(FIELDS)}")
    if name == "languages":
        items = value.split(",") if isinstance(value, str) else list(value)
        return [str(v).strip() for v in items if str(v).strip()]
    if name == "typical_words":
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"typical_words must be a whole number, got {value!r}",
                              fix="panza profile set typical_words 120") from None
        if n < 0:
            raise ConfigError("typical_words cannot be negative", fix="panza profile set typical_words 120")
        return n
    # \n typed on a command line means a line break (sign-offs are often two lines)
    return str(value).replace("\\n", "\n")


def save(profile: Profile) -> Path:
    """Write the profile to profile.toml (atomic, 0600)."""
    import tomli_w

    return paths.write_private(path(), tomli_w.dumps(asdict(profile)))


def set_value(name: str, value) -> Profile:
    """Set one field, save, and return the profile (starting from the seeded one if none is stored)."""
    prof = load()
    setattr(prof, name, coerce(name, value))
    save(prof)
    return prof


def seed(conn=None, settings=None) -> Profile:
    """A profile inferred from the emails the user wrote (the `messages` rows with is_mine = 1)."""
    from . import config, store
    from .ingest import messages

    settings = settings or config.load()
    own = conn is None
    conn = conn or store.connect()
    try:
        rows = messages.mine_newest(conn, 5000)
    finally:
        if own:
            conn.close()
    bodies = [r["body"] for r in rows if r["body"]]
    prof = Profile(name=settings.user_name)
    if not bodies:
        return prof
    prof.typical_words = round_words(statistics.median(len(b.split()) for b in bodies))
    prof.greeting = habit([greeting_of(b) for b in bodies], len(bodies))
    signoffs = [signoff_of(b) for b in bodies]
    prof.signoff = habit(signoffs, len(bodies))
    if not prof.name:
        prof.name = habit([name_of(b) for b in bodies], len(bodies))
    langs = Counter(r["language"] for r in rows if r["language"])
    prof.languages = [lang for lang, n in langs.most_common() if n >= max(2, 0.05 * len(rows))]
    return prof


def round_words(n: float) -> int:
    """A typical length as a person would say it: 31 -> 30, 47 -> 45, 152 -> 150, 437 -> 450 (under 10 as is).

    A seeded profile is computed afresh from the mail, and every prompt says its length. With the exact
    median, new mail moved it by a word (allen-p: 31 -> 30 after 50 emails) and with it every prompt: the
    ones the adapter was trained on, the gate's kept scores, the draft prefix kept on disk."""
    n = int(n + 0.5)
    step = 1 if n < 10 else 5 if n < 100 else 10 if n < 300 else 50
    return int(n / step + 0.5) * step


def habit(values: list[str | None], total: int) -> str:
    """The most common non-empty value when it occurs in at least MIN_SHARE of `total`, else ''."""
    counts = Counter(v for v in values if v)
    if not counts:
        return ""
    value, n = counts.most_common(1)[0]
    return value if n >= max(2, MIN_SHARE * total) else ""


def _lines(body: str) -> list[str]:
    return [ln.strip() for ln in body.strip().splitlines() if ln.strip()]


def greeting_of(body: str) -> str | None:
    """The greeting form of an email ("Hi,", "Dear <name>,"), with the addressee's name abstracted."""
    lines = _lines(body)
    if not lines:
        return None
    first = lines[0]
    m = GREETING.match(first)
    if not m or len(first.split()) > 5:
        return None
    word = first[: m.end()]
    rest = first[m.end():].strip()
    punct = rest[-1] if rest and rest[-1] in ",!:." else (first[-1] if first[-1] in ",!:." else "")
    name = rest.rstrip(",!:.").strip()
    return f"{word} <name>{punct}" if name else f"{word}{punct}"


def signoff_of(body: str) -> str | None:
    """The closing line(s) of an email ("Thanks,\\nPhillip"), when it has one."""
    lines = _lines(body)
    for i in range(len(lines) - 1, max(len(lines) - 4, -1), -1):
        if _SIGNOFF.match(lines[i]):
            tail = lines[i + 1:]
            if len(tail) <= 1 and all(len(t.split()) <= 3 for t in tail):
                return "\n".join([lines[i], *tail])
            return None
    return None


def name_of(body: str) -> str | None:
    """The name the user signs with: a short capitalised last line."""
    lines = _lines(body)
    if len(lines) < 2:
        return None
    last = lines[-1]
    if 1 <= len(last.split()) <= 3 and all(w[:1].isupper() for w in last.split()) and not _SIGNOFF.match(last):
        return last.rstrip(".,")
    return None


def greeting_for(to: str | None, conn=None) -> str | None:
    """How the user usually opens emails to `to` (the first line, name included), if they have written to them."""
    if not to:
        return None
    from . import store
    from .ingest import messages

    addr = address_of(to)
    if not addr:
        return None
    own = conn is None
    conn = conn or store.connect()
    try:
        bodies = messages.mine_to(conn, addr, 200)
    finally:
        if own:
            conn.close()
    firsts = []
    for body in bodies:
        lines = _lines(body or "")
        if lines and GREETING.match(lines[0]) and len(lines[0].split()) <= 5:
            firsts.append(lines[0])
    if not firsts:
        return None
    line, n = Counter(firsts).most_common(1)[0]
    return line if n >= 0.3 * len(bodies) else None


def prompt_profile(to: str | None, prof: Profile, *, conn=None, notices: list[str] | None = None,
                   hint: str = "") -> Profile:
    """The profile as the prompt shows it for recipient `to` (their usual greeting filled in).

    Drafting and training both call this, so the adapter learns on exactly the prompt drafts use. `hint`
    (the instruction) names a recipient known only by address: "Ask Bob ..." to bob@example.com.
    """
    greet = None
    if to:
        try:
            greet = greeting_for(to, conn=conn)
        except PanzaError as exc:  # an unreadable store costs the greeting, not the draft
            if notices is not None:
                notices.append(f"profile not used: {exc.message}")
    if greet or "<name>" in prof.greeting:
        prof = replace(prof, greeting=greet or _named(prof.greeting, to, hint))
    return prof


def _named(greeting: str, to: str | None, hint: str = "") -> str:
    """A seeded greeting form ("Hi <name>,") filled with the recipient's first name (with no recipient, the name
    the instruction addresses: "Ask Zed about ..." -> "Hi Zed,"), or without a name."""
    first = recipient_first(to, hint)
    out = greeting.replace("<name>", first) if first else greeting.replace(" <name>", "").replace("<name>", "")
    return out if re.search(r"\w", out) else ""  # "<name>," with no name: no greeting


def recipient_first(to: str | None, hint: str = "") -> str:
    """The first name a greeting gives the recipient: from `to` (`first_name_of`), with no recipient the person the
    instruction addresses ("Ask Zed about ..." -> "Zed"), capitalised; '' when neither says it."""
    first = first_name_of(to, hint) if to else prompts.addressed_name(hint, person=True)
    return first[:1].upper() + first[1:]


def first_name_of(to: str | None, hint: str = "") -> str:
    """The recipient's first name: from the display name, else from the address when it reads as one
    ("jonas.berg@..." -> Jonas; "bob@..." -> Bob only when `hint` names Bob), else ''."""
    from email.utils import getaddresses

    pairs = getaddresses([to or ""])
    names = [display_first(n) for n, _ in pairs if n.strip()]
    if names and names[0]:
        return names[0]
    addr = next((a for _, a in pairs if "@" in a), "")
    parts = re.split(r"[._+-]", addr.split("@")[0]) if addr else []
    if not parts or not parts[0].isalpha() or len(parts[0]) < 2:
        return ""
    first = parts[0].capitalize()
    if (len(parts) == 2 and parts[1].isalpha() and len(parts[1]) > 1) or re.search(rf"\b{first}\b", hint or ""):
        return first
    return ""


DOMINANT = 3  # several people share the name: take the one written to this many times as often as the next


def recipient_named(instruction: str, conn=None) -> tuple[str, list[str]]:
    """Whom an instruction addresses among the people the user writes to: "Ask Priya to ..." ->
    ("Priya Natarajan <priya.natarajan@...>", []). The first name is matched against each correspondent's display
    name, else their address's first part ("priya.natarajan@"); several matches -> the one written to
    DOMINANT times as often as the next, else ("", [the candidates]) for the caller to ask. ("", []) when the
    instruction names nobody this way or nobody by that name has been written to."""
    from . import store
    from .ingest import messages

    name = prompts.addressed_name(instruction).lower()
    if not name:
        return "", []
    own = conn is None
    conn = conn or store.connect()
    try:
        people = messages.correspondents(conn, mentioning=name)
    finally:
        if own:
            conn.close()
    hits = [(addr, shown, n) for addr, shown, n in people if _first_of(shown, addr) == name]
    if not hits:
        return "", []
    as_to = [shown_address(shown, addr) for addr, shown, _ in hits]
    if len(hits) == 1 or hits[0][2] >= DOMINANT * hits[1][2]:
        return as_to[0], []
    return "", as_to


def _first_of(shown: str, addr: str) -> str:
    """A correspondent's first name, lower case: their display name's first word, else the address's first part
    when the address reads as a name (letters only: "priya.natarajan@", "tom@"; not "orders-desk2@")."""
    if shown:
        return display_first(shown).lower()
    local = addr.split("@")[0]
    parts = re.split(r"[._+-]", local)
    return parts[0].lower() if parts[0].isalpha() and len(parts[0]) > 1 and len(parts) <= 3 else ""


def display_first(shown: str) -> str:
    """The first name in a display name: "Jonas Berg" -> Jonas, "Berg, Jonas" and "Allen, Phillip K." -> Jonas,
    Phillip (a one-word surname before the comma), "Jonas Berg, PhD" -> Jonas."""
    shown = shown.strip().strip("\"'")
    last, comma, rest = shown.partition(",")
    words = rest.split() if comma and len(last.split()) == 1 else shown.split()
    return words[0].strip(",.\"'") if words else ""


def display_names(conn=None, addresses=None) -> dict[str, str]:
    """{address (lower case): display name} of the people the user has written to whose To: header named them
    (`messages.correspondents`). Requests in prompts name people by these ("Email to Jonas Berg:": 3 tokens
    where "jonas.berg@northfield-builders.example" takes 12), the same in training and drafting.

    `conn`: every name in that store (training reads them once). `addresses` (a draft's recipient and its past
    emails' recipients): only those, from the store's rows that name each, kept while the store is unchanged
    (`store.version`): reading every name of a 7,000-email mailbox takes ~0.1 s, which a cold draft would pay."""
    from . import store
    from .ingest import messages

    if addresses is None:
        return _names_of(messages.correspondents(conn))
    wanted = {a.strip().lower() for a in addresses if a and "@" in a}
    if not wanted or not paths.db_path().exists():
        return {}
    known = _kept("names")
    missing = wanted - known.keys()
    if missing:
        conn = store.connect()
        try:
            for addr in sorted(missing):
                people = messages.correspondents(conn, mentioning=addr)
                known[addr] = _names_of(p for p in people if p[0] == addr).get(addr, "")
        finally:
            conn.close()
    return {a: known[a] for a in wanted if known[a]}


_KEPT: dict = {}  # what was derived from the store: {what: (the store's version and what else it hangs on, {...})}


def _kept(what: str, extra: tuple = ()) -> dict:
    """The dict that holds what `what` derived from the store, emptied whenever the store (`store.version`) or
    `extra` changed since it was filled."""
    from . import store

    key = (store.version(), extra)
    got = _KEPT.get(what)
    if not got or got[0] != key:
        got = _KEPT[what] = (key, {})
    return got[1]


def _names_of(people) -> dict[str, str]:
    return {addr: shown for addr, shown, _ in people if shown and "@" not in shown}


def with_names(to: str | None, names: dict[str, str]) -> str:
    """`to` with the display name of each bare address that `names` knows ("jonas.berg@x" -> "Jonas Berg
    <jonas.berg@x>"); a name the caller wrote stays."""
    from email.utils import getaddresses

    if not to or not names:
        return to or ""
    pairs = [(n.strip(), a.strip()) for n, a in getaddresses([to]) if n.strip() or a.strip()]
    if not pairs or all(n or a.lower() not in names for n, a in pairs):
        return to
    return ", ".join(shown_address(n or names.get(a.lower(), ""), a) if "@" in a else (n or a) for n, a in pairs)


def shown_address(name: str, addr: str) -> str:
    """"Name <addr>" as a person reads it (email.utils.formataddr would write a non-ASCII name as an RFC 2047
    word, "=?utf-8?q?Jos=C3=A9?=", which a prompt must not show); quoted where the name has a comma."""
    name = " ".join(name.split())
    if not name:
        return addr
    if re.search(r'[,;:<>@()\[\]"\\]', name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


def address_of(value: str) -> str:
    """The bare address of the first recipient in `value` ("Ann <ann@x.org>, b@y" -> "ann@x.org")."""
    from email.utils import getaddresses

    found = [a for _, a in getaddresses([value]) if "@" in a]
    return found[0] if found else ""
