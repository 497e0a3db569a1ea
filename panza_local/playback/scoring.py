"""Playback quality: copy ratio, recall@1, the output guards, and the extractive instruction.

Pure Python (numpy only for recall@1): no model is loaded here, so every guard is testable in milliseconds.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from difflib import SequenceMatcher
from functools import lru_cache

# Words that carry no content for the guards and keywords (a small list beats a dependency).
STOP = frozenset("""a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just let me more most
my myself no nor not now of off on once only or other our ours ourselves out over own please same she
should so some such than that the their theirs them themselves then there these they this those through
to too under until up us very was we were what when where which while who whom why will with would you
your yours yourself yourselves thanks thank hi hello dear hey regards best cheers sincerely kind warm ok
okay re fw fwd sent message original forwarded email mail know get got see make want need like well
still one two go going think thing things really much many may might must shall yes sure today tomorrow
week time good great""".split())  # noqa: SIM905

GREETING = re.compile(
    r"^\s*(?:dear|hi|hello|hey|good\s+(?:morning|afternoon|evening)|greetings|thanks|thank\s+you)\b[ ,]*"
    r"((?:(?:prof|dr|mr|mrs|ms)\.?\s+)?[A-Z][\w'.-]*(?:(?:\s*,\s*(?:and\s+)?|\s+(?:and|&)\s+)[A-Z][\w'.-]*){0,3})"
    r"\s*[,!:.\-]", re.IGNORECASE)
BARE_NAME = re.compile(r"^\s*([A-Z][a-z][\w'-]*(?:\s*(?:&|and|,)\s*[A-Z][a-z][\w'-]*){0,3})\s*(?:,|:|\s-\s)")
WORD = re.compile(r"[A-Za-z][A-Za-z'&.-]*[A-Za-z]|\d[\d,.:/$%-]*\d?|\$\d[\d,.]*")
# The words of the instruction form itself: never evidence of a hallucination.
INSTRUCTION_WORDS = frozenset("""ask tell thank reply write remind update invite let send confirm inform apologize congratulate answer
mention recipient team know asking telling offering saying""".split())  # noqa: SIM905
NUMBERISH = re.compile(r"\d")
MONTHS = frozenset("""january february march april may june july august september october november december jan feb mar apr
jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday""".split())  # noqa: SIM905


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: what copy ratio compares."""
    return re.sub(r"\s+", " ", text or "").strip().lower()


def longest_common(a: str, b: str) -> str:
    """Longest common substring of the normalised texts."""
    a, b = normalise(a), normalise(b)
    m = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return a[m.a:m.a + m.size]


def copy_ratio(instruction: str, email: str) -> float:
    """Longest common substring of instruction and email / email length (normalised text): 1.0 is a copy."""
    n = len(normalise(email))
    return len(longest_common(instruction, email)) / n if n else 0.0


def recall_hits(instruction_vecs, email_vecs, own: list[int]):
    """Per instruction: is its nearest email (cosine, rows L2-normalised) its own? `own[i]` indexes email_vecs."""
    import numpy as np

    if len(own) == 0:
        return np.zeros(0, dtype=bool)
    sims = np.asarray(instruction_vecs) @ np.asarray(email_vecs).T
    return sims.argmax(axis=1) == np.asarray(own)


def recall_at_1(instructions: list[str], emails: list[str], own: list[int] | None = None) -> float:
    """Share of instructions whose nearest email (embedded with the embedding model) is their own."""
    from ..retrieval import embed

    own = list(range(len(instructions))) if own is None else own
    if not instructions:
        return 0.0
    hits = recall_hits(embed.embed(instructions), embed.embed(emails), own)
    return float(hits.mean())


def words(text: str) -> list[str]:
    return WORD.findall(text or "")


def content_words(text: str) -> list[str]:
    """Lower-cased words that carry content (no stop words, no one-letter tokens)."""
    return [w.lower() for w in words(text) if len(w) > 2 and w.lower() not in STOP]


def _stem(w: str) -> str:
    return w.lower()[:5]


# -- who the email is to ---------------------------------------------------------------------------------------

def _clean_name(name: str) -> str:
    name = re.sub(r"\s+", " ", name).strip(" ,.-")
    return " ".join(p if p[:1].isupper() or p in ("and", "&") else p.capitalize() for p in name.split(" "))


def recipient(email: str, to_addrs: str | None = None, to_names: list[str] | None = None) -> str | None:
    """The name the email greets (`Dear Tom,` / `Fred,`), else the first To: display name or mailbox name."""
    head = (email or "").lstrip()[:200]
    m = GREETING.match(head)
    if m and m.group(1):
        first = m.group(1)
        if first.lower() in ("all", "team", "everyone", "guys", "folks"):
            return "the team"
        if first.lower() not in STOP and first.lower() != "there":
            return _clean_name(first)
    m = BARE_NAME.match(head)
    if m and m.group(1).lower() not in STOP:
        return _clean_name(m.group(1))
    for name in to_names or []:
        if name and "@" not in name and name.strip().lower() not in ("e-mail", "email", "mail"):  # Enron's fillers
            return _clean_name(name.split(",")[-1] if "," in name else name.split()[0] if name.split() else name)
    if to_addrs:
        first = to_addrs.split(",")[0].strip()
        local = first.split("@")[0].strip("<>\"' ")
        part = re.split(r"[._]", local)[0]
        if part.isalpha() and len(part) > 1:
            return part.capitalize()
    return None


def first_name(name: str | None) -> str:
    """The word of a greeting name an instruction must contain (`Prof. Aman` → `Aman`)."""
    parts = [re.sub(r"\W", "", p) for p in (name or "").split()]
    parts = [p for p in parts if p and p.lower() not in ("prof", "dr", "mr", "mrs", "ms")]
    return parts[0] if parts else ""


# -- keywords: the specifics an instruction must name ----------------------------------------------------------

def idf_table(texts: Iterable[str]) -> dict[str, float]:
    """Inverse document frequency of each content word over the user's mailbox."""
    df: Counter = Counter()
    n = 0
    for t in texts:
        n += 1
        df.update(set(content_words(t)))
    return {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()} | {"": math.log(1 + n) + 1.0}


def _body_lines(email: str) -> str:
    """The email without its greeting line and its last short line (the sign-off name)."""
    lines = [ln for ln in (email or "").strip().splitlines() if ln.strip()]
    if lines and GREETING.match(lines[0]) and len(lines[0]) < 60:
        lines = lines[1:]
    while lines and len(lines[-1].split()) <= 3 and len(lines) > 1:
        lines = lines[:-1]
    return "\n".join(lines)


def keywords(email: str, idf: dict[str, float], k: int = 5, exclude: Iterable[str] = ()) -> list[str]:
    """The `k` most specific terms of the email (rare in the mailbox, names, numbers, dates), in text order."""
    body = _body_lines(email)
    skip = {w.lower() for x in exclude if x for w in x.split()}
    default = idf.get("", 5.0)
    scores: dict[str, float] = {}
    first_pos: dict[str, int] = {}
    stop = _stop_words()
    for pos, w in enumerate(words(body)):
        if w.endswith("'s") and w[:1].isupper():
            w = w[:-2]
        low = w.lower().strip(".-'")
        if not _useful(low) or low in stop or low in skip:
            continue
        s = idf.get(low, default)
        if NUMBERISH.search(low):
            s *= 1.3
        elif w[:1].isupper() and pos > 0:
            s *= 1.2
        if low in MONTHS:
            s *= 1.3
        key = low
        if key not in scores:
            first_pos[key] = pos
            scores[key] = s
        else:
            scores[key] += 0.25 * s  # repetition adds a little: a repeated term is the topic
    best = sorted(scores, key=lambda w: -scores[w])[:k]
    originals = {w.lower().strip(".-'"): w.strip(".-'") for w in words(body.replace("'s ", " "))}
    return [originals.get(w, w) for w in sorted(best, key=lambda w: first_pos[w])]


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from .stopwords import ENGLISH

    return frozenset(STOP | ENGLISH)


def _useful(low: str) -> bool:
    """Not a contraction, URL or address fragment, one-digit number or two-letter word."""
    if "'" in low or "@" in low or "/" in low or "http" in low or "www" in low or low.endswith((".com", ".htm")):
        return False
    if NUMBERISH.search(low):
        return sum(c.isdigit() for c in low) >= 2 or "$" in low
    return len(low) >= 3


def extractive(email: str, *, subject: str | None, to_name: str | None, idf: dict[str, float],
               is_reply: bool = False, user_name: str = "", k: int = 10) -> str:
    """A deterministic instruction: who, what about (the subject), and the email's most specific terms."""
    verb = "Reply to" if is_reply else "Write to"
    who = to_name or "the recipient"
    subj = re.sub(r"^\s*((re|fw|fwd|aw|tr)\s*:\s*)+", "", subject or "", flags=re.IGNORECASE).strip()
    terms = keywords(email, idf, k=k, exclude=[to_name or "", user_name])
    out = f"{verb} {who}"
    if subj and not terms:  # the subject dilutes the email's own terms (measured: recall@1 0.72 → 0.63)
        out += f" about \"{subj[:80]}\""
    if terms:
        out += "; mention " + ", ".join(terms)
    return out + "."


# -- the email's act: does it open by thanking, does it ask ---------------------------------------------------

THANKS_OPENING = re.compile(r"^\W*(?:many\s+|big\s+)?(?:thanks|thank\s+you|thx)\b", re.IGNORECASE)
REQUEST = re.compile(r"\b(?:could|can|would|will)\s+(?:you|we)\b|\bplease\s+(?!find\b|note\b|see\b)\w|\?",
                     re.IGNORECASE)
CLOSING_ASK = re.compile(r"^\W*(?:let\s+me\s+know|any\s+questions|feel\s+free)\b", re.IGNORECASE)


def lead_act(email: str) -> str | None:
    """"thank" when the email opens by thanking, "ask" when it asks the recipient something (a question, "could
    you", "please add"), None otherwise. The closing courtesies every email has ("Let me know if ...") do not
    count. Playback's instruction is "Thank <who> for ..." for an email that opens by thanking and for no
    other, so an adapter learns that thanks come only when the request thanks; drafts rank past emails by it
    (`draft._retrieve`)."""
    body = _body_lines(email)
    if THANKS_OPENING.match(body):
        return "thank"
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", body) if s.strip()]
    if any(REQUEST.search(s) and not CLOSING_ASK.match(s) for s in sentences):
        return "ask"
    return None


# -- guards: reasons an instruction is rejected ----------------------------------------------------------------

def check(instruction: str, email: str, *, to_name: str | None = None, context: str = "",
          max_copy: float = 0.35, max_copy_chars: int = 60, min_words: int = 5, max_words: int = 45,
          banned: Iterable[str] = ()) -> str | None:
    """Why `instruction` is unusable for `email` (None when it passes every guard)."""
    text = (instruction or "").strip()
    ws = words(text)
    if len(ws) < min_words:
        return "too_short"
    if len(ws) > max_words:
        return "too_long"
    if not text[:1].isupper() or re.match(r"(thank you|thanks)\b", text, re.IGNORECASE) or ": " in text:
        return "not_imperative"  # "Thank you for...", "Reply to X: Please ..." are the email's voice
    common = longest_common(text, email)
    n = len(normalise(email))
    if n and (len(common) / n > max_copy and len(common) > 25 or len(common) > max_copy_chars):
        return "copies_email"
    low = [w.lower() for w in ws]
    if max(Counter(low).values()) > max(3, len(low) // 4):
        return "repetitive"
    first = first_name(to_name)
    if first and to_name != "the team" and first.lower() not in re.sub(r"[^\w\s]", "", text).lower():
        return "no_recipient"
    leaked = {b.lower() for b in banned} & set(low) - {w.lower() for w in words(email + " " + context)}
    if leaked:
        return "few_shot_leak"
    source = {_stem(w) for w in content_words(email + "\n" + context)}
    skip = INSTRUCTION_WORDS | set((to_name or "").lower().split())
    mine = [w for w in content_words(text) if w not in skip]
    if mine:
        unsupported = [w for w in mine if _stem(w) not in source]
        if len(unsupported) / len(mine) > 0.5:
            return "unsupported"
    return None
