"""Fitting a prompt into the model's context window, or saying clearly why it cannot fit.

Tokens are counted exactly: the active model's own tokenizer (a vocab-only llama.cpp load, ~0.2 s once)
runs the very chat handler llama-cpp-python would run for `create_chat_completion`, so the count is the
number of prompt tokens the engine will evaluate. The reply's `max_tokens` is kept free on top of it.

What does not fit is left out in this order, each with a notice that says what went: the oldest earlier
chat turns, then the least relevant retrieved items (past emails, document passages), then the quoted
thread's tail; then the reply is shortened (down to MIN_REPLY tokens). The instruction's own words are
never cut: when it does not fit with nothing else around it, `ContextTooLong` names the limit and the fix.
Draft (`fit_plan`, called by `draft.prepare` and again by serve with the client's history), chat
(`chat.fit_reply`), serve and eval all go through `fit()`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFound, PanzaError

# Every notice starts with this, so front ends can tell a trimmed prompt from other notices.
NOTICE = "to fit the model's context"
# A reply shorter than this is not worth writing: below it the request is refused instead.
MIN_REPLY = 64
THREAD_CUT = " [... the rest of the quoted email was left out]"

_VOCABS: dict[str, object] = {}
_LOCK = threading.Lock()


@atexit.register
def _close_at_exit() -> None:
    # Free the tokenizers before interpreter teardown, when llama_cpp's __del__ would find its globals gone.
    with contextlib.suppress(Exception):
        _VOCABS.clear()


class ContextTooLong(PanzaError):
    """The instruction (with the fixed prompt around it) does not fit the model's context window."""

    def __init__(self, message: str, fix: str, *, needed: int, limit: int, reserve: int):
        super().__init__(message, fix)
        self.needed, self.limit, self.reserve = needed, limit, reserve


@dataclass
class Fitted:
    """A prompt that fits: its messages, what was kept of each trimmable part, and what was left out."""

    messages: list[dict]
    prompt_tokens: int
    max_tokens: int
    history: list = field(default_factory=list)
    examples: list = field(default_factory=list)
    thread: str | None = None
    notices: list[str] = field(default_factory=list)


def is_notice(text: str) -> bool:
    """True for a notice written by `fit` (a front end shows these prominently)."""
    return text.startswith(NOTICE)


# -- counting ------------------------------------------------------------------------------------------------

def vocab(model_path: str | Path):
    """The model's tokenizer and chat handlers: the engine's loaded model for this file when there is one
    (a warm TUI, serve or eval: nothing to load), else a vocab-only llama.cpp load, cached per file."""
    key = str(model_path)
    with _LOCK:
        if key in _VOCABS:
            return _VOCABS[key]
        from . import engine

        for k, llm in list(getattr(engine, "_MODELS", {}).items()):  # same file: same vocab and template
            if isinstance(k, tuple) and k and k[0] == key:
                return llm
        if not Path(key).exists():
            raise ModelNotFound(f"model file {key} does not exist", fix="panza models list")
        lib = engine.llama_cpp()
        try:
            with engine.quiet_native():  # llama.cpp warns about the tiny context a vocab-only load makes
                llm = lib.Llama(model_path=key, vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFound(f"llama.cpp could not read the tokenizer of {key}: {exc}",
                                fix="check the file with `panza doctor`") from None
        while len(_VOCABS) >= 2:
            _VOCABS.pop(next(iter(_VOCABS)))
        _VOCABS[key] = llm
        return llm


class _Captured(Exception):
    def __init__(self, tokens: list[int]):
        super().__init__("captured")
        self.tokens = tokens


class _Probe:
    """Stands in for the Llama object a chat handler receives: tokenizes for real, stops before generating."""

    verbose = False

    def __init__(self, llm):
        self._llm = llm

    def __getattr__(self, name):  # tokenize, detokenize, token_eos, metadata... from the real model
        return getattr(self._llm, name)

    def create_completion(self, prompt, **_kwargs):
        raise _Captured(list(prompt) if not isinstance(prompt, str) else self._llm.tokenize(prompt.encode(),
                                                                                            special=True))


def count(messages: Sequence[dict], model_path: str | Path) -> int:
    """Exact prompt tokens of `messages` for this model (its chat template, its tokenizer)."""
    return len(chat_tokens(messages, vocab(model_path)))


# The last prompts tokenized, by tokenizer and messages: a draft's prompt is tokenized while it is fitted (by
# the model's vocabulary) and again by the engine that evaluates it (the same tokenizer in the serving copy),
# on the warm path of every draft. The key holds what decides the tokens: the chat template and
# the tokenizer's kind, size and special tokens, so a model with another tokenizer never shares an entry.
_TOKENS: dict[tuple, list[int]] = {}
_TOKENS_KEPT = 8
_TOKENIZER_KEYS = ("general.architecture", "tokenizer.chat_template", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                   "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token")


def chat_tokens(messages: Sequence[dict], llm) -> list[int]:
    """The tokens `llm.create_chat_completion(messages)` would evaluate: its own chat handler, stopped before
    it generates."""
    from llama_cpp import llama_chat_format  # llm exists: llama_cpp was imported by engine.llama_cpp

    meta = llm.metadata or {}
    key = (llm.chat_format, llm.n_vocab(), *(meta.get(k) for k in _TOKENIZER_KEYS),
           json.dumps(list(messages), sort_keys=True, default=str))
    with _LOCK:
        if key in _TOKENS:
            return list(_TOKENS[key])
        handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
                   or llama_chat_format.get_chat_completion_handler(llm.chat_format))
        try:
            handler(llama=_Probe(llm), messages=list(messages), max_tokens=1)
        except _Captured as got:
            if llm.chat_handler is None:  # a handler of its own (a custom one) may not depend on the above alone
                while len(_TOKENS) >= _TOKENS_KEPT:
                    _TOKENS.pop(next(iter(_TOKENS)))
                _TOKENS[key] = list(got.tokens)
            return got.tokens
    raise RuntimeError("the chat handler returned without building a prompt")  # pragma: no cover


def count_text(text: str, model_path: str | Path) -> int:
    """Tokens of plain `text` for this model (no template, no BOS)."""
    llm = vocab(model_path)
    with _LOCK:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def trained_context(model_path: str | Path) -> int | None:
    """The context length the model was trained for (GGUF metadata), or None when it does not say."""
    meta = vocab(model_path).metadata
    arch = meta.get("general.architecture", "")
    try:
        return int(meta[f"{arch}.context_length"])
    except (KeyError, ValueError):
        return None


# -- fitting ---------------------------------------------------------------------------------------------------

Render = Callable[[list, list, "str | None"], list[dict]]


def fit(render: Render, *, model_path: str | Path, n_ctx: int, max_tokens: int, history: Sequence = (),
        examples: Sequence = (), thread: str | None = None, what: str = "the instruction",
        score: Callable[[object], float] | None = None, label: Callable[[object], str] | None = None) -> Fitted:
    """The largest prompt `render(history, examples, thread)` that leaves `max_tokens` free in `n_ctx`.

    `history` is oldest first, `examples` best first (or ranked by `score`); `label` names an example in the
    notice (its id). The prompt is never cut to free more than half the context for the reply: a longer
    `max_tokens` is shortened instead. Raises ContextTooLong when even the bare prompt (no history, examples
    or thread) leaves fewer than MIN_REPLY tokens for the reply.
    """
    history, examples = list(history), list(examples)
    room = n_ctx - max(1, min(max_tokens, n_ctx // 2))
    head = f"{NOTICE} ({n_ctx:,} tokens)"
    notices: list[str] = []

    def size(h, e, t) -> tuple[list[dict], int]:
        msgs = render(h, e, t)
        return msgs, count(msgs, model_path)

    msgs, n = size(history, examples, thread)
    if n > room and history:  # the fewest oldest turns whose removal makes it fit (each drop only shrinks it)
        msgs_all, n_all = size([], examples, thread)
        drop, msgs, n = len(history), msgs_all, n_all
        if n_all <= room:
            lo, hi = 1, len(history)
            while lo < hi:
                mid = (lo + hi) // 2
                m, k = size(history[mid:], examples, thread)
                if k <= room:
                    hi, msgs, n = mid, m, k
                else:
                    lo = mid + 1
            drop = hi
        total, history = len(history), history[drop:]
        notices.append(f"{head}: left out the {drop} oldest of {total} earlier chat turns" if drop > 1 else
                       f"{head}: left out the oldest of {total} earlier chat turns")
    if n > room and examples:  # the least relevant first
        order = sorted(range(len(examples)), key=lambda i: score(examples[i]) if score else -i)
        gone: list[int] = []
        for i in order:
            gone.append(i)
            msgs, n = size(history, [e for j, e in enumerate(examples) if j not in gone], thread)
            if n <= room:
                break
        names = f" ({', '.join(label(examples[i]) for i in gone)})" if label else ""
        examples = [e for j, e in enumerate(examples) if j not in gone]
        notices.append(f"{head}: left out {len(gone)} retrieved item{'s' if len(gone) > 1 else ''}{names}")
    if n > room and thread:  # keep the thread's head, cut its tail at a word (binary search on the length)
        full = len(thread)
        msgs, n = size(history, examples, None)
        kept = 0
        if n <= room:
            lo, hi = 0, full
            while hi - lo > 40:
                mid = (lo + hi) // 2
                m, k = size(history, examples, _cut(thread, mid) + THREAD_CUT)
                if k <= room:
                    lo, kept, msgs, n = mid, len(_cut(thread, mid)), m, k
                else:
                    hi = mid
        thread = _cut(thread, kept) + THREAD_CUT if kept else None
        notices.append(f"{head}: " + (f"kept the first {kept:,} of {full:,} characters of the quoted email"
                                      if kept else "left out the quoted email"))
    if n + min(MIN_REPLY, max_tokens) > n_ctx:
        raise too_long(n, n_ctx, max_tokens, model_path, what)
    if n + max_tokens > n_ctx:
        notices.append(f"{head}: the reply may be at most {n_ctx - n} tokens long (asked for {max_tokens})")
    return Fitted(msgs, n, min(max_tokens, n_ctx - n), history, examples, thread, notices)


def too_long(needed: int, n_ctx: int, reserve: int, model_path: str | Path, what: str) -> ContextTooLong:
    """The error for a prompt of `needed` tokens that does not fit `n_ctx` with `reserve` left for the reply."""
    want = needed + max(min(reserve, 512), MIN_REPLY)
    trained = trained_context(model_path)
    size = 1 << (want - 1).bit_length()  # the next power of two
    if trained and size > trained:
        size = trained
    msg = (f"{what} is too long for the model's context: the prompt needs {needed:,} tokens and the reply at "
           f"least {MIN_REPLY}, but the context holds {n_ctx:,} tokens")
    if trained and want > trained:
        fix = (f"shorten {what}: this model reads at most {trained:,} tokens "
               "(or switch to a model with a longer context: panza models list)")
    else:
        fix = f"shorten {what}, or give the model a larger context: panza config set n_ctx {size}"
    return ContextTooLong(msg, fix, needed=needed, limit=n_ctx, reserve=reserve)


def _cut(text: str, limit: int) -> str:
    if limit >= len(text):
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip()



# -- drafts -------------------------------------------------------------------------------------------------

def fit_plan(plan, *, history: Sequence[dict] = (), notes: str = "") -> None:
    """Fit a DraftPlan's prompt to its model's context (in place: messages, retrieved, max_tokens, notices).

    `plan.render(examples, thread)` builds the draft's messages; `history` (earlier chat turns from an API
    client) goes before the instruction and `notes` (the client's system text) in front of it."""
    def render(hist, examples, thread):
        msgs = [dict(m) for m in plan.render(examples, thread)]
        if notes.strip():  # the mail app's own instructions: trusted, but kept out of the fixed preamble
            msgs[-1]["content"] = f"Notes from the mail app: {notes.strip()}\n\n{msgs[-1]['content']}"
        return [*msgs[:-1], *hist, msgs[-1]] if hist else msgs

    thread = plan.reply.body if plan.reply and plan.reply.body else None
    what = "the last user message (with the system text)" if notes.strip() else "the instruction"
    fitted = fit(render, model_path=plan.model_path, n_ctx=plan.settings.n_ctx, max_tokens=plan.max_tokens,
                 history=list(history), examples=list(plan.retrieved), thread=thread, what=what,
                 score=lambda r: r.score, label=lambda r: r.id)
    plan.messages, plan.retrieved, plan.max_tokens = fitted.messages, fitted.examples, fitted.max_tokens
    plan.notices += [n for n in fitted.notices if n not in plan.notices]
