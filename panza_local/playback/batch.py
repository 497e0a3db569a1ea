"""Batched playback: many emails in one llama.cpp context, several sequences per decode step.

The one-at-a-time path (`playback.generate`) runs one email, one token at a time: each decode step
multiplies a single row through the weights, which on a CPU costs nearly what eight rows cost. Here
`slots` sequences share one context and every `llama_decode` carries one token for each sequence that is
generating plus the prompt tokens of those being filled, so the weights are read once for all of them.

The shared preamble (system prompt and few-shot turns) is evaluated once into a template sequence and
copied into each slot with `llama_memory_seq_cp` (each sequence has a KV stream of its own: the copy is the
template's stream, a few MB). A retry keeps what its slot already holds up to the first token where the new
prompt differs. The busy sequences keep the lowest ids (`_compact`): llama.cpp computes each run of
consecutive ids apart.

Everything that decides an instruction is the one-at-a-time path's own code: `playback.plan`, `attempt`
(prompt, temperature and seed of attempt k), `judge` (the guards) and `fallback`; each sequence has its own
sampler chain built like llama-cpp-python's `Llama._init_sampler` (repeat penalty, the GBNF grammar, then
greedy or top-k/typical/top-p/min-p/temperature/seeded dist), so the grammar holds per sequence.
Python's per-token work is the sampling loop: one `llama_sampler_sample` per generating sequence.
"""

from __future__ import annotations

import collections
import ctypes
import logging
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path

from .. import playback as pb

log = logging.getLogger(__name__)

# Sequences decoded together, at most: 16 played back 120 emails of bass-e in 43.2 s against 46.8 s for 8 (two
# cores, the BF16 copy, three alternating runs each; 12 and 24-32 no faster than 16). Fewer where their KV
# streams would outgrow KV_BUDGET (a larger model's cells are bigger), never fewer than MIN_SLOTS.
SLOTS = 16
MIN_SLOTS = 8
KV_BUDGET = 1 << 30  # bytes: 17 streams of 1,024 cells are ~400 MB on the embedded model, ~210 MB on Qwen2.5-0.5B
# One KV stream per sequence: a sequence's attention reads only its own cells (a unified cache would make
# every token attend over all slots' cells, masked); the preamble is then copied whole into each stream.
UNIFIED = False
# KV cells each sequence has past the preamble: a prompt's email, thread and hint (1,200 + 300 characters of
# English are ~400 tokens) and the answer; each sequence is its own KV stream, so this sizes memory:
# 9 x 1024 cells x 23 KB a cell for the embedded model's 30 layers is ~210 MB.
PER_SLOT = 640
HINT_ROOM = 48  # tokens a retry's hint adds (the longest hint is ~20)
N_BATCH = 512  # tokens per llama_decode (prompt fill and generation together)
# The sampler settings of `engine.stream_chat` / `Llama.create_completion` that playback uses.
TOP_K, TOP_P, MIN_P, TYPICAL_P, REPEAT_PENALTY, PENALTY_LAST_N = 40, 0.95, 0.05, 1.0, 1.1, 64


@dataclass
class _Slot:
    seq: int
    plan: dict | None = None
    k: int = 0  # attempt number
    kv: list[int] = field(default_factory=list)  # tokens this sequence holds in the KV cache, in order
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    out: list[int] = field(default_factory=list)  # generated tokens of this attempt
    sampler: object = None
    logit_at: int = -1  # index in the last batch whose logits this slot samples from


def generate_many(rows: Iterable[dict], *, model_path: str | Path, settings, idf: dict, user_name: str = "",
                  slots: int | None = None, used: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """Yield (row, result) for every row as soon as its instruction is final (not in input order).

    Results are what `playback.generate` returns for the same row; stop iterating at any time (the
    context is freed). `slots`: sequences decoded together (default: `fit_slots`), written to `used["slots"]`."""
    from .. import engine

    lib = engine.llama_cpp()
    llm = engine.load(model_path, n_ctx=settings.n_ctx, threads=settings.threads, gpu_layers=settings.gpu_layers,
                      merge=settings.merge_adapter, flash_attn=settings.flash_attention, prompt_bound=True)
    todo = iter(rows)
    fmt = _formatter(llm)

    def tokens(messages: list[dict]) -> list[int]:
        res = fmt(messages=messages)
        return llm.tokenize(res.prompt.encode("utf-8"), add_bos=not res.added_special, special=True)

    # The preamble: what the prompts of two different emails share (token by token, so BPE merges agree).
    prefix = _common(tokens(pb.prompt("Alpha.", "Ann")), tokens(pb.prompt("Beta!", "Bob")))
    stream = -(-(len(prefix) + PER_SLOT) // 256) * 256  # KV cells of each sequence
    if slots is None:  # no more than there are emails, when that is known
        slots = fit_slots(llm.metadata, stream, most=min(SLOTS, len(rows)) if isinstance(rows, Sized) else SLOTS)
    if used is not None:
        used["slots"] = slots
    n_ctx = (slots + 1) * stream
    ctx = _context(lib, llm, n_ctx, slots + 1, settings)
    batch = lib.llama_batch_init(N_BATCH, 0, 1)
    busy: list[_Slot] = []
    try:
        mem = lib.llama_get_memory(ctx.ctx)
        vocab = llm._model.vocab
        scratch = _Candidates(lib, llm.n_vocab())
        template = slots  # the preamble's own sequence id
        _decode_all(lib, ctx.ctx, batch, prefix, template)
        free = [_Slot(seq=i) for i in range(slots)]
        exhausted = False

        def start(s: _Slot, fresh: bool) -> None:
            a = pb.attempt(s.plan, s.k)
            want = tokens(a["messages"])
            have = prefix if fresh else s.kv
            keep = min(_lcp(have, want), len(want) - 1)  # at least one token to evaluate: its logits sample
            if fresh:
                lib.llama_memory_seq_rm(mem, s.seq, -1, -1)
                lib.llama_memory_seq_cp(mem, template, s.seq, -1, -1)  # one KV stream per sequence: whole copy
                lib.llama_memory_seq_rm(mem, s.seq, keep, -1)
            else:
                lib.llama_memory_seq_rm(mem, s.seq, keep, -1)
            if len(want) + pb.MAX_TOKENS > stream:
                raise RuntimeError(f"a playback prompt of {len(want)} tokens outgrew its {stream} KV cells")
            s.kv, s.pending, s.out = want[:keep], want[keep:], []
            if s.sampler is not None:
                s.sampler.close()
            s.sampler = _Sampler(lib, llm, a["grammar"], a["temperature"], a["seed"], scratch)

        while True:
            while free and not exhausted:  # fill free slots with the next emails
                row = next(todo, None)
                if row is None:
                    exhausted = True
                    break
                p = pb.plan(row, user_name)
                if p is None:
                    yield row, dict(pb.EMPTY)
                    continue
                if pb.ATTEMPTS <= 0:
                    yield row, pb.fallback(p, idf, user_name)
                    continue
                if len(tokens(pb.attempt(p, 0)["messages"])) + pb.MAX_TOKENS + HINT_ROOM > stream:
                    # A rare prompt longer than a slot (1,200 characters of an email can be ~1,000 tokens
                    # of digits or non-Latin text): the one-at-a-time path, which has the whole context.
                    yield row, pb.generate(row, model_path=model_path, settings=settings, idf=idf,
                                           user_name=user_name)
                    continue
                s = min(free, key=lambda f: f.seq)  # the lowest free id: the busy ones stay consecutive
                free.remove(s)
                s.plan, s.k = p, 0
                start(s, fresh=True)
                busy.append(s)
            if not busy:
                return
            _fill(lib, batch, busy)
            if lib.llama_decode(ctx.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed in batched playback (KV cache full?)")
            for s in [s for s in busy if s.logit_at >= 0]:
                tok = s.sampler.sample(ctx.ctx, s.logit_at)
                done = lib.llama_vocab_is_eog(vocab, tok)
                if not done:
                    s.out.append(tok)
                    done = len(s.out) >= pb.MAX_TOKENS or b"\n" in llm.detokenize([tok])
                if not done:
                    continue
                text = llm.detokenize(s.out).decode("utf-8", errors="ignore").split("\n")[0]
                res = pb.judge(s.plan, text, s.k, idf)
                s.k += 1
                if res is None and s.k < pb.ATTEMPTS:
                    start(s, fresh=False)
                    continue
                yield s.plan["row"], res if res is not None else pb.fallback(s.plan, idf, user_name)
                busy.remove(s)
                s.sampler.close()
                s.sampler = None
                free.append(s)
                _compact(lib, mem, busy, free)
    finally:
        for s in busy:  # an interrupted run: the slots still generating
            s.sampler.close()
        lib.llama_batch_free(batch)
        ctx.close()


def fit_slots(metadata: dict, stream: int, most: int = SLOTS) -> int:
    """Sequences to decode together: `most`, fewer where their KV streams (and the preamble's) of `stream`
    cells each would pass KV_BUDGET in F16, never fewer than MIN_SLOTS."""
    arch = metadata.get("general.architecture", "llama")
    try:
        layers, heads = int(metadata[f"{arch}.block_count"]), int(metadata[f"{arch}.attention.head_count"])
        kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", heads))
        head_dim = int(metadata.get(f"{arch}.attention.key_length") or int(metadata[f"{arch}.embedding_length"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a model that does not say: as many as before
        return min(most, MIN_SLOTS)
    cell = layers * 2 * kv_heads * head_dim * 2  # K and V, F16
    fits = KV_BUDGET // max(1, cell * stream) - 1  # one stream holds the preamble
    return max(min(most, MIN_SLOTS), min(most, fits))


def _compact(lib, mem, busy: list[_Slot], free: list[_Slot]) -> None:
    """Keep the busy sequences on the lowest ids. Over separate KV streams llama.cpp computes each run of
    consecutive sequence ids apart, so the gap a finished email leaves costs a pass over all the weights every
    step until it is filled (Qwen2.5-0.5B Q4_K_M, 8 sequences generating on ids 0-7: 86 ms a step; on the even
    ids: 161 ms). The highest busy sequence moves into the lowest free id: its KV stream is copied whole (a few
    MB, at the next decode) and the two slots swap ids."""
    while busy and free:
        low = min(free, key=lambda f: f.seq)
        high = max(busy, key=lambda b: b.seq)
        if low.seq > high.seq:
            return
        lib.llama_memory_seq_cp(mem, high.seq, low.seq, -1, -1)
        lib.llama_memory_seq_rm(mem, high.seq, -1, -1)
        low.seq, high.seq = high.seq, low.seq


def _fill(lib, batch, busy: list[_Slot]) -> None:
    """One decode's tokens: the last sampled token of every generating slot, then prompt tokens up to N_BATCH."""
    n = 0

    def put(s: _Slot, tok: int, logits: bool) -> None:
        nonlocal n
        batch.token[n] = tok
        batch.pos[n] = len(s.kv)
        batch.n_seq_id[n] = 1
        batch.seq_id[n][0] = s.seq
        batch.logits[n] = logits
        s.kv.append(tok)
        if logits:
            s.logit_at = n
        n += 1

    # In the order of their sequence ids: llama.cpp splits a batch over separate KV streams into one compute
    # per run of consecutive ids, so 16 generating sequences in shuffled order cost 2.3x one ordered step.
    busy = sorted(busy, key=lambda s: s.seq)
    for s in busy:
        s.logit_at = -1
        if not s.pending and s.out:  # generating: feed back its last token
            put(s, s.out[-1], True)
    # Prompts whole, one after another, up to N_BATCH. Over separate KV streams llama.cpp cuts a batch into
    # equal shares per sequence, so unequal prompts in one decode make several smaller computes; still, 120
    # emails took 45.6 s this way against 48.0 s with one prompt a decode and 55.5 s with equal shares of each.
    for s in busy:
        while s.pending and n < N_BATCH:
            put(s, s.pending.pop(0), not s.pending)
    batch.n_tokens = n


def _decode_all(lib, ctx, batch, tokens: list[int], seq: int) -> None:
    for i in range(0, len(tokens), N_BATCH):
        chunk = tokens[i:i + N_BATCH]
        for j, tok in enumerate(chunk):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, i + j, 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = False
        batch.n_tokens = len(chunk)
        if lib.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed on the playback preamble")


def _context(lib, llm, n_ctx: int, n_seq: int, settings):
    """A second context on the already loaded weights: `n_seq` sequences over one unified KV cache."""
    from llama_cpp import _internals

    from .. import engine

    # The one-at-a-time context's own parameters (flash attention, RoPE settings): same arithmetic.
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = N_BATCH
    params.n_seq_max = n_seq
    params.kv_unified = UNIFIED
    threads = settings.threads or engine.physical_cores()
    params.n_threads = params.n_threads_batch = threads
    return _internals.LlamaContext(model=llm._model, params=params, verbose=False)


class _Sampler:
    """One sequence's sampling: the chain `Llama._init_sampler` builds for playback's settings (repeat
    penalty, then greedy or top-k/typical/top-p/min-p/temperature/seeded dist) and its own grammar.

    The grammar sampler costs about as much as a decode step when it filters the whole vocabulary
    (measured: 22.5 ms a token with it, 13.1 without), and inside the sentence nearly every token is
    allowed. So, as llama.cpp's own `common_sampler` does, the chain draws first and the grammar checks
    the one token drawn; only a rejected token makes the grammar filter the vocabulary and the chain draw
    again. Every token still satisfies the grammar, and a greedy draw is exactly the filtered argmax."""

    def __init__(self, lib, llm, grammar: str, temperature: float, seed: int, scratch):
        from llama_cpp import _internals

        self.lib, self.scratch = lib, scratch
        self.greedy = temperature == 0.0
        self.chain = _internals.LlamaSampler()
        self.chain.add_penalties(n_vocab=llm.n_vocab(), penalty_last_n=PENALTY_LAST_N,
                                 penalty_repeat=REPEAT_PENALTY, penalty_freq=0.0, penalty_present=0.0)
        if temperature == 0.0:
            self.chain.add_greedy()
        else:
            self.chain.add_top_k(TOP_K)
            self.chain.add_typical(TYPICAL_P, 1)
            self.chain.add_top_p(TOP_P, 1)
            self.chain.add_min_p(MIN_P, 1)
            self.chain.add_temp(temperature)
            self.chain.add_dist(seed)
        self.window: collections.deque[int] = collections.deque(maxlen=PENALTY_LAST_N)  # the chain's penalty window
        self.grammar = lib.llama_sampler_init_grammar(llm._model.vocab, grammar.encode("utf-8"), b"root")
        if not self.grammar:
            raise ValueError(f"llama.cpp rejected the playback grammar: {grammar!r}")

    def sample(self, ctx, i: int) -> int:
        lib, arr = self.lib, self.scratch
        if self.greedy:
            # The greedy chain in numpy: the repeat penalty on the few tokens of the window, then the first
            # highest logit (what the C chain computes by visiting the whole vocabulary: 0.46 ms a token)
            logits = arr.penalised(lib.llama_get_logits_ith(ctx, i), self.window)
            tok = int(logits.argmax())
            if not arr.allows(self.grammar, tok):
                tok = arr.best_allowed(self.grammar, logits)  # what filtering all of them picks
            if tok is None:
                tok = self._filtered(ctx, i)
        else:
            arr.load(lib.llama_get_logits_ith(ctx, i))
            lib.llama_sampler_apply(self.chain.sampler, arr.ref)
            tok = arr.selected()
            if not arr.allows(self.grammar, tok):
                tok = self._filtered(ctx, i)
        lib.llama_sampler_accept(self.chain.sampler, tok)
        lib.llama_sampler_accept(self.grammar, tok)
        self.window.append(tok)
        return tok

    def _filtered(self, ctx, i: int) -> int:
        """The chain's draw after the grammar filtered the whole vocabulary."""
        lib, arr = self.lib, self.scratch
        arr.load(lib.llama_get_logits_ith(ctx, i))
        lib.llama_sampler_apply(self.grammar, arr.ref)
        lib.llama_sampler_apply(self.chain.sampler, arr.ref)
        return arr.selected()

    def close(self) -> None:
        self.chain.close()
        if self.grammar:
            self.lib.llama_sampler_free(self.grammar)
            self.grammar = None


class _Candidates:
    """A reusable llama_token_data_array over the whole vocabulary (numpy-backed), and a one-token one."""

    def __init__(self, lib, n_vocab: int):
        import numpy as np

        self.np, self.n = np, n_vocab
        self.data = np.zeros(n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.logits = np.zeros(n_vocab, dtype=np.float32)
        self.penalty = np.float32(REPEAT_PENALTY)
        ptr = ctypes.cast(self.data.ctypes.data, lib.llama_token_data_p)
        self.arr = lib.llama_token_data_array(data=ptr, size=n_vocab, selected=-1, sorted=False)
        self.ref = ctypes.byref(self.arr)
        self.one = (lib.llama_token_data * 1)()
        self.one_arr = lib.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)

    def load(self, logits_ptr) -> None:
        self.data["id"] = self.ids
        self.data["logit"] = self.np.ctypeslib.as_array(logits_ptr, shape=(self.n,))
        self.data["p"] = 0.0
        self.arr.size, self.arr.selected, self.arr.sorted = self.n, -1, False

    def penalised(self, logits_ptr, window) -> object:
        """The logits with llama.cpp's repeat penalty (`penalty_repeat` only, as playback sets it) applied to
        the tokens in `window`: a logit <= 0 times the penalty, above 0 divided by it, in float32 as in C."""
        np, out = self.np, self.logits
        np.copyto(out, np.ctypeslib.as_array(logits_ptr, shape=(self.n,)))
        if window:
            seen = np.fromiter(set(window), dtype=np.int64)
            v = out[seen]
            out[seen] = np.where(v <= 0, v * self.penalty, v / self.penalty)
        return out

    def selected(self) -> int:
        return int(self.data["id"][self.arr.selected])

    def best_allowed(self, grammar, logits, top: int = 64) -> int | None:
        """The token of highest logit among the `top` highest of `logits` (ids are positions) that `grammar`
        allows, None if it allows none of them. Filtering the whole vocabulary through a grammar costs ~5 ms;
        a greedy draw needs only the best allowed one."""
        np = self.np
        head = np.argpartition(-logits, top)[:top]
        for j in head[np.lexsort((head, -logits[head]))]:  # ties: the lower index first, as greedy does
            if self.allows(grammar, int(j)):
                return int(j)
        return None

    def allows(self, grammar, tok: int) -> bool:
        self.one[0].id, self.one[0].logit, self.one[0].p = tok, 1.0, 0.0
        self.one_arr.size, self.one_arr.selected, self.one_arr.sorted = 1, -1, False
        from .. import engine

        engine.llama_cpp().llama_sampler_apply(grammar, ctypes.byref(self.one_arr))
        return self.one[0].logit != float("-inf")


def _formatter(llm):
    """The chat formatter llama-cpp-python builds from the GGUF's template (`chat_template.default`)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                               eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                               bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
                               stop_token_ids=[eos])


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common(a: list[int], b: list[int]) -> list[int]:
    return a[:_lcp(a, b)]
