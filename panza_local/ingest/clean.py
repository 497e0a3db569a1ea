"""Cleaning: split what the author wrote from what they quoted, and drop signatures and footers.

`clean(text)` returns the author's own text (`body`) and the quoted / forwarded material below or
between it (`thread`), kept as reply context. Patterns covered: `>` quoting (inline too), "On ... wrote:"
attributions in the common languages (also wrapped over two or three lines), Outlook separators and
From/Sent/To header blocks, Lotus Notes `Name MM/DD/YYYY HH:MM AM` headers, forwarded blocks, `-- `
signatures, mobile footers and confidentiality disclaimers.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass

# --- where quoted material starts ---------------------------------------------------------------

_SEPARATOR = re.compile(
    r"^\s*[-_=*]{2,}\s*(original message|ursprüngliche nachricht|originalnachricht|message d'origine|"
    r"message original|mensaje original|messaggio originale|oorspronkelijk bericht|origineel bericht|"
    r"mensagem original|originalmeddelande|oprindelig meddelelse|opprinnelig melding|alkuperäinen viesti|"
    r"oryginalna wiadomość|původní zpráva|исходное сообщение|αρχικό μήνυμα|orijinal mesaj|"
    r"reply message|original)\s*[-_=*]{2,}\s*$",
    re.IGNORECASE)
_FORWARD = re.compile(
    r"^\s*(?:[-_=*>]{2,}\s*)?(forwarded by\b.*|forwarded message|begin forwarded message:?|weitergeleitete nachricht|"
    r"message transféré|début du message (?:réexpédié|transféré)\s*:?|mensaje reenviado|messaggio inoltrato|"
    r"doorgestuurd bericht|mensagem encaminhada|vidarebefordrat meddelande|videresendt meddelelse|"
    r"videresendt melding|välitetty viesti|przekazana wiadomość|пересылаемое сообщение|"
    r"转发的邮件|転送されたメッセージ)\s*(?:[-_=*]{2,}.*)?$",
    re.IGNORECASE)
# "On <date>, <name> wrote:" and its forms; matched against one line or two/three joined lines.
_ON_WROTE = re.compile(
    r"^\s*(?:>\s*)?(?:on|le|am|el|il|op|em|no dia|den|på|dne|w dniu|dnia|d\.|в|el día|the|in data|"
    r"(?:mon|tue|wed|thu|fri|sat|sun|man|tir|ons|tor|fre|lør|søn|ma|ti|ke|to|pe|la|su)\w*\.?)\b"
    r".{0,400}?\b(?:wrote|writes|a écrit|schrieb|escribió|ha scritto|schreef|escreveu|skrev|skriver|napsal|"
    r"napisał\(a\)|napisał|napisała|pisze|kirjoitti|написал\(а\)|написала|написал|пишет|έγραψε|yazdı)"
    r"(?:\s*:?|\s+.{0,200}:)\s*$",
    re.IGNORECASE | re.DOTALL)
_WROTE_BARE = re.compile(r"^\s*(?:\S.{0,200}?)\s(?:wrote|a écrit|schrieb|escribió|skrev|написал\(а\)|пишет)\s*:\s*$",
                         re.IGNORECASE | re.DOTALL)
# "11:00 AM, November 17, 2021, "John" <john@x.com>:" — a dated line ending in an address and a colon.
_DATED_ADDR = re.compile(r"^.{0,200}\d{1,2}:\d{2}.{0,200}<?[\w.+'-]+@[\w-]+(?:\.[\w-]+)+>?\s*:\s*$", re.DOTALL)
_CJK_WROTE = re.compile(r"^.{0,200}(?:写道|寫道|wrote|のメッセージ|さんは書きました|님이 작성)\s*[:：]?\s*$", re.DOTALL)
_HEADER_KEY = (r"(?:from|de|von|van|da|från|fra|od|от|lähettäjä|feladó|sent|date|datum|envoyé|gesendet|"
               r"enviado|enviada|inviato|verzonden|skickat|sendt|wysłano|отправлено|lähetetty|data|fecha|"
               r"to|à|a|an|aan|para|till|til|do|кому|vastaanottaja|cc|kopie|subject|objet|betreff|asunto|"
               r"oggetto|onderwerp|assunto|ämne|emne|temat|тема|aihe|sujet|importance|priorité)")
_HEADER_LINE = re.compile(r"^\s*[*>]?\s*\*?" + _HEADER_KEY + r"\s?\*?\s*:\s*\*?(?:\t|\s|$)", re.IGNORECASE)
_FROM_LINE = re.compile(r"^\s*[*>]?\s*\*?(?:from|de|von|van|da|från|fra|od|от|lähettäjä|feladó)\s?\*?\s*:\s*\S",
                        re.IGNORECASE)
# Lotus Notes: "Phillip K Allen  12/13/2000 02:14 PM" or a name line followed by a date line.
_NOTES_DATE = r"\d{1,2}/\d{1,2}/\d{2,4}\s+\d{1,2}:\d{2}(?::\d{2})?\s*(?:AM|PM)?"
_NOTES_INLINE = re.compile(r"^\s*\S.{0,120}?\s+(?:on\s+)?" + _NOTES_DATE + r"\s*$", re.IGNORECASE)
_NOTES_DATE_LINE = re.compile(r"^\s*" + _NOTES_DATE + r"\s*$", re.IGNORECASE)
_TO_LINE = re.compile(r"^\s*(?:to|an|à|a|para|aan|till|til)\s*:\s*\S", re.IGNORECASE)
_CC_SUBJECT = re.compile(r"^\s*(?:cc|bcc|subject|objet|betreff|asunto|oggetto|onderwerp|assunto|ämne|emne)\s*:", re.IGNORECASE)
_QUOTE = re.compile(r"^\s*>")

# --- what trails the author's text ---------------------------------------------------------------

_SIG_DASH = re.compile(r"^(?:--|__)\s*$")
_MOBILE = re.compile(
    r"^\s*(?:sent (?:from|via|with|using) (?:my |the )?\S.{0,60}|get outlook for \w+.{0,20}|"
    r"sent from (?:mail|outlook) for \w+.{0,20}|envoyé de(?:puis)? mon \S.{0,40}|von meinem \S.{0,40}gesendet|"
    r"enviado (?:desde|de) mi \S.{0,40}|inviato da(?:l mio)? \S.{0,40}|verzonden (?:vanaf|met) mijn \S.{0,40}|"
    r"enviado do meu \S.{0,40}|skickat från min \S.{0,40}|sendt fra min \S.{0,40}|"
    r"отправлено с (?:моего )?\S.{0,40}|iphoneから送信|从我的iphone发送|發自我的 iphone)\s*$",
    re.IGNORECASE)
_DISCLAIMER_WORDS = re.compile(
    r"confidential|intended recipient|privileged|disclaimer|unauthori[sz]ed|prohibited|if you have received|"
    r"this (?:e-?mail|message) (?:and any|is intended|may contain)|virus|notify the sender|vertraulich|"
    r"destinataire|destinatario", re.IGNORECASE)

# Markers whose presence in a stored body means cleaning missed something (used by tests and bench).
RESIDUAL = re.compile(
    r"^\s*>|-----\s*original message|forwarded by|-{3,} ?forwarded message|begin forwarded message|"
    r"\bwrote:\s*$|^\s*(?:from|sent|to|subject):\s.*\n\s*(?:from|sent|to|subject|cc|date):|"
    r"(?<![\d/.-])" + _NOTES_DATE + r"\s*\n\s*(?:to|cc|subject)\s*:",
    re.IGNORECASE | re.MULTILINE)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_VERB_ENDINGS = ("wrote", "writes", "écrit", "schrieb", "escribió", "scritto", "schreef", "escreveu", "skrev",
                 "skriver", "napsal", "napisał(a)", "napisał", "napisała", "pisze", "kirjoitti", "написал(а)",
                 "написала", "написал", "пишет", "έγραψε", "yazdı", "写道", "寫道", "書きました", "작성")


@dataclass
class Cleaned:
    body: str
    thread: str


def clean(text: str) -> Cleaned:
    """Split `text` into the author's own words and the quoted thread; drop signature and footers."""
    lines = normalise(text).split("\n")
    cut, inline = _cut_index(lines)
    head, thread_lines = lines[:cut], lines[cut:]
    if thread_lines:  # Notes put the sender's company, indented, just above its header block
        while head and (not head[-1].strip() or (head[-1][:1] == "\t" and len(head[-1].split()) <= 6)):
            thread_lines.insert(0, head.pop())
    mine = [x for j, x in enumerate(head) if j not in inline and not _QUOTE.match(x)]
    quoted = [x for j, x in enumerate(head) if j in inline or _QUOTE.match(x)]
    body_lines = _strip_trailers(mine)
    body = _tidy("\n".join(body_lines))
    thread = _tidy("\n".join(quoted + ([""] if quoted and thread_lines else []) + thread_lines))
    return Cleaned(body=body, thread=thread)


def normalise(text: str) -> str:
    """Unify newlines, drop trailing spaces and control characters, NBSP to space."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ").replace("\u200b", "")
    text = _CONTROL.sub("", text)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _tidy(text: str) -> str:
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n").strip()


def _cut_index(lines: list[str]) -> tuple[int, set[int]]:
    """First line of quoted, forwarded or attributed material, and attribution lines of inline replies."""
    n = len(lines)
    inline: set[int] = set()
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or i in inline:
            continue
        if _SEPARATOR.match(s) or _FORWARD.match(s):
            return i, inline
        span = _attribution(lines, i)
        if span:
            if _answered_below(lines, i + span):
                inline.update(range(i, i + span))  # bottom-posted or inline reply: keep what follows
                continue
            return i, inline
        if _MOBILE.match(line) and any(x.strip() for x in lines[i + 1:]):
            return i, inline
        if _FROM_LINE.match(line) and _header_block(lines, i):
            return i, inline
        if _TO_LINE.match(line) and _to_block(lines, i):
            return i, inline
        if _is_notes_header(lines, i):
            return i, inline
        if _QUOTE.match(line) and _quoted_to_end(lines, i):
            return i, inline
    return n, inline


def _answered_below(lines: list[str], j: int) -> bool:
    """After an attribution at j: a `>` block followed by the author's own (unquoted) text."""
    k = j
    while k < len(lines) and not lines[k].strip():
        k += 1
    if k >= len(lines) or not _QUOTE.match(lines[k]):
        return False
    while k < len(lines) and (_QUOTE.match(lines[k]) or not lines[k].strip()):
        k += 1
    rest = [x for x in lines[k:] if x.strip()]
    if not rest or _SEPARATOR.match(rest[0].strip()) or _FORWARD.match(rest[0].strip()):
        return False
    own = [x for x in rest if not _QUOTE.match(x) and not _MOBILE.match(x) and not _SIG_DASH.match(x)]
    return len(" ".join(own).split()) >= 3


def _attribution(lines: list[str], i: int) -> int:
    """Number of lines (1-3) of an "On ... wrote:" attribution starting at line i, else 0."""
    for span in (1, 2, 3):
        if i + span > len(lines):
            break
        tail = lines[i + span - 1].rstrip().lower()
        if not tail:
            break
        if not (tail.endswith((":", "：")) or tail.endswith(_VERB_ENDINGS)):
            continue
        chunk = " ".join(x.strip() for x in lines[i:i + span])
        if len(chunk) > 500:
            break
        if _ON_WROTE.match(chunk) or _CJK_WROTE.match(chunk) or _DATED_ADDR.match(chunk):
            return span
        if _WROTE_BARE.match(chunk) and _next_is_quote(lines, i + span):
            return span
    return 0


def _next_is_quote(lines: list[str], i: int) -> bool:
    for line in lines[i:i + 3]:
        if line.strip():
            return bool(_QUOTE.match(line))
    return True  # "X wrote:" as the very last line: what follows was cut by the client


def _header_block(lines: list[str], i: int) -> bool:
    """A From: line followed by at least one more header line (Sent/To/Subject/Date/Cc) nearby."""
    hits = 0
    for line in lines[i + 1:i + 8]:
        if _HEADER_LINE.match(line):
            hits += 1
        elif re.match(r"^\s*\S+@\S+", line):  # wrapped address list
            continue
    return hits >= 1


def _to_block(lines: list[str], i: int) -> bool:
    """A Notes/Outlook header block whose From line was dropped: To: then cc:/Subject: lines, after a blank."""
    if i > 0 and lines[i - 1].strip():
        return False
    return sum(bool(_CC_SUBJECT.match(x)) for x in lines[i + 1:i + 5]) >= 1


def _is_notes_header(lines: list[str], i: int) -> bool:
    """Lotus Notes: `Name MM/DD/YYYY HH:MM AM` (name, date and time maybe on separate lines) + To:/cc:."""
    for span in (1, 2, 3):
        block = lines[i:i + span]
        if len(block) < span or (span > 1 and not block[-1].strip()):
            break
        chunk = " ".join(x.strip() for x in block)
        if len(chunk) > 160:
            break
        if _NOTES_INLINE.match(chunk) or _NOTES_DATE_LINE.match(chunk):
            nxt = i + span
            if nxt >= len(lines) - 1 or any(_HEADER_LINE.match(f) for f in lines[nxt:nxt + 6]):
                return True
    return False


def _quoted_to_end(lines: list[str], i: int) -> bool:
    """True when from line i on, every non-blank line is quoted (or a footer)."""
    rest = [x for x in lines[i:] if x.strip() and not _QUOTE.match(x)]
    return all(_MOBILE.match(x) or _SIG_DASH.match(x) for x in rest)


def _strip_trailers(lines: list[str]) -> list[str]:
    """Cut the `-- ` signature, mailing-list footers, mobile footers and trailing disclaimers."""
    for i, line in enumerate(lines):
        if (_SIG_DASH.match(line) and i > 0) or _list_footer(lines, i):
            lines = lines[:i]
            break
    lines = [x for x in lines if not _MOBILE.match(x)]
    lines = _strip_contact_block(lines)
    # Disclaimers: drop trailing paragraphs with at least two legal keywords.
    paras = "\n".join(lines).split("\n\n")
    while len(paras) > 1 and len(_DISCLAIMER_WORDS.findall(paras[-1])) >= 2:
        paras.pop()
    while len(paras) > 1 and not paras[-1].strip():
        paras.pop()
    return "\n\n".join(paras).split("\n")


_VALEDICTION = re.compile(
    r"^\s*(?:best|best regards|best wishes|kind regards|warm regards|regards|many thanks|thanks|thank you|"
    r"thanks again|cheers|sincerely|yours|yours truly|all the best|take care|talk soon|"
    r"mit freundlichen grüßen|viele grüße|beste grüße|gruß|cordialement|bien à vous|salutations|"
    r"saludos|un saludo|atentamente|cordiali saluti|saluti|met vriendelijke groet|groeten|"
    r"atenciosamente|abraços|med vänliga hälsningar|hälsningar|mvh|med venlig hilsen)[,.!]*\s*$", re.IGNORECASE)
_CONTACT = re.compile(
    r"(?:\+?\d[\d ().-]{6,}\d)|@|https?://|www\.|\b(?:tel|phone|mobile|cell|fax|office|direct|"
    r"suite|street|st\.|ave|avenue|road|blvd|floor|inc|ltd|llc|gmbh|corp|university|department|"
    r"director|manager|engineer|president|officer|professor|ceo|cto|cfo|vp)\b", re.IGNORECASE)


def _strip_contact_block(lines: list[str]) -> list[str]:
    """After `Best,` + a short name line (or a name opening the last paragraph), drop title/phone/address lines."""
    lines = _strip_name_card(lines)
    text_idx = [i for i, x in enumerate(lines) if x.strip()]
    for k in range(len(text_idx) - 1, -1, -1):
        i = text_idx[k]
        if i < len(lines) - 12:
            break
        if not _VALEDICTION.match(lines[i]):
            continue
        name = next((j for j in text_idx if j > i), None)
        if name is None or len(lines[name].split()) > 4:
            return lines
        rest = [x for x in lines[name + 1:] if x.strip()]
        if rest and len(rest) <= 10 and sum(bool(_CONTACT.search(x)) for x in rest) * 2 >= len(rest):
            return lines[:name + 1]
        return lines
    return lines


def _strip_name_card(lines: list[str]) -> list[str]:
    """A last paragraph that is a name followed by contact lines (a signature card): keep only the name."""
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    start = end
    while start and lines[start - 1].strip():
        start -= 1
    block = lines[start:end]
    if start == 0 or len(block) < 3 or len(block) > 12:
        return lines
    name = block[0].strip()
    if len(name.split()) > 4 or not name[:1].isupper() or not re.fullmatch(r"[^\W\d_][\w.' -]*[^\W\d_]", name):
        return lines
    rest = block[1:]
    if sum(bool(_CONTACT.search(x)) for x in rest) * 2 >= len(rest) and any(
            re.search(r"\d{3}.?\d{3,4}|@|https?://|www\.", x) for x in rest):
        return lines[:start + 1]
    return lines


_RULE = re.compile(r"^\s*[_=-]{10,}\s*$")
_LIST_FOOTER = re.compile(r"mailing list|listinfo|unsubscribe|google groups|groups\.google|mailman", re.IGNORECASE)


def _list_footer(lines: list[str], i: int) -> bool:
    """A rule line followed by a mailing list's footer (Mailman, Google Groups)."""
    if _RULE.match(lines[i]):
        return any(_LIST_FOOTER.search(x) for x in lines[i + 1:i + 4])
    return lines[i].startswith("You received this message because you are subscribed to the Google Groups")


def content_hash(body: str) -> str:
    """Hash of the body with case, whitespace and punctuation normalised (the de-dup key)."""
    norm = re.sub(r"[\W_]+", " ", body.lower()).strip()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()


def residual_markers(body: str) -> list[str]:
    """Quote or forward markers still present in a cleaned body (should be none)."""
    return [m.group(0) for m in RESIDUAL.finditer(body)]


# --- language ---------------------------------------------------------------------------------------

_STOP = {
    "en": "the and to of you is that for it in this on with have be are will i we not at please thanks",
    "de": "der die und das ist nicht ich sie mit den zu ein eine auch für wir bitte danke auf es",
    "fr": "le la les et est pas je vous une des pour que dans qui nous avec merci sur ce",
    "es": "el la los las y es no que de en por para un una con gracias nos se lo",
    "it": "il lo la gli le e è non che di per un una con grazie sono ho ci della",
    "nl": "de het een en is niet ik je van dat voor met op zijn wij bedankt dank",
    "pt": "o a os as e é não que de em para um uma com obrigado você eu",
    "sv": "och att det är inte jag du en ett på för med som tack vi har",
    "da": "og at det er ikke jeg du en et på for med som tak vi har",
    "pl": "i w nie że to jest się na z do dziękuję jak tak ale",
}
_STOPSETS = {k: set(v.split()) for k, v in _STOP.items()}


_SCRIPTS = [("ja", re.compile(r"[\u3040-\u30ff]")), ("zh", re.compile(r"[\u4e00-\u9fff]")),
            ("ko", re.compile(r"[\uac00-\ud7af]")), ("ru", re.compile(r"[\u0400-\u04ff]")),
            ("el", re.compile(r"[\u0370-\u03ff]")), ("ar", re.compile(r"[\u0600-\u06ff]")),
            ("he", re.compile(r"[\u0590-\u05ff]"))]
_WORD = re.compile(r"[^\W\d_]+")


def language(text: str) -> str:
    """Best-guess ISO 639-1 code for `text` (script first, then stop words); 'und' if unsure."""
    sample = text[:800].lower()
    words = _WORD.findall(sample)
    if not words:
        return "und"
    if not sample.isascii():
        n_letters = sum(map(len, words))
        scripts = {code: len(rx.findall(sample)) for code, rx in _SCRIPTS}
        if scripts["ja"] and scripts["ja"] + scripts["zh"] > n_letters * 0.2:
            return "ja"
        best = max(scripts, key=scripts.get)
        if scripts[best] > n_letters * 0.3:
            return best
    counts = Counter(words)
    keys = counts.keys()
    scores = {lang: sum(counts[w] for w in stop & keys) for lang, stop in _STOPSETS.items()}
    lang = max(scores, key=scores.get)
    n_words = sum(counts.values())
    return lang if scores[lang] >= 2 or (scores[lang] >= 1 and n_words < 8) else "und"


_SUBJECT_KEY = re.compile(r"^\W*(?:subject|objet|betreff|asunto|oggetto|onderwerp|assunto|ämne|emne|temat|тема|aihe|"
                          r"sujet)\b", re.IGNORECASE)
_REPLY_PREFIX = re.compile(r"^(?:(?:re|fw|fwd|aw|wg|sv|tr|rv|enc)\s*:\s*)+", re.IGNORECASE)


def gist(thread: str, limit: int) -> str:
    """The words of a quoted thread, on one line, at most `limit` characters: its separators, attribution
    lines and Sent/To/Cc/Date header fields dropped (a quoted Outlook header is ~150 characters of names,
    addresses and dates before the first word of the message replied to), `>` marks removed; a From field
    kept as "From First Last:" and a Subject as "Subject. " before the text they head. For prompts that read
    a thread (playback): the budget goes to what was said."""
    lines = normalise(thread).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines) and sum(len(x) + 1 for x in out) < limit:
        line = re.sub(r"^(?:\s*>)+", "", lines[i]).strip()
        span = _attribution(lines, i)
        if span:
            i += span
            continue
        i += 1
        if not line or _SEPARATOR.match(line) or _FORWARD.match(line) or _NOTES_DATE_LINE.match(line) \
                or _NOTES_INLINE.match(line):
            continue
        m = _HEADER_LINE.match(line)
        if m:
            if _FROM_LINE.match(line):  # who said it, without the address
                who = re.sub(r"\[mailto:[^\]]*\]|<[^>]*>|\S+@\S+", "", line[m.end():]).strip(' *"')
                last_first = who.split(",")
                if len(last_first) == 2:  # Outlook's "Last, First"
                    who = " ".join(x.strip() for x in reversed(last_first))
                if who:
                    out.append(f"From {who}:")
            elif _SUBJECT_KEY.match(line):
                subject = _REPLY_PREFIX.sub("", line[m.end():].strip(" *"))
                if subject:
                    out.append(subject.rstrip(".") + ".")
            continue
        out.append(line)
    return re.sub(r"\s+", " ", " ".join(out)).strip()[:limit]
