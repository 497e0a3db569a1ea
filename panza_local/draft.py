"""Drafting: plan (profile + retrieval + adapter + prompt), stream, collect (saving it: `outbox`).

Layered like every stage: `prepare` builds a DraftPlan (the prompt and everything that went into it),
`stream(plan)` yields text pieces from the engine, `finish(plan)` turns what was streamed into a Draft;
`draft()` and `alternatives()` collect, `stream_draft()` is prepare + stream in one call. A missing
index or adapter never stops a draft: the plan records a one-line notice and drafts without it.
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import cleanup, engine, fit, prompts
from .errors import NoDataError, PanzaError

log = logging.getLogger(__name__)
# A draft that repeats this many consecutive words of a retrieved email is copying it, not imitating its
# style: that leaks mail written to someone else into a new email, so `draft()` regenerates without it.
COPY_WORDS = 12


@dataclass
class Retrieved:
    """One past email put in the prompt as a style example."""

    id: str
    score: float
    text: str
    to: str = ""
    subject: str = ""
    same_recipient: bool = False
    kind: str = "sent"  # "doc": a passage of the user's documents, put in the prompt as reference
    cite: str = ""  # for a document passage: file and paragraphs (`notes.md ¶3-4`)
    instruction: str = ""
    """What this email was asked for (its playback instruction): the request of its turn in the prompt."""


@dataclass
class Reply:
    """The email a draft answers."""

    message_id: str = ""
    references: list[str] = field(default_factory=list)
    subject: str = ""
    sender: str = ""
    body: str = ""


@dataclass
class DraftPlan:
    """Everything a draft is made from; `stream(plan)` fills `pieces`, `finish(plan)` makes the Draft."""

    instruction: str
    messages: list[dict]
    settings: object
    model_path: Path
    to: str | None = None
    subject: str | None = None
    reply: Reply | None = None
    retrieved: list[Retrieved] = field(default_factory=list)
    adapter: str | None = None
    lora_path: Path | None = None
    profile: prompts.Profile | None = None
    max_tokens: int = 400
    seed: int | None = None
    notices: list[str] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    """The cleaned text as streamed (what the user saw)."""
    raw: list[str] = field(default_factory=list)
    """The model's own pieces, before clean-up (tests and benchmarks judge the model by these)."""
    stats: dict = field(default_factory=dict)
    opening: str = ""
    """The reply's given start (`prompts.opening`: the user's greeting), evaluated with the prompt. Only with
    the user's adapter, which learned her emails greeting first and writes on from it; the stock model asked
    to start after a greeting it did not write often greets again a line later ("I hope this finds you
    well. Dear Priya,"), which the clean-up must cut as a second email."""
    render: object = None  # (retrieved, thread) -> messages: what fit.py trims the prompt with


@dataclass
class Draft:
    """A finished draft (what `--format json` prints)."""

    text: str
    subject: str
    to: str
    adapter: str | None
    retrieved: list[str]
    instruction: str = ""
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    retrieved_detail: list[dict] = field(default_factory=list)  # {id, kind, score, cite} per retrieved item

    def to_dict(self) -> dict:
        """The JSON object of `panza draft --format json`."""
        return asdict(self)


# -- planning ---------------------------------------------------------------------------------------------

def prepare(instruction: str, *, to: str | None = None, subject: str | None = None,
            reply_to: str | Path | bytes | Reply | None = None, use_rag: bool = True,
            use_adapter: bool | str | Path = True, seed: int | None = None, settings=None,
            examples: list[Retrieved] | None = None, profile: prompts.Profile | None = None,
            exclude_ids: list[str] | None = None, infer_to: bool = True) -> DraftPlan:
    """Build the prompt for a draft: profile, past emails (recipient first), thread, adapter.

    Without a recipient or a thread, the person the instruction addresses ("Ask Priya to ...") is looked up
    among the people the user writes to (`infer_to`): their greeting and emails to them then shape the draft."""
    from . import config
    from . import profile as profiles

    settings = settings or config.load()
    instruction = (instruction or "").strip()
    if not instruction:
        raise PanzaError("the instruction is empty", fix='say what the email should do: panza draft "ask Bob for ..."')
    model_path, _ = engine.default_model(settings)
    notices: list[str] = []
    reply = reply_to if isinstance(reply_to, Reply) or reply_to is None else load_reply(reply_to)
    if reply:
        to = to or reply.sender
        subject = subject or _re(reply.subject)
    elif not to and infer_to:
        to = _addressed(instruction, notices)
    prof = profiles.prompt_profile(to, profile if profile is not None else _safe(profiles.load, notices, prompts.Profile()),
                                   notices=notices, hint=instruction)
    if examples is None:
        examples = _retrieve(instruction, to, settings, exclude_ids, notices,
                             act=request_act(instruction, replying=bool(reply))) if use_rag else []
    else:
        examples = [e if isinstance(e, Retrieved) else _as_retrieved(e) for e in examples]
        examples = [e for e in examples if e is not None]
    adapter, lora = _adapter(use_adapter, settings, notices)
    # requests name people as training showed them ("Email to Jonas Berg: ..."): the recipient, the past emails'
    names = _known_names([to or "", *(e.to for e in examples)])
    shown_to = profiles.with_names(to, names)

    # An adapter learned from playback pairs, whose requests end with " Mention: <specific terms>": the
    # user's request takes that shape too (the words are the user's own), so the adapter keeps them. A remote
    # engine holds the user's adapter (settings.engine_url), so its requests take the shape as well.
    tuned = lora is not None or bool(settings.engine_url)
    asked = instruction if not tuned else prompts.mention(instruction, prompts.instruction_specifics(
        instruction, [prompts.recipient(shown_to), profiles.first_name_of(to, instruction)]))

    def render(retrieved: list[Retrieved], thread: str | None) -> list[dict]:
        return prompts.build(  # past emails as train/data.py builds its prompts
            asked, profile=prof, to=shown_to, subject=subject, thread=thread,
            examples=prompt_examples([e for e in retrieved if e.kind != "doc"], names),
            documents=[(e.cite.rsplit("/", 1)[-1], e.text) for e in retrieved if e.kind == "doc"])
    plan = DraftPlan(instruction=instruction, messages=[], settings=settings, model_path=Path(model_path),
                     to=to, subject=subject, reply=reply, retrieved=list(examples), adapter=adapter,
                     lora_path=lora, profile=prof, max_tokens=_budget(prof, settings), seed=seed,
                     notices=notices, render=render,
                     opening=prompts.opening(prof) if lora is not None and not settings.engine_url else "")
    fit.fit_plan(plan)  # trims to the context with a notice; ContextTooLong when the instruction cannot fit
    return plan


def _addressed(instruction: str, notices: list[str]) -> str | None:
    """The recipient the instruction names, when exactly one person the user writes to fits (a notice says so)."""
    from .profile import recipient_named

    try:
        to, several = recipient_named(instruction)
    except PanzaError:  # no store yet, or unreadable: the draft goes on without a recipient
        return None
    if to:
        notices.append(f"to {to}: the person the instruction names, from your mail (give a recipient to change it)")
    elif several:
        notices.append(f"the instruction names more than one person you write to ({', '.join(several[:4])}): "
                       "drafting without a recipient; give one to choose")
    return to or None


def _safe(fn, notices: list[str], default):
    try:
        return fn()
    except PanzaError as exc:
        notices.append(f"profile not used: {exc.message}")
        return default


def _known_names(recipients: list[str]) -> dict[str, str]:
    """`profile.display_names` of the addresses in `recipients` (To: values); none when the store cannot be read
    (retrieval reports that, with its fix)."""
    from email.utils import getaddresses

    from .profile import display_names

    try:
        return display_names(addresses=[a for _, a in getaddresses([r for r in recipients if r])])
    except (PanzaError, sqlite3.Error):
        return {}


def prompt_examples(retrieved: list[Retrieved], names: dict[str, str] | None = None) -> list[prompts.Example]:
    """Retrieved emails as prompt turns: each with the request it answered (its playback instruction from the
    store, else its subject), the way training shows them; `names`: `profile.display_names`."""
    from .profile import with_names

    missing = [r.id for r in retrieved if not r.instruction]
    found = _instructions(missing) if missing else {}
    out = []
    for r in retrieved:
        ask = r.instruction or found.get(r.id) or (f'Write about "{r.subject}".' if r.subject else "")
        out.append(prompts.Example(text=r.text, request=ask, to=with_names(r.to, names or {})))
    return out


def _instructions(item_ids: list[str]) -> dict[str, str]:
    """{index item id: the latest playback instruction of its message} for the ids that have one."""
    from . import store
    from .retrieval import index

    try:
        conn = store.connect()
    except PanzaError:
        return {}
    try:
        return index.item_instructions(conn, item_ids)
    finally:
        conn.close()


def _budget(prof: prompts.Profile, settings) -> int:
    """Token budget: the setting, capped near 3x the user's typical length (they rarely write essays)."""
    if prof and prof.typical_words:
        return min(settings.max_tokens, max(96, int(prof.typical_words * 1.4 * 3)))
    return settings.max_tokens


THANKS = re.compile(r"\b(?:thank|thanks|grateful|appreciat)", re.IGNORECASE)
ASKS = re.compile(r"^\W*(?:ask|request|remind|invite|check\s+(?:with|whether|if))\b|\?\s*$", re.IGNORECASE)


def request_act(instruction: str, replying: bool = False) -> str | None:
    """The act of the user's request, as `playback.scoring.lead_act` names an email's: "thank", "ask" or None;
    "reply" when it answers an email (thanks and questions are both at home there)."""
    if replying:
        return "reply"
    if THANKS.search(instruction):
        return "thank"
    return "ask" if ASKS.search(instruction) else None


def _retrieve(query: str, to: str | None, settings, exclude_ids, notices: list[str],
              act: str | None = "reply") -> list[Retrieved]:
    """Past emails for the prompt: ones to the same recipient first, then the most similar overall; within
    each, emails of the request's `act` (`request_act`) first.

    A small model copies an example's opening: with the quickstart adapter, "Ask Bob to move our meeting to
    Friday" came out as "Thanks for moving the meeting to Friday." in 9 drafts of 12. So a new email whose
    request thanks nobody gets no example that opens by thanking, and a request that asks gets examples
    that ask."""
    try:
        from .retrieval import index
    except ImportError:
        notices.append("no retrieval index in this installation: drafting without past emails")
        return []
    from .playback.scoring import lead_act
    from .profile import address_of

    k = settings.rag_k
    addr = address_of(to) if to else ""
    try:  # with `to`, the index puts past mail to that person first
        hits = list(index.search(query, k if act == "reply" else 3 * k, kinds=["sent"], to=addr or None,
                                 min_score=settings.rag_min_score, exclude_ids=list(exclude_ids or []),
                                 settings=settings))
    except NoDataError as exc:
        notices.append(_no_index_notice(exc))
        return []
    except PanzaError as exc:
        notices.append(f"retrieval failed, drafting without past emails: {exc.message}")
        return []
    out: list[Retrieved] = []
    seen: set[str] = set()
    for h in hits:
        r = _as_retrieved(h)
        if r is None or r.id in seen:
            continue
        seen.add(r.id)
        r_act = None if act == "reply" else lead_act(r.text)
        if r_act == "thank" and act != "thank":
            continue
        r.same_recipient = bool(addr) and addr.lower() in r.to.lower()
        out.append((not r.same_recipient, r_act != act, r))
    out = [r for *_, r in sorted(out, key=lambda t: t[:2])]  # stable: the index's order within each group
    log.info("retrieved %d examples (%d to the same recipient)", len(out[:k]), sum(r.same_recipient for r in out[:k]))
    try:  # passages of the user's documents that match the instruction closely, beside the emails
        docs = [Retrieved(id=h.id, score=h.score, text=h.text, subject=h.subject, kind="doc", cite=h.cite)
                for h in index.documents(query, settings=settings)]
    except PanzaError as exc:
        notices.append(f"document search failed, drafting without documents: {exc.message}")
        docs = []
    if docs:
        log.info("retrieved %d document passages", len(docs))
    return out[:k] + docs


def _no_index_notice(exc: NoDataError) -> str:
    """What a draft without an index says: build the index, or, where none of the user's mail is in the store
    yet, ingest it first (`panza index` alone would index nothing)."""
    from . import store
    from .ingest import messages

    try:
        conn = store.connect()
        try:
            mine = messages.counts(conn)["mine"]
        finally:
            conn.close()
    except (PanzaError, sqlite3.Error):
        mine = None
    if mine == 0:
        return ("none of your sent mail is ingested yet: drafting without past emails in your voice (fix: panza "
                "ingest MAILBOX --me YOUR@ADDRESS, then panza index)")
    return f"no index yet: drafting without past emails (fix: {exc.fix or 'panza index'})"


def _as_retrieved(hit) -> Retrieved | None:
    """A search hit (object or dict) as a Retrieved, with its full text from the store when needed."""
    get = hit.get if isinstance(hit, dict) else (lambda k, d=None: getattr(hit, k, d))
    hid = str(get("id", ""))
    text = get("text") or get("document") or get("body") or ""
    to, subject = get("to") or "", get("subject") or ""
    to = ", ".join(to) if isinstance(to, (list, tuple)) else str(to)
    if not text or not to:
        row = _message_for_item(hid)
        if row:
            text = text or row["body"]
            to = to or row["to_addrs"] or ""
            subject = subject or row["subject"] or ""
    text = text or get("snippet") or ""
    if not hid or not text:
        return None
    return Retrieved(id=hid, score=float(get("score", 0.0) or 0.0), text=text, to=to, subject=subject)


def _message_for_item(item_id: str):
    from . import store
    from .retrieval import index

    conn = store.connect()
    try:
        return index.item_message(conn, item_id)
    finally:
        conn.close()


def _adapter(use_adapter, settings, notices: list[str]) -> tuple[str | None, Path | None]:
    """(adapter id, GGUF path) of the adapter to draft with, or (None, None) with a notice why not."""
    if use_adapter is False or use_adapter is None:
        return None, None
    if not isinstance(use_adapter, bool):
        p = Path(use_adapter)
        if not p.exists():
            from .errors import AdapterError

            raise AdapterError(f"adapter file {p} does not exist", fix="panza adapters list")
        return p.stem, p
    from .train import registry

    choice = registry.adapter_for(settings)
    if choice.row is None:
        notices.append(choice.reason)
        return None, None
    return choice.id, choice.gguf


# -- replies ------------------------------------------------------------------------------------------------

def load_reply(ref: str | Path | bytes) -> Reply:
    """The email being answered: raw bytes, an .eml file, or a Message-ID found in the store."""
    if isinstance(ref, bytes):
        return reply_from_bytes(ref)
    p = Path(ref).expanduser()
    if p.is_file():
        return reply_from_bytes(p.read_bytes())
    mid = str(ref).strip()
    if "@" not in mid:
        raise NoDataError(f"{ref} is neither a file nor a Message-ID",
                          fix="give the path of the .eml you reply to, or its Message-ID (<id@host>)")
    return reply_from_store(mid)


def reply_from_bytes(raw: bytes) -> Reply:
    """Parse an RFC 5322 message into the Reply a draft needs."""
    from email import policy
    from email.parser import BytesParser

    msg = BytesParser(policy=policy.default).parsebytes(raw)
    body = ""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is not None:
        try:
            body = part.get_content()
        except (LookupError, ValueError):
            body = part.get_payload(decode=True).decode("utf-8", "replace")
        if part.get_content_type() == "text/html":
            body = _html_text(body)
    refs = str(msg.get("References", "") or "").split()
    return Reply(message_id=str(msg.get("Message-ID", "") or "").strip(), references=refs,
                 subject=str(msg.get("Subject", "") or ""),
                 sender=str(msg.get("Reply-To") or msg.get("From") or ""), body=body.strip())


def reply_from_store(message_id: str) -> Reply:
    """The Reply for a message already ingested, found by its Message-ID."""
    from . import store
    from .ingest import messages

    bare = message_id.strip().strip("<>")
    conn = store.connect()
    try:
        row = messages.by_message_id(conn, bare)
    finally:
        conn.close()
    if row is None:
        raise NoDataError(f"no ingested message has Message-ID <{bare}>",
                          fix="pass the .eml file with --reply-to FILE.eml, or ingest the mailbox that holds it")
    refs = (row["refs"] or "").split()
    return Reply(message_id=f"<{bare}>", references=refs, subject=row["subject"] or "",
                 sender=row["from_addr"] or "", body=row["body"] or "")


def _html_text(html: str) -> str:
    try:
        import html2text

        h = html2text.HTML2Text()
        h.body_width = 0
        return h.handle(html)
    except ImportError:  # pragma: no cover
        import html as _h

        return _h.unescape(re.sub(r"<[^>]+>", " ", html))


def _re(subject: str) -> str:
    s = (subject or "").strip()
    return s if re.match(r"^(re|aw|sv|antw)\s*:", s, re.IGNORECASE) else (f"Re: {s}" if s else "")


# -- generation ---------------------------------------------------------------------------------------------

def _cleaner(plan: DraftPlan) -> cleanup.Cleaner:
    """The clean-up of one draft: `stream` shows what it lets through, `finish` cleans the raw text again."""
    return cleanup.Cleaner(plan.profile, plan.to, plan.instruction, reflow=bool(getattr(plan.settings, "reflow", True)))


def stream(plan: DraftPlan, *, seed: int | None = None, temperature: float | None = None,
           max_tokens: int | None = None, cancelled: Callable[[], bool] | None = None) -> Iterator[str]:
    """Yield the draft's cleaned text pieces (`cleanup.Cleaner`); `plan.pieces` holds them, `plan.raw` the
    model's own. `cancelled` is asked after every token the model writes, also while the clean-up holds text
    back (a front end's stop button must not wait for the next visible piece): when it says so, the engine
    stops. It also stops once the clean-up is `done` (the email signed off, another one begun, a loop): what
    follows would be cut anyway."""
    plan.pieces, plan.raw = [], []
    st = engine.Stats()
    cleaner = _cleaner(plan)
    if plan.opening:  # the greeting the prompt ends with: held by the clean-up like one the model wrote
        plan.raw.append(plan.opening)
        cleaner.feed(plan.opening)
    # a day the user did not give is not written (only when they gave one: "move it to Friday")
    days = prompts.other_weekdays(plan.instruction, plan.reply.body if plan.reply else None)
    gen = engine.stream_chat(plan.messages, model_path=plan.model_path, lora_path=plan.lora_path,
                             max_tokens=max_tokens or plan.max_tokens, temperature=temperature,
                             seed=plan.seed if seed is None else seed, stop=[prompts.FENCE],
                             settings=plan.settings, stats=st, banned_words=days, prefix=plan.opening)
    try:
        for piece in gen:
            plan.raw.append(piece)
            if cancelled is not None and cancelled():
                break
            out = cleaner.feed(piece)
            if out:
                plan.pieces.append(out)
                yield out
            if cleaner.done:
                break
    finally:
        gen.close()  # frees the engine (its lock) now, not when the generator is collected
    plan.stats = {"prompt_tokens": st.prompt_tokens, "cached_tokens": st.cached_tokens,
                  "completion_tokens": st.completion_tokens,
                  "ttft_s": round(st.ttft_s, 4), "total_s": round(st.total_s, 4),
                  "tokens_per_s": round(st.tokens_per_s, 1)}
    out = cleaner.close()
    if out:
        plan.pieces.append(out)
        yield out


def finish(plan: DraftPlan, *, record: bool = True) -> Draft:
    """The Draft made of what `stream(plan)` produced (stored in the drafts table when `record`)."""
    # cleaned from the raw text, not the streamed pieces: a stream stopped early never got its tail
    cleaner = _cleaner(plan)
    text = (cleaner.feed("".join(plan.raw)) + cleaner.close()).strip()
    subject = plan.subject or cleaner.subject or prompts.subject_line(plan.instruction)
    reply = plan.reply
    refs = [*reply.references, reply.message_id] if reply and reply.message_id else []
    notices = list(plan.notices)
    if plan.raw and not text:
        notices.append("the model wrote no usable email (only prompt scaffolding): try again or another seed")
    d = Draft(text=text, subject=subject, to=plan.to or "", adapter=plan.adapter,
              retrieved=[r.id for r in plan.retrieved], instruction=plan.instruction,
              in_reply_to=reply.message_id if reply and reply.message_id else None,
              references=list(dict.fromkeys(refs)), notices=notices,
              copied=copied_from(text, [r for r in plan.retrieved if r.kind != "doc"]), stats=dict(plan.stats),
              retrieved_detail=[{"id": r.id, "kind": r.kind, "score": round(r.score, 4), "cite": r.cite}
                                for r in plan.retrieved])
    if record:
        _record(d)
    return d


def stream_draft(instruction: str, *, to: str | None = None, subject: str | None = None,
                 reply_to: str | Path | bytes | Reply | None = None, use_rag: bool = True,
                 use_adapter: bool | str | Path = True, seed: int | None = None, settings=None):
    """prepare + stream: yield text pieces; the generator's return value is the finished Draft."""
    plan = prepare(instruction, to=to, subject=subject, reply_to=reply_to, use_rag=use_rag,
                   use_adapter=use_adapter, seed=seed, settings=settings)
    yield from stream(plan)
    return finish(plan)


def draft(instruction: str, **kwargs) -> Draft:
    """A whole draft. If it copies a retrieved email verbatim, it is written again without that email."""
    plan = prepare(instruction, **kwargs)
    for _ in stream(plan):
        pass
    d = finish(plan, record=False)
    if d.copied:
        log.info("draft copied %d retrieved example(s); regenerating without them", len(d.copied))
        plan = _without(plan, set(d.copied))
        for _ in stream(plan):
            pass
        d = finish(plan, record=False)
        d.notices.append("the first draft copied a past email word for word; it was written again without it")
    if not d.text and plan.raw:  # nothing but scaffolding: one more try with another seed
        seed = (plan.seed if plan.seed is not None and plan.seed >= 0 else random.randrange(1 << 30)) + 1
        for _ in stream(plan, seed=seed):
            pass
        d = finish(plan, record=False)
    _record(d)
    return d


def alternatives(instruction: str, n: int = 3, **kwargs) -> list[Draft]:
    """`n` different drafts of the same prompt (different seeds; the prompt's KV cache is reused)."""
    plan = prepare(instruction, **kwargs)
    base = plan.seed if plan.seed is not None and plan.seed >= 0 else random.randrange(1 << 30)
    temp = max(plan.settings.temperature, 0.7)
    out = []
    for i in range(max(1, n)):
        for _ in stream(plan, seed=base + i, temperature=temp):
            pass
        out.append(finish(plan))
    return out


def _without(plan: DraftPlan, drop: set[str]) -> DraftPlan:
    kept = [r for r in plan.retrieved if r.id not in drop]
    new = prepare(plan.instruction, to=plan.to, subject=plan.subject, reply_to=plan.reply, use_rag=False,
                  use_adapter=plan.lora_path or False, seed=plan.seed, settings=plan.settings, examples=kept,
                  profile=plan.profile)
    new.adapter = plan.adapter
    new.notices = list(plan.notices)
    return new


def _words(text: str) -> list[str]:
    words = (re.sub(r"^\W+|\W+$", "", w) for w in text.lower().split())
    return [w for w in words if w]


def copied_from(text: str, retrieved: list[Retrieved], n: int = COPY_WORDS) -> list[str]:
    """Ids of the retrieved emails that `text` repeats `n` or more consecutive words of."""
    words = _words(text)
    grams = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    if not grams:
        return []
    out = []
    for r in retrieved:
        src = _words(r.text)
        if any(tuple(src[i:i + n]) in grams for i in range(len(src) - n + 1)):
            out.append(r.id)
    return out


def _record(d: Draft) -> None:
    import json

    from . import store

    try:
        conn = store.connect()
    except PanzaError as exc:  # a read-only home must not cost the user their draft
        log.warning("draft not recorded: %s", exc.message)
        return
    try:
        meta = {k: v for k, v in d.to_dict().items() if k not in ("text", "instruction")}
        conn.execute("INSERT INTO drafts (instruction, text, meta, created_at) VALUES (?, ?, ?, ?)",
                     (d.instruction, d.text, json.dumps(meta), store.now()))
    except Exception as exc:  # noqa: BLE001 - recording is best effort; the draft itself is what matters
        log.warning("draft not recorded: %s", type(exc).__name__)
    finally:
        conn.close()
