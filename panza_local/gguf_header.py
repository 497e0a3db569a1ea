"""A small, defensive GGUF header reader: metadata key/values without loading tensors.

Used to validate files given to `panza models add` and to read architecture, context length and chat
template. Arrays are skipped (only their length is kept) unless `keep_arrays` is set, so a 50k-entry
tokenizer vocabulary costs little. Every malformed input raises NotAGGUF, never anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import NotAGGUF

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_MAX_STR = 1 << 24  # 16 MiB: chat templates are a few KiB; anything bigger is corruption
_MAX_KV = 1 << 16


class _Reader:
    def __init__(self, fh: BinaryIO, size: int, name: str):
        self.fh, self.size, self.name = fh, size, name

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise NotAGGUF(f"{self.name}: truncated GGUF header",
                           fix="the file is incomplete: download it again or pick another file")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > _MAX_STR or n > self.size:
            raise NotAGGUF(f"{self.name}: implausible string length {n} in GGUF header",
                           fix="the file is corrupt: download it again")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        fh, unpack = self.fh, struct.Struct("<Q").unpack
        for _ in range(count):
            n = unpack(self.take(8))[0]
            if n > _MAX_STR:
                raise NotAGGUF(f"{self.name}: implausible string length {n} in GGUF header",
                               fix="the file is corrupt: download it again")
            fh.seek(n, 1)

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            itype, count = self.scalar("<I"), self.scalar("<Q")
            if count > self.size:
                raise NotAGGUF(f"{self.name}: implausible array length {count}", fix="the file is corrupt")
            if itype == 9:
                raise NotAGGUF(f"{self.name}: nested arrays are not supported", fix="the file is corrupt")
            if not keep_arrays and itype in _SCALARS:
                self.fh.seek(count * struct.calcsize(_SCALARS[itype]), 1)
                return _ArrayLen(count)
            if not keep_arrays and itype == 8:  # a vocabulary: step over each string, decode none
                self.skip_strings(count)
                return _ArrayLen(count)
            items = [self.value(itype, keep_arrays) for _ in range(count)]
            return items if keep_arrays else _ArrayLen(count)
        raise NotAGGUF(f"{self.name}: unknown GGUF value type {vtype}", fix="the file is corrupt or too new")


class _ArrayLen(int):
    """An array that was skipped: behaves as its length."""


def read_header(path: str | Path, keep_arrays: bool = False) -> dict[str, Any]:
    """Return {'version', 'tensor_count', 'metadata': {key: value}} of a GGUF file, or raise NotAGGUF."""
    path = Path(path)
    if not path.is_file():
        raise NotAGGUF(f"{path}: no such file", fix="check the path")
    with path.open("rb") as fh:
        version, tensor_count, meta, _ = _header(_Reader(fh, path.stat().st_size, str(path)), path, keep_arrays)
    return {"version": version, "tensor_count": tensor_count, "metadata": meta}


def _header(r: _Reader, path: Path, keep_arrays: bool) -> tuple[int, int, dict[str, Any], dict[str, tuple[int, int]]]:
    """(version, tensor count, metadata, each entry's byte range) read by `r` from the start of its GGUF file;
    its file is left at the tensor table."""
    fh, size = r.fh, r.size
    magic = fh.read(4)
    if magic != MAGIC:
        raise NotAGGUF(f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF')",
                       fix="give a .gguf file; convert safetensors with llama.cpp's convert_hf_to_gguf.py")
    version = r.scalar("<I")
    if version not in (2, 3):
        raise NotAGGUF(f"{path}: GGUF version {version} is not supported (2 and 3 are)",
                       fix="re-convert the model with a current llama.cpp")
    tensor_count, kv_count = r.scalar("<Q"), r.scalar("<Q")
    if kv_count > _MAX_KV or tensor_count > size:
        raise NotAGGUF(f"{path}: implausible GGUF header counts", fix="the file is corrupt")
    meta: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    for _ in range(kv_count):
        start = fh.tell()
        key = r.string()
        meta[key] = r.value(r.scalar("<I"), keep_arrays)
        spans[key] = (start, fh.tell())
    return version, tensor_count, meta, spans


def summary(path: str | Path) -> dict[str, Any]:
    """Architecture, name, context length, file type and chat template presence of a GGUF model."""
    meta = read_header(path)["metadata"]
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise NotAGGUF(f"{path}: GGUF has no general.architecture", fix="the file is not a model")
    return {
        "arch": arch,
        "name": meta.get("general.name"),
        "type": meta.get("general.type", "model"),
        "context_length": meta.get(f"{arch}.context_length"),
        "n_layers": meta.get(f"{arch}.block_count"),
        "file_type": meta.get("general.file_type"),
        "chat_template": isinstance(meta.get("tokenizer.chat_template"), str),
    }


@dataclass
class Layout:
    """Where everything of a GGUF file is: metadata, each key/value entry's bytes, the tensor table.

    `kv_spans[key]` is the byte range of the whole entry (key, type, value) in the file, so a writer can
    copy entries it does not change byte for byte (a 50k-entry vocabulary is one slice, never parsed);
    `tensors` are (name, dims in GGML order, type number, offset from `data_start`)."""

    version: int
    meta: dict[str, Any]
    kv_spans: dict[str, tuple[int, int]]
    tensors: list[tuple[str, list[int], int, int]]
    data_start: int
    alignment: int


def layout(path: str | Path) -> Layout:
    """The Layout of a GGUF file (tokenizer arrays skipped), or NotAGGUF."""
    path = Path(path)
    with path.open("rb") as fh:
        r = _Reader(fh, path.stat().st_size, str(path))
        version, n_tensors, meta, spans = _header(r, path, False)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.scalar("<Q") for _ in range(r.scalar("<I"))]
            tensors.append((name, dims, r.scalar("<I"), r.scalar("<Q")))
        align = int(meta.get("general.alignment", 32))
        data_start = (fh.tell() + align - 1) // align * align
    return Layout(version, meta, spans, tensors, data_start, align)


def tensor_nbytes(dims: list[int], qtype: int) -> int:
    """Bytes of a tensor of GGML `dims` and type number `qtype` (whole blocks of its type)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    n = 1
    for d in dims:
        n *= d
    return n // block * size
