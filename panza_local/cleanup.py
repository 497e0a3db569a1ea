"""The last step of every draft: the model's text as an email the user could send.

Small models echo prompt scaffolding ("Here's a sample of a message I sent to Bob:", "**Subject: ...**",
"Chat History:", "---", "[Your Name]") and sign with the recipient's name. `Cleaner` removes the
scaffolding, puts the user's greeting for this recipient and their own sign-off in place, and cuts what
follows the sign-off (a second email, notes). It streams: `feed(piece)` returns what is safe to show now,
holding back only a greeting until the body starts, a line that may be scaffolding until it ends (a
line's words are shown as they come once its start is plainly email text), and trailing short lines
that may be a sign-off until `close()`. `clean(text)` is the
same thing in one call, so a streamed draft and a collected one are the same text.
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from .profile import GREETING as _GREETING
from .profile import NOT_NAMES as _NOT_NAMES
from .profile import bare_name, name_words, recipient_first
from .prompts import WEEKDAYS, Profile

_SIGNOFF_WORDS = (r"thanks(?: again| so much| a lot)?|thank you(?: so much)?|many thanks|thx|best(?: wishes)?|"
                  r"(?:best|kind|warm|warmest|many)? ?regards|cheers|sincerely(?: yours)?|yours(?: truly| sincerely)?|"
                  r"all the best|talk soon|take care|speak soon|warmly|respectfully|with thanks|love|"
                  r"mfg|viele grüße|liebe grüße|gruß|grüße|cordialement|bien à vous|saluti|cordiali saluti|"
                  r"un saluto|saludos|un abrazo|atenciosamente|met vriendelijke groet|groeten|hälsningar|mvh")
# "Cheers," / "Best regards, Bob" / "Thanks!": a sign-off word alone on its line, maybe with a short name.
_NAME = r"[A-Z\[][\w'\[\]-]*\.?"
# Closing phrases are a sign-off only with their comma ("Looking forward to seeing you soon,"): "See you then."
# ends a body.
_CLOSING_WORDS = r"looking forward to|look forward to|see you|hope to see you|talk to you|speak to you|have a (?:great|good|nice|lovely)"
_CLOSING = rf"(?:{_CLOSING_WORDS})\b[\w' ]{{0,40}},"
_SIGNOFF = re.compile(rf"^(?i:(?:{_SIGNOFF_WORDS})\s*[,.!]*|{_CLOSING})\s*(?P<name>{_NAME}(?:\s+{_NAME}){{0,2}})?\s*[,.!]?$")
_MAYBE_CLOSING = re.compile(rf"^(?:{_CLOSING_WORDS})\b", re.IGNORECASE)  # a partial line that may be one
_PLACEHOLDER = re.compile(r"\[[^\[\]\n]{0,40}\b(?:name|signature|sender|recipient)\b[^\[\]\n]{0,20}\]", re.IGNORECASE)
_TRAILING_SIGNATURE = re.compile(r"(?<=[.?!])\s+(?=[^.?!\n]{0,40}" + _PLACEHOLDER.pattern + r"[\s*_-]*$)",
                                 re.IGNORECASE)
# Header lines, and "Mention: a, b" (the keyword list of a playback instruction, echoed): dropped whole.
_HEADER = re.compile(r"^(subject|re|to|from|cc|bcc|date|sent|mention)\s*:\s*", re.IGNORECASE)
_LABEL = re.compile(r"^(?:chat history|message body|email body|body|email|message|draft|instruction|request|"
                    r"answer|response|reply|output|the (?:answer|response|reply|email|message|draft) is)\s*:\s*",
                    re.IGNORECASE)
_PREAMBLE = re.compile(r"^(?:(?:sure|certainly|of course|okay|ok)[,!.]?\s*)?(?:here'?s|here is|below is|this is|"
                       r"i'?ve written|i have written)\b[^:\n]{0,120}?\b(?:email|e-mail|message|draft|sample|"
                       r"response|reply|version|note|letter)\b[^:\n]{0,80}:\s*", re.IGNORECASE)
_ABOUT = re.compile(r"^(?:the|this) (?:message|email|e-mail) (?:is|was) (?:from|to|sent|written|addressed)\b"
                    r"[^.!?\n]*[.!?]?\s*", re.IGNORECASE)
# A label alone on its line ("Chat History"), and a greeting line after the body (another email starts).
_BARE_LABEL = re.compile(r"^(?:chat history|message body|email body|subject line|subject|instruction|request|"
                         r"answer|response|output)\s*[:.]?$", re.IGNORECASE)
_NEW_EMAIL = re.compile(r"^(?:\w+:\s*)?(?P<g>\S.{0,40}[,!:])$")
_TURN = re.compile(r"^[A-Z]\w{0,20}:\s+(?P<g>\S.*)$")  # "Chair: Hi, I hope ...": a speaker's label, then their words
_TURN_GREETING = re.compile(r"^\w+(?![-'])(?:\s+\S+){0,3}?[,!](?:\s|$)")  # "Hi," "Hi Hannah!" "Good morning all,"
# A model's notes on its own edits ('- Changed "Hi" to "Hello"', '2. Added "in York" to the date'): a list item
# that opens with an editing verb and quotes what it changed. Everything from there on is about the email.
_MAYBE_EDIT_NOTE = re.compile(r"^(?:[-*+•]\s*|\d{1,2}[.)]\s*)(?:changed|added|removed|replaced|corrected|fixed|"
                              r"rephrased|reworded|updated|deleted|edited|shortened|simplified|moved|kept)\b", re.IGNORECASE)
_EDIT_NOTE = re.compile(_MAYBE_EDIT_NOTE.pattern + r".*[\"“”']", re.IGNORECASE)
_RULE = re.compile(r"\s*(?:-{3,}|\*{3,}|_{3,}|={3,})\s*")
_BULLET = re.compile(r"^(?:[-*+•]\s*)+")  # "-Chat History:", "- Subject: ...": scaffolding as a list item
_BRACKETED = re.compile(r"^\[[^\[\]]*\]$")
_LIST_MARK = re.compile(r"^(?:\d{1,3}[.)]|[-*+•])\s*")  # "1. Hello,", "- Hi,": a numbered or bulleted line
# A line seen this often is the model in a loop ("1. Hello," "2. Hello," ...): long lines twice, short ones 3x.
_LOOP_LONG_WORDS, _LOOP_LONG, _LOOP_SHORT = 6, 2, 3
# A partial line may be shown before it ends only if its start cannot turn out to be one of the above.
_MAYBE_LABEL = re.compile(r"^[-*+•]?\s*(?:sure|certainly|of course|okay|ok|here|below|this|the|i'?ve|i have|subject|chat|"
                          r"message|email|body|draft|answer|response|reply|output|instruction|request|re|to|from|"
                          r"cc|bcc|date|sent|mention)\b",
                          re.IGNORECASE)
# Words that may begin a sign-off or a closing line ("Thanks,", "All the best,", "Looking forward to it,"): a
# greeting is shown as soon as the line after it begins with any other word.
# ("the" only ends "all the best"; "I" and "I've" are `_may_be_scaffolding`'s to decide, "of" is "Of course, here is")
_SIGNOFF_VOCAB = frozenset(re.findall(r"[^\W\d_]+", f"{_SIGNOFF_WORDS}|{_CLOSING_WORDS}".lower()))
_HOLD_WORDS = _SIGNOFF_VOCAB - {"the"} | {"of"}


def _phrase_neighbours(alternation: str) -> dict[str, frozenset]:
    """{word: the words that may come next to it in one sign-off or closing phrase} for a regex alternation of
    phrases: every word of a top-level alternative counts as next to every other ("(?:best|kind)? ?regards":
    best, kind and regards), more than the phrases allow, never less."""
    out: dict[str, set] = {}
    depth, start = 0, 0
    for i, ch in enumerate(alternation + "|"):
        depth += (ch == "(") - (ch == ")")
        if ch == "|" and depth == 0:
            words = set(re.findall(r"[^\W\d_]+", alternation[start:i].lower()))
            for w in words:
                out.setdefault(w, set()).update(words)
            start = i + 1
    return {w: frozenset(n) for w, n in out.items()}


_NEXT_IN_PHRASE = _phrase_neighbours(f"{_SIGNOFF_WORDS}|{_CLOSING_WORDS}")
# Line starts `_PREAMBLE`, `_LABEL` and `_ABOUT` drop, told apart from a body's by the word after them: "The email
# is:", "This is the draft:", "I've written ..." against "The drawings are ...", "This week ...", "I've attached ...".
_DECIDED_BY_NEXT = {"the": {"answer", "response", "reply", "email", "e-mail", "message", "draft"},
                    "this": {"is", "message", "email", "e-mail"}, "i've": {"written"}, "ive": {"written"}}


def _word(w: str) -> str:
    return w.strip(",.:;!").lower().replace("\u2019", "'")


def _may_become(partial: str, words) -> bool:
    """Whether the line's last word, still being written (`partial`: its letters so far, "" when none), may
    turn out to be one of `words`: "wr" may be "written", "was" may not (the model writes on from a token
    that ends a word as often as from one that does not, so this decides a token sooner than waiting)."""
    p = _word(partial)
    return not p or any(w.startswith(p) for w in words)


def _contraction_of_i(word: str) -> bool:
    """"I'd", "I'm", "I'll" (being written): no line `clean` drops opens so, unlike "I've" ("I've written the
    email below:") and "I" ("I have written ..."), so the greeting may show with the body's second token."""
    w = _word(word)
    return len(w) > 2 and w.startswith("i'") and w[2].isalpha() and not "i've".startswith(w)


def _may_be_scaffolding(head: str, partial: str = "") -> bool:
    """Whether a partial line's complete words may still begin a line `clean` drops: a line opening with "The",
    "This", "I've" or "I have" is decided by its next word (a body line's words then show at once, where they
    waited for the line's end), one opening with another word `_MAYBE_LABEL` names waits for its end.
    `partial`: the word being written after `head`, which decides as soon as it cannot become the next word
    a dropped line has ("I wa" is no "I have")."""
    words = [_word(w) for w in head.split()]
    if not words:
        return True
    if words[0] == "i":  # "I have written the email below:"
        if len(words) < 2:
            return _may_become(partial, ("have",))
        return words[1] == "have" and (_may_become(partial, ("written",)) if len(words) < 3 else words[2] == "written")
    if words[0] in _DECIDED_BY_NEXT:
        return _may_become(partial, _DECIDED_BY_NEXT[words[0]]) if len(words) < 2 else words[1] in _DECIDED_BY_NEXT[words[0]]
    return bool(_MAYBE_LABEL.match(head))
_RISKY = re.compile(r"[*\[\]#~<>_=]|-{2,}|[A-Za-z]\s*:|\b(?:subject|chat history|message body)\b", re.IGNORECASE)


def clean(text: str, profile: Profile | None = None, to: str | None = None, hint: str = "",
          reflow: bool = True) -> str:
    """The email in `text`: no scaffolding, the user's greeting and sign-off (same result as streaming it)."""
    c = Cleaner(profile, to, hint, reflow=reflow)
    return (c.feed(text) + c.close()).strip()


# A line of this many characters that ends where the next word would not have fitted a mail client's ~72-78
# columns was wrapped there: the models learned hard wraps from plain-text mail (Gmail's, Outlook's, every
# sample of ours wrap at 72-78), and a draft pasted into a client that wraps by itself shows them as breaks in
# mid-sentence. Shorter lines (a greeting, a sign-off, an address, a short sentence kept alone) and longer
# ones (no wrapping at all) keep their breaks, and so does a line ending in ":" or followed by a list item. A
# break between two sentences is kept too: it may be the writer's own ("... by Friday.\nGate code: 4471"), and
# a wrap that fell there reads as one.
REFLOW_MIN, REFLOW_MAX = 50, 90
_OWN_LINE = re.compile(r"^(?:\d{1,3}[.)]\s|[-*+•>|]\s?)")  # a list item or a quote begins its own line
_SENTENCE_END = frozenset(".!?")


class _Reflow:
    """Streaming: the shown text with the line breaks of wrapped paragraphs turned into spaces. A break after
    a line that may have been wrapped is held until the next line's first word shows what follows it."""

    def __init__(self):
        self._line = 0  # characters of the current line so far (shown or held)
        self._last = ""  # its last character that is not a space or a closing quote or bracket
        self._held = False  # a break after a wrapped-looking line, not yet shown
        self._look = ""  # the next line's start, held with it

    def feed(self, text: str) -> str:
        out = []
        for ch in text:
            if self._held:
                if ch == "\n" and not self._look:  # a blank line follows: a paragraph ends here
                    out.append("\n\n")
                    self._held, self._line, self._last = False, 0, ""
                    continue
                if not ch.isspace():
                    self._look += ch
                    continue
                if not self._look:  # the next line's indent
                    continue
                out.append(self._decide())
            if ch == "\n":
                if REFLOW_MIN <= self._line <= REFLOW_MAX and self._last != ":":
                    self._held = True  # the line's end is kept for `_decide`
                else:
                    out.append(ch)
                    self._line, self._last = 0, ""
                continue
            out.append(ch)
            self._note(ch)
        return "".join(out)

    def _note(self, text: str) -> None:
        self._line += len(text)
        tail = text.rstrip(" \t\"')]\u201d\u2019")
        self._last = tail[-1:] or self._last

    def _decide(self) -> str:
        look, self._look, self._held = self._look, "", False
        own = _OWN_LINE.match(look + " ") or (self._last in _SENTENCE_END and (look[:1].isupper() or look[:1].isdigit()))
        self._line, self._last = 0, ""
        self._note(look)
        return ("\n" if own else " ") + look

    def close(self) -> str:
        return self._decide() if self._held and self._look else ""


class Cleaner:
    """Streaming clean-up of one draft: `feed(piece)` -> text to show now; `close()` -> the rest."""

    def __init__(self, profile: Profile | None = None, to: str | None = None, hint: str = "",
                 reflow: bool = True):
        """`to`: the recipient; `hint`: the instruction (names in it may be greeted: "Reply to Jo ...");
        `reflow`: join the lines of wrapped paragraphs (`_Reflow`)."""
        self._reflow = _Reflow() if reflow else None
        self.profile = profile or Profile()
        self.me = _first_name(self.profile)
        self.them = _recipient_names(to)
        self.named = self.them | {w.lower() for w in re.findall(r"\b[A-Z][a-z]+\b", hint or "")}
        # the recipient's first name as a greeting writes it ("Mike" for mike.grigsby@..., "Keith" for "Ask Keith
        # whether ..."), '' when neither says it: the name a greeting that guessed gets instead
        first = recipient_first(to, hint or "") or ("" if to else _sent_to(hint or ""))
        self.their_name = "" if first.lower() == self.me.lower() else first
        self.subject = ""
        """A "Subject:" line the model wrote (removed from the text)."""
        self._buf = ""
        self._pending: list[str] = []  # judged lines held back: greeting, blanks, short lines, the sign-off
        self._started = False  # a body line has been shown
        self._ended = False  # a sign-off line is pending: what follows is held until close()
        self._named = False  # ... and a name line came after it
        self._shown_lines = 0
        self._line_out = ""  # part of the current (unfinished) line already shown
        self._line_hold = False
        self._last_blank = False
        self._seen: dict[str, int] = {}  # body lines so far (`_norm`), for the loop guard
        self._last_key = ""

    @property
    def done(self) -> bool:
        """Nothing the model writes from now on can be part of this email (it signed off and named itself,
        started another email, or went into a loop): the caller may stop generating."""
        return self._named

    # -- streaming -------------------------------------------------------------------------------------------
    def feed(self, piece: str) -> str:
        """Take a piece of model text; return the cleaned text that can be shown now."""
        self._buf += piece
        out = []
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            out.append(self._complete(line))
        out.append(self._partial())
        return self._shown("".join(out))

    def close(self) -> str:
        """The rest of the draft (the judged tail: the user's own sign-off) once the model has finished."""
        out = self._complete(self._buf) if self._buf.strip() or self._line_out else ""
        self._buf = ""
        out = self._shown(out + self._tail())
        return out + (self._reflow.close() if self._reflow else "")

    def _shown(self, text: str) -> str:
        return self._reflow.feed(text) if self._reflow and text else text

    # -- lines -------------------------------------------------------------------------------------------------
    def _complete(self, raw: str) -> str:
        parts = self._parts(raw.strip())
        out = []
        if self._line_out:  # the line's start is already shown: show the rest of its first part
            first = parts.pop(0) if parts else ""
            rest = first[len(self._line_out):] if first.startswith(self._line_out) else ""
            out.append(rest)
            self._count(first)
        self._line_out, self._line_hold = "", False
        for part in parts:
            out.append(self._judge(part))
        return "".join(out)

    def _parts(self, line: str) -> list[str]:
        """A line as the logical lines in it: horizontal rules split it, markdown and labels go."""
        out = []
        line = _TRAILING_SIGNATURE.sub("\n", line)  # "... Friday? Bob [Your Name]": the signature is its own line
        for part in (p for chunk in line.split("\n") for p in _RULE.split(chunk)):
            part = _inline(part, self.me)
            if part is not None:
                out.append(part)
        return out or [""]

    def _judge(self, line: str) -> str:
        if self._named and line.strip():
            return ""  # after sign-off and name: a second email or notes, never part of this one
        core = _BULLET.sub("", line)
        if core != line and (_LABEL.match(core) or _HEADER.match(core) or _BARE_LABEL.match(core)
                             or _BRACKETED.match(core)):
            line = core  # a list item that is scaffolding is judged as scaffolding; other list items stay
        before = None
        while line != before:  # "Here's the email: Subject: ..." peels one label at a time
            before = line
            for pat in (_PREAMBLE, _LABEL, _ABOUT):
                line = pat.sub("", line, count=1)
            m = _HEADER.match(line)
            if m:
                if m.group(1).lower() == "subject" and not self.subject:
                    self.subject = line[m.end():].strip()
                return ""
        if _BRACKETED.match(line) or _BARE_LABEL.match(line):
            return ""
        if not line:
            last_blank = self._pending[-1] == "" if self._pending else self._last_blank
            if (self._started or self._pending) and not last_blank:
                self._pending.append("")
            return ""
        if not self._started and not any(self._pending) and bare_name(line):
            line = self._greeting(line, bare=True)  # "Mike," opens the email as a greeting does: held with it
            if line:
                self._pending.append(line)
            return ""
        if not self._started and not any(self._pending) and _GREETING.match(line):
            greet, rest = _split_greeting(line)
            if greet is not None:
                rest = rest[:1].upper() + rest[1:]
                self._pending += [self._greeting(greet)] + (["", rest] if rest else [])
                return self._flush() if rest and _is_body(rest) else ""
        if self._started and (_starts_another_email(line) or _EDIT_NOTE.match(line)):
            self._ended = self._named = True  # what follows is another email: cut here, sign off below
            return ""
        if self._ended:
            if not self._named and _SIGNOFF.match(line):  # "Have a great weekend," then "Best,": the first
                self._ended = False  # was a line of the body
                while self._pending and not self._pending[-1]:
                    self._pending.pop()  # the blank before the sign-off is the tail's to write
                return self._flush() + self._judge(line)
            if not self._named and _is_body(line) and not _GREETING.match(line):
                self._ended = False  # "Thanks," then a sentence: it was the body after all
                self._pending.append(line)
                return self._flush()
            if _is_short(line):
                self._named = True
            self._pending.append(line)
            return ""
        sig = _SIGNOFF.match(line)
        if sig:
            self._ended = True
            self._named = bool(sig.group("name"))
            self._pending.append(line)
            return ""
        if self._is_loop(line):
            return ""
        if _is_short(line) and self._started:
            self._pending.append(line)
            return ""
        self._pending.append(line)
        return self._flush()

    def _is_loop(self, line: str) -> bool:
        """Count `line`; when it is one repeat too many, drop its held copies and end the email here."""
        key = _norm(line)
        if not key:
            return False
        again = key == self._last_key  # the same line twice in a row is a loop whatever its length
        limit = _LOOP_LONG if again or len(key.split()) >= _LOOP_LONG_WORDS else _LOOP_SHORT
        if self._count(line) < limit or not self._started:
            return False
        self._pending = [ln for ln in self._pending if _norm(ln) != key]
        self._ended = self._named = True
        return True

    def _count(self, line: str) -> int:
        key = self._last_key = _norm(line)
        self._seen[key] = self._seen.get(key, 0) + 1
        return self._seen[key]

    def _flush(self, start: bool = True) -> str:
        """The pending lines as shown text; `start`: they begin the email (a greeting alone does not: its
        line after is judged as `clean` judges it)."""
        lines, self._pending = self._pending, []
        while lines and not lines[0] and not self._shown_lines:
            lines.pop(0)
        out = "".join(("\n" if self._shown_lines + i else "") + ln for i, ln in enumerate(lines))
        self._shown_lines += len(lines)
        self._last_blank = lines[-1] == "" if lines else self._last_blank
        self._started = self._started or (start and bool(lines))
        return out

    def _partial(self) -> str:
        """Show the unfinished line's complete words now when its start is plainly email text; a greeting held
        back is shown once the line after it plainly begins the body (its first word)."""
        if self._ended or self._line_hold:
            return ""
        text = self._buf.lstrip()
        cut = text.rfind(" ")
        if cut <= 0:  # the line's first word is still being written
            return self._flush(start=False) if self._opens_body("", text) else ""
        greeting = self._flush(start=False) if self._opens_body(text[:cut], text[cut + 1:]) else ""
        head = text[:cut].rstrip()
        if _RISKY.search(head) or _MAYBE_EDIT_NOTE.match(head):  # judged when the line ends
            self._line_hold = True
            return greeting
        if self._line_out:
            new, self._line_out = head[len(self._line_out):], head
            return new
        if (len(head.split()) < 4 or _may_be_scaffolding(head) or _SIGNOFF.match(head) or _GREETING.match(head)
                or _MAYBE_CLOSING.match(head)):
            return greeting
        start = _norm(head)
        if any(seen.startswith(start) for seen in self._seen):  # may be a repeat: judged when the line ends
            self._line_hold = True
            return greeting
        self._pending.append(head)
        out = self._flush()
        self._line_out = head
        return greeting + out

    def _opens_body(self, head: str, partial: str = "") -> bool:
        """Whether a greeting is all that is held and `head`, the complete words of the next line so far, begins
        the body: its first word begins no label, header, preamble ("Of course, here is", "I have written"),
        sign-off, closing or second greeting (`_may_be_scaffolding` decides "The", "This", "I", "I've" by the next
        word; the line is then judged a body line when it ends, so showing the greeting now shows nothing `clean`
        would not)."""
        first = self._pending[0] if self._pending else ""
        if self._started or not (_GREETING.match(first) or bare_name(first)) or any(self._pending[1:]):
            return False
        if not head.split():  # only the first word's start: "I'd", "I'm", "I'll" begin a body whatever follows
            return _contraction_of_i(partial)
        word = head.split()[0]
        return (word[:1].isalpha() and not _RISKY.search(word) and not _may_be_scaffolding(head, partial)
                and not _GREETING.match(word)
                and (_word(word) not in _HOLD_WORDS or _past_signoff(head, partial)))

    # -- the end ----------------------------------------------------------------------------------------------
    def _tail(self) -> str:
        lines = list(self._pending)
        self._pending = []
        if not self._started:
            return ""  # nothing but scaffolding, a greeting or a sign-off: no email
        sig_at = next((i for i, ln in enumerate(lines) if _SIGNOFF.match(ln)), None)
        body = lines if sig_at is None else lines[:sig_at]
        block = [] if sig_at is None else [lines[sig_at]]
        after = [ln for ln in lines[sig_at + 1:] if ln] if sig_at is not None else []
        if block and after and _is_short(after[0]):
            block.append(after[0])
        while body and (not body[-1] or self._is_stray_name(body[-1])):
            body.pop()
        signoff = self._signoff(block)
        out = "".join("\n" + ln for ln in body)
        return out + ("\n\n" + signoff if signoff else "")

    def _is_stray_name(self, line: str) -> bool:
        """A trailing line that only names the recipient, a placeholder or (when the sign-off will) the user."""
        if _PLACEHOLDER.search(line):
            return True
        words = {w.lower().strip(" .,!*") for w in line.split()} - {""}
        names = set(self.them) | ({self.me.lower()} if self.me and self.profile.signoff.strip() else set())
        return bool(words) and len(words) <= 3 and words <= names

    def _signoff(self, block: list[str]) -> str:
        """The closing to end with: the model's when it is signed as the user, else the profile's."""
        own = self.profile.signoff.strip()
        if not block:
            return own
        m = _SIGNOFF.match(block[0])
        words = block[0][: m.start("name")].strip() if m and m.group("name") else block[0].strip()
        name = (m.group("name") if m and m.group("name") else (block[1] if len(block) > 1 else "")).strip()
        name = _PLACEHOLDER.sub("", name).strip(" *,.")
        mine = bool(name) and bool(self.me) and name.split()[0].lower() == self.me.lower()
        if own and not mine and not (not name and "\n" not in own):
            return own
        if mine or not name:
            signer = name if mine else ""
        else:
            signer = self.me  # signed by the recipient or a stranger: sign as the user
        return words.rstrip() + ("\n" + signer if signer else "")

    def _named_greeting(self, names: str, words: list[str]) -> str:
        """A greeting of `words` ("Hi") and `names` ("Lucy,"; no words: the names alone open it) with no profile
        greeting to put in its place: kept when it names the recipient or someone the instruction names; a
        name the model guessed (the user's own, a past email's recipient) becomes the recipient's first name,
        or goes when that is not known ("Hi Lucy," -> "Hi,"; "Lucy," -> nothing)."""
        who = name_words(names) - {"and"}
        punct = names.rstrip()[-1:] if names.rstrip()[-1:] in ",:!" else ","
        mine = bool(self.me) and self.me.lower() in who
        if not mine and (not who or who <= self.named or who & _NOT_NAMES or not self.their_name):
            return " ".join([*words, names]).strip()  # theirs, a group ("Hi all,"), or no name to put instead
        if self.their_name:
            return " ".join([*words, self.their_name]) + punct
        return " ".join(words).rstrip(",:!") + punct if words else ""

    def _greeting(self, model_greeting: str, bare: bool = False) -> str:
        """The user's greeting for this recipient in place of the model's; the model's when the profile's is
        the same word without a name ("Hi,") and the model's names the recipient ("Hi Bob,"), never a guess
        ("Hi Re,", "Hi Alex," to someone else)."""
        own = self.profile.greeting.strip()
        if not own or "<name>" in own:
            if bare:
                return self._named_greeting(model_greeting, [])
            word = model_greeting.split()[0] if model_greeting.split() else ""
            return self._named_greeting(model_greeting[len(word):].strip(), [word]) if word else model_greeting
        if bare:
            return own
        word = own.split()[0].strip(",!:.").lower()
        nameless = len(own.rstrip(",!:.").split()) == 1
        names = {w.strip(",!:.").lower() for w in model_greeting.split()[1:]} - {""}
        same = model_greeting.split()[0].strip(",!:.").lower() == word
        if nameless and same and names and names <= self.named - {self.me.lower()}:
            return model_greeting
        return own


def _past_signoff(head: str, partial: str = "") -> bool:
    """Whether a line opening with a word a sign-off may begin ("Thanks", "Best") has gone on as no sign-off
    can: a later complete word in lower case that no sign-off or closing has ("Thanks for ...", "Thank you for
    ..."), the first word bare ("Thanks," may be all), and no closing phrase begun ("Looking forward to the
    visit," is one, whatever its words). `clean` judges such a line a body line, so the greeting before it may
    show now: two tokens sooner than at the line's fourth word."""
    words = head.split()
    if not words or not words[0].isalpha() or _MAYBE_CLOSING.match(head):
        return False
    if any(w.isalpha() and w.islower() and w not in _SIGNOFF_VOCAB for w in words[1:]):
        return True
    # the word being written ("Thanks fo"): lower case, and no word that may come next to the one before it in
    # a sign-off or closing begins so (nor "course": "Of course, here is"): the line is no sign-off
    p = partial.strip()
    after = _NEXT_IN_PHRASE.get(_word(words[-1]), frozenset())
    return p.isalpha() and p.islower() and not _may_become(p, after | {"course"})


def _inline(part: str, me: str) -> str | None:
    """Markdown and placeholders out of one logical line (None: the line was only markup)."""
    s = part.strip()
    if not s:
        return ""
    s = re.sub(r"^#{1,6}\s+", "", s)
    s = re.sub(r"\*\*|__", "", s)
    s = re.sub(r"^\*\s*|\s*\*$", "", s)  # a lone emphasis star at either end
    s = _PLACEHOLDER.sub(me or "", s).strip()
    s = re.sub(r"\s{2,}", " ", s) if s != part.strip() else s
    return s if s else None


def _split_greeting(line: str) -> tuple[str | None, str]:
    """("Dear Mr. Smith,", "I hope ...") from a greeting line; (None, line) when it is not one."""
    m = re.match(r"^(.{0,40}?[,!:])\s*(.*)$", line)
    if m and len(m.group(1).split()) <= 5:
        return m.group(1), m.group(2).strip()
    if len(line.split()) <= 4:
        return line, ""
    return None, line


def _starts_another_email(line: str) -> bool:
    """A greeting alone on its line ("Hello,", "Chair: Hi Hannah,", "1. Hello,"), or a speaker's label and a
    greeting ("Chair: Hi, I hope you're doing well."), once the body has begun."""
    line = _LIST_MARK.sub("", line)
    m = _NEW_EMAIL.match(line)
    if m and _GREETING.match(m.group("g")) and len(m.group("g").split()) <= 4:
        return True
    turn = _TURN.match(line)
    return bool(turn) and bool(_GREETING.match(turn.group("g"))) and bool(_TURN_GREETING.match(turn.group("g")))


def _norm(line: str) -> str:
    """A line as the loop guard compares it: no list number or bullet, case or punctuation."""
    return " ".join(re.sub(r"[\W_]+", " ", _LIST_MARK.sub("", line.strip())).lower().split())


def _is_short(line: str) -> bool:
    """A line that may be a name or the start of a sign-off block: a few words, no sentence."""
    return len(line.split()) <= 4 and not re.search(r"[.?]$", line.strip("*) "))


def _is_body(line: str) -> bool:
    return len(line.split()) >= 4 or bool(re.search(r"[.?!]$", line))


def _first_name(profile: Profile) -> str:
    """The name the user signs with: the sign-off's name line, else the first word of their name."""
    lines = [ln.strip() for ln in profile.signoff.splitlines() if ln.strip()]
    if len(lines) > 1:
        return lines[1].split()[0].strip(",.")
    return profile.name.split()[0].strip(",.") if profile.name.strip() else ""


def _sent_to(hint: str) -> str:
    """The first name an instruction sends something to ("Send the rent roll to George and ..."), else ''."""
    for m in re.finditer(r"\bto ([A-Z][a-z]+)\b(?! [A-Z])", hint):
        if m.group(1) not in WEEKDAYS and m.group(1).lower() not in _NOT_NAMES:
            return m.group(1)
    return ""


def _recipient_names(to: str | None) -> set[str]:
    """Lower-case names a recipient may be called by (display name words, the address's name parts)."""
    out: set[str] = set()
    for name, addr in getaddresses([to or ""]):
        out.update(w.lower().strip(",.") for w in name.split() if len(w) > 1)
        local = addr.split("@")[0] if "@" in addr else ""
        out.update(w.lower() for w in re.split(r"[._+-]", local) if w.isalpha() and len(w) > 1)
    return out
