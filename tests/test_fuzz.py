"""Property-based fuzzing (hypothesis) of the inputs panza reads from the outside world."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panza_local import gguf_header
from panza_local.errors import NotAGGUF

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _header(version: int, kvs: list[tuple[bytes, int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + v for k, t, v in kvs)
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(kvs)) + body


@FUZZ
@given(st.binary(max_size=512))
def test_gguf_reader_never_crashes_on_random_bytes(tmp_path_factory, blob):
    f = _scratch(tmp_path_factory)
    f.write_bytes(blob)
    try:
        gguf_header.read_header(f)
    except NotAGGUF:
        pass


_REAL: list[bytes] = []
_SCRATCH: list = []


def _scratch(factory):
    if not _SCRATCH:
        _SCRATCH.append(factory.mktemp("fuzz") / "x.gguf")
    return _SCRATCH[0]


@FUZZ
@given(st.binary(max_size=256), st.integers(0, 4096))
def test_gguf_reader_never_crashes_on_corrupted_real_header(tmp_path_factory, junk, where):
    from panza_local import catalogue

    if not _REAL:
        with open(catalogue.embedded_path(), "rb") as fh:
            _REAL.append(fh.read(8192))
    real = _REAL[0]
    where = min(where, len(real))
    blob = real[:where] + junk + real[where + len(junk):]
    f = _scratch(tmp_path_factory)
    f.write_bytes(blob)
    try:
        gguf_header.read_header(f)
    except NotAGGUF:
        pass


@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.sampled_from([4, 5, 6, 8, 10]),
                          st.binary(max_size=12)), max_size=6))
def test_gguf_reader_structured_kvs(tmp_path_factory, kvs):
    f = _scratch(tmp_path_factory)
    f.write_bytes(_header(3, kvs))
    try:
        out = gguf_header.read_header(f)
        assert out["version"] == 3
    except NotAGGUF:
        pass


def test_gguf_reader_reads_well_formed_values(tmp_path):
    kvs = [(b"general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
           (b"llama.context_length", 4, struct.pack("<I", 2048)),
           (b"tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 1, 2, 3))]
    f = tmp_path / "ok.gguf"
    f.write_bytes(_header(3, kvs))
    meta = gguf_header.read_header(f)["metadata"]
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 2048
    assert int(meta["tokenizer.ggml.scores"]) == 3
    assert gguf_header.read_header(f, keep_arrays=True)["metadata"]["tokenizer.ggml.scores"] == [1.0, 2.0, 3.0]
