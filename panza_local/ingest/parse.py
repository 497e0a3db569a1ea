"""RFC 5322 bytes to a `Parsed` record: decoded headers, addresses, UTC date, best text body.

Uses the compat32 parser (much faster than `policy.default`: bench/ingest.py) and decodes charsets and RFC 2047
words itself, falling back through the declared charset, UTF-8, charset detection and Latin-1 so no
message is lost to a bad label.
"""

from __future__ import annotations

import datetime as dt
import email
import email.header
import email.utils
import re
from dataclasses import dataclass, field
from email.message import Message

_CHARSET_ALIASES = {"x-unknown": "utf-8", "unknown-8bit": "utf-8", "ks_c_5601-1987": "cp949",
                    "x-mac-roman": "mac_roman", "ansi_x3.4-1968": "ascii", "gb2312": "gb18030",
                    "gbk": "gb18030", "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874"}


@dataclass
class Parsed:
    message_id: str | None = None
    date: str | None = None
    from_addr: str | None = None
    from_name: str | None = None
    to_addrs: list[str] = field(default_factory=list)
    to_names: list[str] = field(default_factory=list)
    cc_addrs: list[str] = field(default_factory=list)
    sender: str | None = None
    reply_to: list[str] = field(default_factory=list)
    original_from: str | None = None
    list_post: str | None = None
    list_id: str | None = None
    subject: str = ""
    in_reply_to: str | None = None
    refs: str | None = None
    text: str = ""
    html_only: bool = False
    auto: str | None = None          # why the message looks machine-generated, else None
    labels: str = ""                 # Gmail X-GM-LABELS / X-Folder (folder hints)
    defects: int = 0


def decode_bytes(raw: bytes, charset: str | None) -> str:
    """Decode `raw` with its declared charset, else UTF-8, else a detected one, else Latin-1."""
    cs = (charset or "").strip().strip('"').lower()
    cs = _CHARSET_ALIASES.get(cs, cs)
    if cs:
        try:
            return raw.decode(cs)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(raw[:20000]).best()
        if best is not None and best.encoding:
            return raw.decode(best.encoding, errors="replace")
    # charset_normalizer is optional and can fail on odd input; Latin-1 never does
    except Exception:  # noqa: BLE001, S110
        pass
    return raw.decode(cs or "latin-1", errors="replace") if cs else raw.decode("latin-1")


def header_text(value) -> str:
    """A header value with RFC 2047 encoded words decoded (bad charsets tolerated)."""
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        parts = email.header.decode_header(value)
    else:
        s = str(value)
        if "=?" not in s:
            return _unfold(s)
        try:
            parts = email.header.decode_header(s)
        except Exception:  # noqa: BLE001 - malformed encoded words: keep the raw text
            return _unfold(s)
    out = []
    for chunk, cs in parts:
        out.append(decode_bytes(chunk, cs) if isinstance(chunk, bytes) else chunk)
    # decode_header drops the whitespace between an encoded word and plain text only when both are words
    return _unfold("".join(out))


def _unfold(s: str) -> str:
    return re.sub(r"\s*\r?\n\s+", " ", s).strip()


def addresses(values: list) -> list[tuple[str, str]]:
    """(name, lower-cased address) pairs from header values; Enron's `x@y [mailto:x@y]` tolerated."""
    out = []
    for name, addr in email.utils.getaddresses([header_text(v) for v in values if v is not None]):
        addr = addr.strip().strip("<>").lower()
        if "@" not in addr:
            continue
        out.append((name.strip(), addr))
    return out


_ADDR = re.compile(r"[\w.+'=-]+@[\w-]+(?:\.[\w-]+)+")


def quick_addresses(values: list) -> list[str]:
    """Lower-cased addresses in header values, by pattern (Cc lists can hold hundreds; names not needed)."""
    out: list[str] = []
    for v in values:
        out.extend(a.lower() for a in _ADDR.findall(header_text(v)))
    return list(dict.fromkeys(out))


def norm_message_id(value) -> str | None:
    s = header_text(value)
    m = re.search(r"<([^<>\s]+)>", s)
    mid = (m.group(1) if m else s.strip()).strip().lower()
    return mid or None


def iso_date(value) -> str | None:
    """RFC 5322 date to ISO 8601 UTC; None when missing or absurd."""
    s = header_text(value)
    if not s:
        return None
    try:
        d = email.utils.parsedate_to_datetime(s)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if d is None:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    try:
        d = d.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        return None
    if not 1971 <= d.year <= 2100:
        return None
    return d.replace(microsecond=0).isoformat()


def parse(raw: bytes) -> Parsed:
    """Parse one message; never raises on malformed input (defects are counted)."""
    msg = email.message_from_bytes(raw)
    p = Parsed()
    p.defects = len(msg.defects)
    p.message_id = norm_message_id(msg.get("Message-ID"))
    p.date = iso_date(msg.get("Date"))
    frm = addresses(msg.get_all("From") or [])
    if frm:
        p.from_name, p.from_addr = frm[0]
    to = addresses(msg.get_all("To") or [])
    p.to_addrs = [a for _, a in to]
    p.to_names = [n for n, _ in to]
    p.cc_addrs = quick_addresses(msg.get_all("Cc") or [])
    snd = addresses(msg.get_all("Sender") or [])
    p.sender = snd[0][1] if snd else None
    p.reply_to = [a for _, a in addresses(msg.get_all("Reply-To") or [])]
    orig = addresses(msg.get_all("X-Original-From") or [])
    p.original_from = orig[0][1] if orig else None
    lp = addresses(msg.get_all("List-Post") or [])
    p.list_post = lp[0][1] if lp else None
    p.list_id = header_text(msg.get("List-Id")) or None
    p.subject = header_text(msg.get("Subject"))
    p.in_reply_to = norm_message_id(msg.get("In-Reply-To"))
    refs = header_text(msg.get("References"))
    p.refs = " ".join(re.findall(r"<([^<>\s]+)>", refs)).lower() or None
    p.labels = " ".join(header_text(msg.get(h)) for h in ("X-GM-LABELS", "X-Gmail-Labels", "X-Folder") if msg.get(h))
    p.auto = _auto_reason(msg, p)
    p.text, p.html_only = body_text(msg)
    return p


def _auto_reason(msg: Message, p: Parsed) -> str | None:
    auto_sub = header_text(msg.get("Auto-Submitted")).lower()
    if auto_sub and auto_sub != "no":
        return "auto_submitted"
    if msg.get("X-Autoreply") or msg.get("X-Autorespond") or header_text(msg.get("X-Auto-Response-Suppress")).lower() == "all":
        return "autoreply"
    # list servers stamp every post "Precedence: bulk"; only without List-Id does it mean a robot
    if header_text(msg.get("Precedence")).lower() in ("bulk", "junk", "auto_reply") and not msg.get("List-Id"):
        return "bulk"
    if msg.get_content_type() in ("multipart/report", "message/delivery-status"):
        return "delivery_report"
    local = (p.from_addr or "").split("@")[0]
    if re.fullmatch(r"(mailer-daemon|postmaster|no-?reply|do-?not-?reply|notifications?|bounces?)(\+.*)?", local):
        return "robot_sender"
    if re.match(r"^(automatic reply|auto(matic)?[- ]?reply|out of (the )?office|abwesenheitsnotiz|réponse automatique)",
                p.subject, re.IGNORECASE):
        return "autoreply"
    return None


def body_text(msg: Message) -> tuple[str, bool]:
    """The best text of a message: its first inline text/plain, else its HTML converted to text."""
    plain, html = None, None
    for part in msg.walk() if msg.is_multipart() else [msg]:
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        disp = header_text(part.get("Content-Disposition")).lower()
        if "attachment" in disp:
            continue
        if ctype == "text/plain" and plain is None:
            plain = _payload_text(part)
        elif ctype == "text/html" and html is None:
            html = _payload_text(part)
        elif ctype.startswith("text/") and ctype not in ("text/plain", "text/html") and plain is None \
                and part is msg:
            plain = _payload_text(part)
    if plain is not None and plain.strip():
        return plain, False
    if html:
        return html_to_text(html), True
    return plain or "", False


def _payload_text(part: Message) -> str:
    try:
        raw = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - broken base64/quoted-printable: use the undecoded payload
        raw = None
    if raw is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    try:
        cs = part.get_content_charset()
    except Exception:  # noqa: BLE001 - an unparseable charset parameter
        cs = None
    return decode_bytes(raw, cs)


def html_to_text(html: str) -> str:
    """HTML to readable plain text: blockquotes become `>` lines, links keep their text."""
    import html2text

    h = html2text.HTML2Text()
    h.body_width = 0
    h.ignore_images = True
    h.ignore_links = True
    h.ignore_emphasis = True
    h.ignore_tables = False
    h.unicode_snob = True
    html = re.sub(r"(?is)<(style|script|head)\b.*?</\1>", " ", html)
    try:
        text = h.handle(html)
    except Exception:  # noqa: BLE001 - html2text can choke on pathological markup; fall back to tag stripping
        import html as htmllib

        text = htmllib.unescape(re.sub(r"<[^>]+>", " ", html))
    return text


@dataclass
class Item:
    """One raw thing a source reader found: RFC 5322 bytes, a JSONL record, or an unreadable spot."""

    location: str
    raw: bytes | None = None
    record: dict | None = None
    folder: str = ""                 # folder name or label (a hint, never proof of authorship)
    end: int | None = None           # mbox: byte offset just past this message
    skip: str | None = None          # reason this item cannot be used (counted, never silent)
    date_hint: str | None = None     # date from the container (emlx plist) when headers have none
