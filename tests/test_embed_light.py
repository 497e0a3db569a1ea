"""The numpy MiniLM encoder (retrieval/minilm.py): the same vectors as sentence-transformers, so indexes built
by either stay valid, and batching (lengths sorted, no padding) that changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import usermail
from conftest import SHARED

from panza_local import catalogue
from panza_local.retrieval import embed, minilm

ODD = ["", " ", "hi", "Ünïcödé — ça va? 日本語のテキスト 😀", "x" * 3000,  # past the 256-token cut
       "word " * 400, "URL https://example.org/a?b=c&d=e, e-mail bob@example.com, 3.14 $5 #tag"]


def _real_texts(per_user: int = 40) -> list[str]:
    """What the index embeds for real mail: 40 emails of each ../shared/data user, or without it two years of
    the sample person's mail (hers and what she received)."""
    from panza_local.retrieval.index import message_text

    if not (SHARED / "panza").is_dir():
        return [message_text(d["subject"], d["email"]) for seed in (1, 2)
                for d in usermail.sample_emails(seed, mine_only=False)]
    out = []
    for f in sorted((SHARED / "panza").glob("*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= per_user:
                    break
                rec = json.loads(line)
                out.append(message_text(rec.get("subject"), rec.get("email")))  # what the index embeds
    return out


@pytest.mark.slow
def test_same_vectors_as_sentence_transformers_on_real_mail():
    texts = _real_texts() + ODD
    light = embed.embed(texts)
    st = embed.model().encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)
    cos = (light * st).sum(1) / np.linalg.norm(st, axis=1)
    assert len(texts) > 200
    assert cos.min() >= 0.999, f"min cosine {cos.min():.6f} on text {int(cos.argmin())}"
    # what the numpy forward actually reaches (float32 both sides): far above the requirement
    assert np.median(cos) >= 0.99999


def test_batches_equal_one_by_one():
    enc = embed.encoder()
    texts = [f"note {i}: " + "lorem ipsum dolor " * (i % 23) for i in range(70)] + ODD
    together = enc.encode(texts, batch_size=16, workers=2)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    assert together.dtype == np.float32 and together.shape == (len(texts), embed.dims())
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert (together * alone).sum(1).min() >= 0.99999
    # rows stay with their text: different texts give different vectors
    assert (together[:-1] * together[1:]).sum(1).min() < 0.99


def test_long_text_is_cut_like_sentence_transformers():
    enc = embed.encoder()
    assert enc.max_len == 256
    ids = enc.tokenizer.encode("word " * 400).ids
    assert len(ids) == 256 and ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP] kept after the cut
    a, b = enc.encode(["word " * 400, "word " * 300])
    assert float(a @ b) > 0.99999  # both cut to the same 254 words


def test_empty_input_and_dims():
    out = embed.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_memory_mapped_weights_match_safetensors():
    from safetensors.numpy import load_file

    path = catalogue.embedding_model_dir() / "model.safetensors"
    mine, ref = minilm.read_safetensors(path), load_file(str(path))
    assert mine.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(mine[k], ref[k])


def test_gelu_matches_erf():
    import math

    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    got = minilm._gelu_(x.copy())
    assert np.abs(got - want).max() < 2e-6


def test_unsupported_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match="BERT"):
        minilm.Encoder(tmp_path)
