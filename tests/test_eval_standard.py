"""The standard BERTScore and MAUVE: the bert-score and mauve-text packages run for real on a model on disk.

roberta-large and gpt2-large are not downloaded here: the embedded all-MiniLM-L6-v2 folder stands in as the
feature model (the packages take any Hugging Face folder), which exercises the very code path and lets the
values be checked against the packages' documented behaviour and their own direct calls.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_eval import REFS, _fake_generate, _items
from test_eval_metrics import MAYA_A, MAYA_B, OTHER, OTHER2

from panza_local import catalogue, evaluate
from panza_local.evaluate import report, standard
from panza_local.evaluate.standard import FeatureModel


@pytest.fixture(scope="module")
def minilm() -> Path:
    return catalogue.embedding_model_dir()


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache (the machine's own one may hold anything)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            os.symlink(f, dst / f.name)
    return dst


def test_bert_score_package_on_a_local_model(minilm):
    import bert_score

    model = FeatureModel("all-minilm-l6-v2", minilm, layer=6)
    f1 = standard.bertscore([MAYA_A, MAYA_B, OTHER, OTHER2], [MAYA_A] * 4, model)
    assert f1[0] == pytest.approx(1.0, abs=1e-5)  # identical texts: F1 1 (no baseline rescaling)
    assert f1[1] > f1[2] and f1[1] > f1[3]  # a paraphrase beats unrelated text
    # exactly what the package's own one-call API gives with its defaults (idf off, no rescaling)
    _p, _r, ref = bert_score.score([MAYA_A, MAYA_B, OTHER, OTHER2], [MAYA_A] * 4, model_type=str(minilm),
                                   num_layers=6)
    assert f1 == pytest.approx([float(x) for x in ref], abs=1e-6)


def test_mauve_text_package_on_features_from_a_local_model(minilm):
    import mauve

    model = FeatureModel("all-minilm-l6-v2", minilm)
    mine = [f"Hi Jonas, could we meet on site on day {i}? The drainage on side {i} looks wrong. Cheers, Maya"
            for i in range(20)]
    others = [f"The quarterly revenue figures number {i} for the gas desk are attached; review before call {i}."
              for i in range(20)]
    assert standard.mauve(mine, mine, model) == pytest.approx(1.0)  # identical sets: 1
    assert standard.mauve(list(reversed(mine)), mine, model) == pytest.approx(1.0)
    apart = standard.mauve(others, mine, model)
    assert apart < 0.05  # another topic entirely: near 0
    # the package's compute_mauve on the same features, called directly
    p, q = standard.features(others, model), standard.features(mine, model)
    assert p.shape == (20, 384) and np.allclose(standard.features([mine[3]], model)[0], q[3])
    assert apart == pytest.approx(mauve.compute_mauve(p_features=p, q_features=q).mauve)


def test_feature_models_are_found_on_disk_or_named_with_the_pull_command(home, minilm, no_hub_cache):
    found = standard.standard_models()
    assert found["bertscore"].path is None and found["mauve"].path is None
    assert found["bertscore"].why == "roberta-large is not on disk (fix: run `panza models pull roberta-large`)"
    assert "panza models pull gpt2-large" in found["mauve"].why
    # pulled into the home: the folder itself, or the weights one level down
    _copy_model(minilm, home / "models" / "roberta-large")
    _copy_model(minilm, home / "models" / "gpt2-large" / "snapshot")
    found = standard.standard_models()
    assert found["bertscore"].path == home / "models" / "roberta-large" and found["bertscore"].layer == 17
    assert found["mauve"].path == home / "models" / "gpt2-large" / "snapshot"
    # or in the Hugging Face cache under the hub's name
    shutil.rmtree(home / "models" / "gpt2-large")
    repo = no_hub_cache / "models--openai-community--gpt2-large"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    _copy_model(minilm, repo / "snapshots" / ("0" * 40))
    assert standard.feature_model_dir("gpt2-large") == repo / "snapshots" / ("0" * 40)


def test_eval_reports_which_models_it_used(home, tmp_path, minilm, no_hub_cache):
    stand_in = {"bertscore": FeatureModel("all-minilm-l6-v2", minilm, layer=6),
                "mauve": FeatureModel("all-minilm-l6-v2", minilm)}
    res = evaluate.evaluate(_items(), configs=("stock", "adapter"), seeds=2, generate_fn=_fake_generate,
                            settings=object(), standard=stand_in)
    ad, st = res.configs["adapter"], res.configs["stock"]
    assert ad["bertscore"] == pytest.approx(1.0, abs=1e-5) and st["bertscore"] < ad["bertscore"]
    assert ad["bertscore_minilm"] == pytest.approx(1.0, abs=1e-4) and st["bertscore_minilm"] < 0.9
    assert 0.0 <= st["mauve"] <= 1.0 and st["mauve_std"] >= 0.0 and ad["mauve_minilm"] == pytest.approx(1.0)
    used = res.scoring_models
    assert used["bertscore"].startswith("bert-score 0.3.") and f"all-minilm-l6-v2 layer 6 ({minilm})" in used["bertscore"]
    assert used["mauve"].startswith("mauve-text 0.4") and "final token" in used["mauve"]
    assert "re-implementation" in used["bertscore_minilm"] and "re-implementation" in used["mauve_minilm"]
    md = Path(report.write_report(res.to_dict(samples=True), tmp_path / "with")).read_text()
    assert f"- `bertscore`: {used['bertscore']}" in md
    assert "| configuration | bleu | rouge1 | rouge2 | rougeL | bertscore | mauve | bertscore_minilm | mauve_minilm |" in md
    # nothing on disk (the default): the standard keys are null, the report says why and how to fetch them
    res = evaluate.evaluate(_items(), configs=("stock",), seeds=1, generate_fn=_fake_generate, settings=object())
    st = res.configs["stock"]
    assert st["bertscore"] is None and st["mauve"] is None and st["bertscore_std"] is None
    assert isinstance(st["bertscore_minilm"], float) and isinstance(st["mauve_minilm"], float)
    assert any(n.startswith("bertscore: roberta-large is not on disk (fix: run `panza models pull roberta-large`)")
               for n in res.notes)
    md = Path(report.write_report(res.to_dict(samples=True), tmp_path / "without")).read_text()
    assert "- `bertscore`: not computed: roberta-large is not on disk" in md
    assert "| configuration | bleu | rouge1 | rouge2 | rougeL | bertscore_minilm | mauve_minilm |" in md
    assert len(REFS) == res.n
