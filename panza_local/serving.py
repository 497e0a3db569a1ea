"""The serving copy: the base model with the adapter merged in, in a block type this CPU evaluates prompts fast.

A draft's time to its first token is prompt evaluation (a few hundred tokens: the profile, three retrieved
emails as earlier chat turns, the instruction). The embedded model ships in Q4_1, a block type without
llama.cpp's fast CPU matrix kernels (no sgemm or repacked path for the `_1` types), and a LoRA applied at run
time adds two small matrix products per projection. So for a base whose file type is Q4_1 or Q5_1, the
adapter is merged into a copy of the base whose projections are in a type this CPU multiplies fast: BF16
where llama.cpp has the CPU's BF16 dot products (AVX512_BF16), Q8_0 elsewhere (`copy_type`). Faster prompt
evaluation, slightly slower decoding (figures: bench/results/draft.md, `python -m bench.draft`, rows "runtime
adapter" and "serve, Q8_0 copy" beside the default). On the embedded model, 2 threads of an AMD EPYC with
AVX512_BF16, fused attention: 450 prompt tokens in 0.44 s on BF16, 0.60 on Q8_0, 1.22 on the shipped Q4_1;
a token decoded in 9.1, 6.6 and 7.3 ms (bench/results/copy_types.md, `python -m bench.copy_types`; the BF16
file is 1.7x the Q8_0 one, 244 MB).

Why not a 4-bit type: re-quantizing a 4-bit base to 4 bits again drowns the adapter's change in rounding,
while Q8_0's step is a small fraction of Q4_1's and BF16 rounds each weight to 3 significant digits; both keep
it (tests/test_serving.py checks the adapter's effect survives in either, against llama.cpp applying the same
adapter at run time). Only small bases are copied: a copy is larger than the 4-bit base, and larger models
decode memory-bound, where the bigger file would cost more on every token than it saves on the prompt.

The copy lives beside its adapter (`adapters/ID/adapter.serve-bf16.gguf` or `.serve-q8_0.gguf`, with a JSON
sidecar naming the exact base and adapter files it came from and its type), is written atomically, rebuilt
when either input changes or the type this machine uses is another, built when an
adapter starts serving (registry.use) or else on first use, dropped when another adapter takes over, and
loaded by every path that loads an adapter through `engine.stream_chat`: draft, chat, serve, the TUI and
eval (which therefore scores what is served). `merge_adapter = false` turns it off.

The base alone has a copy too (`cache/serving/BASE.serve-TYPE.gguf`): playback is prompt evaluation above
all (each email read once, a one-sentence answer), so `playback.run` builds it before a job long enough to
repay the build (`playback.BASE_COPY_AT` emails) and plays back on it; from then on whatever loads the base
without an adapter (stock drafts, chat, eval's stock rows) loads the copy. A short job never waits for it.
Scoring (`target_nll`, the re-tune gate) keeps the shipped file either way.

A base of a type with fast kernels (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0) gets no copy for drafts, but playback has
one of its own where the CPU has BF16 dot products (`resolve(prompt_bound=True)`, named `BASE-prompt.serve-bf16`):
on Qwen2.5-0.5B Q4_K_M, 2 threads with AVX512_BF16, 100 prompt tokens take 291 ms in BF16 against 443 ms, a
decode step of 16 sequences 106 against 136 ms, but one sequence's token 30 against 19 ms (the file read
per token): faster for playback, slower for a draft, which therefore never loads it. A Q8_0 copy evaluates the
prompt no faster (419 ms), so CPUs without BF16 make none. llama.cpp's own quantizer writes it: every weight of
the layers dequantized and stored as BF16; the two vocabulary matrices (token_embd, output: 272M of the 0.5B
model's 494M weights) keep their shipped blocks byte for byte, since a prompt reads a row of the one per token and
multiplies by the other only for the few tokens that are sampled (`PROMPT_KEEP`). Bases larger than
MAX_COPY_BYTES in BF16 get none.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import struct
import threading
from pathlib import Path

from . import paths

log = logging.getLogger(__name__)

SLOW_FILE_TYPES = {3: "Q4_1", 9: "Q5_1"}
"""llama.cpp file types (`general.file_type`) without a fast CPU prompt kernel: measured on the embedded model
re-quantized to each type, these two evaluate prompts slowest, Q5_0, Q4_K, Q8_0 and Q4_0 faster."""
MAX_COPY_BYTES = 1_500_000_000
"""Larger bases decode memory-bound: a copy would slow every token more than it speeds the prompt."""
FORMAT = 1  # sidecar layout; a change rebuilds every copy
PROMPT_KEEP = {"token_embd.weight": "token_embedding_type", "output.weight": "output_tensor_type"}
"""The tensors playback's BF16 copy keeps in their shipped type, and the quantizer parameter that keeps each. On
Qwen2.5-0.5B Q4_K_M (Q5_0 and Q8_0 there) the copy is 0.96 GB instead of 1.27 GB and builds in ~1 s instead of
~2.2 (2 threads, file in the page cache); batched playback on it ran at 93.6 against 96.7 emails/min with every
weight BF16 (medians of 3 rounds; `python -m bench.prompt_copy`, bench/results/prompt_copy.md), inside the spread
of rounds on one copy (93-99): a 0.5B output product of 16 rows is no slower in its Q8_0 blocks than in BF16
by any margin these runs can show."""
TYPES = {"bf16": 16.0, "q8_0": 8.5}
"""The copy's projection types and their bits a weight."""
_BUILD_LOCK = threading.Lock()


def copy_type() -> str:
    """The block type of this machine's serving copies: "bf16" where llama.cpp multiplies BF16 with the CPU's
    own instructions (its system info says AVX512_BF16 = 1), else "q8_0" (fast everywhere: AVX2, NEON).
    PANZA_SERVING_COPY=q8_0 (or bf16) chooses: Q8_0 decodes faster, so long drafts end sooner on it."""
    chosen = os.environ.get("PANZA_SERVING_COPY", "").strip().lower()
    return chosen if chosen in TYPES else _native_type()


@functools.cache
def _native_type() -> str:
    from . import engine

    try:
        info = engine.system_info()
    except Exception as exc:  # noqa: BLE001 - no llama.cpp: no copy is ever loaded either
        log.debug("serving copy type: %s", exc)
        return "q8_0"
    return "bf16" if "AVX512_BF16 = 1" in info else "q8_0"


def copy_path(lora_path: str | Path, kind: str | None = None) -> Path:
    """Where the serving copy of (its base +) this adapter lives: beside it, named after it and its type."""
    lora_path = Path(lora_path)
    return lora_path.with_name(f"{lora_path.stem}.serve-{kind or copy_type()}.gguf")


def base_copy_path(base: str | Path, kind: str | None = None, prompt: bool = False) -> Path:
    """Where the serving copy of a base with no adapter lives (stock drafts, playback, chat without an
    adapter): in this home's cache, named after the base file and the copy's type; `prompt`: playback's own
    BF16 copy of a base with fast kernels (`prompt_copy_worth_it`)."""
    stem = f"{Path(base).stem}-prompt" if prompt else Path(base).stem
    return paths.home() / "cache" / "serving" / f"{stem}.serve-{kind or copy_type()}.gguf"  # merge(): 0700


def applies(merge: bool, gpu_layers: int) -> bool:
    """Whether serving copies are used at all: the setting on (merge_adapter), and a CPU run (on a GPU the
    shipped quantization's kernels are fast)."""
    return bool(merge) and not gpu_layers


def _out(base: Path, lora: Path | None, kind: str | None = None, prompt: bool = False) -> Path:
    return copy_path(lora, kind) if lora is not None else base_copy_path(base, kind, prompt)


def _stamp(base: Path, lora: Path | None, scale: float, prompt: bool = False) -> dict:
    b = base.stat()
    stamp = {"format": FORMAT, "type": copy_type(), "base": str(base.resolve()), "base_size": b.st_size,
             "base_mtime_ns": b.st_mtime_ns}
    if prompt:  # an older prompt copy (every weight BF16) is rebuilt
        stamp["kept"] = sorted(PROMPT_KEEP)
    if lora is None:
        return stamp
    a = lora.stat()
    return {**stamp, "adapter_size": a.st_size, "adapter_mtime_ns": a.st_mtime_ns, "scale": scale}


def remove(adapter_folder: str | Path) -> None:
    """Delete the serving copies kept in an adapter's folder (rebuilt when that adapter serves again)."""
    for kind in TYPES:
        _delete(copy_path(Path(adapter_folder) / "adapter.gguf", kind))


def _delete(out: Path) -> None:
    """A serving copy's files: the GGUF, its stamp and the stamp of a failed build."""
    for f in (out, out.with_suffix(".json"), out.with_suffix(".failed")):
        f.unlink(missing_ok=True)


def _all_but_newest(stamps: list[Path], keep: int) -> list[Path]:
    """The stamps (sidecar .json files) but the `keep` most recently touched; missing ones are skipped."""
    dated = []
    for side in stamps:
        with contextlib.suppress(OSError):
            dated.append((side.stat().st_mtime_ns, side))
    return [side for _, side in sorted(dated, reverse=True)[keep:]]


def keep_latest(folders: list[Path], served: Path, keep: int = 2) -> None:
    """`served` has just started serving: mark its copy as the latest served and delete the copies in all but
    the `keep` latest served folders (the one before stays, so switching back is instant)."""
    side = copy_path(served / "adapter.gguf").with_suffix(".json")
    if side.exists():
        os.utime(side)  # the sidecar's mtime is when its adapter last started serving
    stamps = [copy_path(d / "adapter.gguf", kind).with_suffix(".json") for d in folders for kind in TYPES]
    for side in _all_but_newest(stamps, keep):
        _delete(side.with_suffix(".gguf"))


def worth_it(base: str | Path) -> bool:
    """Whether a merged copy of `base` prompts faster than base + runtime LoRA (its file type, its size)."""
    base = Path(base)
    try:
        st = base.stat()
    except OSError:
        return False
    return _worth_it(base, st.st_size, st.st_mtime_ns, copy_type())


@functools.lru_cache(maxsize=16)
def _worth_it(base: Path, size: int, mtime_ns: int, kind: str) -> bool:  # every draft asks: each header once
    from . import gguf_header

    try:
        ftype = gguf_header.read_header(base)["metadata"].get("general.file_type")
    except Exception as exc:  # noqa: BLE001 - engine.load reports an unreadable model with its own fix
        log.debug("serving copy: cannot read %s (%s)", base.name, exc)
        return False
    return ftype in SLOW_FILE_TYPES and size * TYPES[kind] / 5 <= MAX_COPY_BYTES  # Q4_1: 5 bits a weight


_UNQUANTIZED = {0, 1, 30}  # F32, F16, BF16


def prompt_copy_worth_it(base: str | Path) -> bool:
    """Whether playback (prompt-bound work) gets its own BF16 copy of `base`: a quantized base with fast
    kernels (no draft copy: `worth_it` is false), a CPU with BF16 dot products, and a BF16 file of at most
    MAX_COPY_BYTES (module docstring)."""
    base = Path(base)
    if copy_type() != "bf16" or worth_it(base):
        return False
    try:
        st = base.stat()
    except OSError:
        return False
    return _prompt_worth_it(base, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _prompt_worth_it(base: Path, size: int, mtime_ns: int) -> bool:
    from . import gguf_header

    try:
        tensors = gguf_header.layout(base).tensors
    except Exception as exc:  # noqa: BLE001 - engine.load reports an unreadable model with its own fix
        log.debug("prompt copy: cannot read %s (%s)", base.name, exc)
        return False
    weights = [(dims, qtype) for _, dims, qtype, _ in tensors if len(dims) > 1]
    bf16_bytes = sum(2 * math.prod(int(d) for d in dims) for dims, _ in weights)
    return any(qtype not in _UNQUANTIZED for _, qtype in weights) and bf16_bytes <= MAX_COPY_BYTES


def fresh(base: str | Path, lora: str | Path | None, scale: float = 1.0, prompt: bool = False) -> Path | None:
    """The serving copy for (base, adapter or None) when it exists and was built from exactly these files;
    `prompt`: playback's copy of the base (`prompt_copy_worth_it`)."""
    lora = Path(lora) if lora is not None else None
    out = _out(Path(base), lora, prompt=prompt)
    try:
        stamp = json.loads(out.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return out if out.exists() and stamp == _stamp(Path(base), lora, scale, prompt) else None


def resolve(base: str | Path, lora: str | Path | None, *, scale: float = 1.0, build: bool = True,
            prompt_bound: bool = False) -> tuple[Path, Path | None]:
    """(model, adapter) to load: (the serving copy, None) when one is worth having (built here the first
    time, a few seconds on the embedded model), else the inputs unchanged. With no adapter the copy is the
    base alone (stock drafts and playback evaluate their prompts in the fast kernels too). `prompt_bound`
    (playback, no adapter): a base with fast kernels loads its BF16 copy (`prompt_copy_worth_it`). A failed
    build is logged and falls back to the inputs: a draft never fails for want of the faster file."""
    base = Path(base)
    lora = Path(lora) if lora is not None else None
    prompt = prompt_bound and lora is None and prompt_copy_worth_it(base)
    got = fresh(base, lora, scale, prompt)
    if got:
        return got, None
    if not build or not (prompt or worth_it(base)):
        return base, lora
    failed = _out(base, lora, prompt=prompt).with_suffix(".failed")
    stamp = _stamp(base, lora, scale, prompt)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(failed.read_text()) == stamp:  # this exact merge failed before: do not retry every draft
            return base, lora
    try:
        return merge(base, lora, scale=scale, prompt=prompt), None
    except Exception as exc:  # noqa: BLE001 - disk full, a file the merge cannot read: keep drafting
        log.warning("serving copy not built (%s: %s): loading %s as it is", type(exc).__name__, exc,
                    "the base with the adapter at run time" if lora else "the base")
        with contextlib.suppress(OSError):
            paths.write_private(failed, json.dumps(stamp))
        return base, lora


def merge(base: Path, lora: Path | None, *, scale: float = 1.0, prompt: bool = False) -> Path:
    """Write `base` + `scale` x the LoRA in `lora` (none: the base alone) as a GGUF whose merged and slow-type
    weights are of `copy_type()` (the rest, embeddings and norms, byte for byte), beside the adapter or in the cache;
    return its path. `prompt`: playback's copy of a base with fast kernels, its layers BF16 (`_requantize`)."""
    with _BUILD_LOCK:  # the preload thread and the foreground may both ask; the second finds it built
        got = fresh(base, lora, scale, prompt)
        if got:
            return got
        kind = copy_type()
        out = _out(base, lora, kind, prompt)
        paths.ensure_dir(out.parent)
        _drop_orphans(out)
        for other in TYPES.keys() - {kind}:  # a copy of another type (built before this machine's type was chosen)
            _delete(_out(base, lora, other, prompt))
        if lora is None:
            _prune_base_copies(out.parent)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            if prompt:
                _requantize(base, tmp)
            else:
                _write(base, lora, scale, tmp, kind)
            os.chmod(tmp, paths.FILE_MODE)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        paths.write_private(out.with_suffix(".json"), json.dumps(_stamp(base, lora, scale, prompt)))
        log.info("serving copy built: %s", out)
        return out


def _prune_base_copies(folder: Path, keep: int = 1) -> None:
    """Before a base's copy is built, delete those of other bases but the `keep` latest built (a model
    switched away from with `panza models use` leaves hundreds of megabytes; the one before stays, so
    switching back plays back fast at once)."""
    for side in _all_but_newest([s for kind in TYPES for s in folder.glob(f"*.serve-{kind}.json")], keep):
        _delete(side.with_suffix(".gguf"))


def _drop_orphans(out: Path) -> None:
    """Delete half-written copies of `out` whose writer is gone (a build killed with SIGKILL or a power cut
    leaves its temporary file: a hundred megabytes and more, never read)."""
    for tmp in out.parent.glob(f".{out.name}.*.tmp"):
        try:
            os.kill(int(tmp.name.rsplit(".", 2)[-2]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, OSError):  # not our name pattern, or a process of another user: leave it
            continue


def _requantize(base: Path, out: Path) -> None:
    """`base` with every weight of its layers dequantized and stored as BF16, the `PROMPT_KEEP` tensors as they
    are (the quantizer copies a tensor whose type it is asked to keep), by llama.cpp's quantizer (C, all cores:
    ~1 s for Qwen2.5-0.5B, where the numpy path of `_write` takes 8 s)."""
    import ctypes

    from . import engine, gguf_header

    lib = engine.llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.nthread = engine.physical_cores()
    params.ftype = 32  # LLAMA_FTYPE_MOSTLY_BF16
    params.allow_requantize = True
    for name, _, qtype, _ in gguf_header.layout(base).tensors:
        if name in PROMPT_KEEP:
            setattr(params, PROMPT_KEEP[name], qtype)
    with engine.quiet_native():  # a line per tensor otherwise
        failed = lib.llama_model_quantize(str(base).encode(), str(out).encode(), ctypes.byref(params))
    if failed:
        raise RuntimeError(f"llama.cpp could not write a BF16 copy of {base.name} (code {failed})")


def _write(base: Path, lora: Path | None, scale: float, out: Path, kind: str) -> None:
    """Write the copy: the base's metadata entries byte for byte (file type aside), each merged or slow-type
    weight as `kind`, every other tensor's bytes as they are. No gguf-py reader or writer: its reader parses
    the 50k-entry vocabulary into Python objects (3.6 of 6 s on the embedded model)."""
    import gguf
    import numpy as np
    from gguf.quants import quantize

    from . import gguf_header
    from .errors import AdapterError

    to = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    slow = {gguf.GGMLQuantizationType[name] for name in SLOW_FILE_TYPES.values()}
    src = gguf_header.layout(base)
    mm = np.memmap(base, dtype=np.uint8, mode="r")
    pairs, alpha = {}, 0.0
    if lora is not None:
        lay = gguf_header.layout(lora)
        lmm = np.memmap(lora, dtype=np.uint8, mode="r")
        pairs = {name: _dense(lmm, lay.data_start, dims, qtype, off) for name, dims, qtype, off in lay.tensors}
        alpha = float(lay.meta.get("adapter.lora.alpha") or 0.0)

    def converted(name: str, dims: list[int], qtype: int, offset: int, want: int):
        """One tensor's bytes in the copy, as type `want` (`_copy_type`)."""
        a, b = pairs.get(f"{name}.lora_a"), pairs.get(f"{name}.lora_b")
        if a is None and want == qtype:
            return mm[src.data_start + offset: src.data_start + offset + gguf_header.tensor_nbytes(dims, qtype)]
        weight = _dense(mm, src.data_start, dims, qtype, offset)
        if a is not None:
            if b is None:
                raise AdapterError(f"{lora} has {name}.lora_a without its lora_b", fix="re-export the adapter")
            weight = weight + (scale * (alpha / a.shape[0] if alpha else 1.0)) * (b @ a)
        return weight.astype(np.float32, copy=False) if want == gguf.GGMLQuantizationType.F32 else quantize(weight, want)

    used = sum(f"{name}.lora_a" in pairs for name, *_ in src.tensors)
    if used * 2 != len(pairs):
        raise AdapterError(f"{lora} has LoRA tensors for weights {base.name} does not have",
                           fix="use an adapter exported for this base model")
    file_type = gguf.LlamaFileType.MOSTLY_BF16 if kind == "bf16" else gguf.LlamaFileType.MOSTLY_Q8_0
    keep = [k for k in src.kv_spans if k != "general.file_type"]
    align = src.alignment
    with open(base, "rb") as fh, open(out, "wb") as w:
        w.write(gguf_header.MAGIC + struct.pack("<IQQ", 3, len(src.tensors), len(keep) + 1))
        for key in keep:
            start, end = src.kv_spans[key]
            fh.seek(start)
            w.write(fh.read(end - start))
        w.write(_gguf_string("general.file_type") + struct.pack("<II", gguf.GGUFValueType.UINT32, int(file_type)))
        # the table needs every tensor's type and size before any data: types are decided by name, sizes follow
        types = [_copy_type(name, qtype, dims, pairs, slow, to) for name, dims, qtype, _ in src.tensors]
        offset = 0
        for (name, dims, _, _), qtype in zip(src.tensors, types):
            w.write(_gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset))
            offset += -(-gguf_header.tensor_nbytes(dims, qtype) // align) * align
        w.write(b"\0" * (-w.tell() % align))
        for (name, dims, qtype, off), want in zip(src.tensors, types):
            data = memoryview(np.ascontiguousarray(converted(name, dims, qtype, off, want))).cast("B")
            promised = gguf_header.tensor_nbytes(dims, want)  # the size the table above gave it
            if len(data) != promised:
                raise RuntimeError(f"serving copy: {name} came out as {len(data)} bytes, not {promised}")
            w.write(data)
            w.write(b"\0" * (-len(data) % align))


def _copy_type(name: str, qtype: int, dims: list[int], pairs: dict, slow: set, to) -> int:
    """The type a tensor has in the copy: as it is unless merged or of a slow type, else `to` (Q8_0 only for
    rows of whole 32-weight blocks; F32 otherwise)."""
    import gguf

    if f"{name}.lora_a" not in pairs and qtype not in slow:
        return qtype
    if to == gguf.GGMLQuantizationType.Q8_0 and dims[0] % 32:
        return gguf.GGMLQuantizationType.F32
    return to


def _dense(mm, data_start: int, dims: list[int], qtype: int, offset: int):
    """One tensor as float32 in numpy order ([rows, cols]), dequantized from its bytes in `mm`."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize

    from . import gguf_header

    raw = np.asarray(mm[data_start + offset: data_start + offset + gguf_header.tensor_nbytes(dims, qtype)])
    rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
    shape = tuple(int(d) for d in reversed(dims))
    return dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType(qtype)).astype(
        np.float32, copy=False).reshape(shape)


def _gguf_string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data
