"""Evaluation metrics on fixed texts: known values, identical = 1, unrelated = low."""

from __future__ import annotations

import math

import numpy as np
import pytest

from panza_local.evaluate import metrics as m

REF = "the cat is sitting on the mat"
CAND = "the cat sat on the mat today"

MAYA_A = ("Hi Jonas,\n\nCould we meet at the site on Tuesday at 10? The drainage on the north side still "
          "looks wrong to me.\n\nCheers,\nMaya")
MAYA_B = ("Hi Jonas,\n\nCan we meet on site Tuesday at ten? I think the drainage on the north side is still "
          "wrong.\n\nCheers,\nMaya")
OTHER = ("The quarterly revenue figures for the gas trading desk are attached; please review the "
         "spreadsheet before the board call.")
OTHER2 = "Dear team, the new parking policy starts next month and all badges must be renewed at reception."


def test_clean_lowercases_and_drops_punctuation():
    assert m.clean("Hi Bob,  can we   MOVE it? Thanks!") == "hi bob can we move it thanks"


def test_bleu_known_values():
    # 5 of 7 unigrams and 3 of 6 bigrams match; equal lengths, so no brevity penalty.
    assert m.bleu_n(CAND, REF, 1) == pytest.approx(5 / 7)
    assert m.bleu_n(CAND, REF, 2) == pytest.approx(math.sqrt(5 / 7 * 3 / 6))
    # one trigram ("on the mat") of 5 matches
    assert m.bleu_n(CAND, REF, 3) == pytest.approx((5 / 7 * 3 / 6 * 1 / 5) ** (1 / 3))
    assert m.bleu_n(CAND, REF, 4) == 0.0  # no 4-gram in common, no smoothing (as Panza's torchmetrics)
    assert m.bleu(CAND, REF) == pytest.approx((5 / 7 + math.sqrt(5 / 14) + (1 / 14) ** (1 / 3)) / 4)


def test_bleu_brevity_penalty_and_cleaning():
    # A 3-word candidate that matches perfectly against a 6-word reference: BP = exp(1 - 6/3).
    assert m.bleu_n("Move the meeting", "move the meeting to friday please", 1) == pytest.approx(math.exp(-1))
    # Case and punctuation do not matter.
    assert m.bleu("Hi Bob, see you FRIDAY!", "hi bob see you friday") == pytest.approx(1.0)


def test_bleu_identical_and_unrelated():
    assert m.bleu(MAYA_A, MAYA_A) == pytest.approx(1.0)
    assert m.bleu(OTHER, MAYA_A) < 0.05
    assert m.bleu("", MAYA_A) == 0.0


def test_rouge_known_values():
    r = m.rouge(CAND, REF)
    assert r["rouge1"] == pytest.approx(5 / 7)
    assert r["rouge2"] == pytest.approx(3 / 6)
    # LCS: the cat ... on the mat = 5 tokens
    assert r["rougeL"] == pytest.approx(5 / 7)
    assert m.rouge(MAYA_A, MAYA_A) == {"rouge1": pytest.approx(1.0), "rouge2": pytest.approx(1.0),
                                        "rougeL": pytest.approx(1.0)}
    assert m.rouge(OTHER, MAYA_A)["rouge2"] == 0.0


def test_bertscore_orders_identical_paraphrase_unrelated():
    s = m.bertscore_minilm([MAYA_A, MAYA_B, OTHER, OTHER2], [MAYA_A, MAYA_A, MAYA_A, MAYA_A])
    f = [x["f1"] for x in s]
    assert f[0] == pytest.approx(1.0, abs=1e-4)
    assert f[1] > 0.75
    assert f[2] < 0.4 and f[3] < 0.4
    assert f[1] - max(f[2], f[3]) > 0.4
    assert all(0 <= x["precision"] <= 1.0001 and 0 <= x["recall"] <= 1.0001 for x in s)


def test_mauve_same_vs_disjoint_distributions():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    p = centres[rng.integers(0, 4, 200)] + rng.normal(size=(200, 16))
    q = centres[rng.integers(0, 4, 200)] + rng.normal(size=(200, 16))
    far = rng.normal(size=(200, 16)) + 40  # another region entirely
    same = m.mauve_from_features(p, q)
    apart = m.mauve_from_features(p, far)
    assert same > 0.9
    assert apart < 0.05
    assert m.mauve_from_features(p, p) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        m.mauve_from_features(p[:1], q)


def test_mauve_on_texts_uses_local_embeddings():
    mine = [MAYA_A, MAYA_B] * 6
    assert m.mauve_minilm(mine, mine) == pytest.approx(1.0)
    assert m.mauve_minilm([OTHER, OTHER2] * 6, mine) < 0.2


def test_greeting_and_signoff():
    assert m.greeting(MAYA_A) == "hi"
    assert m.greeting("Dear Maya,\n\nThe plans ...") == "dear"
    assert m.greeting("The plans are attached.") == ""
    assert m.signoff(MAYA_A) == "cheers maya"
    # Panza's cleaned corpus glues the sign-off to the last sentence.
    assert m.signoff("Let's talk and figure out a time to get together.Best,Jeff") == "best jeff"
    assert m.signoff("Thanks, Tom") == "thanks tom"
    assert m.signoff("This email just ends in the middle of a long sentence without a closing") == ""


def test_style_identical_and_different():
    same = m.style(MAYA_A, MAYA_A)
    assert same == {"length_words": same["ref_length_words"], "ref_length_words": same["ref_length_words"],
                    "length_ratio": 1.0, "length_match": 1.0, "greeting_match": 1.0, "signoff_match": 1.0,
                    "vocab_overlap": 1.0}
    diff = m.style(OTHER2, MAYA_A)
    assert m.style("one two", "one two three four")["length_match"] == 0.5 == m.style("a b c d", "a b")["length_match"]
    assert diff["greeting_match"] == 0.0 and diff["signoff_match"] == 0.0
    assert diff["vocab_overlap"] < 0.15


def test_score_set_has_every_metric(home):
    from panza_local.evaluate.standard import FeatureModel

    nothing = {"bertscore": FeatureModel("roberta-large", None, 17, "not on disk"),
               "mauve": FeatureModel("gpt2-large", None, None, "not on disk")}
    out = m.score_set([MAYA_A, MAYA_B, OTHER], [MAYA_A, MAYA_A, MAYA_A], standard=nothing)
    for key in ("bleu", "rouge1", "rouge2", "rougeL", "bertscore_minilm", "mauve_minilm", "length_words",
                "greeting_match", "signoff_match", "vocab_overlap", "length_ratio", "length_match"):
        assert key in out and not math.isnan(out[key])
    assert out["bertscore"] is None and out["mauve"] is None  # the standard ones: their models are not here
    assert 0 < out["bleu"] < 1 and 0 < out["rougeL"] < 1
    with pytest.raises(ValueError):
        m.score_set([MAYA_A], [])
