"""Data playback: for every email the user wrote, the instruction that would have produced it.

`generate` asks the chat model (few-shot, a GBNF grammar that forces an imperative sentence naming the
recipient, short output) and checks the answer with the guards in `playback.scoring`; a rejected answer is
retried with a changed prompt (`attempt`: a hint naming what was wrong, then sampling, then a grammar of the
email's own words), and when the model keeps failing a deterministic extractive instruction is used
instead. Every pair records which of the two it came from (`source`). The model's sentence carries the ask;
the email's most specific terms (names, numbers, rare words) are appended so the instruction is specific
without copying: `instruction = sentence + " Mention: t1, t2, ..."`.

`run` stores one pair per (message content hash, generator config hash), one commit per pair, so a killed
run resumes where it stopped and an unchanged config never regenerates. With more than one email to do it
generates them together (`playback.batch`, several sequences per llama.cpp decode); `parallel=1` keeps
the one-at-a-time path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from .. import failpoint, prompts, serving, store
from ..errors import NoDataError
from ..ingest.clean import gist
from ..results import PlaybackResult
from . import scoring as q
from .export import count_ok, export, instructions, new_since, pairs, played_back, split_of, splits  # noqa: F401  (public API lives here too)

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None", "str | None"], None]

VERSION = 10  # bump when the prompt, grammar or guards change meaning: every pair regenerates
ATTEMPTS = 4
MAX_TOKENS = 40
EMAIL_CHARS = 1200  # the head of a long email carries its ask; the rest only slows the prompt
THREAD_CHARS = 300
SPECIFICS = 8  # extracted terms appended to the model's sentence

SYSTEM = ("You turn an email into the short instruction its author gave an assistant who then wrote it. "
          "The instruction starts with a verb, names the recipient, and says the main point in your own "
          "words, in one sentence of at most 20 words. Do not copy sentences from the email.")

SHOTS = [
    (("To Sara.\nEmail:\nHi Sara,\n\nCould you send me the latest ISDA draft by Friday? Legal wants to review it "
     "before the signing next week.\n\nThanks,\nJohn"),
     "Ask Sara for the newest ISDA draft by Friday so legal can check it before the signing."),
    (("To Tom. It replies to: Would you speak at our workshop in Lyon on 3 December?\nEmail:\nDear Tom,\n\n"
     "Thank you so much for the invitation. Unfortunately I will be travelling in December, but I would be "
     "happy to give an online talk instead.\n\nBest regards,\nDavid"),
     "Reply to Tom declining the December workshop in Lyon because of travel, and offer a remote talk."),
    (("To the team.\nEmail:\nTeam - the budget review moves to 3pm Thursday in room 32C. Bring your Q3 "
     "numbers.\nPhillip"),
     "Tell the team the budget review is now Thursday at 3pm in 32C and to bring Q3 figures."),
]
VERBS = ["Ask", "Tell", "Thank", "Reply to", "Write to", "Remind", "Update", "Invite", "Let", "Send",
         "Confirm to", "Inform", "Apologize to", "Congratulate", "Answer"]
# The verbs an instruction may start with, by the email's act (`scoring.lead_act`): an email that opens by
# thanking is a "Thank <who> for ...", and no other email's is, so that an adapter learns that thanks come only
# when the request thanks (the quickstart adapter opened 9 requests in 12 with "Thanks for ..."). Emails that
# ask keep every other verb: forcing "Ask <who> to" made the 135M model write "Ask Shanna to the team." and
# recall@1 fell from 0.80 to 0.70 on 60 of bass-e's emails.
THANK_VERBS = ["Thank {who} for"]
OTHER_VERBS = [v for v in VERBS if v != "Thank"]
HINTS = {  # what a retry tells the model, by the guard that rejected its last answer
    "copies_email": "Do not copy sentences from the email: say its point in other, shorter words.",
    "unsupported": "Use only facts and words that are in this email.",
    "few_shot_leak": "Use only facts and words that are in this email, not the examples.",
    "too_long": "At most 15 words.",
    "too_short": "Say what the email asks or tells, in 8 to 20 words.",
    "repetitive": "Do not repeat words.",
    "not_imperative": "One plain sentence, no colon.",
    "no_recipient": "Name the recipient.",
}
# Words of the examples' instructions that must not turn up in an answer unless its email has them. The verbs
# of the instruction form are not evidence ("Ask" was, and every "Ask ..." answer to an email without the word
# was rejected: no adapter learned what a request looks like).
LEAK = {w for _, ins in SHOTS for w in q.content_words(ins)} - q.INSTRUCTION_WORDS - {"team"}


# Emails to play back from which building the base's serving copy (serving.py: seconds, once) pays for itself
# in faster prompt evaluation (bench/results/playback.md: emails per CPU-minute with and without it).
BASE_COPY_AT = 24


def gen_config(model_path: str | Path, settings) -> tuple[str, dict]:
    """(hash, dict) of everything that shapes an instruction: model file, prompt, grammar, guards."""
    p = Path(model_path)
    size = p.stat().st_size if p.exists() else 0
    cfg = {"version": VERSION, "model": p.name, "model_size": size, "system": SYSTEM, "shots": SHOTS,
           "verbs": VERBS, "act_verbs": {"thank": THANK_VERBS, "other": OTHER_VERBS}, "leak": sorted(LEAK),
           "attempts": ATTEMPTS, "max_tokens": MAX_TOKENS, "email_chars": EMAIL_CHARS,
           "thread_chars": THREAD_CHARS, "specifics": SPECIFICS}
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    return digest, cfg


def _gbnf_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def grammar(to_name: str | None, words: list[str] | None = None, verbs: list[str] | None = None) -> str:
    """GBNF: one sentence that starts with an imperative verb naming the recipient and ends with a full stop;
    with `words`, a sentence of only those words."""
    who = re.sub(r"[^\w .,'&-]", "", to_name or "").strip()
    verbs = verbs or VERBS
    starts = [v.format(who=who or "them") if "{who}" in v else f"{v} {who}".strip() for v in verbs]
    alts = " | ".join(_gbnf_str(s) for s in starts)
    if words:
        vocab = " | ".join(_gbnf_str(w) for w in words)
        return (f'root ::= start " " body "."\nstart ::= {alts}\nbody ::= word ((" " | ", ") word)*\n'
                f"word ::= {vocab}\n")
    # ": " is refused by the guards (the email's own voice follows it), so the grammar never writes it.
    return f'root ::= start " " body "."\nstart ::= {alts}\nbody ::= ([^\\n.:] | ":" [^\\n. ])+\n'


def _user_msg(email: str, to_name: str | None, thread: str | None, hint: str | None = None) -> str:
    head = f"To {to_name}." if to_name else "To the recipient."
    t = gist(thread or "", THREAD_CHARS)
    if t:
        head += f" It replies to: {t}"
    # A retry's hint goes after the email, so the retry re-reads only the hint (the rest is in the KV cache).
    return f"{head}\nEmail:\n{email.strip()[:EMAIL_CHARS]}" + (f"\n\n({hint})" if hint else "")


def prompt(email: str, to_name: str | None, thread: str | None = None, hint: str | None = None) -> list[dict]:
    """Chat messages for one email: the fixed system + few-shot prefix (KV-cached across emails), then it."""
    msgs = [{"role": "system", "content": SYSTEM}]
    for u, a in SHOTS:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": _user_msg(email, to_name, thread, hint)})
    return msgs


def _seed(content_hash: str, attempt: int) -> int:
    try:
        return int(content_hash[:8], 16) + attempt
    except ValueError:  # not a hex digest (a hand-made row): any stable number will do
        return zlib.crc32(content_hash.encode()) + attempt


def _with_specifics(sentence: str, email: str, idf: dict, exclude: list[str]) -> str:
    have = {w.lower() for w in q.words(sentence)}
    terms = [t for t in q.keywords(email, idf, k=SPECIFICS + 4, exclude=exclude) if t.lower() not in have]
    return prompts.mention(sentence, terms[:SPECIFICS])


def plan(row: dict, user_name: str = "") -> dict | None:
    """What every attempt at one email shares (email, thread, recipient, grammar); None for an empty email."""
    email = (row.get("body") or "").strip()
    if not email:
        return None
    to_name = q.recipient(email, row.get("to_addrs"), _json_list(row.get("to_names")))
    verbs = THANK_VERBS if q.lead_act(email) == "thank" else OTHER_VERBS
    return {"row": row, "email": email, "thread": row.get("thread") or "", "to_name": to_name, "verbs": verbs,
            "exclude": [to_name or "", user_name], "grammar": grammar(to_name, verbs=verbs), "reasons": [],
            "rejected": []}


def attempt(p: dict, k: int) -> dict:
    """Attempt `k` at an email: its chat messages, temperature and seed (the retry schedule of both paths).

    A retry changes the prompt, not only the seed: it tells the model what was wrong with its last answer
    (`HINTS`, by the guard that rejected it). The first retry stays greedy (the most likely answer to the
    corrected prompt), later ones sample."""
    hint = HINTS.get(p["reasons"][-1].split(":")[0]) if k and p["reasons"] else None
    gram = p["grammar"]
    if k and k == ATTEMPTS - 1:  # the last try may only use the email's own words (what `unsupported` asks)
        hint, gram = HINTS["unsupported"], grammar(p["to_name"], words=_own_words(p), verbs=p["verbs"])
    return {"messages": prompt(p["email"], p["to_name"], p["thread"], hint), "grammar": gram,
            "temperature": 0.0 if k < 2 or k == ATTEMPTS - 1 else 0.8, "seed": _seed(p["row"]["content_hash"], k)}


def _own_words(p: dict) -> list[str]:
    """Words an instruction may use on the last try: the email's, its thread's and subject's, and glue words."""
    text = " ".join([p["email"][:EMAIL_CHARS], gist(p["thread"], THREAD_CHARS), p["row"].get("subject") or ""])
    own = {w.strip(".,") for w in q.words(text)}
    own = {w for w in own if w and "." not in w and len(w) < 30}
    own |= {w.lower() for w in own} | q.STOP | q.INSTRUCTION_WORDS | {"asking", "telling", "saying", "that", "if"}
    return sorted(own)


def judge(p: dict, text: str, k: int, idf: dict) -> dict | None:
    """The model's answer to attempt `k`, checked by the guards: the final result, or None to try again."""
    sentence = re.sub(r"\s+", " ", text).strip()
    why = q.check(sentence, p["email"], to_name=p["to_name"],
                  context=p["thread"] + " " + (p["row"].get("subject") or ""), banned=LEAK)
    if why is None:
        final = _with_specifics(sentence, p["email"], idf, p["exclude"])
        return {"status": "ok", "instruction": final, "source": "model", "attempts": k + 1,
                "copy_ratio": q.copy_ratio(final, p["email"]), "reason": ";".join(p["reasons"]) or None}
    p["reasons"].append(why)
    p["rejected"].append((sentence, why))  # kept for `--debug` analysis only, never stored
    return None


def fallback(p: dict, idf: dict, user_name: str = "") -> dict:
    """The extractive instruction, once every attempt was rejected (or a failure when even it copies)."""
    row, reasons = p["row"], p["reasons"]
    final = q.extractive(p["email"], subject=row.get("subject"), to_name=p["to_name"], idf=idf,
                         is_reply=bool(p["thread"]) or (row.get("subject") or "").lower().startswith("re:"),
                         user_name=user_name, k=SPECIFICS + 2)
    if q.check(final, p["email"], max_words=80, min_words=3) == "copies_email":
        return {"status": "failed", "reason": "fallback_copies_email;" + ";".join(reasons), "attempts": ATTEMPTS}
    return {"status": "ok", "instruction": final, "source": "fallback", "attempts": ATTEMPTS,
            "copy_ratio": q.copy_ratio(final, p["email"]), "reason": ";".join(reasons), "rejected": p["rejected"]}


EMPTY = {"status": "failed", "reason": "empty_email", "attempts": 0}


def generate(row: dict, *, model_path: str | Path, settings, idf: dict, user_name: str = "") -> dict:
    """Instruction for one message row (body, thread, subject, to_addrs, content_hash): model, else fallback."""
    from .. import engine

    p = plan(row, user_name)
    if p is None:
        return dict(EMPTY)
    for k in range(ATTEMPTS):
        a = attempt(p, k)
        try:
            text = engine.chat(a["messages"], model_path=model_path, settings=settings, max_tokens=MAX_TOKENS,
                               temperature=a["temperature"], seed=a["seed"], grammar=a["grammar"], stop=["\n"])
        except (RuntimeError, ValueError) as exc:  # llama.cpp decode errors: count, then fall back
            p["reasons"].append(f"engine_error:{type(exc).__name__}")
            continue
        res = judge(p, text, k, idf)
        if res is not None:
            return res
    return fallback(p, idf, user_name)


def _json_list(raw) -> list[str]:
    if not raw:
        return []
    try:
        val = json.loads(raw)
    except (TypeError, ValueError):
        return []
    return [str(v) for v in val] if isinstance(val, list) else []


def run(conn: sqlite3.Connection, limit: int | None = None, model: str | None = None,
        on_progress: Progress | None = None, settings=None, parallel: int | None = None) -> PlaybackResult:
    """Generate the missing pairs (at most `limit`); return what was generated, reused, failed, and the quality.

    `parallel`: emails generated together in one llama.cpp context (`playback.batch`; default `batch.fit_slots`:
    up to `batch.SLOTS` as the KV memory allows); 1 runs them one at a time (`generate`), which an
    OpenAI-compatible server always does."""
    from .. import catalogue, config
    from ..ingest import messages

    settings = settings or config.load({"model": model} if model else None)
    model_path = catalogue.resolve(model or settings.model)
    cfg_hash, _ = gen_config(model_path, settings)
    progress = on_progress or (lambda done, total=None, note=None: None)
    mine = messages.mine(conn)
    if not mine:
        raise NoDataError("there are no emails written by you in the store",
                          fix="run `panza ingest MAILBOX --me YOUR@ADDRESS` first")
    done_hashes = {r[0] for r in conn.execute("SELECT content_hash FROM pairs WHERE gen_config = ?", (cfg_hash,))}
    todo = [m for m in mine if m["content_hash"] not in done_hashes]
    reused, todo_total = len(mine) - len(todo), len(todo)
    if limit is not None:
        todo = todo[:max(0, limit)]
    idf = q.idf_table(m["body"] for m in mine)
    out = {"generated": 0, "reused": reused, "failed": 0, "model": 0, "fallback": 0, "fail_reasons": {},
           "gen_config": cfg_hash, "todo": len(todo), "todo_total": todo_total}
    from . import batch

    slots = batch.SLOTS if parallel is None else max(1, parallel)
    batched = slots > 1 and len(todo) > 1 and not settings.engine_url
    used = {"slots": 1}  # batched: the count generate_many decodes together
    out["batched"] = batched
    t0 = time.perf_counter()
    with store.run(conn, "playback") as summary:
        progress(0, len(todo), "")
        if len(todo) >= BASE_COPY_AT and serving.applies(settings.merge_adapter, settings.gpu_layers) \
                and not settings.engine_url:
            progress(0, len(todo), "a faster copy of the model (once)")
            serving.resolve(model_path, None, prompt_bound=True)  # built now: engine.load (merge=True) loads it
        if batched:
            results = batch.generate_many(todo, model_path=model_path, settings=settings, idf=idf,
                                          user_name=settings.user_name, used=used,
                                          slots=None if parallel is None else min(slots, len(todo)))
        else:
            results = ((row, generate(row, model_path=model_path, settings=settings, idf=idf,
                                      user_name=settings.user_name)) for row in todo)
        t1 = time.perf_counter()
        with contextlib.closing(results):  # an interrupt frees the batch's llama.cpp context at once
            for i, (row, res) in enumerate(results, 1):
                _save(conn, row, cfg_hash, res, time.perf_counter() - t1)  # batched: time since the last one
                t1 = time.perf_counter()
                if settings.debug:  # message text only when the user asked for debug logs
                    log.debug("playback %s: %s %r rejected %r", row["id"], res.get("source"),
                              res.get("instruction"), res.get("rejected"))
                _count(out, res)
                progress(i, len(todo), f"model {out['model']} fallback {out['fallback']} failed {out['failed']}")
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["parallel"] = used["slots"]
        out["emails_per_min"] = round(60 * len(todo) / out["seconds"], 1) if out["seconds"] else None
        out.update(quality(conn, cfg_hash, recompute=out["generated"] > 0 or out["failed"] > 0))
        summary.update(out)
    log.info("playback: generated %d (model %d, fallback %d) reused %d failed %d", out["generated"],
             out["model"], out["fallback"], out["reused"], out["failed"])
    return PlaybackResult(**out)


def _count(out: dict, res: dict) -> None:
    if res["status"] == "ok":
        out["generated"] += 1
        out[res["source"]] += 1
    else:
        out["failed"] += 1
        key = res["reason"].split(";")[0]
        out["fail_reasons"][key] = out["fail_reasons"].get(key, 0) + 1


def _save(conn: sqlite3.Connection, row: dict, cfg_hash: str, res: dict, seconds: float) -> None:
    # One autocommitted statement per pair: a kill loses at most the pair being generated.
    conn.execute(
        "INSERT OR IGNORE INTO pairs (message_id, content_hash, gen_config, status, instruction, reason, "
        "copy_ratio, attempts, created_at, source, seconds) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (row["id"], row["content_hash"], cfg_hash, res["status"], res.get("instruction"), res.get("reason"),
         res.get("copy_ratio"), res.get("attempts", 0), store.now(), res.get("source"), round(seconds, 3)))
    failpoint.hit("playback.pair")


def quality(conn: sqlite3.Connection, cfg_hash: str, recompute: bool = True) -> dict:
    """recall@1 (whole mailbox as the candidate pool) and median copy ratio of this config's ok pairs."""
    import statistics

    rows = conn.execute(
        "SELECT p.id, p.instruction, p.copy_ratio, p.recall_hit, p.source, m.content_hash FROM pairs p "
        "JOIN messages m ON m.id = p.message_id WHERE p.gen_config = ? AND p.status = 'ok' AND m.deleted = 0",
        (cfg_hash,)).fetchall()
    if not rows:
        return {"recall_at_1": None, "copy_ratio_median": None, "pairs": 0}
    if recompute or any(r["recall_hit"] is None for r in rows):
        _score_recall(conn, rows)
        rows = conn.execute("SELECT p.copy_ratio, p.recall_hit, p.source FROM pairs p JOIN messages m ON "
                            "m.id = p.message_id WHERE p.gen_config = ? AND p.status = 'ok' AND m.deleted = 0",
                            (cfg_hash,)).fetchall()
    hits = [r["recall_hit"] for r in rows]
    by_source = {}
    for src in ("model", "fallback"):
        sub = [r["recall_hit"] for r in rows if r["source"] == src]
        if sub:
            by_source[src] = round(sum(sub) / len(sub), 3)
    return {"recall_at_1": round(sum(hits) / len(hits), 3),
            "copy_ratio_median": round(statistics.median(r["copy_ratio"] for r in rows), 3),
            "pairs": len(rows), "recall_by_source": by_source}


def _vectors(conn: sqlite3.Connection, texts: list[str], name: str = "all-minilm-l6-v2"):
    """Embeddings of `texts`, the ones embedded before read back from `playback_vectors`, the rest embedded
    and kept (a pass on 50 new emails of a 5,000-email mailbox embeds 100 texts, not 10,000)."""
    import numpy as np

    from ..retrieval import embed

    keys = [hashlib.sha256(f"{name}\0{t}".encode()).hexdigest()[:32] for t in texts]
    have: dict[str, bytes] = {}
    uniq = sorted(set(keys))
    for i in range(0, len(uniq), 500):
        part = uniq[i:i + 500]
        have.update(conn.execute(f"SELECT key, vec FROM playback_vectors WHERE key IN ({','.join('?' * len(part))})",
                                 part).fetchall())
    todo = [k for k in dict.fromkeys(keys) if k not in have]  # each new text once, in order
    if todo:
        text_of = dict(zip(keys, texts))
        vecs = embed.embed([text_of[k] for k in todo], name=name)
        fresh = {k: v.astype(np.float32).tobytes() for k, v in zip(todo, vecs)}
        with store.transaction(conn):
            conn.executemany("INSERT OR REPLACE INTO playback_vectors (key, vec) VALUES (?, ?)", fresh.items())
        have |= fresh
    if not texts:
        return np.zeros((0, embed.dims(name)), dtype=np.float32)
    return np.stack([np.frombuffer(have[k], dtype=np.float32) for k in keys])


def _score_recall(conn: sqlite3.Connection, rows) -> None:
    from ..ingest import messages

    pool = messages.mine_bodies(conn)
    index = {r["content_hash"]: i for i, r in enumerate(pool)}
    email_vecs = _vectors(conn, [r["body"] for r in pool])
    ins_vecs = _vectors(conn, [r["instruction"] for r in rows])
    hits = q.recall_hits(ins_vecs, email_vecs, [index[r["content_hash"]] for r in rows])
    with store.transaction(conn):
        conn.executemany("UPDATE pairs SET recall_hit = ? WHERE id = ?",
                         [(int(h), r["id"]) for h, r in zip(hits, rows)])
