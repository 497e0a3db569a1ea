"""The last draft's KV cache on disk, so a cold `panza draft` skips the prompt prefix it shares with it.

A warm engine (serve, TUI) already evaluates only what follows the longest prefix a prompt shares with the
previous one. A `panza draft` process (a mail-client filter, a script) starts with an empty context and
evaluates the whole prompt, though the system text and the profile block in front of it are the same
every time (83 of ~370 tokens for the sample person; more when the recipient, and so the first retrieved
emails, repeat). Prompt evaluation is most of a cold draft's time on a small CPU, so the CLI's engine
saves the context's KV cells with their tokens after each draft, and loads them when it next starts;
llama-cpp-python then keeps the shared prefix and evaluates the rest, as in a warm process.

One file per (base model, adapter, context size, llama.cpp version), written atomically in the home's
cache folder (private like the rest of the home: it is derived from the user's mail). A file llama.cpp
rejects is deleted and the draft evaluates its prompt as usual.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
KEEP = 4  # files kept (models x adapters in use); older ones are removed


def _stamp(p: str | Path | None) -> str:
    if not p:
        return "-"
    st = Path(p).stat()
    return f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def path_for(model_path: str | Path, lora_path: str | Path | None, n_ctx: int, version: str) -> Path:
    """Where the prefix of this (model, adapter, context size, llama.cpp version) is kept."""
    from . import paths

    key = "|".join([_stamp(model_path), _stamp(lora_path), str(n_ctx), version])
    return paths.subdir("cache") / "kv" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.kv"


def restore(lib, llm, path: Path) -> int:
    """Load the saved KV cells and tokens into an empty context; the number of tokens restored."""
    if llm.n_tokens or not path.exists():
        return 0
    cap = llm.n_ctx()
    tokens = (lib.llama_token * cap)()
    n = ctypes.c_size_t(0)
    if not lib.llama_state_seq_load_file(llm._ctx.ctx, str(path).encode(), 0, tokens, cap, ctypes.byref(n)):
        log.info("prompt cache %s not usable by this build: removed", path.name)
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)  # nothing half-loaded stays
        path.unlink(missing_ok=True)
        return 0
    count = int(n.value)
    llm.input_ids[:count] = tokens[:count]
    llm.n_tokens = count
    return count


def save(lib, llm, path: Path) -> None:
    """Write the context's evaluated tokens and their KV cells (atomically; a failure only logs)."""
    count = int(llm.n_tokens)
    if count <= 0:
        return
    from . import paths

    paths.ensure_dir(path.parent)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tokens = (lib.llama_token * count)(*[int(t) for t in llm.input_ids[:count]])
    try:
        if not lib.llama_state_seq_save_file(llm._ctx.ctx, str(tmp).encode(), 0, tokens, count):
            raise OSError("llama.cpp could not write it")
        tmp.chmod(0o600)  # derived from the user's mail, whatever the caller's umask
        os.replace(tmp, path)
    except OSError as exc:
        log.info("prompt cache not saved (%s)", exc)
        tmp.unlink(missing_ok=True)
        return
    old = sorted(path.parent.glob("*.kv"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]
    for p in old:
        p.unlink(missing_ok=True)
