"""The app's calls into panza_local, in one place (no Textual here): conversations, drafting, retrieval,
adapters, re-tune, store counts. The screens import this module and panza_local.errors, nothing else of
panza_local (tests/test_imports.py keeps it so)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from panza_local import chat, config, draft, engine, outbox, prompts, store
from panza_local.errors import NoDataError, PanzaError
from panza_local.results import RetuneResult

Draft = draft.Draft  # the finished draft the draft screen holds


def addressed_name(instruction: str) -> str:
    """The first name an instruction addresses ("Ask Priya to ..." -> "Priya"), else ''."""
    return prompts.addressed_name(instruction)


# --- conversations and the store ------------------------------------------------------------------------

def conversations(conn, query: str = "") -> list[chat.Conversation]:
    """Stored conversations, newest first, whose title or text contains `query`."""
    return chat.list_(conn, query)


def conversation(conn, conversation_id: int) -> chat.Conversation:
    """One conversation (id, title, ...)."""
    return chat.get(conn, conversation_id)


def new_conversation(conn) -> chat.Conversation:
    """A new, empty conversation."""
    return chat.create(conn)


def rename_conversation(conn, conversation_id: int, title: str) -> chat.Conversation:
    """Give a conversation a new title."""
    return chat.rename(conn, conversation_id, title)


def delete_conversation(conn, conversation_id: int) -> None:
    """Delete a conversation and its turns."""
    chat.delete(conn, conversation_id)


def turns(conn, conversation_id: int) -> list[chat.ChatMessage]:
    """A conversation's turns, oldest first."""
    return chat.messages(conn, conversation_id)


def add_turn(conn, conversation_id: int, role: str, content: str, meta: dict | None = None) -> chat.ChatMessage:
    """Store one turn (user or assistant) of a conversation."""
    return chat.add_message(conn, conversation_id, role, content, meta)


def recent_mail(conn, limit: int = 200) -> list[dict]:
    """Recent messages to reply to (the draft form's thread picker)."""
    from panza_local.ingest import messages

    return messages.recent(conn, limit=limit)


def pipeline_status(conn) -> dict:
    """What the status screen shows: sources and last sync, counts, adapters with scores, recent runs."""
    from panza_local.ingest import sources
    from panza_local.train import registry

    adapters = [{**a, "metrics": a.get("metrics") or {}} for a in registry.list_(conn)]
    return {"sources": sources.list_(conn), "counts": counts(conn), "adapters": adapters,
            "runs": store.recent_runs(conn)}


def counts(conn) -> dict[str, int]:
    """Messages, pairs, index items ... in the store (the first-run guide and the status screen)."""
    from panza_local import doctor

    return doctor.store_counts(conn)


def model_name(settings=None) -> str:
    """The active base model's name."""
    return (settings or config.load()).model


def check_model(settings=None) -> None:
    """Raise ModelNotFound (naming the fix) when the active base model is not on this machine."""
    engine.default_model(settings)


def current_adapter(settings=None) -> dict | None:
    """The adapter drafts use ({id, gguf, metrics, ...}), or None: the base model alone (also when the
    current adapter was trained for another base model)."""
    from panza_local.train import registry

    return registry.adapter_for(settings).row


def current_adapter_id() -> str | None:
    """What the `current` pointer names (a readlink: cheap enough to poll)."""
    from panza_local.train import registry

    return registry.current_id()


def retune_history(limit: int = 8) -> list[dict]:
    """The last re-tune passes, newest first (what was new, promoted or not and why, scores)."""
    from panza_local import retune

    try:
        return retune.history(limit)
    except PanzaError:
        return []


def retrieve(conn, query: str, settings, *, to: str | None = None) -> tuple[list[dict], list[str]]:
    """Past emails and document passages like `query` for a chat turn, as side-panel rows, plus notices."""
    from panza_local.retrieval import index

    try:
        hits = index.search(query, settings.rag_k, kinds=["sent"], to=to, min_score=settings.rag_min_score,
                            settings=settings)
    except NoDataError as exc:
        return [], [f"no past emails used: {exc.message} (fix: {exc.fix})"]
    hits += index.documents(query, settings=settings)
    rows = [{"id": h.id, "score": h.score, "date": (h.date or "")[:10], "subject": h.subject, "text": h.text,
             "kind": h.kind, "cite": h.cite} for h in hits]
    return rows, []


def fit_reply(history: list, hits: list[dict], settings):
    """The chat prompt for `history` with the retrieved rows, fitted to the context (chat.fit_reply)."""
    return chat.fit_reply(history, examples=[h["text"] for h in hits if h.get("kind") != "doc"],
                          documents=[(h["cite"].rsplit("/", 1)[-1], h["text"]) for h in hits if h.get("kind") == "doc"],
                          settings=settings)


def fit_notices(notices: list[str]) -> list[str]:
    """The notices that say a prompt was trimmed to fit the context (shown as notifications)."""
    from panza_local import fit

    return [n for n in notices if fit.is_notice(n)]


def plan_draft(instruction: str, *, to: str = "", subject: str = "", thread: dict | None = None,
               use_rag: bool = True, seed: int | None = None, settings=None) -> draft.DraftPlan:
    """draft.prepare with the fields of the draft form (`thread` is a row of `recent_mail`)."""
    reply = None
    if thread:
        reply = draft.Reply(message_id=thread.get("message_id") or "", references=(thread.get("refs") or "").split(),
                            subject=thread.get("subject") or "", sender=thread.get("from_addr") or "",
                            body=thread.get("body") or "")
    return draft.prepare(instruction, to=to or None, subject=subject or None, reply_to=reply, use_rag=use_rag,
                         seed=seed, settings=settings)


def prefill_draft(instruction: str, **fields) -> int:
    """Evaluate the prompt the draft form would send now (engine.prefill), while the user is still typing:
    a draft whose prompt starts the same way then evaluates only the rest. Returns the tokens evaluated."""
    plan = plan_draft(instruction, **fields)
    return engine.prefill(plan.messages, model_path=plan.model_path, lora_path=plan.lora_path, settings=plan.settings,
                          prefix=plan.opening)


def stream_draft(plan: draft.DraftPlan, cancelled=None):
    """The draft's text pieces from the engine (draft.stream, which asks `cancelled` after every token);
    `finish_draft(plan)` collects them."""
    return draft.stream(plan, cancelled=cancelled)


def finish_draft(plan: draft.DraftPlan) -> draft.Draft:
    """The Draft made of what `stream_draft(plan)` produced (recorded in the store)."""
    return draft.finish(plan)


def new_stats() -> engine.Stats:
    """An empty engine.Stats for a stream to fill (tokens, time to first token, tokens/s)."""
    return engine.Stats()


def stream_reply(history: list, **kwargs):
    """A chat turn's text pieces (chat.stream_reply; pass `stats=new_stats()` to get its timings)."""
    return chat.stream_reply(history, **kwargs)


def plan_rows(conn, plan: draft.DraftPlan) -> list[dict]:
    """The plan's retrieved emails as side-panel rows (score, date, subject)."""
    from panza_local.retrieval import index

    dates = index.item_dates(conn, [r.id for r in plan.retrieved])
    return [{"id": r.id, "score": r.score, "date": dates.get(r.id, ""), "subject": r.subject, "kind": r.kind,
             "cite": r.cite} for r in plan.retrieved]


def edited(d: draft.Draft, text: str, to: str, subject: str) -> draft.Draft:
    """The finished draft with the user's edits to its text, recipient and subject."""
    return dataclasses.replace(d, text=text.strip(), to=to or d.to, subject=subject or d.subject)


def save_eml(path: str | Path, d: draft.Draft) -> Path:
    """Write the draft as an RFC 5322 .eml file (0600) and return its path."""
    from panza_local import paths

    path = Path(path).expanduser()
    return paths.write_private(path, outbox.to_eml(d))


def save_maildir(folder: str | Path, d: draft.Draft) -> Path:
    """Store the draft in a Maildir drafts folder with the D flag (creating its parents); return the file."""
    from panza_local import paths

    paths.ensure_dir(Path(folder).expanduser().parent)
    return outbox.save_maildir(d, Path(folder).expanduser())


def alternatives(instruction: str, n: int = 3, **kwargs) -> list[draft.Draft]:
    """`n` different drafts of one instruction."""
    return draft.alternatives(instruction, n, **kwargs)


def run_retune(on_progress: Callable[[int, int | None, str | None], None],
               say: Callable[[str], None] | None = None, settings=None,
               on_stage: Callable[[dict], None] | None = None) -> RetuneResult:
    """One re-tune pass (ingest → playback → index → train → eval → promote, only for what is new)."""
    from panza_local import retune

    return retune.run_once(on_progress=on_progress, say=say, settings=settings, on_stage=on_stage)
