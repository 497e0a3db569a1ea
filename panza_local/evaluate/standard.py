"""The standard BERTScore and MAUVE: the maintained packages (`bert-score`, `mauve-text`) on their standard
feature models, used when those models are on disk (`panza models pull roberta-large`, `gpt2-large`).

BERTScore (Zhang et al., 2020) as `bert_score.BERTScorer` computes it for English by default: roberta-large,
layer 17, F1, no idf, no baseline rescaling. MAUVE (Pillutla et al., 2021) as `mauve.compute_mauve` computes
it by default: features are gpt2-large's last hidden state at each text's final token (texts cut at 1024
tokens; the featurisation of `mauve.compute_mauve(p_text=...)`, done here so the model loads once per run),
quantised and compared by the package with its default settings. Nothing is downloaded here: a model that
is not on disk makes the metric null, with the reason and the command that fetches it.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BERTSCORE_MODEL, BERTSCORE_LAYER = "roberta-large", 17
MAUVE_MODEL = "gpt2-large"
MAUVE_MAX_TOKENS = 1024
# Where a model may sit in the local Hugging Face cache (the hub's current and its legacy repo names).
HUB_REPOS = {"roberta-large": ("FacebookAI/roberta-large", "roberta-large"),
             "gpt2-large": ("openai-community/gpt2-large", "gpt2-large")}


@dataclass(frozen=True)
class FeatureModel:
    """A feature model for a standard metric: where it is on disk, or why it is not used."""

    name: str
    path: Path | None
    layer: int | None = None
    why: str = ""

    def describe(self, package: str) -> str:
        """What the report says about this metric's model."""
        if self.path is None:
            return f"not computed: {self.why}"
        layer = f" layer {self.layer}" if self.layer is not None else " last layer, final token"
        return f"{package} {_version(package)} on {self.name}{layer} ({self.path})"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(not installed)"


def _is_model_dir(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def feature_model_dir(name: str) -> Path | None:
    """The folder of Hugging Face model `name` (a catalogue name such as `roberta-large`) on this machine:
    pulled into the home (`models/<name>`, or a folder with the weights inside it), else the local hub cache.
    None when it is nowhere; never touches the network."""
    from .. import paths

    root = paths.home() / "models" / name
    if root.is_dir():
        if _is_model_dir(root):
            return root
        for cfg in sorted(root.rglob("config.json")):
            if _is_model_dir(cfg.parent):
                return cfg.parent
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        return None
    for repo in HUB_REPOS.get(name, (name,)):
        with contextlib.suppress(Exception):  # not cached (or a partial download): not on disk
            folder = Path(snapshot_download(repo, local_files_only=True))
            if _is_model_dir(folder):
                return folder
    return None


def _missing(name: str, package: str) -> str:
    import importlib.util

    if importlib.util.find_spec(package.replace("-text", "").replace("-", "_")) is None:
        return f"the {package} package is not installed (fix: pip install {package})"
    return f"{name} is not on disk (fix: run `panza models pull {name}`)"


def standard_models() -> dict[str, FeatureModel]:
    """The feature models of the standard BERTScore and MAUVE: found on disk, or why not."""
    out = {}
    for key, name, layer, package in (("bertscore", BERTSCORE_MODEL, BERTSCORE_LAYER, "bert-score"),
                                      ("mauve", MAUVE_MODEL, None, "mauve-text")):
        why = _missing(name, package)
        path = feature_model_dir(name) if "not on disk" in why else None
        out[key] = FeatureModel(name, path, layer, "" if path else why)
    return out


# -- BERTScore ------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _bert_scorer(model_dir: str, num_layers: int):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bert_score import BERTScorer

    with _quiet():
        return BERTScorer(model_type=model_dir, num_layers=num_layers, lang=None, idf=False,
                          rescale_with_baseline=False, device="cpu")


def bertscore(candidates: Sequence[str], references: Sequence[str], model: FeatureModel) -> list[float]:
    """BERTScore F1 per (candidate, reference) pair, from the bert-score package."""
    if len(candidates) != len(references):
        raise ValueError("bertscore needs as many candidates as references")
    scorer = _bert_scorer(str(model.path), int(model.layer))
    with _quiet():
        _p, _r, f1 = scorer.score([c or " " for c in candidates], [r or " " for r in references], batch_size=16)
    return [float(x) for x in f1]


# -- MAUVE ----------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _featurizer(model_dir: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        net = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    finally:
        hf_logging.enable_progress_bar()
    return tok, net, {}


def features(texts: Sequence[str], model: FeatureModel):
    """MAUVE's features: the last hidden state at each text's final token (texts cut at 1024 tokens)."""
    import numpy as np
    import torch

    tok, net, cache = _featurizer(str(model.path))
    out = []
    with torch.inference_mode():
        for text in texts:
            if text not in cache:  # references repeat across configurations and seeds
                ids = tok.encode(text or " ", return_tensors="pt", truncation=True, max_length=MAUVE_MAX_TOKENS)
                hidden = net(input_ids=ids, output_hidden_states=True).hidden_states[-1]
                cache[text] = hidden[0, -1].float().numpy()
            out.append(cache[text])
    return np.stack(out)


def mauve(candidates: Sequence[str], references: Sequence[str], model: FeatureModel) -> float:
    """MAUVE of the drafts against the user's emails, from the mauve-text package (its default settings)."""
    import mauve as mauve_text

    p, q = features(candidates, model), features(references, model)
    with _quiet():
        return float(mauve_text.compute_mauve(p_features=p, q_features=q, verbose=False).mauve)


@contextlib.contextmanager
def _quiet():
    """The packages print progress bars (Python) and faiss clustering warnings (C, fd 2): keep them off the
    CLI's terminal for the call."""
    from .. import engine

    with engine.quiet_native(), contextlib.redirect_stdout(io.StringIO()):
        yield
