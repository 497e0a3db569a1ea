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


# ---------------------------------------------------------------------------------------------------------
# The mail parser, the mbox splitter and the cleaner: whatever bytes arrive, they return a value (a bad
# message is counted and skipped by ingest, never a traceback).

import importlib

# (panza_local.ingest re-exports functions named like these modules, so import the modules by name)
_clean = importlib.import_module("panza_local.ingest.clean")
_mbox = importlib.import_module("panza_local.ingest.mbox")
_parse = importlib.import_module("panza_local.ingest.parse")

_HEADER_NAMES = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Reply-To",
                 "Sender", "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "X-GM-LABELS",
                 "Auto-Submitted", "Precedence", "List-Id", "List-Post", "X-Original-From"]
_HEADER_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["=?utf-8?B?w6k=?=", "=?iso-8859-1?q?caf=E9?=", "=?bogus?Q?x?=", "=?utf-8?B?!!!?=",
                     "text/plain; charset=x-unknown", "multipart/alternative; boundary=\"b\"",
                     "multipart/mixed", "text/html; charset=\"utf-7\"", "base64", "quoted-printable",
                     "Mon, 32 Foo 99999 25:61:61 +9999", "Tue, 1 Jan 0001 00:00:00 -0000", "<@>", "<>",
                     "\"a\" <a@b>, <<c@d>>", "undisclosed-recipients:;", "text/plain; charset=\"\""]),
)
_BODY = st.one_of(st.binary(max_size=400), st.text(max_size=400).map(lambda s: s.encode("utf-8", "surrogatepass")))


@st.composite
def _messages(draw) -> bytes:
    headers = draw(st.lists(st.tuples(st.sampled_from(_HEADER_NAMES), _HEADER_VALUES), max_size=10))
    head = "".join(f"{k}: {v}\r\n" if draw(st.booleans()) else f"{k}: {v}\n" for k, v in headers)
    body = draw(_BODY)
    if draw(st.booleans()):  # a MIME tree with declared and wrong boundaries, parts with any encoding
        parts = draw(st.lists(st.tuples(_HEADER_VALUES, _HEADER_VALUES, _BODY), max_size=3))
        body = b"".join(b"--b\n" + f"Content-Type: {ct}\nContent-Transfer-Encoding: {enc}\n\n".encode(
            "utf-8", "surrogatepass") + part + b"\n" for ct, enc, part in parts) + draw(
            st.sampled_from([b"--b--\n", b"", b"--c--\n"]))
    return head.encode("utf-8", "surrogatepass") + b"\n" + body


_parsed_count = [0]


def _check_parsed(p) -> None:
    _parsed_count[0] += 1
    assert isinstance(p.text, str) and isinstance(p.subject, str)
    assert all(isinstance(a, str) for a in p.to_addrs + p.cc_addrs)
    assert p.date is None or isinstance(p.date, str)


@FUZZ
@given(st.binary(max_size=2000))
def test_parser_never_crashes_on_random_bytes(raw):
    _check_parsed(_parse.parse(raw))


@settings(max_examples=150, deadline=None)
@given(_messages())
def test_parser_never_crashes_on_structured_messages(raw):
    p = _parse.parse(raw)
    _check_parsed(p)
    c = _clean.clean(p.text)  # what ingest does next with every parsed body
    assert isinstance(c.body, str) and isinstance(c.thread, str)


_QUOTEY = st.sampled_from(["> ", ">> ", "-----Original Message-----", "---------------------- Forwarded by",
                           "On Mon, Jan 1, 2001 at 10:00 AM, Bob <b@x.com> wrote:", "From: a@b.com",
                           "Sent: Monday", "To: c@d", "Subject: re", "-- ", "__", "Phillip K Allen@ECT",
                           "12/13/2000 10:00 AM", "\t", "\r", "\u00a0", "\x00", "Le 1 janv. 2001, X a écrit :",
                           "Am 01.01.2001 schrieb X:", "Sent from my iPhone", "\u200b", "\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_QUOTEY, st.text(max_size=40)), max_size=40))
def test_cleaner_never_crashes_and_never_invents_text(chunks):
    text = "\n".join(chunks)
    c = _clean.clean(text)
    assert isinstance(c.body, str) and isinstance(c.thread, str)
    norm = _clean.normalise(text)
    # the author's words are a subset of the input's words: cleaning only removes
    words = set(norm.split())
    assert set(c.body.split()) <= words
    _clean.content_hash(c.body)
    _clean.residual_markers(c.body)
    assert _clean.clean(c.body).body == _clean.clean(c.body).body  # deterministic


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.just(b"From a@b Mon Jan  1 00:00:00 2001\n"), st.just(b"\n"),
                          st.just(b">From x\n"), st.just(b"Content-Length: 5\n"), st.just(b"Content-Length: 99999\n"),
                          st.just(b"Subject: s\n"), st.binary(max_size=40)), max_size=30))
def test_mbox_splitter_covers_the_file_in_order(chunks):
    buf = b"".join(chunks)
    spans = list(_mbox.split(buf))
    pos = 0
    for begin, end in spans:
        assert pos <= begin < end <= len(buf), (begin, end, len(buf))
        pos = end
    for begin, end in spans:
        _check_parsed(_parse.parse(_mbox.message_bytes(buf[begin:end])))


def test_parser_fuzz_inputs_were_really_parsed():
    """The fuzzers above ran (when collected together) and parsed what they generated."""
    _check_parsed(_parse.parse(b"Subject: =?utf-8?B?w6k=?=\n\nhi"))
    assert _parsed_count[0] >= 1
