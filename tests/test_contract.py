"""docs/CLI.md is the command and JSON contract: every command and option of the parser is documented there,
and every command's `--json` output carries the keys it documents (and no undocumented top-level key).

The document is parsed, not copied, so the two cannot drift. Commands run for real (real store, real
embedded model with tiny budgets) on the bundled sample mailbox."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from panza_local import sample

DOC = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"
TINY_TRAIN = {"max_steps": 2, "seq_len": 128, "grad_accum": 1, "max_val_rows": 1, "evals": 1, "ckpt_every": 1}


# --- the document --------------------------------------------------------------------------------------

def sections(text: str) -> dict[str, str]:
    """`## \\`panza CMD\\`` heading → the text of its section."""
    parts = re.split(r"^## `panza ([^`]+)`\s*$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def key_tables(text: str) -> dict[str, list[tuple[str, bool]]]:
    """`### JSON: LABEL` → [(key path, optional)] from the table that follows it."""
    out = {}
    for m in re.finditer(r"^### JSON: (.+?)\s*$(.*?)(?=^#{2,3} |\Z)", text, flags=re.MULTILINE | re.DOTALL):
        rows = re.findall(r"^\| `([^`]+)` \|(.*)\|\s*$", m.group(2), flags=re.MULTILINE)
        out[m.group(1)] = [(path, "(optional)" in meaning) for path, meaning in rows]
    return out


DOC_TEXT = DOC.read_text(encoding="utf-8")
TABLES = key_tables(DOC_TEXT)


def tokens(path: str) -> list[str]:
    """`a[].b.*.c` → ['a', '[]', 'b', '*', 'c']."""
    out = []
    for part in path.split("."):
        name, brackets = part, 0
        while name.endswith("[]"):
            name, brackets = name[:-2], brackets + 1
        if name:
            out.append(name)
        out += ["[]"] * brackets
    return out


def missing(obj, toks: list[str], where: str = "") -> list[str]:
    """Where a key path is absent in `obj` (empty lists and objects hold every path vacuously)."""
    if not toks:
        return []
    head, rest = toks[0], toks[1:]
    if head == "[]":
        if not isinstance(obj, list):
            return [f"{where or 'output'} is not a list"]
        return [p for i, item in enumerate(obj) for p in missing(item, rest, f"{where}[{i}]")]
    if not isinstance(obj, dict):
        return [f"{where or 'output'} is not an object"]
    if head == "*":
        return [p for k, v in obj.items() for p in missing(v, rest, f"{where}.{k}")]
    if head not in obj:
        return [f"{where}.{head}".lstrip(".")]
    return missing(obj[head], rest, f"{where}.{head}") if obj[head] is not None else []


def check(label: str, out) -> None:
    """`out` has every required key the document lists for `label`, and no top-level key it does not."""
    rows = TABLES[label]
    gaps = [g for path, optional in rows if not optional for g in missing(out, tokens(path))]
    assert not gaps, f"docs/CLI.md `{label}` documents keys the command did not print: {gaps}"
    top = {tokens(path)[1 if path.startswith("[]") else 0] for path, _ in rows}
    if "*" in top:
        return
    items = out if isinstance(out, list) else [out]
    extra = sorted({k for item in items for k in item} - top)
    assert not extra, f"`panza {label}` prints keys docs/CLI.md does not list: {extra} (document them)"


def test_the_typed_results_carry_exactly_the_documented_keys():
    """Each stage's result dataclass (panza_local/results.py) has a field for every top-level key its command
    documents, and no other (eval's `samples` feed the report only and never reach the JSON)."""
    import dataclasses

    from panza_local import results

    typed = {"ingest": results.IngestResult, "playback": results.PlaybackResult, "index": results.IndexResult,
             "train": results.TrainResult, "eval": results.EvalResult, "retune": results.RetuneResult}
    for label, cls in typed.items():
        documented = {tokens(path)[0] for path, _ in TABLES[label]}
        fields = {f.name for f in dataclasses.fields(cls)} - {"samples"}
        assert fields == documented, (f"{cls.__name__} and docs/CLI.md `{label}` differ: fields only "
                                      f"{sorted(fields - documented)}, documented only {sorted(documented - fields)}")


# --- the parser ------------------------------------------------------------------------------------------

def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) of every runnable command."""
    if parser.get_default("func") is not None:
        yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*prefix, name))


def test_every_command_and_option_is_documented():
    from panza_local.cli import build_parser

    docs = sections(DOC_TEXT)
    found = dict(commands(build_parser()))
    names = {" ".join(words) for words in found}
    assert names == set(docs), (f"undocumented: {sorted(names - set(docs))}; "
                                f"documented but not a command: {sorted(set(docs) - names)}")
    for words, parser in found.items():
        body = docs[" ".join(words)]
        for action in parser._actions:
            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            shown = action.option_strings or [action.metavar or action.dest]
            for opt in shown:
                assert f"`{opt}`" in body, f"docs/CLI.md `panza {' '.join(words)}` does not document {opt}"


def test_the_document_parses_into_key_tables():
    assert {"ingest", "playback", "index", "search", "train", "draft --format json", "eval", "retune",
            "doctor"} <= set(TABLES)
    assert dict(TABLES["ingest"])["errors[].path"] is False  # the DESIGN's keys are required, not optional
    assert missing({"a": [{"b": 1}, {}]}, tokens("a[].b")) == ["a[1].b"]  # the checker can fail


# --- running the commands --------------------------------------------------------------------------------

def run_json(argv: list[str]):
    """Run `panza ARGV` in-process; its exit code must be 0 and its stdout one JSON document."""
    from panza_local.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    assert rc == 0, f"panza {' '.join(argv)} exited {rc}"
    return json.loads(buf.getvalue())


@pytest.fixture(scope="module")
def sample_home(tmp_path_factory):
    """One home holding the sample mailbox, registered, ingested and indexed (shared by the fast checks)."""
    import os

    root = tmp_path_factory.mktemp("contract")
    mp = pytest.MonkeyPatch()
    for key in list(os.environ):
        if key.startswith("PANZA_") and key != "PANZA_SHARED_DATA":
            mp.delenv(key)
    mp.setenv("PANZA_HOME", str(root / "home"))
    mp.setenv("PANZA_THREADS", "1")  # two shared cores: more threads than free cores stalls llama.cpp
    mbox = sample.write_sample_mailbox(root / "mail" / "maya.mbox")
    outputs = {
        "sources add": run_json(["sources", "add", str(mbox), "--json"]),
        "ingest": run_json(["ingest", "--me", sample.SAMPLE_ME, "--json"]),
        "ingest --guess-me": run_json(["ingest", "--guess-me", str(mbox), "--json"]),
        "index": run_json(["index", "--json"]),
    }
    yield {"root": root, "mbox": mbox, "outputs": outputs}
    mp.undo()


def _eval_data(root: Path) -> str:
    mine = [m for m in sample.sample_messages() if sample.SAMPLE_ME in m["From"]][:1]
    data = root / "eval.jsonl"
    data.write_text("".join(json.dumps({"email": m.get_payload().split("\nOn ")[0].strip(),
                                        "subject": m["Subject"]}) + "\n" for m in mine), encoding="utf-8")
    return str(data)


# label → argv run in the sample home (a callable gets the fixture's dict)
RECIPES = {
    "doctor": ["doctor", "--json"],
    "config show": ["config", "show", "--json"],
    "models list": ["models", "list", "--json"],
    "models add": lambda h: ["models", "add", _embedded(), "--name", "contract-copy", "--json"],
    "sources list": ["sources", "list", "--json"],
    "messages list": ["messages", "list", "--limit", "3", "--json"],
    "messages show": ["messages", "show", "1", "--json"],
    "search": ["search", "invoice", "--k", "3", "--json"],
    "profile show": ["profile", "show", "--json"],
    "profile seed": ["profile", "seed", "--json"],
    "playback": ["playback", "--limit", "1", "--json"],
    "playback export": lambda h: ["playback", "export", str(h["root"] / "export"), "--json"],
    "draft --format json": ["draft", "Thank Sam for the invoice", "--to", "sam.whitaker@fastmail.example",
                            "--format", "json", "--max-tokens", "8", "--seed", "1"],
    "schedule status": ["schedule", "status", "--json"],
    "eval": lambda h: ["eval", "--data", _eval_data(h["root"]), "--limit", "1", "--seeds", "1", "--max-tokens", "8",
                       "--configs", "stock", "--json"],
}
# outputs the fixture itself produced
BUILT = {"sources add", "ingest", "ingest --guess-me", "index"}
# labels checked by their own tests below
OWN_TESTS = {"sources remove", "retune", "retune log", "train", "adapters list", "adapters use", "adapters export",
             "adapters rm", "quickstart"}
NOT_RUN = {
    "models pull": "downloads a model: the only command that needs the network",
    "schedule install": "installs a timer in the user's own systemd/launchd/cron (tests/test_schedule.py fakes them)",
    "schedule remove": "changes the user's own systemd/launchd/cron (tests/test_schedule.py fakes them)",
}


def _embedded() -> str:
    from panza_local import catalogue

    return str(catalogue.embedded_path("smollm2-135m"))


def test_every_documented_output_is_checked():
    covered = set(RECIPES) | BUILT | OWN_TESTS | set(NOT_RUN)
    assert set(TABLES) <= covered, f"add a recipe to tests/test_contract.py for: {sorted(set(TABLES) - covered)}"
    assert covered <= set(TABLES), f"recipes for outputs docs/CLI.md does not document: {sorted(covered - set(TABLES))}"


@pytest.mark.parametrize("label", sorted(BUILT))
def test_pipeline_outputs_match_the_document(sample_home, label):
    out = sample_home["outputs"][label]
    check(label, out)
    if label == "ingest":
        assert out["seen"] == out["stored"] + out["duplicates"] + sum(out["skipped"].values()) and out["stored"] > 0
    if label == "index":
        assert out["total"] == out["embedded"] > 0


@pytest.mark.parametrize("label", sorted(RECIPES))
def test_command_output_matches_the_document(sample_home, label):
    recipe = RECIPES[label]
    argv = recipe(sample_home) if callable(recipe) else recipe
    out = run_json(argv)
    check(label, out)
    if label == "search":
        assert out["hits"], "the sample mailbox has mail about invoices"
    if label == "draft --format json":
        assert out["text"] and out["to"] == "sam.whitaker@fastmail.example"


def test_sources_remove_matches_the_document(home, tmp_path):
    mbox = sample.write_sample_mailbox(tmp_path / "maya.mbox")
    run_json(["ingest", str(mbox), "--me", sample.SAMPLE_ME, "--register", "--json"])
    out = run_json(["sources", "remove", str(mbox), "--json"])
    check("sources remove", out)
    assert out["messages_deleted"] == sample.SAMPLE_COUNT


def test_retune_and_its_log_match_the_document(home, monkeypatch):
    monkeypatch.setenv("PANZA_THREADS", "1")
    check("retune", run_json(["retune", "--json"]))  # an empty home: the pass ends at once, saying why
    log = run_json(["retune", "log", "--json"])
    assert len(log) == 1
    check("retune log", log)


@pytest.mark.slow
def test_train_and_adapters_match_the_document(home, tmp_path, monkeypatch):
    """A real (tiny) training run on the sample's pairs, then every adapters command on what it made."""
    import panza_local.train as train_mod
    from panza_local import ingest, store

    monkeypatch.setenv("PANZA_THREADS", "1")
    real = train_mod.train
    monkeypatch.setattr(train_mod, "train",
                        lambda *a, overrides=None, **k: real(*a, overrides={**TINY_TRAIN, **(overrides or {})}, **k))
    mbox = sample.write_sample_mailbox(tmp_path / "maya.mbox")
    with contextlib.closing(store.connect()) as conn:
        ingest.ingest(conn, [str(mbox)], me=[sample.SAMPLE_ME])
        mine = conn.execute("SELECT id, content_hash, subject FROM messages WHERE is_mine = 1").fetchall()
        with store.transaction(conn):
            for r in mine:  # what playback stores; the instructions are not what is tested here
                conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, "
                             "created_at) VALUES (?, ?, 'test', 'ok', ?, ?)",
                             (r["id"], r["content_hash"], f"About {r['subject']}", store.now()))
    out = run_json(["train", "--json"])
    check("train", out)
    assert Path(out["gguf"]).is_file()
    listed = run_json(["adapters", "list", "--json"])
    check("adapters list", listed)
    assert [a["id"] for a in listed["adapters"]] == [out["adapter_id"]]
    check("adapters use", run_json(["adapters", "use", "none", "--json"]))
    exported = run_json(["adapters", "export", out["adapter_id"], "--out", str(tmp_path / "a.gguf"), "--json"])
    check("adapters export", exported)
    assert Path(exported["path"]).is_file()
    check("adapters rm", run_json(["adapters", "rm", out["adapter_id"], "--json"]))


@pytest.mark.heavy
def test_quickstart_matches_the_document(home, monkeypatch):
    monkeypatch.setenv("PANZA_THREADS", "1")
    out = run_json(["quickstart", "--limit", "10", "--steps", "2", "--json"])
    check("quickstart", out)
