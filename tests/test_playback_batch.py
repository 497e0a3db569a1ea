"""Batched playback with the real embedded model: same pairs as one at a time, the grammar per sequence, resume."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from test_playback import MAIL
from test_playback_quality import add_message

from panza_local import catalogue, config, playback, sample, store
from panza_local.cli import main
from panza_local.ingest import messages
from panza_local.playback import batch
from panza_local.playback import scoring as q


@pytest.fixture
def maya(home, tmp_path, monkeypatch):
    """The project's sample mailbox, ingested: (store, Maya's emails oldest first, idf, settings, model)."""
    from panza_local import ingest

    monkeypatch.setenv("PANZA_THREADS", "1")
    conn = store.connect()
    ingest.ingest(conn, [str(sample.write_sample_mailbox(tmp_path / "maya.mbox"))], me=[sample.SAMPLE_ME])
    mine = messages.mine(conn)
    settings = config.Settings(threads=1)
    yield conn, mine, q.idf_table(m["body"] for m in mine), settings, catalogue.embedded_path("smollm2-135m")
    conn.close()


def _sequential(rows, idf, settings, model):
    return {r["id"]: playback.generate(r, model_path=model, settings=settings, idf=idf) for r in rows}


def _batched(rows, idf, settings, model, slots):
    return {r["id"]: res for r, res in batch.generate_many(rows, model_path=model, settings=settings, idf=idf,
                                                           slots=slots)}


def test_one_slot_reproduces_the_one_at_a_time_path_exactly(maya):
    # Same prompt tokens, context parameters, sampler chain and seeds: with one sequence nothing differs
    # but the code path, so every attempt (greedy and sampled), guard verdict and fallback must agree.
    _, mine, idf, settings, model = maya
    rows = mine[:2]
    one = _sequential(rows, idf, settings, model)
    bat = _batched(rows, idf, settings, model, slots=1)
    assert bat == one


@pytest.mark.slow
def test_batched_pairs_have_the_quality_of_sequential_ones(maya):
    _, mine, idf, settings, model = maya
    rows = mine[:16]
    one = _sequential(rows, idf, settings, model)
    bat = _batched(rows, idf, settings, model, slots=8)
    assert set(bat) == set(one)
    pool = [m["body"] for m in mine]
    own = [mine.index(r) for r in rows]

    def figures(res):
        ins = [res[r["id"]]["instruction"] for r in rows]
        copies = sorted(res[r["id"]]["copy_ratio"] for r in rows)
        fallback = sum(res[r["id"]]["source"] == "fallback" for r in rows)
        return q.recall_at_1(ins, pool, own), copies[len(copies) // 2], fallback

    r1, c1, f1 = figures(one)
    r2, c2, f2 = figures(bat)
    # Within noise on 16 emails: batching changes the arithmetic's rounding, so a greedy path may differ.
    assert r2 >= r1 - 0.2 and c2 <= max(0.3, c1 + 0.1) and f2 <= f1 + 3
    same = sum(one[i]["instruction"] == bat[i]["instruction"] for i in one)
    assert same >= len(rows) // 3  # most first attempts are greedy: the same sentence, not a different run


def test_a_greedy_draw_the_grammar_rejects_picks_what_filtering_the_whole_vocabulary_picks(maya):
    """The shortcut (the best allowed of the top logits, batch._Candidates.best_allowed) against the full path
    (the grammar filters all 49,152 tokens, then the chain draws) at every step of real greedy generations,
    on the last attempt's words-only grammar, where the model's own choice is rejected most often."""
    from panza_local import engine

    _, mine, _, settings, model = maya
    lib, llm = engine.llama_cpp(), engine.load(model, n_ctx=2048, threads=1)
    ctx = batch._context(lib, llm, 1024, 1, settings)
    b = lib.llama_batch_init(batch.N_BATCH, 0, 1)
    scratch = batch._Candidates(lib, llm.n_vocab())
    fmt, rejected = batch._formatter(llm), 0
    try:
        for row in mine[:3]:
            p = playback.plan(row)
            a = playback.attempt(p, playback.ATTEMPTS - 1)
            prompt = fmt(messages=a["messages"]).prompt.encode()
            toks = llm.tokenize(prompt, add_bos=False, special=True)
            lib.llama_memory_clear(lib.llama_get_memory(ctx.ctx), True)
            fast = batch._Sampler(lib, llm, a["grammar"], 0.0, 1, scratch)
            full = batch._Sampler(lib, llm, a["grammar"], 0.0, 1, scratch)
            batch._decode_all(lib, ctx.ctx, b, toks[:-1], 0)
            tok, pos = toks[-1], len(toks) - 1
            for _ in range(20):
                b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0], b.n_tokens = tok, pos, 1, True, 1
                b.seq_id[0][0] = 0
                assert lib.llama_decode(ctx.ctx, b) == 0
                scratch.load(lib.llama_get_logits_ith(ctx.ctx, 0))
                lib.llama_sampler_apply(full.chain.sampler, scratch.ref)
                rejected += not scratch.allows(full.grammar, scratch.selected())
                scratch.load(lib.llama_get_logits_ith(ctx.ctx, 0))
                lib.llama_sampler_apply(full.grammar, scratch.ref)
                lib.llama_sampler_apply(full.chain.sampler, scratch.ref)
                want = scratch.selected()
                lib.llama_sampler_accept(full.chain.sampler, want)
                lib.llama_sampler_accept(full.grammar, want)
                tok, pos = fast.sample(ctx.ctx, 0), pos + 1
                assert tok == want, (row["id"], pos)
                if lib.llama_vocab_is_eog(llm._model.vocab, tok) or b"." in llm.detokenize([tok]):
                    break
            fast.close()
            full.close()
    finally:
        lib.llama_batch_free(b)
        ctx.close()
    assert rejected >= 3  # the shortcut was taken, not only the model's own choice


def test_each_sequence_keeps_its_own_grammar(home, monkeypatch):
    # Four emails to four different people decode together; each grammar names its own recipient.
    monkeypatch.setenv("PANZA_THREADS", "1")
    conn = store.connect()
    for i, (body, subject, to) in enumerate(MAIL):
        add_message(conn, body, date=f"2024-05-0{i + 1}T09:00:00+00:00", subject=subject, to=to)
    rows = messages.mine(conn)
    seen: list[tuple[str, str]] = []
    judge = playback.judge

    def spy(p, text, k, idf):
        seen.append((p["to_name"], text))
        return judge(p, text, k, idf)

    monkeypatch.setattr(playback, "judge", spy)
    idf = q.idf_table(r["body"] for r in rows)
    model = catalogue.embedded_path("smollm2-135m")
    out = {r["id"]: res for r, res in batch.generate_many(rows, model_path=model, settings=config.Settings(threads=1),
                                                           idf=idf, slots=4)}
    assert len(out) == 4
    names = {n for n, _ in seen}
    assert names == {"Tom", "Sara", "Stephan", "Ina"}
    verbs = "|".join(re.escape(v) for v in playback.VERBS)
    for name, text in seen:
        assert re.match(rf"({verbs}) {re.escape(name)} [^\n.]+(\.|$)", text), (name, text)
        assert "\n" not in text and text.count(".") <= 1


@pytest.mark.slow  # a subprocess loads the model and generates: ~15 s alone, a minute on a busy machine
def test_killed_batched_run_resumes_without_regenerating(home, monkeypatch):
    monkeypatch.setenv("PANZA_THREADS", "1")
    conn = store.connect()
    for i, (body, subject, to) in enumerate(MAIL):
        add_message(conn, body, date=f"2024-05-0{i + 1}T09:00:00+00:00", subject=subject, to=to)
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_THREADS": "1", "PANZA_FAILPOINT": "playback.pair:2"}
    proc = subprocess.run([sys.executable, "-m", "panza_local", "playback", "--json"], env=env,
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == -9  # the failpoint killed it right after its second pair was saved
    before = {r[0]: r[1] for r in conn.execute("SELECT content_hash, created_at FROM pairs")}
    assert len(before) == 2
    out = playback.run(conn)
    assert out.batched and (out.generated, out.reused) == (2, 2)
    assert out.parallel == 2  # the default slot count, no more than the emails left
    after = {r[0]: r[1] for r in conn.execute("SELECT content_hash, created_at FROM pairs")}
    assert len(after) == 4 and all(after[h] == before[h] for h in before)  # kept, not regenerated
    conn.close()


def test_parallel_flag_is_checked(home, capsys):
    assert main(["playback", "--parallel", "0"]) == 1
    assert "--parallel" in capsys.readouterr().err


def test_a_prompt_longer_than_a_slot_goes_one_at_a_time(home, monkeypatch):
    conn = store.connect()
    add_message(conn, MAIL[0][0], date="2024-05-01T09:00:00+00:00", to=MAIL[0][2])
    add_message(conn, "Hi Tom,\n\n" + " ".join(str(1000 + i) for i in range(240)), date="2024-05-02T09:00:00+00:00")
    rows = messages.mine(conn)
    calls = []

    def one(row, **kwargs):
        calls.append(row["id"])
        return {"status": "ok", "instruction": "Tell Tom the figures.", "source": "model", "attempts": 1}

    monkeypatch.setattr(playback, "generate", one)
    monkeypatch.setattr(playback, "ATTEMPTS", 1)
    out = {r["id"]: res for r, res in batch.generate_many(
        rows, model_path=catalogue.embedded_path("smollm2-135m"), settings=config.Settings(threads=1),
        idf=q.idf_table(r["body"] for r in rows), slots=2)}
    assert calls == [rows[1]["id"]]  # the 1,200 characters of numbers; the short email stayed batched
    assert out[rows[1]["id"]]["instruction"] == "Tell Tom the figures." and out[rows[0]["id"]]["source"]


@pytest.mark.slow  # the model generates seven instructions: ~15 s alone, a minute on a busy machine
def test_ctrl_c_in_a_batched_run_keeps_the_pairs_written_and_the_rerun_does_the_rest(home, monkeypatch):
    monkeypatch.setenv("PANZA_THREADS", "1")
    conn = store.connect()
    for i, (body, subject, to) in enumerate(MAIL):
        add_message(conn, body, date=f"2024-05-0{i + 1}T09:00:00+00:00", subject=subject, to=to)

    def ctrl_c(done, total=None, note=None):
        if done == 1:
            raise KeyboardInterrupt  # while three more emails are mid-generation in the same context

    with pytest.raises(KeyboardInterrupt):
        playback.run(conn, on_progress=ctrl_c)
    first = {r[0]: r[1] for r in conn.execute("SELECT content_hash, created_at FROM pairs")}
    assert len(first) == 1
    out = playback.run(conn)
    assert out.batched and (out.generated, out.reused) == (3, 1)
    after = {r[0]: r[1] for r in conn.execute("SELECT content_hash, created_at FROM pairs")}
    assert len(after) == 4 and all(after[h] == first[h] for h in first)
    conn.close()


def test_the_default_slot_count_follows_the_kv_memory_a_model_needs(embedded_model):
    """16 sequences on small models; a model whose KV cells are larger gets fewer, never fewer than 8; a
    count the caller gives is kept when it is smaller."""
    from panza_local import gguf_header

    small = gguf_header.read_header(embedded_model)["metadata"]  # SmolLM2-135M: 30 layers x 3 KV heads x 64
    assert batch.fit_slots(small, 1024) == batch.SLOTS == 16
    qwen = {"general.architecture": "qwen2", "qwen2.block_count": "24", "qwen2.attention.head_count": "14",
            "qwen2.attention.head_count_kv": "2", "qwen2.embedding_length": "896"}
    assert batch.fit_slots(qwen, 1024) == 16
    llama3b = {"general.architecture": "llama", "llama.block_count": 28, "llama.attention.head_count": 24,
               "llama.attention.head_count_kv": 8, "llama.embedding_length": 3072}  # 114 KB a cell
    assert batch.fit_slots(llama3b, 1024) == batch.MIN_SLOTS
    assert batch.fit_slots(llama3b, 512) == 16 and batch.fit_slots(llama3b, 768) == 11
    assert batch.fit_slots(small, 1024, most=4) == 4 and batch.fit_slots({}, 1024) == batch.MIN_SLOTS


def test_a_finished_email_leaves_no_gap_the_highest_sequence_moves_into_it(embedded_model):
    """batch._compact: when a low sequence id is freed, the highest busy sequence moves into it (its KV stream
    copied whole), so the busy ids stay consecutive; the moved sequence goes on exactly where it was (the
    same next-token logits) and its old id holds nothing."""
    import numpy as np

    from panza_local import engine

    settings = config.Settings(threads=1)
    lib, llm = engine.llama_cpp(), engine.load(embedded_model, n_ctx=2048, threads=1)
    ctx = batch._context(lib, llm, 3 * 256, 3, settings)
    mem = lib.llama_get_memory(ctx.ctx)
    b = lib.llama_batch_init(batch.N_BATCH, 0, 1)
    prompts = [llm.tokenize(t.encode(), add_bos=True) for t in
               ("Dear Ann, the invoice is attached.", "Hi Bob, lunch on Friday?", "Hello team, the deploy is done and")]

    def next_logits(seq: int, tok: int, pos: int):
        b.token[0], b.pos[0], b.n_seq_id[0], b.logits[0], b.n_tokens = tok, pos, 1, True, 1
        b.seq_id[0][0] = seq
        assert lib.llama_decode(ctx.ctx, b) == 0
        out = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx.ctx, 0), shape=(llm.n_vocab(),)).copy()
        lib.llama_memory_seq_rm(mem, seq, pos, -1)  # the probe token leaves the cache as it was
        return out

    try:
        for seq, toks in enumerate(prompts):
            batch._decode_all(lib, ctx.ctx, b, toks[:-1], seq)
        last = prompts[2]
        before = next_logits(2, last[-1], len(last) - 1)
        slots = [batch._Slot(seq=i) for i in range(3)]
        busy, free = [slots[1], slots[2]], [slots[0]]  # the email on id 0 finished
        batch._compact(lib, mem, busy, free)
        assert sorted(s.seq for s in busy) == [0, 1] and free[0].seq == 2 and slots[2].seq == 0
        after = next_logits(0, last[-1], len(last) - 1)
        assert np.array_equal(before, after)
        assert lib.llama_memory_seq_pos_max(mem, 2) == -1  # the old id is empty
        assert lib.llama_memory_seq_pos_max(mem, 0) == len(last) - 2
        batch._compact(lib, mem, busy, free)  # nothing to move: the busy ids are the lowest already
        assert sorted(s.seq for s in busy) == [0, 1] and free[0].seq == 2
    finally:
        lib.llama_batch_free(b)
        ctx.close()
