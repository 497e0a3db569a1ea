"""The evaluation harness: items, seed aggregation, the report, and `panza eval` end to end on the real model."""

from __future__ import annotations

import json

import pytest
import usermail

from panza_local import evaluate, sample
from panza_local.errors import NoDataError
from panza_local.evaluate import report as evaluate_report

REFS = ["Hi Jonas,\n\nCould we meet on site on Tuesday at 10?\n\nCheers,\nMaya",
        "Hi Tom,\n\nPlease add the tree protection zones to sheet 4.\n\nCheers,\nMaya",
        "Hi Elena,\n\nWe need 12 silver birches for Harbour Park, root-balled if you have them.\n\nCheers,\nMaya"]


def _items():
    return [evaluate.Item(instruction=f"instruction {i}", reference=r) for i, r in enumerate(REFS)]


def _fake_generate(item, config, seed, settings, examples=None, adapter=True):
    """Deterministic stand-in for the model: 'adapter' copies the email, 'stock' writes something else."""
    if config == "adapter":
        text = item.reference
    else:
        text = f"Dear Sir or Madam, regarding {item.instruction}, variant {seed}. Best regards"
    return evaluate.Generation(config=config, seed=seed, index=-1, text=text)


def test_evaluate_aggregates_over_seeds_and_configs():
    calls = []

    def gen(*a):
        calls.append(a[1:3])
        return _fake_generate(*a)

    result = evaluate.evaluate(_items(), configs=("stock", "adapter"), seeds=2, generate_fn=gen,
                               settings=object(), with_models=False)
    assert result.n == 3 and result.seeds == 2
    # config outer, then item, then seed: a model is loaded once per config and prompts reuse their KV cache
    assert calls[:4] == [("stock", 1234), ("stock", 1235), ("stock", 1234), ("stock", 1235)]
    assert len(calls) == 2 * 3 * 2
    ad, st = result.configs["adapter"], result.configs["stock"]
    assert ad["bleu"] == pytest.approx(1.0) and ad["rougeL"] == pytest.approx(1.0) and ad["bleu_std"] == 0.0
    assert ad["greeting_match"] == 1.0 and ad["signoff_match"] == 1.0
    assert st["bleu"] < 0.2 and st["greeting_match"] == 0.0
    assert st["length_words_std"] == 0.0 and set(st["per_seed"]) == {"1234", "1235"}
    # configurations not asked for are still listed, with the reason they have no numbers
    for c in ("stock+rag", "adapter+rag"):
        assert result.configs[c]["bleu"] is None and result.configs[c]["skipped"]


def test_seed_spread_is_the_std_across_seeds():
    def gen(item, config, seed, settings, examples=None, adapter=True):
        # seed 1234 writes the email, seed 1235 something unrelated: BLEU 1 and ~0, std ~0.7
        text = item.reference if seed == 1234 else "Completely unrelated words about quarterly gas figures."
        return evaluate.Generation(config=config, seed=seed, index=-1, text=text)

    result = evaluate.evaluate(_items(), configs=("stock",), seeds=2, generate_fn=gen, settings=object(),
                               with_models=False)
    st = result.configs["stock"]
    assert st["per_seed"]["1234"]["bleu"] == pytest.approx(1.0)
    assert st["per_seed"]["1235"]["bleu"] < 0.05
    assert st["bleu_std"] == pytest.approx(abs(1.0 - st["per_seed"]["1235"]["bleu"]) / 2 ** 0.5)


def test_items_from_a_panza_jsonl(tmp_path):
    notes: list[str] = []
    items = evaluate.items_from_jsonl(usermail.jsonl("jeff_johnson_clean.jsonl", tmp_path), limit=5, notes=notes)
    assert len(items) == 5
    assert all(it.instruction.startswith("Write an email about: ") for it in items)
    assert any("TF-IDF" in n for n in notes)  # says that the instructions are a fallback
    # the fallback names the email's own topic words, not a copy of its first sentence
    it = items[0]
    words = it.instruction.split(": ", 1)[1].split(", ")
    assert 1 <= len(words) <= 6 and all(w.lower() in it.reference.lower() for w in words)


def test_items_from_jsonl_prefers_the_rows_own_instruction(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"email": REFS[0], "summary": "Ask Jonas to meet on site Tuesday."}) + "\n\n"
                 + json.dumps({"email": REFS[1], "subject": "Drawings"}) + "\n", encoding="utf-8")
    notes: list[str] = []
    items = evaluate.items_from_jsonl(f, notes=notes)
    assert items[0].instruction == "Ask Jonas to meet on site Tuesday."
    assert items[1].instruction.startswith("Write an email about:") and items[1].subject == "Drawings"
    assert any("1 of 2 rows had no instruction" in n for n in notes)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no email field"}\n', encoding="utf-8")
    with pytest.raises(NoDataError, match="bad.jsonl:1"):
        evaluate.items_from_jsonl(bad)


def test_report_renders_with_loss_curves(home, tmp_path):
    result = evaluate.evaluate(_items(), configs=("stock", "adapter"), seeds=2, generate_fn=_fake_generate,
                               settings=object(), with_models=False)
    for c in ("stock", "adapter"):
        result.configs[c].update(mauve=0.5, mauve_std=0.1, bertscore=0.6, bertscore_std=0.05)
    result.adapter = "a1"
    folder = home / "adapters" / "a1"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"history": [{"step": s, "loss": 3.0 - s * 0.1, "val_loss": 3.1 - s * 0.08} for s in range(10)]}))
    path = evaluate_report.write_report(result.to_dict(samples=True), tmp_path / "rep")
    md = path.read_text()
    assert "| adapter | 1.000 ± 0.000" in md and "| stock+rag | -" in md
    for png in ("metrics.png", "style.png", "lengths.png", "loss.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"({png})" in md
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["n"] == 3


def test_loss_curves_reads_the_usual_shapes():
    assert evaluate_report.loss_curves({"train_loss": [3, 2.5, 2]}) == {"train_loss": [(0, 3), (1, 2.5), (2, 2)]}
    got = evaluate_report.loss_curves({"metrics": {"history": [{"iter": 5, "loss": 2.0}, {"iter": 10, "loss": 1.5}]}})
    assert got == {"history": [(5.0, 2.0), (10.0, 1.5)]}
    assert evaluate_report.loss_curves({"val_loss_after": 1.2}) == {}
    got = evaluate_report.loss_curves({"val_loss_before": 2.2, "history": [{"step": 13, "val_loss": 2.0},
                                                                           {"step": 26, "val_loss": 1.8}]})
    assert got["val_loss"] == [(0.0, 2.2), (13.0, 2.0), (26.0, 1.8)]  # the curve starts at the untrained model


@pytest.mark.slow
def test_eval_cli_end_to_end_on_the_embedded_model(home, tmp_path, capsys, monkeypatch):
    """`panza eval --data` on two of the sample person's emails, real model, real metrics, real report."""
    from panza_local import cli

    monkeypatch.setenv("PANZA_THREADS", "1")  # 2 shared cores: more threads than free cores stalls llama.cpp
    mine = [m for m in sample.sample_messages() if sample.SAMPLE_ME in m["From"]][:2]
    data = tmp_path / "maya.jsonl"
    data.write_text("".join(json.dumps({"email": m.get_payload().split("\nOn ")[0].strip(),
                                        "subject": m["Subject"]}) + "\n" for m in mine), encoding="utf-8")
    code = cli.main(["eval", "--data", str(data), "--limit", "2", "--seeds", "2", "--configs", "stock,adapter",
                     "--max-tokens", "48", "--json", "--report", str(tmp_path / "report")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["seeds"] == 2 and out["max_tokens"] == 48
    assert set(out["configs"]) == {"stock", "stock+rag", "adapter", "adapter+rag"}
    st = out["configs"]["stock"]
    for key in ("bleu", "rouge1", "rouge2", "rougeL", "mauve_minilm", "bertscore_minilm"):
        assert 0.0 <= st[key] <= 1.0 and st[f"{key}_std"] >= 0.0
    assert st["bertscore_minilm"] > 0.1  # real drafts about the same topic are not orthogonal to the email
    # the standard metrics need roberta-large / gpt2-large on disk: null here, and the report says why
    if out["scoring_models"]["bertscore"].startswith("not computed"):
        assert st["bertscore"] is None and any("panza models pull roberta-large" in n for n in out["notes"])
    assert "no adapter" in out["skipped"]["adapter"] and out["configs"]["adapter"]["bleu"] is None
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "metrics.png").is_file()


@pytest.fixture
def sample_store(home, tmp_path):
    """The sample mailbox ingested into a fresh store, with one pair per email the user wrote."""
    from panza_local import ingest, store

    mbox = sample.write_sample_mailbox(tmp_path / "maya.mbox")
    conn = store.connect()
    ingest.ingest(conn, [str(mbox)], me=[sample.SAMPLE_ME])
    mine = conn.execute("SELECT id, content_hash, subject FROM messages WHERE is_mine = 1").fetchall()
    for r in mine:  # what playback stores; its instructions are not what is tested here
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (?, ?, 'test', 'ok', ?, ?)", (r["id"], r["content_hash"], f"About {r['subject']}",
                                                           store.now()))
    yield conn
    conn.close()


def test_items_from_store_are_the_newest_held_out_emails(sample_store):
    conn = sample_store
    items = evaluate.items_from_store(conn)
    assert len(items) == 13  # newest 10% of 138
    dates = [conn.execute("SELECT date FROM messages WHERE id = ?", (it.message_id,)).fetchone()[0] for it in items]
    oldest_test = min(dates)
    n_newer = conn.execute("SELECT count(*) FROM messages WHERE is_mine = 1 AND date >= ?", (oldest_test,)).fetchone()
    assert n_newer[0] == 13  # nothing newer than the test split is left out of it
    assert all(it.to and it.subject and it.instruction.startswith("About ") for it in items)
    assert all("Cheers" in it.reference and ">" not in it.reference for it in items)
    five = evaluate.items_from_store(conn, limit=5)
    assert [it.key for it in five] == [items[i].key for i in (0, 2, 5, 7, 10)]  # spread over the whole period


def test_jsonl_rows_matching_the_store_use_its_split_and_instructions(sample_store, tmp_path):
    conn = sample_store
    test_items = evaluate.items_from_store(conn)
    train_body = conn.execute("SELECT body FROM messages WHERE is_mine = 1 ORDER BY date LIMIT 1").fetchone()[0]
    f = tmp_path / "mixed.jsonl"
    bodies = [train_body] + [it.reference for it in test_items[:3]]
    f.write_text("".join(json.dumps({"email": b}) + "\n" for b in bodies))
    notes: list[str] = []
    items = evaluate.items_from_jsonl(f, conn, notes=notes)
    assert [it.reference for it in items] == [it.reference.strip() for it in test_items[:3]]  # train row dropped
    assert [it.instruction for it in items] == [it.instruction for it in test_items[:3]]  # playback's
    assert [it.message_id for it in items] == [it.message_id for it in test_items[:3]]  # leak-free retrieval by date
    assert any("3 of 4 rows are in playback's held-out split" in n for n in notes)
