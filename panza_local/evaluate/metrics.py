"""Scores for drafts against what the user really wrote: BLEU, ROUGE, BERTScore, MAUVE, style statistics.

BLEU and ROUGE follow Panza's evaluation: texts are lower-cased and stripped of punctuation first, and
BLEU is the mean of BLEU-1..4 (each the geometric mean of clipped n-gram precisions up to n, with the
brevity penalty, no smoothing: torchmetrics' `BLEUScore(n_gram=n)`, which Panza used). ROUGE-1/2/L are
F-measures from `rouge_score`.

`bertscore` and `mauve` are the standard metrics from the maintained packages on their standard models
(`standard.py`: roberta-large layer 17, gpt2-large), null when those models are not on disk.
`bertscore_minilm` and `mauve_minilm` are this module's re-implementations on the embedded
all-MiniLM-L6-v2 (loaded from its package folder, offline), always available, not comparable with
published numbers: BERTScore's greedy token matching (Zhang et al., 2020) over MiniLM's contextual token
embeddings, idf-weighted by the reference set; MAUVE (Pillutla et al., 2021) on MiniLM sentence
embeddings with PCA + k-means and the divergence frontier. Nothing here downloads a model.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

_PUNCT = str.maketrans({c: None for c in string.punctuation})
# Which hidden layer BERTScore reads. Measured on fixed texts (a paraphrase, an unrelated email, the same
# greeting and sign-off around other content): MiniLM's last layer separates them best (F1 0.90 for the
# paraphrase vs 0.16-0.24 for the others; layer 5: 0.92 vs 0.40-0.49; the embeddings layer 0.81 vs 0.17-0.29).
BERT_LAYER = -1
BERT_MAX_TOKENS = 512


def clean(text: str) -> str:
    """Lower-case, drop ASCII punctuation, collapse whitespace (Panza's clean-up before BLEU/ROUGE)."""
    return " ".join(text.translate(_PUNCT).lower().split())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_n(candidate: str, references: Sequence[str] | str, n: int) -> float:
    """Sentence BLEU with n-grams up to `n` (uniform weights, brevity penalty, no smoothing) on cleaned text."""
    refs = [references] if isinstance(references, str) else list(references)
    cand = clean(candidate).split()
    ref_toks = [clean(r).split() for r in refs]
    if not cand or not any(ref_toks):
        return 0.0
    log_p = 0.0
    for k in range(1, n + 1):
        counts = _ngrams(cand, k)
        max_ref: Counter = Counter()
        for r in ref_toks:
            max_ref |= _ngrams(r, k)
        clipped = sum(min(c, max_ref[g]) for g, c in counts.items())
        total = max(len(cand) - k + 1, 0)
        if clipped == 0 or total == 0:
            return 0.0
        log_p += math.log(clipped / total) / n
    # Closest reference length (ties: the shorter), as sacrebleu and torchmetrics do.
    r_len = min((abs(len(r) - len(cand)), len(r)) for r in ref_toks)[1]
    bp = 1.0 if len(cand) > r_len else math.exp(1 - r_len / len(cand))
    return bp * math.exp(log_p)


def bleu(candidate: str, references: Sequence[str] | str) -> float:
    """Mean of BLEU-1..4 on cleaned text (Panza's BLEU)."""
    return sum(bleu_n(candidate, references, n) for n in range(1, 5)) / 4


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)


def rouge(candidate: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures on cleaned text."""
    scores = _rouge_scorer().score(clean(reference), clean(candidate))
    return {k: float(v.fmeasure) for k, v in scores.items()}


# --- BERTScore -----------------------------------------------------------------------------------------

def _token_embeddings(texts: Sequence[str], layer: int | None = None):
    """Per text: (token ids, L2-normalised contextual embeddings) without [CLS]/[SEP]."""
    import torch

    from ..retrieval import embed

    st = embed.model()
    tok, net = st[0].tokenizer, st[0].auto_model
    out = []
    with embed._LOCK, torch.inference_mode():
        for text in texts:
            enc = tok(text or " ", return_tensors="pt", truncation=True, max_length=BERT_MAX_TOKENS)
            states = net(**enc, output_hidden_states=True).hidden_states
            hidden = states[BERT_LAYER if layer is None else layer][0]
            ids = enc["input_ids"][0].tolist()
            keep = [i for i, t in enumerate(ids) if t not in tok.all_special_ids]
            vecs = torch.nn.functional.normalize(hidden[keep], dim=-1)
            out.append(([ids[i] for i in keep], vecs.numpy()))
    return out


def idf_weights(references: Sequence[str]) -> dict[int, float]:
    """BERTScore's idf over the reference set: log((M + 1) / (df + 1)) per wordpiece id."""
    from ..retrieval import embed

    tok = embed.model()[0].tokenizer
    df: Counter = Counter()
    for ref in references:
        df.update(set(tok(ref, truncation=True, max_length=BERT_MAX_TOKENS)["input_ids"]))
    m = len(references)
    return {t: math.log((m + 1) / (c + 1)) for t, c in df.items()} | {"default": math.log(m + 1)}


def bertscore_minilm(candidates: Sequence[str], references: Sequence[str], idf: bool = True) -> list[dict]:
    """BERTScore precision/recall/F1 per pair on MiniLM (greedy cosine matching of token embeddings)."""
    import numpy as np

    if len(candidates) != len(references):
        raise ValueError("bertscore needs as many candidates as references")
    weights = idf_weights(references) if idf else None
    cand_emb = _token_embeddings(candidates)
    ref_emb = _token_embeddings(references)
    results = []
    for (c_ids, c_vec), (r_ids, r_vec) in zip(cand_emb, ref_emb):
        if not c_ids or not r_ids:
            results.append({"precision": 0.0, "recall": 0.0, "f1": 0.0})
            continue
        sim = c_vec @ r_vec.T

        def w(ids):
            ws = np.array([weights.get(t, weights["default"]) for t in ids]) if weights else np.ones(len(ids))
            # Tokens every reference shares weigh 0; if that is all of them, weigh them uniformly instead.
            return ws if ws.sum() > 1e-9 else np.ones(len(ids))

        wc, wr = w(c_ids), w(r_ids)
        p = float((sim.max(axis=1) * wc).sum() / max(wc.sum(), 1e-9))
        r = float((sim.max(axis=0) * wr).sum() / max(wr.sum(), 1e-9))
        f = 2 * p * r / (p + r) if p + r > 0 else 0.0
        results.append({"precision": p, "recall": r, "f1": f})
    return results


# --- MAUVE ---------------------------------------------------------------------------------------------

def _kl(p, q) -> float:
    import numpy as np

    if np.any((p > 0) & (q == 0)):
        return math.inf
    m = (p > 0) & (q > 0)
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def mauve_from_features(p_feats, q_feats, *, num_buckets: int | str = "auto", explained_variance: float = 0.9,
                        scaling: float = 5.0, points: int = 25, seed: int = 25) -> float:
    """MAUVE between two sets of feature vectors (rows): 1.0 = same distribution, near 0 = disjoint."""
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import auc
    from sklearn.preprocessing import normalize

    p_feats, q_feats = np.asarray(p_feats, dtype=np.float64), np.asarray(q_feats, dtype=np.float64)
    if len(p_feats) < 2 or len(q_feats) < 2:
        raise ValueError("MAUVE needs at least two texts on each side")
    if num_buckets == "auto":
        num_buckets = max(2, round(min(len(p_feats), len(q_feats)) / 10))
    data = normalize(np.vstack([q_feats, p_feats]), norm="l2")
    pca = PCA(n_components=None, random_state=seed + 1).fit(data)
    keep = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= explained_variance)) + 1
    data = pca.transform(data)[:, :keep]
    labels = KMeans(n_clusters=int(num_buckets), n_init=5, max_iter=500, random_state=seed + 2).fit_predict(data)
    q_hist = np.bincount(labels[:len(q_feats)], minlength=num_buckets) / len(q_feats)
    p_hist = np.bincount(labels[len(q_feats):], minlength=num_buckets) / len(p_feats)
    curve = [[0.0, math.inf]]
    for w in np.linspace(1e-6, 1 - 1e-6, points):
        mix = w * p_hist + (1 - w) * q_hist
        curve.append([_kl(q_hist, mix), _kl(p_hist, mix)])
    curve.append([math.inf, 0.0])
    x, y = np.exp(-scaling * np.asarray(curve)).T
    # Sort along each axis; ties broken so the curve runs along its upper envelope (identical sets give
    # exactly 1.0 instead of whatever an unstable argsort makes of the tied points).
    ix, iy = np.lexsort((-y, x)), np.lexsort((-x, y))
    return float(0.5 * (auc(x[ix], y[ix]) + auc(y[iy], x[iy])))


def mauve_minilm(candidates: Sequence[str], references: Sequence[str], **kwargs) -> float:
    """MAUVE of the generated set against the reference set, on the embedded MiniLM sentence embeddings."""
    from ..retrieval import embed

    return mauve_from_features(embed.embed(list(candidates)), embed.embed(list(references)), **kwargs)


# --- Style ---------------------------------------------------------------------------------------------

_GREETING = re.compile(r"^\s*(hi|hello|hey|dear|good (?:morning|afternoon|evening)|morning|greetings|"
                       r"hallo|hej|bonjour|ciao|hola)\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9']+")


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.strip().splitlines() if ln.strip()]


def greeting(text: str) -> str:
    """The greeting word the email opens with ('hi', 'dear', ...), or '' when it has none."""
    lines = _lines(text)
    if not lines:
        return ""
    m = _GREETING.match(lines[0])
    return m.group(1).lower() if m else ""


def signoff(text: str) -> str:
    """The closing ('cheers maya', 'best jeff'): the last short line, with the line above it when that
    one is a short phrase ending in a comma; '' when the email ends mid-paragraph."""
    lines = _lines(text)
    if not lines:
        return ""
    last = lines[-1]
    tail = re.split(r"(?<=[.!?])\s*", last)[-1] or last  # "... 7822.Best,Jeff" -> "Best,Jeff"
    if len(tail.split()) > 4:
        return ""
    if len(lines) > 1 and tail == last and lines[-2].endswith(",") and len(lines[-2].split()) <= 4:
        tail = f"{lines[-2]} {tail}"
    return " ".join(re.sub(r"[^\w\s]", " ", tail.lower()).split())


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


def style(candidate: str, reference: str) -> dict[str, float]:
    """Style agreement of one draft with the real email: length, greeting, sign-off, vocabulary."""
    cw, rw = words(candidate), words(reference)
    cv, rv = set(cw), set(rw)
    return {
        "length_words": float(len(cw)),
        "ref_length_words": float(len(rw)),
        "length_ratio": len(cw) / max(len(rw), 1),
        "length_match": min(len(cw), len(rw)) / max(len(cw), len(rw), 1),   # 1 = as long as theirs, on a 0-1 scale
        "greeting_match": float(greeting(candidate) == greeting(reference)),
        "signoff_match": float(signoff(candidate) == signoff(reference)),
        "vocab_overlap": len(cv & rv) / max(len(cv | rv), 1),
    }


def score_set(candidates: Sequence[str], references: Sequence[str], *, with_models: bool = True,
              standard: dict | None = None) -> dict:
    """Every metric for one generated set against its references: means over pairs, MAUVE over the set.

    `standard` ({"bertscore", "mauve"} -> standard.FeatureModel, default: what `standard_models()` finds)
    says which feature models the standard metrics use; a metric whose model is missing is None."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError("score_set needs as many candidates as references, at least one")
    n = len(candidates)
    out: dict[str, float] = {"bleu": sum(bleu(c, r) for c, r in zip(candidates, references)) / n}
    rouges = [rouge(c, r) for c, r in zip(candidates, references)]
    for key in ("rouge1", "rouge2", "rougeL"):
        out[key] = sum(r[key] for r in rouges) / n
    styles = [style(c, r) for c, r in zip(candidates, references)]
    for key in styles[0]:
        out[key] = sum(s[key] for s in styles) / n
    if with_models:
        from . import standard as std

        models = standard if standard is not None else std.standard_models()
        bert, mv = models["bertscore"], models["mauve"]
        out["bertscore"] = sum(std.bertscore(candidates, references, bert)) / n if bert.path else None
        out["mauve"] = (std.mauve(candidates, references, mv) if n >= 2 else float("nan")) if mv.path else None
        out["bertscore_minilm"] = sum(s["f1"] for s in bertscore_minilm(candidates, references)) / n
        out["mauve_minilm"] = mauve_minilm(candidates, references) if n >= 2 else float("nan")
    return out
