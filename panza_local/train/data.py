"""Training data, backend-neutral: pairs -> chat examples -> token ids with loss masks -> packed rows.

Every backend (torch, mlx) uses these functions, so what an adapter learns is exactly what the engine
will ask it: the prompt comes from `prompts.build`, the chat template is the GGUF's own, rendered the way
llama-cpp-python renders it (Jinja2, trim_blocks, lstrip_blocks, bos/eos from the vocabulary), and the
text is tokenised by llama.cpp's own tokenizer (a vocab-only load of the same GGUF). Loss is only on the
email and the end-of-turn token that makes generation stop.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NoDataError

IGNORE = -100
VAL_SHARE = 0.1
# Past emails in a training prompt (of the `settings.rag_k` retrieved, same recipient first). Each one costs
# ~130 tokens of a ~190-token example on a short-mail user: one teaches the adapter to use retrieved mail
# without copying it, at a third of the cost of three (fp32 training on a laptop runs ~170 tokens/s).
CONTEXT_K = 1


@dataclass
class Example:
    """One training example: the chat the engine would send, and the email the user actually wrote."""

    messages: list[dict]
    """System + user turns, as `prompts.build` returns them."""
    target: str
    """The email body (the assistant turn the adapter learns to write)."""
    key: str = ""
    """Stable id (content hash of the email): decides the split and feeds the data hash."""
    meta: dict = field(default_factory=dict)


def split_of(key: str, val_share: float = VAL_SHARE) -> str:
    """'train' or 'val' from a stable hash of `key` (for JSONL sets without dates; the store's split is
    playback's chronological one)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return "val" if (h % 10_000) < val_share * 10_000 else "train"


def make_example(instruction: str, email: str, key: str = "", *, thread: str | None = None,
                 to: str | None = None, subject: str | None = None, examples: list | None = None,
                 profile=None, meta: dict | None = None) -> Example:
    """An Example whose prompt is exactly what `prompts.build` gives the engine at draft time."""
    from .. import prompts

    msgs = prompts.build(instruction, profile=profile, examples=examples, thread=thread, to=to, subject=subject)
    key = key or hashlib.sha256(email.encode("utf-8")).hexdigest()
    return Example(messages=msgs, target=email.strip(), key=key, meta=dict(meta or {}))


def _row_get(row, *names, default=None):
    for n in names:
        v = row.get(n) if isinstance(row, dict) else getattr(row, n, None)
        if v is not None:
            return v
    return default


def examples(conn: sqlite3.Connection, split: str, settings=None, *, context: bool = True) -> list[Example]:
    """Training examples of `split` ('train', 'val' or 'all') from `playback.pairs` (its chronological split:
    the newest tenth is the eval stage's test set, never trained on; the tenth before it validates).

    The prompt is the drafts' prompt (instruction, thread, to, subject); a `settings.raft_context_share`
    share of examples (the index stage's own stable draw) also carry past emails retrieved for them, as
    drafts do, when an index exists.
    """
    from .. import config, playback
    from .. import profile as profiles

    settings = settings or config.load()
    base_profile = profiles.load_or_none()
    names = profiles.display_names(conn)  # requests name people as drafts do: "Email to Jonas Berg: ..."
    out = []
    for r in playback.pairs(conn, split):
        instruction, email = _row_get(r, "instruction"), _row_get(r, "email")
        if not instruction or not email:
            continue
        mid = _row_get(r, "message_id")
        to = _row_get(r, "to")
        ctx = _training_context(conn, mid, settings, to, names) if context and mid is not None else None
        # the same profile block drafts show (usual greeting for this recipient, sign-off, length)
        prof = profiles.prompt_profile(to, base_profile, conn=conn, hint=instruction) if base_profile else None
        out.append(make_example(instruction, email, _row_get(r, "content_hash", default=""),
                                thread=_row_get(r, "thread"), to=profiles.with_names(to, names),
                                subject=_row_get(r, "subject"),
                                examples=ctx, profile=prof,
                                meta={"message_id": mid, "split": _row_get(r, "split"), "date": _row_get(r, "date"),
                                      "to": to, "subject": _row_get(r, "subject"), "thread": _row_get(r, "thread")}))
    return out


def _training_context(conn, message_id: int, settings, to: str | None = None,
                      names: dict[str, str] | None = None) -> list | None:
    """Past emails retrieved for one training email (never itself), for the RAFT share of examples, as the
    prompt turns drafts show them (each with its own playback instruction as the request)."""
    from .. import playback, prompts
    from .. import profile as profiles
    from ..retrieval import index

    if not index.carries_context(message_id, settings.raft_context_share):
        return None
    try:
        hits = index.training_context(message_id, settings.rag_k, conn=conn, settings=settings)
    except NoDataError:  # no index built yet: train without context rather than not at all
        return None
    hits = [h for h in hits if h.score >= settings.rag_min_score]
    addr = profiles.address_of(to).lower() if to else ""
    hits.sort(key=lambda h: not (addr and any(addr in t.lower() for t in h.to)))  # same recipient first, as drafts
    hits = hits[:CONTEXT_K]
    asks = playback.instructions(conn, [h.ref_id for h in hits])
    return [prompts.Example(text=h.text, request=asks.get(h.ref_id) or (f'Write about "{h.subject}".' if h.subject else ""),
                            to=profiles.with_names(", ".join(h.to), names or {})) for h in hits] or None


def examples_from_jsonl(path: str | Path, split: str = "all", limit: int | None = None) -> list[Example]:
    """Examples from a Panza-style JSONL ({"email", "subject"}), the subject as the instruction (tests, benches)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            d = json.loads(line)
            email = (d.get("email") or "").strip()
            if not email:
                continue
            subject = (d.get("subject") or "").strip()
            instruction = f"Write an email about: {subject}" if subject else "Write a short email."
            key = hashlib.sha256(email.encode("utf-8")).hexdigest()
            if split in ("train", "val") and split_of(key) != split:
                continue
            out.append(make_example(instruction, email, key))
            if limit and len(out) >= limit:
                break
    return out


def data_hash(exs: Iterable[Example]) -> str:
    """Hash of what a model is trained on (prompts and targets), order-independent."""
    parts = sorted(hashlib.sha256(json.dumps([e.messages, e.target], sort_keys=True).encode()).hexdigest()
                   for e in exs)
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


class Tokenizer:
    """llama.cpp's tokenizer and chat template for one GGUF (vocab-only load: fast, no weights)."""

    def __init__(self, gguf_path: str | Path):
        from .. import engine, gguf_header

        self.path = Path(gguf_path)
        with engine.quiet_native():  # a vocab-only context warns "n_ctx_train (0)" despite verbose=False
            self._llm = engine.llama_cpp().Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        meta = gguf_header.read_header(self.path)["metadata"]
        self.template = meta.get("tokenizer.chat_template")
        self.eos_id = int(self._llm.token_eos())
        self.bos_id = int(self._llm.token_bos())
        self.eos_token = self._piece(self.eos_id)
        self.bos_token = self._piece(self.bos_id)
        self.vocab_size = int(self._llm.n_vocab())
        self._env = None
        self.eot = self._end_of_turn()

    def _piece(self, tid: int) -> str:
        if tid < 0:
            return ""
        return self._llm._model.token_get_text(tid)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, no BOS added (the template carries its own)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def decode(self, ids: Sequence[int]) -> str:
        return self._llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text llama-cpp-python's Jinja2ChatFormatter makes of `messages`."""
        if not self.template:
            raise NoDataError(f"{self.path} has no chat template (tokenizer.chat_template)",
                              fix="use an instruction-tuned model from `panza models list`")
        if self._env is None:
            import datetime as dt

            import jinja2
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(message)

            env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
            self._env = (env.from_string(self.template), raise_exception,
                         lambda fmt: dt.datetime.now().strftime(fmt))
        tmpl, raise_exception, strftime_now = self._env
        return tmpl.render(messages=messages, eos_token=self.eos_token, bos_token=self.bos_token,
                           raise_exception=raise_exception, add_generation_prompt=add_generation_prompt,
                           functions=None, function_call=None, tools=None, tool_choice=None,
                           strftime_now=strftime_now)

    def _end_of_turn(self) -> str:
        """The text that closes an assistant turn (`<|im_end|>`, `<end_of_turn>`, ...): generation stops there."""
        if not self.template:
            return self.eos_token
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        marker = "PANZA_PROBE_7f3a"
        try:
            head = self.render(probe, add_generation_prompt=True)
            full = self.render(probe + [{"role": "assistant", "content": marker}], add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - a template that rejects the probe still has an eos token
            return self.eos_token
        if full.startswith(head) and marker in full:
            tail = full[full.index(marker, len(head)) + len(marker):].rstrip()
            if tail:
                return tail
        return self.eos_token


def tokenize(example: Example, tok, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one example: labels are the ids on the email + end-of-turn, IGNORE elsewhere.

    Prompt and answer are tokenised separately, as at generation time (llama.cpp tokenises the prompt,
    then the model emits the answer's tokens one by one). Too-long examples lose the end of the email.
    """
    prompt_ids = tok.encode(tok.render(example.messages, add_generation_prompt=True))
    answer_ids = tok.encode(example.target + tok.eot)
    ids = prompt_ids + answer_ids
    labels = [IGNORE] * len(prompt_ids) + answer_ids
    if max_len and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def pack(seqs: Sequence[tuple[list[int], list[int]]], seq_len: int) -> list[dict]:
    """Pack (input_ids, labels) pairs into rows of at most `seq_len` tokens (first-fit decreasing).

    Each row is a dict of equal-length lists: `input_ids`; `targets`, already shifted (targets[t] is the
    token position t must predict, IGNORE where there is no loss, and at each example's last position so
    nothing is learnt across examples); `positions`, restarting at 0 for each example; `segments`, the
    example's index inside the row. Attention must stay within a segment (no cross-contamination).
    """
    items = []
    for ids, labels in seqs:
        ids, labels = list(ids[:seq_len]), list(labels[:seq_len])
        targets = labels[1:] + [IGNORE]
        if any(t != IGNORE for t in targets):
            items.append((ids, targets))
    items.sort(key=lambda it: -len(it[0]))
    rows: list[dict] = []
    for ids, targets in items:
        for row in rows:
            if len(row["input_ids"]) + len(ids) <= seq_len:
                break
        else:
            row = {"input_ids": [], "targets": [], "positions": [], "segments": []}
            rows.append(row)
        seg = (row["segments"][-1] + 1) if row["segments"] else 0
        row["input_ids"] += ids
        row["targets"] += targets
        row["positions"] += list(range(len(ids)))
        row["segments"] += [seg] * len(ids)
    return rows


def n_target_tokens(rows: Iterable[dict]) -> int:
    """Tokens that carry loss in packed rows."""
    return sum(sum(1 for t in r["targets"] if t != IGNORE) for r in rows)
