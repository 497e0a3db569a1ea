"""The serving copy (serving.py): base + adapter merged into BF16 or Q8_0 projections keeps what the adapter does,
against llama.cpp applying the same adapter at run time on the same text; it is built once, rebuilt when its
inputs change, used by the draft path, made when an adapter starts serving, and never makes a draft fail."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import loras
import numpy as np
import pytest

from panza_local import config, engine, gguf_header, serving

TEXTS = ["Hi Bob,\n\nCan we move our site visit to Friday? The council wants the drawings by Thursday.\n\nCheers,\nMaya",
         "Thank you for the permit update. When does the council decide on the courtyard plan?",
         "I have attached the invoice for the garden design. Let me know if anything is unclear."]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, embedded_model) -> Path:
    """An all-linear rank-8 LoRA large enough to change ~1 in 6 greedy next tokens (as a trained one does)."""
    return loras.random_lora(embedded_model, tmp_path_factory.mktemp("ad") / "adapter.gguf", std=0.03,
                             modules=loras.ALL_LINEAR)


def _logits(model: Path, lora: Path | None) -> np.ndarray:
    engine.unload_all()
    llm = engine.load(model, lora, n_ctx=512, threads=2, logits_all=True)
    out = []
    for text in TEXTS:
        toks = llm.tokenize(text.encode(), add_bos=True)
        llm.reset()
        llm.eval(toks)
        out.append(np.array(llm.scores[:len(toks)], dtype=np.float64))
    engine.unload_all()
    return np.concatenate(out)


def _tensor_bytes(path: Path, name: str) -> bytes:
    import gguf

    (t,) = [t for t in gguf.GGUFReader(path).tensors if t.name == name]
    return np.asarray(t.data).tobytes()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


FILE_TYPE = {"bf16": 32, "q8_0": 7}  # general.file_type: MOSTLY_BF16, MOSTLY_Q8_0


@pytest.mark.parametrize("kind", list(serving.TYPES))
def test_the_copy_keeps_what_the_adapter_does(adapter, embedded_model, kind, monkeypatch):
    """Either type a machine may build (BF16 where llama.cpp has the CPU's BF16 instructions, else Q8_0)."""
    monkeypatch.setattr(serving, "copy_type", lambda: kind)
    base, runtime = _logits(embedded_model, None), _logits(embedded_model, adapter)
    copy, lora = serving.resolve(embedded_model, adapter)
    assert lora is None and copy == adapter.parent / f"adapter.serve-{kind}.gguf"
    merged = _logits(copy, None)
    changed = (base.argmax(1) != runtime.argmax(1)).mean()
    assert changed > 0.05, "the test adapter must change the model for this to mean anything"
    effect_rt, effect_copy = (runtime - base).ravel(), (merged - base).ravel()
    cos = effect_rt @ effect_copy / np.linalg.norm(effect_rt) / np.linalg.norm(effect_copy)
    assert cos >= 0.9, f"the adapter's logit change survives the merge: cosine {cos:.3f}"
    agree = (runtime.argmax(1) == merged.argmax(1)).mean()
    assert agree >= 0.9, f"greedy next token as with the runtime adapter at {agree:.2f} of positions"
    lr, lm = _log_softmax(runtime), _log_softmax(merged)
    kl = (np.exp(lr) * (lr - lm)).sum(1).mean()
    kl_adapter = (np.exp(lr) * (lr - _log_softmax(base))).sum(1).mean()
    assert kl < kl_adapter / 4, f"merge noise (KL {kl:.4f}) well under the adapter's own effect ({kl_adapter:.4f})"
    # the projections are of the copy's type now; the embedding table is the base's bytes unchanged
    meta = gguf_header.read_header(copy)["metadata"]
    assert meta["general.file_type"] == FILE_TYPE[kind] and meta["general.architecture"] == "llama"
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    _same_file_but_the_weights(copy, embedded_model)


def _same_file_but_the_weights(copy: Path, base: Path) -> None:
    """The copy's metadata is the base's (tokenizer arrays included) but for its file type; its tensor table
    names the same tensors and shapes; a tensor of the same type (norms, the embedding table) has the same bytes."""
    ours, theirs = (gguf_header.read_header(p, keep_arrays=True)["metadata"] for p in (copy, base))
    assert ours.pop("general.file_type") != theirs.pop("general.file_type")
    assert ours == theirs and len(ours["tokenizer.ggml.tokens"]) > 40000
    a, b = gguf_header.layout(copy), gguf_header.layout(base)
    assert [(n, d) for n, d, *_ in a.tensors] == [(n, d) for n, d, *_ in b.tensors]
    kept = 0
    for (name, dims, qtype, off), (_, _, qtype_b, off_b) in zip(a.tensors, b.tensors):
        if qtype == qtype_b:
            n = gguf_header.tensor_nbytes(dims, qtype)
            assert (np.fromfile(copy, np.uint8, n, offset=a.data_start + off).tobytes()
                    == np.fromfile(base, np.uint8, n, offset=b.data_start + off_b).tobytes()), name
            kept += 1
    assert kept >= 60  # the 61 norms and the embedding table


def test_built_once_rebuilt_when_the_adapter_changes(tmp_path, adapter, embedded_model):
    mine = tmp_path / "adapter.gguf"
    shutil.copy(adapter, mine)
    first, _ = serving.resolve(embedded_model, mine)
    stamp = first.stat().st_mtime_ns
    again, _ = serving.resolve(embedded_model, mine)
    assert again == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    loras.random_lora(embedded_model, mine, std=0.03, seed=7)  # a re-export in place
    assert serving.fresh(embedded_model, mine) is None
    rebuilt, _ = serving.resolve(embedded_model, mine)
    assert rebuilt == first and serving.fresh(embedded_model, mine) == first
    assert not list(tmp_path.glob(".*tmp"))  # no half-written file left behind
    serving.remove(tmp_path)
    assert not first.exists() and not first.with_suffix(".json").exists()


def test_a_copy_of_another_type_is_replaced_not_kept_beside(tmp_path, adapter, embedded_model, monkeypatch):
    """A home moved to a machine whose copy type differs (or a copy built before types were chosen) gets one
    copy of this machine's type; the other's files go, and `remove` deletes a copy of any type."""
    mine = tmp_path / "adapter.gguf"
    shutil.copy(adapter, mine)
    monkeypatch.setattr(serving, "copy_type", lambda: "q8_0")
    old, _ = serving.resolve(embedded_model, mine)
    assert old.name == "adapter.serve-q8_0.gguf" and serving.fresh(embedded_model, mine) == old
    monkeypatch.setattr(serving, "copy_type", lambda: "bf16")
    assert serving.fresh(embedded_model, mine) is None
    new, _ = serving.resolve(embedded_model, mine)
    assert new.name == "adapter.serve-bf16.gguf"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["adapter.gguf", "adapter.serve-bf16.gguf",
                                                          "adapter.serve-bf16.json"]
    monkeypatch.setattr(serving, "copy_type", lambda: "q8_0")
    serving.remove(tmp_path)
    assert [f.name for f in tmp_path.iterdir()] == ["adapter.gguf"]


def test_a_fast_base_is_left_alone(tmp_path):
    from panza_local.train.torch import synth

    base = synth.write(tmp_path / "q8.gguf", types="Q8_0")
    lora = loras.random_lora(base, tmp_path / "ad" / "adapter.gguf")
    assert not serving.worth_it(base)
    assert serving.resolve(base, lora) == (base, lora)
    assert not list((tmp_path / "ad").glob("*.serve-*"))


def test_a_merge_that_fails_falls_back_to_the_runtime_adapter(tmp_path, embedded_model, caplog):
    from panza_local.train.torch import synth

    other = synth.write(tmp_path / "other.gguf", n_layers=2, types="Q8_0")
    wrong = loras.random_lora(other, tmp_path / "ad" / "adapter.gguf")  # for another model's shapes
    with caplog.at_level(logging.WARNING, logger="panza_local.serving"):
        got = serving.resolve(embedded_model, wrong)
    assert got == (Path(embedded_model), wrong)
    assert "serving copy not built" in caplog.text
    assert not list((tmp_path / "ad").glob("*.gguf.*")) and not list((tmp_path / "ad").glob("*serve*.gguf"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="panza_local.serving"):
        assert serving.resolve(embedded_model, wrong) == (Path(embedded_model), wrong)
    assert "serving copy not built" not in caplog.text  # the failure is remembered: no retry on every draft
    loras.random_lora(other, wrong, seed=3)  # a new adapter file: worth another try
    with caplog.at_level(logging.WARNING, logger="panza_local.serving"):
        serving.resolve(embedded_model, wrong)
    assert "serving copy not built" in caplog.text


def test_drafts_load_the_copy_unless_the_setting_says_no(tmp_path, home, adapter, embedded_model):
    mine = tmp_path / "adapter.gguf"
    shutil.copy(adapter, mine)
    msgs = [{"role": "user", "content": "Ask Bob to move our meeting to Friday"}]
    for merge, expect in ((True, serving.copy_path(mine)), (False, Path(embedded_model))):
        engine.unload_all()
        settings = config.load({"merge_adapter": merge, "threads": 2, "max_tokens": 4, "temperature": 0.0})
        "".join(engine.stream_chat(msgs, model_path=embedded_model, lora_path=mine, settings=settings))
        (key, llm), = engine._MODELS.items()
        assert Path(llm.model_path) == expect and bool(key[1]) is (not merge)
    engine.unload_all()


def test_serving_an_adapter_builds_its_copy_and_keeps_only_the_previous_ones(home, adapter, embedded_model):
    from panza_local import store
    from panza_local.train import registry

    conn = store.connect()
    ids = []
    for n in range(3):
        aid = f"ad-test{n}"
        d = registry.adapter_dir(aid)
        d.mkdir(parents=True)
        shutil.copy(adapter, d / "adapter.gguf")
        registry.begin(conn, aid, base_model="smollm2-135m", base_sha256="x", data_hash=str(n), config={})
        registry.finish(conn, aid, {})
        ids.append(aid)
    copies = [serving.copy_path(registry.adapter_dir(a) / "adapter.gguf") for a in ids]
    registry.use(ids[0], conn)
    assert serving.fresh(embedded_model, registry.adapter_dir(ids[0]) / "adapter.gguf") == copies[0]
    registry.use(ids[1], conn)
    built = copies[1].stat().st_mtime_ns
    registry.use(ids[0], conn)  # back to the previous adapter: its copy was kept
    registry.use(ids[1], conn)
    assert copies[0].exists() and copies[1].stat().st_mtime_ns == built  # neither was rebuilt
    registry.use(ids[2], conn)
    assert copies[2].exists() and copies[1].exists() and not copies[0].exists()  # the oldest gives its disk back
    from panza_local.cli.adapters import _brief

    assert _brief(registry.get(ids[2], conn))["serving_copy"] == str(copies[2])  # `adapters list` shows it
    assert _brief(registry.get(ids[0], conn))["serving_copy"] is None


def test_the_base_alone_has_a_q8_copy_that_is_the_same_model(home, embedded_model):
    """With no adapter the copy is the base in Q8_0 (stock drafts and playback evaluate prompts in the fast
    kernels): nearly always the same next token, a divergence of rounding; private files in the home's cache."""
    assert serving.resolve(embedded_model, None, build=False) == (Path(embedded_model), None)  # not built yet
    copy, lora = serving.resolve(embedded_model, None)
    assert lora is None and copy == home / "cache" / "serving" / f"SmolLM2-135M-Instruct.Q4_1.serve-{serving.copy_type()}.gguf"
    assert gguf_header.read_header(copy)["metadata"]["general.file_type"] == FILE_TYPE[serving.copy_type()]
    _same_file_but_the_weights(copy, embedded_model)
    assert copy.stat().st_mode & 0o777 == 0o600 and copy.parent.stat().st_mode & 0o777 == 0o700
    assert serving.resolve(embedded_model, None, build=False) == (copy, None)
    base, q8 = _logits(embedded_model, None), _logits(copy, None)
    agree = (base.argmax(1) == q8.argmax(1)).mean()
    lb, lq = _log_softmax(base), _log_softmax(q8)
    kl = (np.exp(lb) * (lb - lq)).sum(1).mean()
    assert agree >= 0.9 and kl < 0.01, f"next token agreement {agree:.3f}, KL {kl:.4f}"


def test_a_new_base_copy_keeps_one_other_and_a_stock_draft_creates_no_cache(home, embedded_model):
    """After `models use` another base and back, the copies of bases no longer used give their disk back
    (the one before stays: switching back is instant); asking whether a copy exists writes nothing."""
    assert serving.fresh(embedded_model, None) is None and not (home / "cache").exists()
    folder = home / "cache" / "serving"
    folder.mkdir(parents=True)
    for age, stem in enumerate(["Older-0.5B.Q4_1", "Previous-1B.Q4_1"]):
        for suffix in (".gguf", ".json"):
            f = folder / f"{stem}.serve-q8_0{suffix}"
            f.write_bytes(b"x")
            os.utime(f, ns=(10**18 + age, 10**18 + age))
    serving.merge(Path(embedded_model), None)
    assert sorted(f.name for f in folder.iterdir()) == sorted(
        ["Previous-1B.Q4_1.serve-q8_0.gguf", "Previous-1B.Q4_1.serve-q8_0.json",
         f"SmolLM2-135M-Instruct.Q4_1.serve-{serving.copy_type()}.gguf",
         f"SmolLM2-135M-Instruct.Q4_1.serve-{serving.copy_type()}.json"])


def test_a_killed_build_leaves_no_orphan(home, embedded_model):
    import subprocess
    import sys

    out = serving.base_copy_path(embedded_model)
    out.parent.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    orphan = out.with_name(f".{out.name}.{gone}.tmp")
    orphan.write_bytes(b"half a model")
    serving.merge(Path(embedded_model), None)
    assert not orphan.exists() and serving.fresh(embedded_model, None) == out
    assert sorted(f.name for f in out.parent.iterdir()) == sorted([out.name, out.with_suffix(".json").name])


def test_playback_builds_the_base_copy_for_a_long_job_and_drafts_then_use_it(home, embedded_model, monkeypatch):
    from panza_local import ingest, playback, sample, store

    conn = store.connect()
    ingest.ingest(conn, [str(sample.write_sample_mailbox(home.parent / "mail"))], me=[sample.SAMPLE_ME])
    monkeypatch.setattr(playback, "BASE_COPY_AT", 3)
    settings = config.load({"threads": 2, "merge_adapter": False})
    playback.run(conn, limit=3, settings=settings, parallel=1)
    assert serving.fresh(embedded_model, None) is None  # the setting says no
    settings = config.load({"threads": 2})
    playback.run(conn, limit=2, settings=settings, parallel=1)
    assert serving.fresh(embedded_model, None) is None  # too short a job to pay for the copy
    engine.unload_all()
    playback.run(conn, limit=3, settings=settings, parallel=2)
    copy = serving.fresh(embedded_model, None)
    assert copy is not None
    assert [Path(llm.model_path) for llm in engine._MODELS.values()] == [copy]  # the batch played back on it
    engine.unload_all()
    "".join(engine.stream_chat([{"role": "user", "content": "Ask Bob to move our meeting to Friday"}],
                               model_path=embedded_model, settings=config.load({"max_tokens": 2, "threads": 2})))
    (key, llm), = engine._MODELS.items()
    assert Path(llm.model_path) == copy and not key[1]  # a stock draft loads it now that it exists
    engine.unload_all()
    conn.close()


def test_the_copy_type_is_the_cpus_unless_the_user_chooses(monkeypatch):
    """BF16 where llama.cpp reports the CPU's BF16 instructions, else Q8_0; PANZA_SERVING_COPY picks either."""
    monkeypatch.delenv("PANZA_SERVING_COPY", raising=False)
    native = "bf16" if "AVX512_BF16 = 1" in engine.system_info() else "q8_0"
    assert serving.copy_type() == native
    for chosen in ("q8_0", "BF16 "):
        monkeypatch.setenv("PANZA_SERVING_COPY", chosen)
        assert serving.copy_type() == chosen.strip().lower()
    monkeypatch.setenv("PANZA_SERVING_COPY", "q4_0")  # not a type a copy is made in: the machine's own
    assert serving.copy_type() == native


def test_a_base_with_fast_kernels_gets_a_bf16_copy_for_playback_alone(home, monkeypatch):
    """A Q4_K base gets no copy for drafts (one sequence's token decodes slower on the bigger file) but playback
    has one of its own where the CPU multiplies BF16 (serving.prompt_copy_worth_it): its layers BF16, the vocabulary
    matrices as shipped, the same model; a draft keeps loading the shipped file once it exists; a CPU without BF16
    makes none."""
    from panza_local import catalogue, ingest, playback, sample, store
    from panza_local.train.torch import synth

    base = synth.write(home.parent / "fast.gguf", types="Q4_K", dim=256, ffn=512, seed=3)
    monkeypatch.setattr(serving, "copy_type", lambda: "q8_0")
    assert not serving.prompt_copy_worth_it(base)
    assert serving.resolve(base, None, prompt_bound=True) == (base, None)
    monkeypatch.setattr(serving, "copy_type", lambda: "bf16")
    assert not serving.worth_it(base) and serving.prompt_copy_worth_it(base)
    assert serving.resolve(base, None, prompt_bound=True, build=False) == (base, None)  # not built yet

    conn = store.connect()
    ingest.ingest(conn, [str(sample.write_sample_mailbox(home.parent / "mail"))], me=[sample.SAMPLE_ME])
    catalogue.add(base, "fast")
    monkeypatch.setattr(playback, "BASE_COPY_AT", 3)
    engine.unload_all()
    playback.run(conn, limit=3, settings=config.load({"threads": 2, "model": "fast"}), parallel=2)
    conn.close()
    copy = serving.fresh(base, None, prompt=True)
    assert copy == home / "cache" / "serving" / "fast-prompt.serve-bf16.gguf"
    assert [Path(llm.model_path) for llm in engine._MODELS.values()] == [copy]  # the batch played back on it
    assert copy.stat().st_mode & 0o777 == 0o600
    ours, theirs = ({name: (dims, qtype) for name, dims, qtype, _ in gguf_header.layout(p).tensors} for p in (copy, base))
    assert ours.keys() == theirs.keys() and all(ours[n][0] == theirs[n][0] for n in ours)
    layer = {n for n in ours if n not in serving.PROMPT_KEEP}
    assert {ours[n][1] for n in layer if theirs[n][1] == 12} == {30}  # every Q4_K weight of the layers BF16
    assert all(ours[n][1] == theirs[n][1] for n in layer if theirs[n][1] != 12)  # the F32 norms as they are
    kept = serving.PROMPT_KEEP.keys() & theirs.keys()
    assert kept and all(_tensor_bytes(copy, n) == _tensor_bytes(base, n) for n in kept)  # vocabulary: byte for byte

    engine.unload_all()
    assert serving.resolve(base, None) == (base, None)  # a draft (no prompt_bound) loads the shipped file
    assert Path(engine.load(base, merge=True, n_ctx=256, threads=2).model_path) == base
    assert Path(engine.load(base, merge=True, n_ctx=256, threads=2, prompt_bound=True).model_path) == copy
    shipped, bf16 = _logits(base, None), _logits(copy, None)
    agree = (shipped.argmax(1) == bf16.argmax(1)).mean()
    ls, lb = _log_softmax(shipped), _log_softmax(bf16)
    kl = (np.exp(ls) * (ls - lb)).sum(1).mean()
    assert agree >= 0.9 and kl < 0.01, f"next token agreement {agree:.3f}, KL {kl:.4f}"
