"""The app's calls into panza_local, in one place (no Textual here).

Stages that other issues build (drafting, retrieval, the adapter registry, re-tuning) are used when they are
installed; until then drafting falls back to `prompts.build` + `engine.stream_chat`, and re-tuning reports
that `panza retune` is not available yet.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from panza_local import config, engine, prompts
from panza_local.errors import PanzaError


class Unavailable(PanzaError):
    """A stage this screen needs is not installed yet."""


def _module(name: str):
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _get(obj, name: str, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _call(fn: Callable, *args, **kwargs):
    """Call `fn` with only the keyword arguments it accepts (stages grow their signatures over time)."""
    return fn(*args, **{k: v for k, v in kwargs.items() if _accepts(fn, k)})


def model_name(settings=None) -> str:
    """The active base model's name."""
    return (settings or config.load()).model


def check_model(settings=None) -> None:
    """Raise ModelNotFound (naming the fix) when the active base model is not on this machine."""
    engine.default_model(settings)


def current_adapter() -> dict | None:
    """The promoted adapter as {id, gguf, metrics}, or None (no registry yet, or nothing trained)."""
    registry = _module("panza_local.train.registry")
    if registry is None or not hasattr(registry, "current"):
        return None
    try:
        cur = registry.current()
    except PanzaError:
        return None
    if cur is None:
        return None
    gguf = _get(cur, "gguf") or _get(cur, "gguf_path")
    return {"id": str(_get(cur, "id", cur)), "gguf": str(gguf) if gguf else "",
            "metrics": _get(cur, "metrics") or {}}


def retrieve(query: str, *, k: int | None = None, to: str | None = None) -> list[dict]:
    """Past emails similar to `query` as {id, score, date, subject, snippet}; [] when there is no index yet."""
    index = _module("panza_local.index")
    if index is None or not hasattr(index, "search"):
        return []
    k = k or config.load().rag_k
    hits = _call(index.search, query, k=k, to=to)
    out = []
    for h in hits or []:
        out.append({"id": _get(h, "id"), "score": float(_get(h, "score", 0.0) or 0.0),
                    "date": str(_get(h, "date", "") or "")[:10], "subject": _get(h, "subject", "") or "",
                    "snippet": _get(h, "snippet", "") or _get(h, "text", "") or ""})
    return out


def stream_draft(instruction: str, *, to: str = "", subject: str = "", thread: str = "",
                 hits: list[dict] | None = None, use_adapter: bool = True, max_tokens: int | None = None,
                 seed: int | None = None, settings=None) -> Iterator[str]:
    """Yield a draft in the user's voice: `draft.stream_draft` when installed, else prompts + engine."""
    draft = _module("panza_local.draft")
    if draft is not None and hasattr(draft, "stream_draft"):
        yield from _call(draft.stream_draft, instruction, to=to or None, subject=subject or None,
                         thread=thread or None, reply_to=None, use_rag=bool(hits), use_adapter=use_adapter,
                         max_tokens=max_tokens, seed=seed, settings=settings)
        return
    examples = [h["snippet"] for h in hits or [] if h.get("snippet")]
    messages = prompts.build(instruction, examples=examples, thread=thread or None, to=to or None,
                             subject=subject or None)
    adapter = current_adapter() if use_adapter else None
    lora = adapter["gguf"] if adapter and adapter["gguf"] else None
    yield from engine.stream_chat(messages, lora_path=lora, max_tokens=max_tokens, seed=seed, settings=settings)


def to_eml(text: str, *, to: str = "", subject: str = "", sender: str = "", in_reply_to: str = "",
           references: str = "") -> str:
    """The draft as an RFC 5322 message (UTF-8)."""
    draft = _module("panza_local.draft")
    if draft is not None and hasattr(draft, "to_eml"):
        try:
            out = _call(draft.to_eml, text, to=to, subject=subject, in_reply_to=in_reply_to)
            if isinstance(out, bytes):
                out = out.decode("utf-8")
            if isinstance(out, str):
                return out
        except TypeError:
            pass
    msg = EmailMessage()
    settings = config.load()
    msg["From"] = sender or (settings.me[0] if settings.me else "me@localhost")
    if to:
        msg["To"] = to
    msg["Subject"] = subject or "(no subject)"
    msg["Date"] = format_datetime(dt.datetime.now(dt.timezone.utc))
    msg["Message-ID"] = make_msgid(domain="panza.local")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = f"{references} {in_reply_to}".strip()
    msg["X-Generator"] = "panza-local"
    msg.set_content(text.rstrip() + "\n", charset="utf-8")
    return msg.as_string()


def save_eml(path: str | Path, text: str, **headers) -> Path:
    """Write the draft as a .eml file and return its path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_eml(text, **headers), encoding="utf-8")
    return path


def save_maildir(folder: str | Path, text: str, **headers) -> str:
    """Store the draft in a Maildir's Drafts folder with the D flag; returns where it went."""
    draft = _module("panza_local.draft")
    if draft is not None and hasattr(draft, "save_maildir"):
        try:
            return str(_call(draft.save_maildir, to_eml(text, **headers), Path(folder).expanduser()))
        except TypeError:
            pass
    import mailbox

    box = mailbox.Maildir(str(Path(folder).expanduser()), create=True)
    msg = mailbox.MaildirMessage(to_eml(text, **headers))
    msg.set_flags("D")
    msg.set_subdir("cur")
    key = box.add(msg)
    return str(Path(folder).expanduser() / "cur" / f"{key}:2,D")


def alternatives(instruction: str, n: int = 3, **kwargs) -> list[str]:
    """`n` different drafts for one instruction (different seeds)."""
    draft = _module("panza_local.draft")
    if draft is not None and hasattr(draft, "alternatives"):
        try:
            out = _call(draft.alternatives, instruction, n=n, **kwargs)
            return [o if isinstance(o, str) else str(_get(o, "text", o)) for o in out]
        except TypeError:
            pass
    base = kwargs.pop("seed", None)
    base = 1 if base is None or base < 0 else base
    return ["".join(stream_draft(instruction, seed=base + i * 7919, **kwargs)) for i in range(n)]


def retune_available() -> bool:
    """Whether `panza_local.retune.run_once` is installed."""
    mod = _module("panza_local.retune")
    return mod is not None and hasattr(mod, "run_once")


def run_retune(on_progress: Callable[[int, int | None, str | None], None]) -> dict:
    """Run one re-tune (ingest → playback → index → train → eval → promote, only for what is new)."""
    if not retune_available():
        raise Unavailable("re-tuning is not installed in this build", fix="`panza retune` is not available yet")
    from panza_local import retune

    out = _call(retune.run_once, on_progress=on_progress)
    return out if isinstance(out, dict) else {"result": str(out)}
