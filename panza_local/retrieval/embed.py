"""The embedding model (all-MiniLM-L6-v2 by default), loaded from its package folder, offline.

`embed()` runs the model with numpy (`minilm.Encoder`): the same vectors as sentence-transformers (cosine
>= 0.99999, tests/test_embed_light.py) without importing torch, transformers or sentence-transformers,
whose imports dominated a cold `panza draft` for a query that takes milliseconds (bench/results/embed.md).
`model()` still gives the
SentenceTransformer, for the evaluation metrics that need token-level features.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

_LOCK = threading.Lock()


@lru_cache(maxsize=2)
def encoder(name: str = "all-minilm-l6-v2"):
    """The numpy encoder of model `name`, loaded once from its package folder (memory-mapped: milliseconds)."""
    from .. import catalogue
    from .minilm import Encoder

    return Encoder(catalogue.embedding_model_dir(name))


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=2)
def model(name: str = "all-minilm-l6-v2"):
    """A SentenceTransformer loaded once from the embedded model folder (never from the hub): metrics only."""
    from .. import catalogue

    folder = catalogue.embedding_model_dir(name)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar for a 0.1 s load, in every command's stderr
    try:
        return SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    finally:
        hf_logging.enable_progress_bar()  # (it also switched off the hub's bars, which `models pull` shows)


def embed(texts: list[str], name: str = "all-minilm-l6-v2", batch_size: int = 64):
    """L2-normalised float32 embeddings, one row per text (cosine similarity = dot product)."""
    import numpy as np

    if not texts:
        return np.zeros((0, dims(name)), dtype=np.float32)
    enc = encoder(name)
    with _LOCK:
        return enc.encode(list(texts), batch_size=batch_size, workers=_workers() if len(texts) > batch_size else 1)


def dims(name: str = "all-minilm-l6-v2") -> int:
    """Embedding width of model `name` (from the catalogue, no model load)."""
    from .. import catalogue

    return catalogue.get(name).dims or 384


_CHROMA_CLASS = None


def chroma_function(name: str = "all-minilm-l6-v2"):
    """A Chroma embedding function backed by `embed()` (chromadb's default one downloads a model: never used)."""
    global _CHROMA_CLASS
    if _CHROMA_CLASS is None:
        from chromadb.api.types import Documents, EmbeddingFunction
        from chromadb.utils.embedding_functions import register_embedding_function

        class PanzaEmbedding(EmbeddingFunction[Documents]):
            """The embedded MiniLM model (numpy), loaded offline from its package folder."""

            def __init__(self, model_name: str = "all-minilm-l6-v2"):
                self.model_name = model_name

            def __call__(self, input: Documents):
                return list(embed(list(input), self.model_name))

            @staticmethod
            def name() -> str:
                return "panza-local"

            def get_config(self) -> dict:
                return {"model": self.model_name}

            @staticmethod
            def build_from_config(config: dict):
                return PanzaEmbedding(config.get("model", "all-minilm-l6-v2"))

            def default_space(self):
                return "cosine"

            def supported_spaces(self):
                return ["cosine", "ip", "l2"]

        try:
            register_embedding_function(PanzaEmbedding)
        except ValueError:  # already registered (module reloaded in the same process)
            pass
        _CHROMA_CLASS = PanzaEmbedding
    return _CHROMA_CLASS(name)
