"""A BERT sentence encoder in numpy: all-MiniLM-L6-v2's vectors without torch, transformers or
sentence-transformers, whose imports dominated a cold `panza draft` for a query that takes milliseconds
(a fresh process embedding one query, this way and through sentence-transformers: bench/results/embed.md).
It is also faster in bulk there, so `embed()` uses it for indexing too.

It reads the model folder sentence-transformers reads (`model.safetensors`, `tokenizer.json`,
`sentence_bert_config.json`, `1_Pooling/config.json`) and computes the same thing: WordPiece ids from the
`tokenizers` package (the Rust tokenizer transformers' fast BertTokenizer wraps), the encoder's forward
pass in float32, mean pooling over real tokens, L2 norm. Vectors agree with sentence-transformers'
to cosine >= 0.99999 (tests/test_embed_light.py), so indexes built with either stay valid.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): BERT's GELU is the exact erf one, and numpy has no erf.
_P, _A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_ROWS = 256  # row block of the feed-forward: its 1536-wide activations stay in cache while GELU runs
_FEW = 64  # rows up to which `_linear` multiplies the weight by the rows (a query's tokens)


def _linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T for a weight `w` stored (out, in). For a few rows (a search query: ~20 tokens) OpenBLAS computes
    the same product sooner as w @ x.T (a warm query: bench/results/embed.md); from ~256 rows on both take the
    same time, and the plain product keeps its rows contiguous."""
    return (w @ x.T).T if len(x) <= _FEW else x @ w.T


def _gelu_(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) computed in place (each temporary the size of x would cost a pass through memory)."""
    a = np.abs(x)
    a *= np.float32(1.0 / math.sqrt(2.0))
    t = a * np.float32(_P)
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * np.float32(_A[4])
    for c in (_A[3], _A[2], _A[1], _A[0]):
        poly += np.float32(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # = 1 - erf(|x| / sqrt 2)
    # Phi(x) = 1 - poly/2 for x >= 0 and poly/2 for x < 0
    poly *= np.float32(0.5)
    np.subtract(1.0, poly, out=poly, where=x >= 0)
    x *= poly
    return x


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


_DTYPES = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file as read-only memory maps: nothing is read until a page is used,
    so loading costs milliseconds and a query touches only the word-embedding rows it needs."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    # a plain ndarray view: arithmetic on np.memmap objects makes more memmap objects, slowly
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n).view(np.ndarray)
    out = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which the numpy encoder does not read")
        a, b = info["data_offsets"]
        out[name] = raw[a:b].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


@dataclass
class _Layer:
    q_w: np.ndarray  # (out, in) as stored; multiplied as x @ w.T, which BLAS does without a copy
    q_b: np.ndarray
    k_w: np.ndarray
    k_b: np.ndarray
    v_w: np.ndarray
    v_b: np.ndarray
    o_w: np.ndarray
    o_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    i_w: np.ndarray
    i_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


class Encoder:
    """A loaded sentence encoder: `encode(texts)` -> L2-normalised float32 vectors, one row per text."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{folder}: the numpy encoder runs BERT models with absolute positions only")
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{folder}: the numpy encoder implements the erf GELU only")
        st_cfg = folder / "sentence_bert_config.json"
        self.max_len = int(json.loads(st_cfg.read_text()).get("max_seq_length", 256)) if st_cfg.exists() else 256
        self.max_len = min(self.max_len, int(cfg.get("max_position_embeddings", 512)))
        pool = folder / "1_Pooling" / "config.json"
        if pool.exists() and not json.loads(pool.read_text()).get("pooling_mode_mean_tokens", True):
            raise ValueError(f"{pool}: the numpy encoder implements mean pooling only")
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # sentence-transformers truncates at max_seq_length and pads to the batch's longest text
        self.tokenizer.enable_truncation(self.max_len)
        self.tokenizer.no_padding()
        w = read_safetensors(folder / "model.safetensors")
        pre = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""

        def g(name: str) -> np.ndarray:
            a = w[pre + name]
            return a if a.dtype == np.float32 else a.astype(np.float32)

        self.word = g("embeddings.word_embeddings.weight")
        self.pos = g("embeddings.position_embeddings.weight")
        self.type0 = g("embeddings.token_type_embeddings.weight")[0]
        self.ln_w, self.ln_b = g("embeddings.LayerNorm.weight"), g("embeddings.LayerNorm.bias")
        self.layers: list[_Layer] = []
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            self.layers.append(_Layer(
                *(g(a + f"self.{n}.{t}") for n in ("query", "key", "value") for t in ("weight", "bias")),
                g(a + "output.dense.weight"), g(a + "output.dense.bias"),
                g(a + "output.LayerNorm.weight"), g(a + "output.LayerNorm.bias"),
                g(p + "intermediate.dense.weight"), g(p + "intermediate.dense.bias"),
                g(p + "output.dense.weight"), g(p + "output.dense.bias"),
                g(p + "output.LayerNorm.weight"), g(p + "output.LayerNorm.bias")))

    def _forward(self, ids: np.ndarray, lens: list[int]) -> np.ndarray:
        """Mean-pooled last hidden states of texts packed end to end: `ids` is every text's token ids in a
        row, `lens` their lengths. Only attention looks across rows, one text at a time, so no padding is
        computed at all (the result equals the padded, masked batch's)."""
        d = self.word.shape[1]
        h, hd = self.heads, d // self.heads
        pos = np.concatenate([np.arange(n) for n in lens])
        x = self.word[ids] + self.pos[pos] + self.type0
        x = _layer_norm(x, self.ln_w, self.ln_b, self.eps)
        starts = np.concatenate([[0], np.cumsum(lens)])
        scale = np.float32(1.0 / math.sqrt(hd))
        ctx = np.empty_like(x)
        for L in self.layers:
            q = _linear(x, L.q_w)
            q += L.q_b
            q *= scale
            k = _linear(x, L.k_w)
            k += L.k_b
            v = _linear(x, L.v_w)
            v += L.v_b
            for i, n in enumerate(lens):
                r = slice(starts[i], starts[i] + n)
                qi = q[r].reshape(n, h, hd).transpose(1, 0, 2)
                ki = k[r].reshape(n, h, hd).transpose(1, 2, 0)
                vi = v[r].reshape(n, h, hd).transpose(1, 0, 2)
                s = qi @ ki
                s -= s.max(-1, keepdims=True)
                np.exp(s, out=s)
                s /= s.sum(-1, keepdims=True)
                ctx[r] = (s @ vi).transpose(1, 0, 2).reshape(n, d)
            y = _linear(ctx, L.o_w)
            y += L.o_b
            y += x
            x = _layer_norm(y, L.ln1_w, L.ln1_b, self.eps)
            y = np.empty_like(x)
            for j in range(0, len(x), _ROWS):
                hid = _linear(x[j:j + _ROWS], L.i_w)
                hid += L.i_b
                y[j:j + _ROWS] = _linear(_gelu_(hid), L.out_w)
            y += L.out_b
            y += x
            x = _layer_norm(y, L.ln2_w, L.ln2_b, self.eps)
        return np.add.reduceat(x, starts[:-1], axis=0) / np.asarray(lens, dtype=np.float32)[:, None]

    def encode(self, texts: list[str], batch_size: int = 64, workers: int = 1) -> np.ndarray:
        """L2-normalised float32 vectors for `texts`, `batch_size` texts per forward pass, batches spread over
        `workers` threads (numpy releases the GIL in its kernels; BLAS itself is kept to one thread)."""
        out = np.empty((len(texts), self.word.shape[1]), dtype=np.float32)

        def run(i: int) -> None:
            # one text at a time: encode_batch would start the tokenizers' own thread pool, which then
            # warns on every later fork (subprocess) of this process; a text takes ~50 us either way
            encs = [self.tokenizer.encode(t) for t in texts[i:i + batch_size]]
            ids = np.fromiter((t for e in encs for t in e.ids), dtype=np.int64)
            out[i:i + len(encs)] = self._forward(ids, [len(e.ids) for e in encs])

        starts = range(0, len(texts), batch_size)
        with _one_blas_thread():
            if workers <= 1 or len(starts) <= 1:
                for i in starts:
                    run(i)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(min(workers, len(starts))) as pool:
                    list(pool.map(run, starts))
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _one_blas_thread():
    """OpenBLAS at one thread while encoding. Its worker threads spin while they wait: on 2 cores shared with
    other programs (load ~10) 32 emails took 13.6 s with its 2 threads and 2.3 s with one. This encoder
    parallelises over batches instead (`workers`)."""
    controller = _blas_controller()
    if controller is None:  # pragma: no cover - optional: correct without it, only slower on busy cores
        yield
        return
    with _BLAS_LOCK, controller.limit(limits=1, user_api="blas"):
        yield


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the BLAS numpy loaded, found once: `threadpool_limits` looks for the libraries
    in /proc/self/maps on every call (0.25 ms, on every search query)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()
