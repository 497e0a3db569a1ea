"""Retrieval index: sync (incremental, deletions, model change, repair), search, RAFT context, chunking, CLI.

Real components: the embedded MiniLM model, a real Chroma PersistentClient in a temp home, real SQLite.
"""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest
import usermail

from panza_local import config, store
from panza_local.errors import NoDataError
from panza_local.retrieval import chroma_store, chunks, embed, index

# A small mailbox with distinct topics, so relevance is unambiguous for a real embedding model.
MAIL = [
    ("Q3 budget", "Attached is the Q3 budget spreadsheet. Please check the travel line before Friday.", "ann@corp.com"),
    ("Gas prices", "Natural gas prices at Henry Hub jumped again today; we should hedge the winter position.",
     "bob@corp.com"),
    ("Lunch", "Want to grab lunch at the Thai place on Main Street tomorrow at noon?", "cat@corp.com"),
    ("Board meeting", "The board meeting moved to Tuesday at 3pm in the 50th floor conference room.",
     "dan@corp.com"),
    ("Server outage", "The trading server crashed last night; IT restored it from the backup at 4am.",
     "eve@corp.com"),
    ("Holiday party", "The holiday party is on December 15th at the Hyatt, spouses welcome.", "ann@corp.com"),
    ("Contract draft", "Here is the revised draft of the pipeline transportation contract with GE's comments.",
     "bob@corp.com"),
    ("Vacation", "I will be on vacation in Colorado skiing next week; call my cell if urgent.", "cat@corp.com"),
    ("Hiring", "We should interview the two analyst candidates from Rice University on Thursday.",
     "dan@corp.com"),
    ("Expense report", "My expense report for the Houston trip is attached; the hotel receipt is missing.",
     "ann@corp.com"),
    ("Gas storage", "Storage injections are behind schedule; natural gas inventories look tight for winter.",
     "eve@corp.com"),
    ("Football", "Did you watch the Astros game? Great comeback in the ninth inning.", "bob@corp.com"),
]


def add_message(conn, mid: int, subject: str, body: str, to: str = "x@corp.com", date: str | None = None,
                mine: int = 1, source_id: int | None = None) -> int:
    date = date if date is not None else f"2001-01-{mid:02d}T09:00:00+00:00"
    conn.execute(
        "INSERT INTO messages (id, source_id, content_hash, date, from_addr, to_addrs, subject, body, is_mine, "
        "ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (mid, source_id, hashlib.sha256(f"{mid}{body}".encode()).hexdigest(), date,
         "me@corp.com" if mine else to, to if mine else "me@corp.com", subject, body, mine, store.now()))
    return mid


@pytest.fixture
def conn(home):
    chroma_store.forget_clients()
    c = store.connect()
    c.execute("INSERT INTO sources (id, uri, kind, added_at) VALUES (1, '/mail/sent.mbox', 'mbox', ?)", (store.now(),))
    for i, (subject, body, to) in enumerate(MAIL, 1):
        add_message(c, i, subject, body, to, source_id=1)
    yield c
    c.close()
    chroma_store.forget_clients()


def chroma_ids() -> set[str]:
    s = config.load()
    cols = chroma_store.get_collections(s.chroma_url, s.embedding_model, index.KINDS)
    return set().union(*(chroma_store.all_ids(c) for c in cols.values()))


def test_sync_is_incremental_and_removes_deleted(conn):
    first = index.sync(conn)
    assert (first.embedded, first.removed, first.unchanged, first.total) == (12, 0, 0, 12)
    assert chroma_ids() == {f"msg:{i}" for i in range(1, 13)}
    assert conn.execute("SELECT count(*) FROM index_items").fetchone()[0] == 12

    again = index.sync(conn)
    assert (again.embedded, again.removed, again.unchanged, again.total) == (0, 0, 12, 12)

    conn.execute("UPDATE messages SET body = body || ' Updated numbers inside.' WHERE id = 1")
    conn.execute("UPDATE messages SET deleted = 1 WHERE id = 3")
    changed = index.sync(conn)
    assert (changed.embedded, changed.removed, changed.unchanged, changed.total) == (1, 1, 10, 11)
    assert "msg:3" not in chroma_ids()
    hits = index.search("lunch at the Thai place", k=5, conn=conn)
    assert 3 not in [h.ref_id for h in hits]


def test_removed_source_leaves_the_index(conn):
    add_message(conn, 50, "From the other box", "Notes from the archive mailbox about pipeline capacity.")
    conn.execute("INSERT INTO sources (id, uri, kind, added_at) VALUES (2, '/docs', 'docs', ?)", (store.now(),))
    conn.execute("INSERT INTO documents (source_id, path, content_hash, title, text, ingested_at) "
                 "VALUES (2, '/docs/a.md', 'h', 'A', 'First paragraph.\n\nSecond one.', ?)", (store.now(),))
    assert index.sync(conn).total == 14
    # what `panza sources remove` does: the source's rows leave the store (documents cascade)
    conn.execute("DELETE FROM messages WHERE source_id = 1")
    conn.execute("DELETE FROM sources WHERE id IN (1, 2)")
    out = index.sync(conn)
    assert out.removed == 13 and out.total == 1
    assert chroma_ids() == {"msg:50"}


def test_search_relevance_filters_and_recipient(conn):
    index.sync(conn)
    hits = index.search("spreadsheet with the quarterly budget", k=3, conn=conn)
    assert hits[0].ref_id == 1 and hits[0].subject == "Q3 budget"
    assert hits[0].score > hits[-1].score and 0 < hits[0].score <= 1
    assert set(index.Hit.__dataclass_fields__) >= {"id", "ref_id", "score", "kind", "date", "subject", "snippet",
                                                   "text"}
    assert hits[0].text.startswith("Attached is the Q3 budget") and hits[0].to == ["ann@corp.com"]

    gas = index.search("natural gas winter", k=2, conn=conn)
    assert {h.ref_id for h in gas} == {2, 11}
    before = index.search("natural gas winter", k=2, before="2001-01-05", conn=conn)
    assert [h.ref_id for h in before] == [2] or all(h.ref_id < 5 for h in before)
    assert all(h.date < "2001-01-05" for h in before)
    excluded = index.search("natural gas winter", k=2, exclude_ids=[2], conn=conn)
    assert 2 not in [h.ref_id for h in excluded] and excluded[0].ref_id == 11
    assert index.search("natural gas winter", k=5, min_score=0.99, conn=conn) == []
    # recipient-aware: mail to dan@ comes first even for a query about something else
    to_dan = index.search("natural gas winter", k=3, to="Dan <dan@corp.com>", conn=conn)
    assert {h.ref_id for h in to_dan[:2]} == {4, 9}
    assert to_dan[2].ref_id in (2, 11)
    assert index.search("anything", k=3, kinds=("thread",), conn=conn) == []


def test_diversity_drops_near_duplicates(conn):
    body = MAIL[1][1]
    add_message(conn, 20, "Fwd: Gas prices", body + "\n\nSent from my BlackBerry", "zed@corp.com")
    index.sync(conn)
    hits = index.search("Henry Hub gas prices jumped, hedge winter", k=3, conn=conn)
    ids = [h.ref_id for h in hits]
    assert len({2, 20} & set(ids)) == 1, ids  # the forward of the same email is not a second example
    assert len(hits) == 3


def _plain_mmr(pool, k, chosen, lam=index.MMR_LAMBDA):
    """MMR as written first: every candidate against every item picked, again at each pick."""
    picked, pool = [], list(pool)
    while pool and len(picked) < k:
        best, best_val = None, -1e9
        for c in list(pool):
            redundancy = 0.0
            for p in chosen + picked:
                dup, sim = index._redundant(c, p)
                if dup:
                    pool.remove(c)
                    break
                redundancy = max(redundancy, sim)
            else:
                val = lam * c.score - (1 - lam) * redundancy
                if val > best_val:
                    best, best_val = c, val
        if best is None:
            break
        picked.append(best)
        pool.remove(best)
    return picked


def test_mmr_picks_what_the_plain_quadratic_version_picks():
    """`_mmr` compares each pair once; it must pick the same items in the same order, ties and duplicates
    (near-identical vectors, texts contained in others) included."""
    rng = np.random.default_rng(7)
    words = ["gas", "price", "winter", "hedge", "budget", "report", "meeting", "friday", "call", "deal"]
    for trial in range(200):
        centres = rng.normal(size=(3, 16))
        cands = []
        for i in range(int(rng.integers(0, 14))):
            v = centres[rng.integers(3)] + rng.normal(scale=rng.choice([0.01, 0.4, 2.0]), size=16)
            text = " ".join(rng.choice(words, size=int(rng.integers(2, 12))))
            hit = index.Hit(f"c{i}", i, 0.5, "sent", None, "", "", text)
            cands.append(index._Cand(f"c{i}", {}, (v / np.linalg.norm(v)).astype(np.float32),
                                     round(float(rng.random()), 1), hit))
        n = int(rng.integers(0, 3))
        k = int(rng.integers(0, 6))
        want = [c.id for c in _plain_mmr(cands[n:], k, cands[:n])]
        assert [c.id for c in index._mmr(cands[n:], k, cands[:n])] == want, trial


def test_mail_to_the_recipient_that_fills_k_needs_no_wider_search(conn, monkeypatch):
    index.sync(conn)
    wheres = []
    real = index._dated_candidates
    monkeypatch.setattr(index, "_dated_candidates", lambda cols, qv, before, where, n: wheres.append(where)
                        or real(cols, qv, before, where, n))
    assert {h.ref_id for h in index.search("natural gas winter", k=2, to="dan@corp.com", conn=conn)} == {4, 9}
    assert len(wheres) == 1 and wheres[0] is not None  # past mail to Dan only
    wheres.clear()
    assert len(index.search("natural gas winter", k=3, to="dan@corp.com", conn=conn)) == 3
    assert len(wheres) == 2 and wheres[1] is None  # two to Dan: the third from everything


def test_training_context_never_leaks_the_target(conn):
    # an older near-copy of message 11 (the same email sent earlier to someone else) must not be its context
    add_message(conn, 30, "Gas storage", MAIL[10][1] + " Thanks.", "old@corp.com", date="2000-12-01T00:00:00+00:00")
    add_message(conn, 31, "Undated", "A note without any date about gas storage.", date="")
    index.sync(conn)
    for mid in [*range(1, 13), 30]:
        date = conn.execute("SELECT date FROM messages WHERE id = ?", (mid,)).fetchone()[0]
        ctx = index.training_context(mid, 3, conn=conn)
        assert mid not in [h.ref_id for h in ctx]
        assert all(h.date and h.date < date for h in ctx), (mid, [h.date for h in ctx])
    ctx11 = index.training_context(11, 5, conn=conn)
    assert 30 not in [h.ref_id for h in ctx11] and ctx11  # near-duplicate gone, real older mail kept
    assert 31 not in [h.ref_id for h in ctx11]  # undated mail cannot be proven older
    assert index.training_context(31, 3, conn=conn) == []  # undated target: no context at all
    # the playback instruction is the query when there is one
    conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                 "VALUES (12, 'h', 'g', 'ok', 'Ask about the natural gas storage numbers', ?)", (store.now(),))
    assert index.training_context(12, 1, conn=conn)[0].ref_id in (11, 30)  # 30 is an older copy of 11
    with pytest.raises(NoDataError, match="no message with id 999"):
        index.training_context(999, 3, conn=conn)


def test_training_context_on_real_mail(conn, tmp_path):
    rows = [json.loads(line) for line in usermail.jsonl("marcus_anonymous_clean.jsonl", tmp_path).open()][:40]
    conn.execute("DELETE FROM messages")
    for i, r in enumerate(rows, 1):
        add_message(conn, 100 + i, r.get("subject") or "", r["email"], date=f"2024-{1 + i // 28:02d}-"
                    f"{1 + i % 28:02d}T10:00:00+00:00")
    assert index.sync(conn).total == len(rows)
    bodies = {100 + i: r["email"] for i, r in enumerate(rows, 1)}
    vecs = dict(zip(bodies, embed.embed(list(bodies.values()))))
    checked = 0
    for mid in list(bodies)[5::5]:
        date = conn.execute("SELECT date FROM messages WHERE id = ?", (mid,)).fetchone()[0]
        for h in index.training_context(mid, 3, conn=conn):
            checked += 1
            assert h.ref_id != mid and h.date < date
            assert float(np.dot(vecs[h.ref_id], vecs[mid])) < index.NEAR_DUP
            assert not index.near_duplicate(index.shingles(h.text), index.shingles(bodies[mid]))
    assert checked >= 10


def test_embedding_model_change_rebuilds_with_notice(conn):
    index.sync(conn)
    s = config.load()
    for col in chroma_store.get_collections(s.chroma_url, s.embedding_model, index.KINDS).values():
        col.modify(metadata={"model": "older-embedder", "dims": 384})  # as if an older model had built it
    chroma_store.forget_collections()  # this process cached handles; another process would not have
    assert chroma_store.get_collections(s.chroma_url, s.embedding_model, index.KINDS) == {}
    with pytest.raises(NoDataError, match="panza index"):
        index.search("budget", conn=conn)
    out = index.sync(conn)
    assert out.rebuilt and "older-embedder" in out.notice and "all-minilm-l6-v2" in out.notice
    assert (out.embedded, out.unchanged, out.total) == (12, 0, 12)
    assert index.sync(conn).embedded == 0


def test_lost_collection_is_repaired(conn):
    index.sync(conn)
    s = config.load()
    chroma_store.client(s.chroma_url).delete_collection(chroma_store.name_of("sent"))
    out = index.sync(conn)
    assert out.embedded == 12 and out.total == 12


def test_bad_item_is_counted_and_batch_goes_on(conn):
    add_message(conn, 40, "Poison", "POISON body that the embedder refuses.")

    def flaky(texts):
        if any("POISON" in t for t in texts):
            raise RuntimeError("cannot embed this one")
        return embed.embed(texts)

    out = index.sync(conn, embed_fn=flaky, batch=5)
    assert out.failed == 1 and out.errors[0]["id"] == "msg:40" and out.embedded == 12
    assert "POISON" not in json.dumps(out.errors)  # errors never carry message text
    retry = index.sync(conn)
    assert retry.embedded == 1 and retry.total == 13


def test_interrupted_sync_resumes(conn):
    calls = {"n": 0}

    def dies_second_batch(texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return embed.embed(texts)

    with pytest.raises(KeyboardInterrupt):
        index.sync(conn, embed_fn=dies_second_batch, batch=4)
    assert conn.execute("SELECT count(*) FROM index_items").fetchone()[0] == 4
    out = index.sync(conn)
    assert (out.embedded, out.unchanged, out.total) == (8, 4, 12)


def test_chunking_respects_paragraphs():
    paras = [f"Paragraph {i} " + "word " * (20 + 7 * i) for i in range(1, 9)]
    text = "\n\n".join(p.strip() for p in paras)
    out = chunks.chunk(text, max_chars=400)
    assert len(out) > 1
    for c in out:
        piece = text[c.start:c.end]
        assert piece.startswith("Paragraph") and len(piece) <= 400  # no chunk starts mid-paragraph
        assert piece.count("Paragraph") == c.para_end - c.para_start + 1
    assert out[0].para_start == 1 and out[-1].para_end == 8
    assert all(a.para_end + 1 == b.para_start for a, b in itertools.pairwise(out))
    long = "Sentence number one is here. " * 60
    parts = chunks.chunk("Intro.\n\n" + long + "\n\nOutro.", max_chars=300)
    assert all(c.end - c.start <= 300 for c in parts) and {c.para_start for c in parts} == {1, 2, 3}
    assert chunks.chunk("") == [] and chunks.chunk("\n\n  \n") == []
    assert chunks.cite("/d/a.md", 3, 5) == "/d/a.md ¶3-5" and chunks.cite("x", 2, 2) == "x ¶2"


def test_documents_are_chunked_and_cited(conn, tmp_path):
    text = ("Heating plan\n\nThe boiler in building B needs a new pressure valve before winter.\n\n"
            + "Filler paragraph about unrelated office matters. " * 30
            + "\n\nThe budget for the valve replacement is 4,000 dollars.")
    conn.execute("INSERT INTO sources (id, uri, kind, added_at) VALUES (3, ?, 'docs', ?)", (str(tmp_path), store.now()))
    conn.execute("INSERT INTO documents (id, source_id, path, content_hash, title, text, ingested_at) "
                 "VALUES (7, 3, '/docs/plan.md', 'h', 'Plan', ?, ?)", (text, store.now()))
    out = index.sync(conn)
    n_chunks = len(chunks.chunk(text))
    assert n_chunks >= 2 and out.total == 12 + n_chunks
    hits = index.search("boiler pressure valve", k=2, kinds=("doc",), conn=conn)
    assert hits[0].kind == "doc" and hits[0].ref_id == 7 and hits[0].id.startswith("doc:7:")
    assert hits[0].cite.startswith("/docs/plan.md ¶") and "pressure valve" in hits[0].text
    conn.execute("UPDATE documents SET text = 'Short now.' WHERE id = 7")
    again = index.sync(conn)
    assert again.removed == n_chunks - 1 and again.embedded == 1


def test_carries_context_share():
    draws = [index.carries_context(i, 0.55) for i in range(4000)]
    assert abs(sum(draws) / len(draws) - 0.55) < 0.03
    assert draws == [index.carries_context(i, 0.55) for i in range(4000)]  # stable across runs
    assert not any(index.carries_context(i, 0.0) for i in range(100))


def test_cli_index_and_search(conn, capsys):
    from panza_local.cli import main

    assert main(["search", "budget"]) == 1
    assert "panza index" in capsys.readouterr().err
    assert main(["index", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"embedded", "removed", "unchanged", "total"} <= out.keys() and out["embedded"] == 12
    assert main(["index", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded"] == 0
    assert main(["search", "quarterly budget spreadsheet", "--k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["hits"]) == 2 and res["hits"][0]["id"] == "msg:1"
    assert {"id", "score", "kind", "date", "subject", "snippet"} <= res["hits"][0].keys()
    assert main(["search", "budget", "--before", "yesterday-ish"]) == 1
    assert "ISO 8601" in capsys.readouterr().err
    assert main(["search", "budget", "--k", "2"]) == 0
    assert "Q3 budget" in capsys.readouterr().out
    run = conn.execute("SELECT status, summary FROM runs WHERE stage = 'index' ORDER BY id DESC").fetchone()
    assert run[0] == "done" and json.loads(run[1])["unchanged"] == 12


MEMO = """Office move plan

The Houston team moves from the 50th floor to building B on March 14. The movers arrive at 7am that Monday and take every box that is labelled with a room number; anything unlabelled stays behind. Please pack your desk by Friday March 11, put personal items in the blue crates, and leave monitors on the desk: IT moves them separately over the weekend and reconnects them before you arrive. Label each crate with your name and new room number on two sides; the movers will not open crates to find out whose they are. Plants, coffee machines and anything fragile are yours to carry. If you are travelling on moving day, ask your neighbour to check your desk on the Friday before, and tell Maria at the front desk so the movers know whom to call.

Parking: the new garage on Smith Street opens on March 1 and replaces the Louisiana Street lot, which closes the same week. Badges for the garage are issued by Carla in facilities, room 210, between 9am and noon. Bring your employee ID; a badge costs nothing, but a lost one is 25 dollars to replace, and visitors park on level 1 only. The garage is open from 6am to 10pm on weekdays; after 10pm the exit gate opens with your badge but the entrance stays closed. Electric vehicle chargers are on level 2, twelve of them, for up to four hours a day per car. Motorcycles and bicycles park on level 1 next to the lift, and there is a covered bicycle cage with lockers that Carla can also give you a key for.

Travel policy: book economy class for flights under six hours, business class above that with your director's approval. The hotel limit is 250 dollars a night in New York and 180 dollars elsewhere, taxes included. Submit receipts within 30 days of your return, or the expense report is sent back to you unpaid. Meals are reimbursed up to 75 dollars a day when you travel overnight, and car rentals need a quote from the company's agency first. Trains count as flights for the six-hour rule. If your trip changes after booking, change it through the agency too, so the company's insurance still covers you, and keep the confirmation email with your receipts."""


def _memo(conn, path: str = "/notes/office-memo.md") -> None:
    conn.execute("INSERT INTO sources (id, uri, kind, added_at) VALUES (3, '/notes', 'docs', ?)", (store.now(),))
    conn.execute("INSERT INTO documents (id, source_id, path, content_hash, title, text, ingested_at) "
                 "VALUES (7, 3, ?, 'memo', 'Office move plan', ?, ?)", (path, MEMO, store.now()))
    index.sync(conn)


def test_documents_match_only_what_they_answer(conn):
    _memo(conn)
    parking = index.documents("Ask Carla for a parking badge for the new garage", conn=conn)
    assert parking and parking[0].kind == "doc" and "Carla in facilities" in parking[0].text
    assert parking[0].cite == "/notes/office-memo.md ¶3" and parking[0].score >= index.DOC_MIN_SCORE
    assert len(parking) == 1  # the other paragraphs are about something else
    hotel = index.documents("Remind Dan of the hotel limit for his New York trip", conn=conn)
    assert hotel and "250 dollars" in hotel[0].text and hotel[0].cite.endswith("¶4")
    assert len(index.documents("Tell Bob when the movers come and when to pack his desk", conn=conn, k=5)) <= 2
    for unrelated in ("Thank Anna for the lovely birthday flowers", "Say yes to lunch on Thursday",
                      "Send Jeff the gas storage numbers", "Tell the team the Astros won last night"):
        assert index.documents(unrelated, conn=conn) == [], unrelated
    assert index.documents("parking badge", conn=conn, k=0) == []


def test_documents_without_any_document_or_index(home):
    chroma_store.forget_clients()
    c = store.connect()
    try:
        assert index.documents("Ask Carla for a parking badge", conn=c) == []  # no index at all: nothing, no error
        add_message(c, 1, "Q3 budget", "Attached is the Q3 budget spreadsheet.")
        index.sync(c)
        assert index.documents("Q3 budget spreadsheet", conn=c, min_score=0.0) == []  # mail only
    finally:
        c.close()
        chroma_store.forget_clients()


def test_real_documents_from_the_shared_data_are_found_and_cited(conn, shared_data, tmp_path):
    """Real files (PDFs through pypdf, Markdown) from ../shared/data/docs, ingested and indexed."""
    import shutil

    from panza_local import ingest

    src = shared_data / "docs" / "py-pdf_sample-files"
    picked = ["021-pdfa/crazyones-pdfa.pdf", "011-google-doc-document/google-doc-document.pdf", "README.md"]
    if not all((src / p).is_file() for p in picked):
        pytest.skip(f"needs {picked} under {src}")
    notes = tmp_path / "notes"
    notes.mkdir()
    for p in picked:
        shutil.copy(src / p, notes / p.rsplit("/", 1)[-1])
    assert ingest.ingest(conn, [str(notes)]).documents == 3
    index.sync(conn)
    hits = index.documents("Thank the rebels and misfits who see things differently and push the human race "
                           "forward", conn=conn)
    assert hits and hits[0].cite.startswith(str(notes / "crazyones-pdfa.pdf") + " ¶"), [h.cite for h in hits]
    assert "crazy ones" in hits[0].text.lower()
    zen = index.documents("Remind the team: beautiful is better than ugly, explicit is better than implicit, "
                          "simple is better than complex", conn=conn)
    assert zen and zen[0].cite.startswith(str(notes / "google-doc-document.pdf")), [h.cite for h in zen]
    assert index.documents("Ask Bob to send the Q3 invoice", conn=conn) == []
