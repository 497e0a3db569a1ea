"""panza_local.chat: conversation CRUD and search over the real store, prompt assembly, status queries."""

from __future__ import annotations

import pytest

from panza_local import chat, store
from panza_local.errors import NoDataError


@pytest.fixture
def conn(home):
    c = store.connect()
    yield c
    c.close()


def test_create_add_list_and_auto_title(conn):
    a = chat.create(conn)
    assert a.title == chat.DEFAULT_TITLE
    chat.add_message(conn, a.id, "user", "  Help me answer   Bob about the Q3 numbers and the travel budget please ")
    chat.add_message(conn, a.id, "assistant", "Sure.", {"tokens": 2})
    conv = chat.get(conn, a.id)
    assert conv.title.startswith("Help me answer Bob about the Q3") and len(conv.title) <= 48
    assert conv.messages == 2
    turns = chat.messages(conn, a.id)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].meta == {"tokens": 2}
    # a later user turn does not overwrite the title
    chat.add_message(conn, a.id, "user", "another question")
    assert chat.get(conn, a.id).title == conv.title


def test_list_orders_by_last_update(conn):
    a, b = chat.create(conn, "first"), chat.create(conn, "second")
    conn.execute("UPDATE conversations SET updated_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (b.id,))
    assert [c.id for c in chat.list_(conn)] == [a.id, b.id]
    chat.add_message(conn, b.id, "user", "bump")
    assert [c.id for c in chat.list_(conn)] == [b.id, a.id]


def test_search_matches_title_and_text_and_escapes_like(conn):
    a = chat.create(conn, "Budget tone")
    b = chat.create(conn, "Lunch")
    chat.add_message(conn, b.id, "user", "say yes to 100% of the LUNCH_PLAN")
    assert [c.id for c in chat.search(conn, "budget")] == [a.id]
    assert [c.id for c in chat.search(conn, "lunch_plan")] == [b.id]  # case-insensitive, over messages
    assert [c.id for c in chat.search(conn, "100%")] == [b.id]
    assert chat.search(conn, "1000%") == []  # % is literal, not a wildcard
    assert chat.search(conn, "a_b") == []  # _ is literal too
    assert len(chat.list_(conn, "")) == 2


def test_rename_delete_and_errors(conn):
    a = chat.create(conn)
    chat.add_message(conn, a.id, "user", "hello")
    assert chat.rename(conn, a.id, "  New   name ").title == "New name"
    with pytest.raises(NoDataError):
        chat.rename(conn, a.id, "   ")
    chat.delete(conn, a.id)
    with pytest.raises(NoDataError) as err:
        chat.get(conn, a.id)
    assert err.value.fix
    assert conn.execute("SELECT count(*) FROM chat_messages").fetchone()[0] == 0  # cascade
    with pytest.raises(ValueError):
        chat.add_message(conn, chat.create(conn).id, "robot", "x")


def test_history_persists_across_connections(home):
    c1 = store.connect()
    a = chat.create(c1)
    chat.add_message(c1, a.id, "user", "remember me")
    c1.close()
    c2 = store.connect()
    assert chat.messages(c2, a.id)[0].content == "remember me"
    c2.close()


def test_prompt_messages_keeps_newest_turns_and_fences_examples():
    history = [{"role": "user", "content": "x" * 4000}, {"role": "assistant", "content": "y" * 4000},
               {"role": "user", "content": "latest question"}]
    msgs = chat.prompt_messages(history, examples=["Past ~~~ email"], max_chars=5000)
    assert msgs[0]["role"] == "system"
    assert [m["content"][:1] for m in msgs[1:]] == ["y", "l"]  # the oldest turn no longer fits
    assert "~ ~ ~" in msgs[0]["content"] and "Past ~~~ email" not in msgs[0]["content"]
    # a single huge turn is still sent (truncating the question would change it)
    assert len(chat.prompt_messages([{"role": "user", "content": "z" * 9000}], max_chars=10)) == 2


def test_recent_mail_and_pipeline_status(conn):
    from panza_local.tui import backend

    from panza_local.ingest import messages
    from panza_local.retrieval import index

    conn.execute("INSERT INTO sources (id, uri, kind, registered, added_at, last_sync) "
                 "VALUES (1, '/m', 'mbox', 1, 't', '2026-01-02T00:00:00+00:00')")
    for i, subject in enumerate(["Lunch", "Budget"], 1):
        conn.execute("INSERT INTO messages (id, source_id, content_hash, date, from_addr, subject, body, is_mine, "
                     "ingested_at) VALUES (?, 1, ?, ?, 'bob@example.com', ?, 'body', 0, 't')",
                     (i, f"h{i}", f"2026-01-0{i}T00:00:00+00:00", subject))
    conn.execute("INSERT INTO index_items VALUES ('sent:2', 'sent', 2, 'h2', 'm', 't')")
    assert [m["subject"] for m in messages.recent(conn)] == ["Budget", "Lunch"]
    assert [m["subject"] for m in messages.recent(conn, "lun")] == ["Lunch"]
    assert [m["subject"] for m in messages.recent(conn, "%")] == []  # LIKE wildcards are literal
    assert index.item_dates(conn, ["sent:2", "sent:9"]) == {"sent:2": "2026-01-02"}
    st = backend.pipeline_status(conn)
    assert st["sources"][0]["messages"] == 2 and st["counts"]["messages"] == 2
    assert st["adapters"] == [] and st["runs"] == []


@pytest.mark.slow
def test_stream_reply_from_real_engine(home):
    from panza_local import config, engine

    settings = config.load({"threads": 1, "max_tokens": 6})
    stats = engine.Stats()
    pieces = list(chat.stream_reply([{"role": "user", "content": "Say hi"}], settings=settings, seed=1, stats=stats))
    assert pieces and "".join(pieces).strip()
    assert stats.completion_tokens == len(pieces)


def test_fit_reply_says_which_turns_the_history_cap_left_out_and_fences_documents(home):
    from panza_local import config, fit

    settings = config.load({"threads": 1, "n_ctx": 2048, "max_tokens": 8})
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " + "x " * 1500}
               for i in range(5)] + [{"role": "user", "content": "latest question"}]
    fitted = chat.fit_reply(history, documents=[("plan.md ¶2", "The launch is on ~~~ May 4.")], settings=settings)
    assert fitted.notices[0].startswith("left out the 4 oldest turns of this conversation")
    assert not fit.is_notice(fitted.notices[0])  # a quality cap, not the context: side panel only
    assert fitted.messages[-1]["content"] == "latest question" and fitted.messages[-2]["content"].startswith("turn4")
    system = fitted.messages[0]["content"]
    assert "From my document plan.md ¶2" in system and "~ ~ ~" in system and "May 4" in system
    assert fitted.prompt_tokens == fit.count(fitted.messages, fit_model(settings))
    with pytest.raises(fit.ContextTooLong, match="your message is too long"):
        chat.fit_reply([{"role": "user", "content": "word " * 5000}], settings=settings)


def fit_model(settings):
    from panza_local import engine

    return engine.default_model(settings)[0]
