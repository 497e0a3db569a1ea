"""Training data: the prompt is tokenised exactly as llama.cpp serves it; loss masks; packing; splits."""

from __future__ import annotations

import pytest
import usermail

from panza_local.train import data


@pytest.fixture(scope="module")
def tok(embedded_model):
    return data.Tokenizer(embedded_model)


def test_prompt_tokens_match_what_llama_cpp_feeds_the_model(tok, embedded_model):
    """The training prompt must be the exact token sequence create_chat_completion evaluates."""
    from panza_local import engine

    ex = data.make_example("Ask Bob for the Q3 numbers by Friday", "Bob,\nCould you send them?\nThanks")
    llm = engine.load(embedded_model, n_ctx=512, threads=1)
    llm.reset()
    llm.create_chat_completion(messages=ex.messages, max_tokens=1, temperature=0.0)
    served = list(llm.input_ids[: llm.n_tokens])
    ids, labels = data.tokenize(ex, tok)
    n_prompt = sum(1 for x in labels if x == data.IGNORE)
    assert ids[:n_prompt] == served[:n_prompt]
    assert len(served) == n_prompt  # llama.cpp evaluated exactly our prompt (the sampled token is not fed back)


def test_loss_only_on_email_and_end_of_turn(tok):
    ex = data.make_example("Say thanks", "Thanks a lot, see you Monday.")
    ids, labels = data.tokenize(ex, tok)
    answer = [t for t in labels if t != data.IGNORE]
    assert tok.eot == "<|im_end|>"
    assert answer == ids[len(ids) - len(answer):]
    assert tok.decode(answer[:-1]) == "Thanks a lot, see you Monday."
    assert answer[-1] == tok.eos_id  # the model learns to stop where llama.cpp stops
    assert labels[0] == data.IGNORE and len(answer) < len(ids) / 2


def test_truncation_keeps_prompt_and_cuts_the_email(tok):
    ex = data.make_example("Write a long one", "word " * 400)
    ids, labels = data.tokenize(ex, tok, max_len=128)
    assert len(ids) == len(labels) == 128
    assert labels[-1] != data.IGNORE


def test_pack_never_mixes_examples():
    seqs = [([1] * n, [data.IGNORE] * (n // 2) + [7] * (n - n // 2)) for n in (300, 200, 120, 90, 60, 500, 40)]
    rows = data.pack(seqs, 512)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(s[0]) for s in seqs)
    for r in rows:
        n = len(r["input_ids"])
        assert n <= 512 and len(r["targets"]) == len(r["positions"]) == len(r["segments"]) == n
        for j in range(n):
            last_of_segment = j == n - 1 or r["segments"][j + 1] != r["segments"][j]
            if last_of_segment:  # nothing is learnt across the boundary between two examples
                assert r["targets"][j] == data.IGNORE
            first = j == 0 or r["segments"][j - 1] != r["segments"][j]
            assert (r["positions"][j] == 0) == first
    assert len(rows) < len(seqs)  # it did pack
    assert data.n_target_tokens(rows) == sum(sum(1 for t in s[1][1:] if t != data.IGNORE) for s in seqs)


def test_pack_shifts_targets():
    rows = data.pack([([10, 11, 12, 13], [data.IGNORE, data.IGNORE, 12, 13])], 16)
    assert rows[0]["targets"] == [data.IGNORE, 12, 13, data.IGNORE]


def test_split_is_stable_and_about_a_tenth():
    keys = [f"k{i}" for i in range(2000)]
    splits = [data.split_of(k) for k in keys]
    assert splits == [data.split_of(k) for k in keys]
    assert 0.07 < splits.count("val") / len(keys) < 0.13


def test_examples_from_the_store(home):
    """Playback's pairs become examples with its chronological split (newest tenth held out for eval)."""
    from panza_local import store

    conn = store.connect()
    for i in range(40):
        conn.execute("INSERT INTO messages (id, content_hash, body, subject, date, is_mine, ingested_at) "
                     "VALUES (?, ?, ?, ?, ?, 1, '2024-01-01')",
                     (i + 1, f"h{i}", f"Email number {i}.", f"s{i}", f"2024-01-01T00:{i:02d}:00"))
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (?, ?, 'g', 'ok', ?, '2024-01-01')", (i + 1, f"h{i}", f"Write email {i}"))
    tr = data.examples(conn, "train", context=False)
    va = data.examples(conn, "val", context=False)
    assert (len(tr), len(va)) == (32, 4)  # the newest 4 are eval's test set: never trained on
    assert not {e.key for e in tr} & {e.key for e in va}
    assert max(e.meta["message_id"] for e in tr) == 32
    assert sorted(e.meta["message_id"] for e in va) == [33, 34, 35, 36]
    assert tr[0].messages[-1]["role"] == "user" and tr[0].target.startswith("Email number")
    assert data.data_hash(tr) == data.data_hash(list(reversed(tr))) != data.data_hash(va)


def test_examples_from_jsonl(tmp_path):
    exs = data.examples_from_jsonl(usermail.jsonl("marcus_anonymous_clean.jsonl", tmp_path))
    assert len(exs) >= 100
    assert all(e.target and e.messages[-1]["role"] == "user" and e.messages[-1]["content"].startswith("Write") for e in exs)


def test_training_prompts_are_the_drafts_prompts_with_past_emails(home, monkeypatch):
    """With retrieved context, a training example shows its past emails exactly as a draft would: earlier
    turns asking for each (its own playback instruction) and answering with the email, recipient's first; a
    person whose To: header named them is named so in every request, an address alone stays an address."""
    from panza_local import config, draft, store
    from panza_local.retrieval import index

    conn = store.connect()
    bodies = ["Hi Bob,\n\nThe tomatoes need water on Sunday.\n\nThanks,\nAnn",
              "Hi Cy,\n\nThe tomato seedlings arrive Monday.\n\nThanks,\nAnn",
              "Hi Bob,\n\nCould you water the tomatoes again on Sunday?\n\nThanks,\nAnn"]
    for i, (body, to) in enumerate(zip(bodies, ["bob@x.org", "cy@x.org", "bob@x.org"])):
        conn.execute("INSERT INTO messages (id, content_hash, body, subject, to_addrs, to_names, date, is_mine, "
                     "ingested_at) VALUES (?, ?, ?, 'Garden', ?, ?, ?, 1, '2024-01-01')",
                     (i + 1, f"h{i}", body, to, '["Bob Stone"]' if to.startswith("bob") else "[]",
                      f"2024-01-0{i + 1}T10:00:00"))
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (?, ?, 'g', 'ok', ?, '2024-01-01')", (i + 1, f"h{i}", f"Tomato note {i}"))
    settings = config.load({"raft_context_share": 1.0, "rag_k": 2, "rag_min_score": 0.0})
    monkeypatch.setattr(data, "CONTEXT_K", 2)
    index.sync(conn, settings=settings)
    (ex,) = [e for e in data.examples(conn, "all", settings) if e.meta["message_id"] == 3]
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    # the past email to Bob himself sits nearest the request, asked for by its own instruction
    assert ex.messages[3:5] == [{"role": "user", "content": "Email to Bob Stone: Tomato note 0"},
                                {"role": "assistant", "content": bodies[0]}]
    assert ex.messages[1]["content"] == "Email to cy@x.org: Tomato note 1"
    assert ex.messages[-1]["content"].startswith("Email to Bob Stone")
    # and a draft given the same past emails builds the very same prompt
    hits = [draft.Retrieved(id=f"msg:{i}", score=1.0, text=bodies[i - 1], to=to) for i, to in ((1, "bob@x.org"),
                                                                                                  (2, "cy@x.org"))]
    plan = draft.prepare("Tomato note 2", to="bob@x.org", subject="Garden", use_adapter=False, examples=hits,
                         settings=settings)
    assert plan.messages == ex.messages
