"""Playback quality pieces without a chat model: copy ratio, recipient, keywords, guards, grammar, split, export."""

from __future__ import annotations

import hashlib
import json

import pytest

from panza_local import playback, store
from panza_local.playback import scoring as q

EMAIL = ("Dear Tom,\n\nCould you send me the signed Koch confirmation for the Malin deal by Thursday? "
         "Our auditors in Portland need it before 14 March.\n\nBest regards,\nPhillip")


def test_copy_ratio_measures_the_longest_shared_run():
    assert q.copy_ratio(EMAIL, EMAIL) == pytest.approx(1.0)
    # case and whitespace do not hide a copy
    assert q.copy_ratio(EMAIL.upper().replace("\n\n", "   "), EMAIL) == pytest.approx(1.0)
    part = "could you send me the signed koch confirmation"
    assert q.copy_ratio(part, EMAIL) == pytest.approx(len(part) / len(q.normalise(EMAIL)))
    assert q.copy_ratio("Ask Tom for the Koch paperwork.", EMAIL) < 0.1
    assert q.copy_ratio("anything", "") == 0.0


@pytest.mark.parametrize("email,to,expected", [
    ("Dear Prof. Aman,\n\nIt was great...", None, "Prof. Aman"),
    ("Fred,If we have the same purchaser for both", None, "Fred"),
    ("Hi Rachel, Maria, and Anna,\nThank you", None, "Rachel, Maria, and Anna"),
    ("Hi all,\nthe meeting moved", None, "the team"),
    ("Good morning,\n\nThank you for your email.", "sara.smith@corp.com", "Sara"),
    ("I tried to run the model and it did not work", "jsmith@corp.com", "Jsmith"),
    ("I tried to run the model and it did not work", None, None),
    ("Hi there,\nquick question", "bob.jones@x.com", "Bob"),
    ("Kay & Neal,\n\nThanks for remembering my birthday.", "hargr@webtv.net", "Kay & Neal"),
])
def test_recipient_from_greeting_then_to_header(email, to, expected):
    assert q.recipient(email, to) == expected


def test_keywords_are_specific_and_never_filler():
    mailbox = [EMAIL, "Thanks, see you Thursday.", "Please send me the report by Thursday.",
               "Could you call me tomorrow?", "The Malin deal closed."]
    idf = q.idf_table(mailbox)
    kws = q.keywords(EMAIL, idf, k=5, exclude=["Tom"])
    low = [k.lower() for k in kws]
    assert "koch" in low and "portland" in low
    assert not {"could", "you", "me", "tom", "phillip", "the", "dear"} & set(low)
    # in reading order
    assert kws == sorted(kws, key=lambda k: EMAIL.find(k))
    assert q.keywords("I don't know, 1 2 3 http://x.com/a", idf) == []


def test_guards_reject_copies_hallucinations_leaks_and_missing_recipient():
    ok = "Ask Tom for the signed Koch confirmation by Thursday for the Portland auditors."
    assert q.check(ok, EMAIL, to_name="Tom") is None
    assert q.check("Ask Tom.", EMAIL, to_name="Tom") == "too_short"
    assert q.check("Tell Tom " + EMAIL, EMAIL, to_name="Tom") in ("copies_email", "too_long")
    assert q.check("Tell Tom could you send me the signed koch confirmation for the malin deal by thursday",
                   EMAIL, to_name="Tom") == "copies_email"
    assert q.check("Ask Sara for the signed Koch confirmation by Thursday please.", EMAIL,
                   to_name="Tom") == "no_recipient"
    assert q.check("Tell Tom the budget review moves to room 32C with pizza and balloons.", EMAIL,
                   to_name="Tom") == "unsupported"
    assert q.check("Ask Tom for the Koch confirmation before the budget review.", EMAIL, to_name="Tom",
                   banned={"budget"}) == "few_shot_leak"
    assert q.check("Thank you for the Koch confirmation, Tom, by Thursday.", EMAIL, to_name="Tom") == "not_imperative"
    assert q.check("Reply to Tom: please send the Koch confirmation by Thursday.", EMAIL,
                   to_name="Tom") == "not_imperative"
    assert q.check("Ask Tom Tom Tom Tom Tom Tom Tom Tom about Koch.", EMAIL, to_name="Tom") == "repetitive"


def test_extractive_fallback_is_specific_but_abstract():
    idf = q.idf_table([EMAIL, "Please send me the report.", "Thanks!"])
    text = q.extractive(EMAIL, subject="Re: Koch confirm", to_name="Tom", idf=idf, is_reply=True)
    assert text.startswith("Reply to Tom; mention ")
    assert "Koch" in text and "Portland" in text
    assert q.copy_ratio(text, EMAIL) < 0.1
    bare = q.extractive("ok", subject="Lunch on Friday", to_name=None, idf=idf)
    assert bare == 'Write to the recipient about "Lunch on Friday".'


def test_grammar_compiles_and_names_the_recipient():
    from llama_cpp import LlamaGrammar

    g = playback.grammar('Prof. "Aman"')
    assert 'Ask Prof. Aman' in g and "Write to Prof. Aman" in g
    LlamaGrammar.from_string(g, verbose=False)
    LlamaGrammar.from_string(playback.grammar(None), verbose=False)


@pytest.mark.parametrize("email,act", [
    ("Hi Tom,\n\nThanks for walking the site with me. The drainage looks wrong.\n\nCheers,\nMaya", "thank"),
    ("Dear Tom,\n\nThank you so much for the invitation. I will be travelling.\n\nBest,\nDavid", "thank"),
    (EMAIL, "ask"),
    ("Hi Hannah,\n\nBook club is at mine. Shall we say Tuesday at 7:30?\n\nCheers,\nMaya", "ask"),
    ("Hi Tom,\n\nNice set. Please add the tree protection zones to sheet 39.\n\nCheers,\nMaya", "ask"),
    # the courtesies every email has are not an ask; "please find" hands something over
    (("Hi Sam,\n\nPlease find the invoice attached. Payment in 30 days is fine.\n\nLet me know if anything "
      "looks off.\n\nCheers,\nMaya"), None),
    ("Team - the budget review moves to 3pm Thursday in 32C.\nPhillip", None),
])
def test_lead_act_names_what_the_email_does(email, act):
    assert q.lead_act(email) == act


def test_only_an_email_that_thanks_gets_a_thank_you_instruction():
    """An email that opens by thanking gets a "Thank <who> for ..." instruction and no other email does (the
    adapter learns that thanks come when asked for); and "Ask" is never taken for a word leaked from the
    few-shot examples (it was, and every model answer "Ask ..." to an email without the word was rejected)."""
    thank = playback.plan({"body": "Hi Tom,\n\nThanks for the photos.\n\nMaya", "content_hash": "ab"})
    ask = playback.plan({"body": EMAIL, "content_hash": "ab"})
    tell = playback.plan({"body": "Hi Tom,\n\nThe review moves to Thursday.\n\nMaya", "content_hash": "ab"})
    assert 'start ::= "Thank Tom for"\n' in thank["grammar"]
    for p in (ask, tell):
        assert '"Ask Tom"' in p["grammar"] and '"Tell Tom"' in p["grammar"] and "Thank" not in p["grammar"]
    assert q.check("Ask Tom for the Koch confirmation for the Malin deal by Thursday.", EMAIL, to_name="Tom",
                   banned=playback.LEAK) is None
    assert not q.INSTRUCTION_WORDS & playback.LEAK
    from llama_cpp import LlamaGrammar

    LlamaGrammar.from_string(thank["grammar"], verbose=False)
    LlamaGrammar.from_string(playback.grammar(None, verbs=playback.THANK_VERBS), verbose=False)


def test_gen_config_hash_changes_with_the_prompt_only(embedded_model, monkeypatch):
    from panza_local import config

    s = config.Settings()
    h1, _ = playback.gen_config(embedded_model, s)
    assert playback.gen_config(embedded_model, config.Settings(temperature=0.1))[0] == h1
    monkeypatch.setattr(playback, "SYSTEM", playback.SYSTEM + " Be brief.")
    assert playback.gen_config(embedded_model, s)[0] != h1


def test_split_is_chronological_newest_ten_percent_test():
    dates = [f"2001-01-{d:02d}T00:00:00+00:00" for d in range(1, 31)][::-1] + [None] * 10  # 40 items
    labels = playback.split_of(dates)
    assert labels.count("test") == 4 and labels.count("valid") == 4
    order = sorted(range(30), key=lambda i: dates[i])
    assert [labels[i] for i in order[-4:]] == ["test"] * 4
    assert [labels[i] for i in order[-8:-4]] == ["valid"] * 4
    assert all(labels[i] == "train" for i in range(30, 40))  # undated sort oldest
    assert playback.split_of(["2001-01-01"] * 5) == ["train"] * 5


def add_message(conn, body: str, *, date: str | None = None, subject: str = "", to: str = "",
                thread: str | None = None, mine: int = 1) -> int:
    """Insert one message row the way ingest stores it."""
    h = hashlib.sha256(body.encode()).hexdigest()
    cur = conn.execute(
        "INSERT INTO messages (content_hash, date, to_addrs, subject, body, thread, is_mine, ingested_at) "
        "VALUES (?,?,?,?,?,?,?,?)", (h, date, to, subject, body, thread, mine, store.now()))
    return cur.lastrowid


def _add_pair(conn, mid: int, instruction: str, cfg: str = "cfg", status: str = "ok") -> None:
    h = conn.execute("SELECT content_hash FROM messages WHERE id = ?", (mid,)).fetchone()[0]
    conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, copy_ratio, "
                 "created_at, source) VALUES (?,?,?,?,?,?,?,?)",
                 (mid, h, cfg, status, instruction, 0.1, store.now(), "model"))


def test_pairs_and_export_write_chat_jsonl_split_by_date(home, tmp_path):
    conn = store.connect()
    for i in range(20):
        mid = add_message(conn, f"Email number {i} about topic {i}.", date=f"2002-02-{i + 1:02d}T10:00:00+00:00",
                          subject=f"Subject {i}", to=f"p{i}@x.com", thread="Earlier text" if i % 2 else None)
        _add_pair(conn, mid, f"Write to p{i} about topic {i}.")
    # a newer config's pair wins; failed pairs and other people's mail never export
    _add_pair(conn, 1, "Newer instruction for email 0.", cfg="cfg2")
    _add_pair(conn, add_message(conn, "Broken one", date="2002-03-01T00:00:00+00:00"), None, status="failed")
    _add_pair(conn, add_message(conn, "Not mine", date="2002-03-02T00:00:00+00:00", mine=0), "Write.")

    rows = playback.pairs(conn)
    assert len(rows) == 20 and rows[0]["instruction"] == "Newer instruction for email 0."
    assert [p["email"] for p in playback.pairs(conn, split="test")] == ["Email number 18 about topic 18.",
                                                                        "Email number 19 about topic 19."]
    assert playback.pairs(conn, "val") == playback.pairs(conn, "valid") and len(playback.pairs(conn, "val")) == 2
    with pytest.raises(ValueError):
        playback.pairs(conn, "bogus")

    out = playback.export(conn, tmp_path / "data")
    assert (out["train"], out["valid"], out["test"]) == (16, 2, 2)
    recs = [json.loads(ln) for ln in (tmp_path / "data" / "test.jsonl").read_text().splitlines()]
    assert [m["role"] for m in recs[0]["messages"]] == ["system", "user", "assistant"]
    assert recs[1]["messages"][-1]["content"] == "Email number 19 about topic 19."
    user = recs[1]["messages"][1]["content"]
    assert "Write to p19 about topic 19." in user and 'about "Subject 19"' in user and "Earlier text" in user
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["data_hash"] == out["data_hash"]
    assert playback.export(conn, tmp_path / "data")["data_hash"] == out["data_hash"]  # deterministic
    assert (tmp_path / "data" / "train.jsonl").stat().st_mode & 0o077 == 0


def test_export_without_pairs_names_the_fix(home, tmp_path):
    from panza_local.errors import NoDataError

    conn = store.connect()
    with pytest.raises(NoDataError, match="panza playback"):
        playback.export(conn, tmp_path)


def test_recall_embeds_each_text_once(home, monkeypatch):
    """The quality metric keeps its vectors: a second pass embeds only the texts it has not seen, and the kept
    vectors are the ones the embedding model gives."""
    import numpy as np

    from panza_local.retrieval import embed

    conn = store.connect()
    calls: list[int] = []
    real = embed.embed
    monkeypatch.setattr(embed, "embed", lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw))
    texts = ["Hi Bob, the contract is signed.", "Lunch on Friday?", "Hi Bob, the contract is signed."]
    first = playback._vectors(conn, texts)
    assert calls == [2] and first.shape == (3, embed.dims())
    second = playback._vectors(conn, [*texts, "Tell the team the budget review moved to 3pm."])
    assert calls == [2, 1]
    assert np.array_equal(second[:3], first)
    assert np.allclose(second, real([*texts, "Tell the team the budget review moved to 3pm."]), atol=1e-5)
    assert playback._vectors(conn, []).shape == (0, embed.dims()) and calls == [2, 1]
