"""The llama-cpp-python wrapper: one loaded model reused across calls, streaming first.

`stream_chat` yields text pieces; `chat` collects them. The chat template comes from the GGUF. Consecutive
calls that share a prompt prefix (the system preamble, retrieved examples) reuse llama.cpp's KV cache:
llama-cpp-python keeps the last evaluated tokens and only evaluates the part after the longest common
prefix, so one model object must serve every call, which `load` guarantees.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterError, ModelNotFound

log = logging.getLogger(__name__)

_MODELS: OrderedDict[tuple, object] = OrderedDict()
_MAX_LOADED = 2  # base + one adapter (eval compares both); more would multiply RAM for little gain
_LOCK = threading.RLock()  # a llama.cpp context is not thread-safe: one generation at a time
_IMPORT_LOCK = threading.Lock()


def _close_all_at_exit() -> None:
    # Free models before interpreter teardown, when llama_cpp's __del__ would find its globals gone.
    with contextlib.suppress(Exception):
        _MODELS.clear()


atexit.register(_close_all_at_exit)


def physical_cores() -> int:
    """Threads to use when the setting says auto: physical cores, at least 1."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover
        n = None
    return max(1, n or os.cpu_count() or 1)


def _quiet_env() -> None:
    os.environ.setdefault("LLAMA_LOG_LEVEL", "error")


def llama_cpp():
    """The llama_cpp module, imported the first time with OpenMP told to spin only briefly (see OMP_ENV)."""
    import sys

    with _IMPORT_LOCK:  # another thread may be importing it: `import` waits for that one to finish
        if "llama_cpp" in sys.modules:
            import llama_cpp as mod

            return mod
        return _import_llama_cpp()


# How long an OpenMP thread of llama.cpp's CPU backend spins at a barrier before it sleeps (GNU OpenMP's
# GOMP_SPINCOUNT, in loop iterations); a token has hundreds of barriers. The default (300k iterations) lets a
# waiting thread take the core from the one it waits for when the cores are shared (a browser, an editor, the
# TUI). Not spinning at all (OMP_WAIT_POLICY=PASSIVE, what this set before) sends every barrier through a futex
# sleep and wake, which made decoding several times slower on idle cores, in drafts and in playback's batched
# steps alike. A thousand iterations (microseconds) decodes as fast as spinning when idle and stays near passive
# waiting with busy loops on the cores: bench/omp_wait.py measures all three (bench/results/omp_wait.md).
OMP_ENV = {"GOMP_SPINCOUNT": "1000"}


def _import_llama_cpp():
    _quiet_env()
    # The library reads the variable once, when it is loaded, so it is set for that import only; a value the
    # user set (GOMP_SPINCOUNT or OMP_WAIT_POLICY) wins.
    set_here = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
    if set_here:
        os.environ.update(OMP_ENV)
    try:
        import llama_cpp as mod
    finally:
        if set_here:
            for k in OMP_ENV:
                os.environ.pop(k, None)
    return mod


@dataclass
class Stats:
    """Timing of one generation (what the TUI side panel and benchmarks show): pass one to `stream_chat`
    as `stats=` and it is filled in as the stream runs; the stream also returns it."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Of the prompt tokens, those already in the model's KV cache (a shared prefix, or a prefill)."""
    completion_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        gen = self.total_s - self.ttft_s
        return self.completion_tokens / gen if gen > 0 else 0.0



def load(model_path: str | Path, lora_path: str | Path | None = None, *, n_ctx: int = 4096,
         threads: int = 0, gpu_layers: int = 0, logits_all: bool = False, disk_prefix: bool = False,
         merge: bool = False, flash_attn: bool = True, prompt_bound: bool = False):
    """Return the llama_cpp.Llama for this (model, adapter, context, threads), loading it once.

    `merge`: load the serving copy where that is faster on this machine (serving.py: CPU, a Q4_1/Q5_1 base):
    the base with the adapter merged in (built the first time, a few seconds), or with no adapter the base
    alone once playback has built it; `prompt_bound` (playback): a base with fast kernels loads its BF16 copy
    when playback has built it (serving.prompt_copy_worth_it).

    `disk_prefix`: a fresh load starts from the last draft's KV cache on disk and saves its own after each
    generation (prefix_cache: what lets a cold `panza draft` skip the prompt prefix drafts share).

    `flash_attn`: llama.cpp's fused attention kernel (settings.flash_attention), for generation: on CPU it
    evaluates a draft's prompt faster at the same decode speed (bench/results/draft.md). Its products run in
    half precision, so scoring (target_nll, next_token_logits) keeps the exact path: adapters compared across
    re-tunes are scored the same way as before."""
    model_path = Path(model_path)
    if not model_path.exists():
        raise ModelNotFound(f"model file {model_path} does not exist", fix="panza models list")
    if lora_path is not None and not Path(lora_path).exists():
        raise AdapterError(f"adapter file {lora_path} does not exist", fix="panza adapters list")
    from . import serving

    if serving.applies(merge, gpu_layers):
        # an adapter's copy is built on first use; the base's alone only by a long job (playback.run), so a
        # short one (a draft in a new home) never waits for it, and uses it once it is there
        model_path, lora_path = serving.resolve(model_path, lora_path, build=lora_path is not None,
                                              prompt_bound=prompt_bound)
    threads = threads or physical_cores()
    key = (str(model_path), str(lora_path or ""), n_ctx, threads, gpu_layers, logits_all, flash_attn)
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
        lib = llama_cpp()
        kwargs = {"model_path": str(model_path), "n_ctx": n_ctx, "n_threads": threads, "n_threads_batch": threads,
                  "n_gpu_layers": gpu_layers, "verbose": False, "logits_all": logits_all, "flash_attn": flash_attn}
        runtime_lora = bool(lora_path) and _can_attach_lora(lib)
        if lora_path and not runtime_lora:
            kwargs["lora_path"] = str(lora_path)
        try:
            with QUIET_LOAD:  # llama-cpp-python redirects fds 1 and 2 while it loads (see QUIET_LOAD)
                llm = lib.Llama(**kwargs)
            if runtime_lora:
                with quiet_native():  # llama.cpp notes each tensor it cannot repack for this CPU
                    _attach_lora(lib, llm, Path(lora_path))
        except (ValueError, RuntimeError) as exc:
            what = "adapter" if lora_path else "model"
            raise (AdapterError if lora_path else ModelNotFound)(
                f"llama.cpp could not load the {what} ({model_path}{', ' + str(lora_path) if lora_path else ''}): {exc}",
                fix="check the file with `panza doctor`; an adapter must be exported for this exact base model",
            ) from None
        if disk_prefix:
            from . import prefix_cache

            llm._panza_prefix = prefix_cache.path_for(model_path, lora_path, n_ctx,
                                                      f"{lib.__version__}{'-fa' if flash_attn else ''}")
            prefix_cache.restore(lib, llm, llm._panza_prefix)
        _MODELS[key] = llm
        while len(_MODELS) > _MAX_LOADED:
            _MODELS.popitem(last=False)
        return llm


def _can_attach_lora(lib) -> bool:
    return all(hasattr(lib, f) for f in ("llama_adapter_lora_init", "llama_set_adapters_lora",
                                         "llama_adapter_lora_free", "llama_adapter_lora_p_ctypes"))


def _attach_lora(lib, llm, lora_path: Path) -> None:
    """Apply a LoRA GGUF to a loaded model's context at run time.

    `Llama(lora_path=...)` turns memory-mapping off for the base model (a rule from when llama.cpp merged
    adapters into the weights), so every adapter draft first copied the whole base GGUF into memory, a
    cost that grows with the model (the 98 MB embedded one: 2.7 s with `lora_path=` vs 1.7 s mapped, base
    + adapter, medians of 5 on busy cores). llama.cpp applies adapters at run time now, so the base stays
    mapped and the adapter costs only its own small file. Same calls, order and scale as llama-cpp-python's
    own code path, and the same logits (tests/test_coldstart.py).
    """
    import ctypes

    adapter = lib.llama_adapter_lora_init(llm._model.model, str(lora_path).encode("utf-8"))
    if not adapter:
        raise RuntimeError(f"llama.cpp rejected the adapter {lora_path}")
    llm._stack.callback(lib.llama_adapter_lora_free, adapter)  # freed before the context and model
    llm._lora_adapter, llm.lora_path = adapter, str(lora_path)
    adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter)
    if lib.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, (ctypes.c_float * 1)(llm.lora_scale)):
        raise RuntimeError(f"llama.cpp could not apply the adapter {lora_path}")


def preload(settings=None, *, adapter: bool = True) -> threading.Thread:
    """Start loading the active model (and the current adapter) in a background thread, so a cold draft's
    retrieval and prompt building overlap it; the `load` that follows waits for it (same key, same lock).
    The model starts from the last draft's KV cache on disk (`load(disk_prefix=True)`)."""

    def work() -> None:
        try:
            model_path, s = default_model(settings)
            if s.engine_url:  # a server generates (remote.py): nothing to load here
                return
            lora = None
            if adapter:
                from .train import registry

                lora = registry.adapter_for(s).gguf
            load(model_path, lora, n_ctx=s.n_ctx, threads=s.threads, gpu_layers=s.gpu_layers, disk_prefix=True,
                 merge=s.merge_adapter, flash_attn=s.flash_attention)
        except Exception as exc:  # noqa: BLE001 - the foreground load raises the real error with its fix
            log.debug("preload failed (%s: %s)", type(exc).__name__, exc)

    thread = threading.Thread(target=work, name="panza-preload", daemon=True)
    thread.start()
    return thread


def unload_all() -> None:
    """Drop every loaded model (frees RAM; the next call reloads)."""
    with _LOCK:
        _MODELS.clear()


def default_model(settings=None):
    """(model_path, settings) for the active base model from the settings."""
    from . import catalogue, config

    settings = settings or config.load()
    if settings.engine_url:  # generation runs on a server (remote.py): the model need not be on this machine
        from . import remote

        return remote.model_path(settings), settings
    return catalogue.resolve(settings.model), settings


def stream_chat(messages: list[dict], *, model_path: str | Path | None = None, lora_path: str | Path | None = None,
                max_tokens: int | None = None, temperature: float | None = None, stop: list[str] | None = None,
                seed: int | None = None, grammar: str | None = None, top_p: float = 0.95,
                repeat_penalty: float = 1.1, settings=None, stats: Stats | None = None,
                banned_words: list[str] | None = None, prefix: str = "") -> Iterator[str]:
    """Yield the assistant's reply to `messages` piece by piece (chat template from the GGUF).

    `prefix`: the reply's first words, already decided (the user's greeting, `prompts.opening`): evaluated
    with the prompt and not yielded, the model writes on from there; `max_tokens` counts them. A remote engine
    (OpenAI's API has no such field) gets no prefix: it writes the reply whole.

    `stats` (optional) is filled with this generation's token counts and timings; the generator's return
    value is the same Stats. `banned_words`: words the reply should not contain: their one-token spellings
    (with and without a leading space) get a -100 logit bias, so in prose the model picks another word (it
    can still spell one in pieces when set on it); a remote engine does not take them.
    """
    from . import config

    settings = settings or config.load()
    if settings.engine_url:  # an OpenAI-compatible server holds the model and the adapter (remote.py)
        from . import remote

        return (yield from remote.stream_chat(
            messages, settings=settings, max_tokens=max_tokens if max_tokens is not None else settings.max_tokens,
            temperature=settings.temperature if temperature is None else temperature, stop=stop or [],
            seed=settings.seed if seed is None else seed, top_p=top_p, repeat_penalty=repeat_penalty,
            grammar=grammar, stats=stats))
    if model_path is None:
        model_path, _ = default_model(settings)
    llm = load(model_path, lora_path, n_ctx=settings.n_ctx, threads=settings.threads, gpu_layers=settings.gpu_layers,
               merge=settings.merge_adapter, flash_attn=settings.flash_attention)
    kwargs = {"messages": messages, "stream": True,
              "max_tokens": max_tokens if max_tokens is not None else settings.max_tokens,
              "temperature": settings.temperature if temperature is None else temperature,
              "top_p": top_p, "repeat_penalty": repeat_penalty, "stop": stop or []}
    use_seed = settings.seed if seed is None else seed
    if use_seed is not None and use_seed >= 0:
        kwargs["seed"] = use_seed
    if banned_words:
        kwargs["logit_bias"] = {t: -100.0 for t in single_tokens(llm, banned_words)}
    if grammar:
        with quiet_native():
            kwargs["grammar"] = llama_cpp().LlamaGrammar.from_string(grammar, verbose=False)
    stats = stats if stats is not None else Stats()
    t0 = time.perf_counter()
    with _LOCK:
        before = llm._input_ids[:llm.n_tokens].copy()  # what the KV cache holds: the prompt's reused prefix
        if prefix:  # the chat handler's own prompt tokens, then the reply's given start
            from . import fit

            given = prefix_tokens(llm, prefix)
            kwargs["max_tokens"] = max(1, kwargs["max_tokens"] - len(given))
            prompt = fit.chat_tokens(kwargs.pop("messages"), llm) + given
            n_prompt = len(prompt)
            chunks = llm.create_completion(prompt, **kwargs)
        else:
            n_prompt = None  # what the chat handler evaluates: counted from the KV cache below
            chunks = llm.create_chat_completion(**kwargs)
        for chunk in chunks:
            choice = chunk["choices"][0]
            delta = choice.get("text") if prefix else choice.get("delta", {}).get("content")
            if delta:
                if not stats.completion_tokens:
                    stats.ttft_s = time.perf_counter() - t0
                stats.completion_tokens += 1
                yield delta
        stats.total_s = time.perf_counter() - t0
        stats.prompt_tokens = n_prompt or llm.n_tokens - stats.completion_tokens
        stats.cached_tokens = _cached(before, llm._input_ids[:stats.prompt_tokens])
        if getattr(llm, "_panza_prefix", None):  # a cold process's model: the next one starts from here
            from . import prefix_cache

            prefix_cache.save(llama_cpp(), llm, llm._panza_prefix)
    return stats


def prefix_tokens(llm, prefix: str) -> list[int]:
    """`prefix`'s tokens as they stand before the body's first word: "Hi Ann,\\n\\n" tokenized on its own
    can merge its line breaks into one token that the model never saw before a word (SmolLM2's "\\n\\n"), so
    it is tokenized with a word after it and that word's tokens dropped. No prefix: no tokens."""
    if not prefix:
        return []
    word = b"I"
    ids = llm.tokenize(prefix.encode("utf-8") + word, add_bos=False, special=False)
    tail = llm.tokenize(word, add_bos=False, special=False)
    if len(ids) > len(tail) and ids[-len(tail):] == tail:
        return ids[:-len(tail)]
    return llm.tokenize(prefix.encode("utf-8"), add_bos=False, special=False)  # pragma: no cover - merged


def prompt_tokens(messages: list[dict], llm, prefix: str = "") -> list[int]:
    """The tokens `stream_chat(messages, prefix=prefix)` evaluates before it generates: the chat handler's own
    (`fit.chat_tokens`), then the prefix's. `llm`: a loaded model, or a model path (its tokenizer from
    `fit.vocab`: what a benchmark hands llama-cpp-python to compare like with like)."""
    from . import fit

    if isinstance(llm, (str, Path)):
        llm = fit.vocab(llm)
    return fit.chat_tokens(messages, llm) + prefix_tokens(llm, prefix)


def single_tokens(llm, words: list[str]) -> set[int]:
    """The ids of `words` (and of " word") that this model's vocabulary holds as one token each."""
    out = set()
    for w in words:
        for variant in (w, " " + w):
            ids = llm.tokenize(variant.encode("utf-8"), add_bos=False, special=False)
            if len(ids) == 1:
                out.add(ids[0])
    return out


def _cached(cache, tokens) -> int:
    """How many of `tokens` the KV cache holding `cache` already has (their common prefix: what
    llama-cpp-python reuses rather than evaluates)."""
    import numpy as np  # loaded already: llama_cpp imports it

    n = min(len(cache), len(tokens))
    differ = (np.asarray(cache[:n]) != np.asarray(tokens[:n])).nonzero()[0]
    return int(differ[0]) if len(differ) else n


def prefill(messages: list[dict], *, model_path: str | Path | None = None, lora_path: str | Path | None = None,
            settings=None, prefix: str = "") -> int:
    """Evaluate the prompt of `messages` into the model's KV cache now, generating nothing worth keeping, so
    that a generation whose prompt starts the same way evaluates only the rest (the TUI calls it while the
    user is still typing). `prefix`: the reply's given start, as `stream_chat` takes it. Returns the prompt
    tokens evaluated now (0: already cached). A remote engine does nothing."""
    from . import config

    settings = settings or config.load()
    if settings.engine_url:
        return 0
    if model_path is None:
        model_path, _ = default_model(settings)
    llm = load(model_path, lora_path, n_ctx=settings.n_ctx, threads=settings.threads, gpu_layers=settings.gpu_layers,
               merge=settings.merge_adapter, flash_attn=settings.flash_attention)
    with _LOCK:
        tokens = prompt_tokens(messages, llm, prefix)
        cached = _cached(llm._input_ids[:llm.n_tokens], tokens)
        if cached >= len(tokens) - 1:
            return 0
        # one greedy token: llama-cpp-python's own prefix reuse evaluates only what is not cached yet
        llm.create_completion(tokens, max_tokens=1, temperature=0.0)
        return len(tokens) - cached


def chat(messages: list[dict], **kwargs) -> str:
    """The whole reply to `messages` (collects `stream_chat`)."""
    return "".join(stream_chat(messages, **kwargs))


def next_token_logits(prompt: str, model_path: str | Path, lora_path: str | Path | None = None,
                      n_ctx: int = 512, threads: int = 0):
    """Logits (numpy, vocab-sized) for the token after `prompt`: used by adapter parity tests."""
    import numpy as np

    llm = load(model_path, lora_path, n_ctx=n_ctx, threads=threads, logits_all=True, flash_attn=False)
    with _LOCK:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(tokens)
        return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def system_info() -> str:
    """llama.cpp's build/CPU feature line."""
    return llama_cpp().llama_print_system_info().decode()


# llama.cpp writes to fds 1 and 2 from C, so it is silenced by pointing them at /dev/null and back (llama-cpp-python
# does so around every load). Two threads doing that at once (a draft's model preload beside a vocab-only load
# for counting tokens) can each restore the other's /dev/null and leave the process's stdout there for good: a
# draft that prints nothing and exits 0. Every redirect and every load holds this lock.
QUIET_LOAD = threading.Lock()


@contextlib.contextmanager
def quiet_native():
    """Silence llama.cpp for one call: its C code writes to fd 2, llama-cpp-python's log hook to sys.stderr."""
    import io

    with QUIET_LOAD:
        try:
            fd = os.dup(2)
        except OSError:  # pragma: no cover
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)
            os.close(devnull)


def render_chat(messages: list[dict], model_path: str | Path, add_generation_prompt: bool = True) -> str:
    """The prompt text llama.cpp builds for `messages` from the GGUF's own chat template."""
    llama_cpp()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load(model_path, n_ctx=512)
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        raise ModelNotFound(f"{model_path} has no chat template", fix="use an instruction-tuned model")
    eos = llm.detokenize([llm.token_eos()]).decode("utf-8", errors="replace")
    bos = llm.detokenize([llm.token_bos()]).decode("utf-8", errors="replace")
    fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                              add_generation_prompt=add_generation_prompt)
    return fmt(messages=messages).prompt


def target_nll(messages: list[dict], target: str, model_path: str | Path, lora_path: str | Path | None = None,
               n_ctx: int = 1024, threads: int = 0) -> tuple[float, int]:
    """Summed negative log-likelihood of `target` as the assistant's reply to `messages`, and its token count.

    Scored by llama.cpp on the exact bits that serve (base GGUF + adapter GGUF), so re-tuning compares
    adapters the way users will see them. Long prompts are cut from the left to fit `n_ctx`. Only the
    target's positions produce logits (the output layer is a fifth of the embedded model's work per token),
    and the prompt prefix the previous call left in the KV cache (system prompt, profile block) is kept.
    """
    import numpy as np

    prompt = render_chat(messages, model_path)
    llm = load(model_path, lora_path, n_ctx=n_ctx, threads=threads, flash_attn=False)
    lib = llama_cpp()
    with _LOCK:
        p_tok = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        t_tok = llm.tokenize(target.encode("utf-8"), add_bos=False, special=False) + [llm.token_eos()]
        t_tok = t_tok[: n_ctx // 2]
        p_tok = p_tok[-(n_ctx - len(t_tok)):]
        tokens = p_tok + t_tok
        start = len(p_tok) - 1  # logits at position i predict token i+1
        cached = llm.input_ids[:llm.n_tokens].tolist()
        keep = 0
        while keep < min(len(cached), start) and cached[keep] == tokens[keep]:
            keep += 1
        # Llama's own bookkeeping stays true: input_ids[:n_tokens] is what the KV cache holds
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.n_tokens = keep
        rows, batch, ctx = [], llm._batch.batch, llm._ctx.ctx
        for i in range(keep, len(tokens), llm.n_batch):
            chunk = tokens[i:i + llm.n_batch]
            for j, tok in enumerate(chunk):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, i + j, 1
                batch.seq_id[j][0] = 0
                batch.logits[j] = start <= i + j < start + len(t_tok)
            batch.n_tokens = len(chunk)
            if lib.llama_decode(ctx, batch) != 0:
                llm.n_tokens = 0
                raise RuntimeError("llama_decode failed while scoring a held-out email")
            rows += [np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, j), shape=(llm.n_vocab(),)).astype(np.float64)
                     for j in range(len(chunk)) if batch.logits[j]]
            llm.input_ids[i:i + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
    logits = np.stack(rows)
    logits = logits - logits.max(axis=1, keepdims=True)
    logp = logits[np.arange(len(t_tok)), t_tok] - np.log(np.exp(logits).sum(axis=1))
    return float(-logp.sum()), len(t_tok)
