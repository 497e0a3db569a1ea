"""The engine on the real embedded model: streaming, collecting, reuse, stop, grammar, prefix KV reuse."""

from __future__ import annotations

import pytest

from panza_local import engine


@pytest.fixture
def settings(home):
    from panza_local import config

    return config.load({"n_ctx": 1024, "seed": 1, "temperature": 0.0, "threads": 1})


MSGS = [{"role": "system", "content": "You write short emails."},
        {"role": "user", "content": "Write a two-sentence email asking Bob to move our meeting to Friday."}]


def test_stream_and_collect_agree(settings, embedded_model):
    stats = engine.Stats()
    pieces = list(engine.stream_chat(MSGS, model_path=embedded_model, max_tokens=40, settings=settings, stats=stats))
    assert len(pieces) > 3 and "".join(pieces).strip()
    again = engine.chat(MSGS, model_path=embedded_model, max_tokens=40, settings=settings)
    assert again == "".join(pieces)  # greedy decoding is deterministic
    assert stats.completion_tokens == len(pieces) and stats.ttft_s > 0 and stats.prompt_tokens > 0


def test_one_model_object_is_reused(settings, embedded_model):
    a = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads)
    b = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads)
    assert a is b


def test_stop_sequence_and_max_tokens(settings, embedded_model):
    stats = engine.Stats()
    text = engine.chat(MSGS, model_path=embedded_model, max_tokens=8, settings=settings, stats=stats)
    assert 0 < stats.completion_tokens <= 8
    stopped = engine.chat(MSGS, model_path=embedded_model, max_tokens=60, stop=["Bob", "bob"], settings=settings)
    assert "Bob" not in stopped and len(stopped) <= len(engine.chat(MSGS, model_path=embedded_model,
                                                                    max_tokens=60, settings=settings))
    assert text


def test_grammar_constrains_output(settings, embedded_model):
    grammar = 'root ::= ("yes" | "no")'
    out = engine.chat([{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
                      model_path=embedded_model, max_tokens=5, grammar=grammar, settings=settings)
    assert out in ("yes", "no")


def test_shared_prefix_is_not_re_evaluated(settings, embedded_model):
    preamble = "You are a careful assistant. " + "Remember these facts about the company. " * 60
    llm = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads)
    first = [{"role": "system", "content": preamble}, {"role": "user", "content": "Say hi to Ann."}]
    second = [{"role": "system", "content": preamble}, {"role": "user", "content": "Say hi to Bob."}]
    cold, warm = engine.Stats(), engine.Stats()
    engine.chat(first, model_path=embedded_model, max_tokens=4, settings=settings, stats=cold)
    engine.chat(second, model_path=embedded_model, max_tokens=4, settings=settings, stats=warm)
    assert warm.prompt_tokens > 300 and llm.n_tokens > 300
    # only the differing tail was evaluated: the shared preamble was in the KV cache
    assert cold.cached_tokens < 300 < warm.cached_tokens < warm.prompt_tokens


def test_prefill_evaluates_ahead_and_changes_nothing(settings, embedded_model):
    """What the TUI does while the user types: the prompt as typed so far is evaluated; the draft then starts
    from it (cached_tokens), and writes exactly what it writes without the head start."""
    typed = [MSGS[0], {"role": "user", "content": "Write a two-sentence email asking Bob to move our meeting"}]
    engine.unload_all()
    plain = engine.chat(MSGS, model_path=embedded_model, max_tokens=30, settings=settings)
    engine.unload_all()
    assert engine.prefill(typed, model_path=embedded_model, settings=settings) > 20
    assert engine.prefill(typed, model_path=embedded_model, settings=settings) == 0  # already there
    stats = engine.Stats()
    ahead = engine.chat(MSGS, model_path=embedded_model, max_tokens=30, settings=settings, stats=stats)
    assert ahead == plain
    assert stats.prompt_tokens - 8 <= stats.cached_tokens < stats.prompt_tokens, stats


def test_missing_model_file_is_a_clear_error(settings, tmp_path):
    from panza_local.errors import ModelNotFound

    with pytest.raises(ModelNotFound, match="does not exist"):
        engine.load(tmp_path / "nope.gguf")


def test_next_token_logits_shape(embedded_model):
    logits = engine.next_token_logits("Hello", embedded_model)
    assert logits.ndim == 1 and logits.shape[0] > 40000


def test_banned_words_are_not_written_in_prose(settings, embedded_model):
    """The words' one-token spellings get a -100 bias: in prose the model picks another word. (A model set on a
    word can still spell it in pieces, e.g. when listing the days of the week: this steers, it does not parse.)"""
    ask = [{"role": "user", "content": "Write one short sentence inviting Ann to lunch on Thursday."}]
    free = engine.chat(ask, model_path=embedded_model, max_tokens=40, settings=settings)
    assert "Thursday" in free  # the model writes it when free to
    banned = ["Monday", "Tuesday", "Wednesday", "Thursday"]
    llm = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads)
    assert len(engine.single_tokens(llm, banned)) == 8  # each with and without a leading space
    held = engine.chat(ask, model_path=embedded_model, max_tokens=40, settings=settings, banned_words=banned)
    assert held.strip() and not any(d in held for d in banned), held


def _nll_every_position(messages: list[dict], target: str, model_path) -> tuple[float, int]:
    """The reference: llama.cpp's logits at every position of prompt + email (logits_all), log-softmax here."""
    import numpy as np

    lib = engine.llama_cpp()
    llm = lib.Llama(str(model_path), n_ctx=1024, n_threads=1, logits_all=True, verbose=False)
    p_tok = llm.tokenize(engine.render_chat(messages, model_path).encode(), add_bos=True, special=True)
    t_tok = llm.tokenize(target.encode(), add_bos=False, special=False) + [llm.token_eos()]
    llm.eval(p_tok + t_tok)
    rows = np.asarray(llm.scores[len(p_tok) - 1: len(p_tok) - 1 + len(t_tok)], dtype=np.float64)
    rows -= rows.max(axis=1, keepdims=True)
    logp = rows[np.arange(len(t_tok)), t_tok] - np.log(np.exp(rows).sum(axis=1))
    return float(-logp.sum()), len(t_tok)


def test_target_nll_is_the_email_tokens_loss_and_a_kept_prefix_changes_nothing(settings, embedded_model):
    target = "Hi Bob,\n\nCould we move our meeting to Friday? Thursday no longer works for me.\n\nCheers,\nMaya"
    other = [MSGS[0], {"role": "user", "content": "Write an email telling Ann the report is late."}]
    engine.unload_all()
    nll, n = engine.target_nll(MSGS, target, embedded_model, threads=1)
    ref, n_ref = _nll_every_position(MSGS, target, embedded_model)
    assert n == n_ref > 10
    assert abs(nll - ref) / n < 1e-3, (nll, ref)
    # the next call keeps the system prompt's KV from this one: same loss as a fresh model computes
    kept = engine.target_nll(other, "Hi Ann, the report will be a day late. Maya", embedded_model, threads=1)
    engine.unload_all()
    fresh = engine.target_nll(other, "Hi Ann, the report will be a day late. Maya", embedded_model, threads=1)
    assert kept[1] == fresh[1] and abs(kept[0] - fresh[0]) / kept[1] < 1e-3, (kept, fresh)
    # and a model a chat used in between still scores the same (its bookkeeping of the KV cache stays true)
    engine.chat(other, model_path=embedded_model, settings=settings, max_tokens=3)  # the same Llama object
    again = engine.target_nll(other, "Hi Ann, the report will be a day late. Maya", embedded_model, threads=1)
    assert abs(again[0] - fresh[0]) / again[1] < 1e-3


def _distributions(llm, text: str):
    import numpy as np

    toks = llm.tokenize(text.encode(), add_bos=True, special=True)
    llm.reset()
    llm.eval(toks)
    rows = np.asarray(llm.scores[:len(toks)], dtype=np.float64)
    rows -= rows.max(axis=1, keepdims=True)
    return rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))


def test_generation_uses_flash_attention_and_it_changes_the_next_token_only_by_rounding(settings, embedded_model):
    """Drafts, chat and playback evaluate prompts with llama.cpp's fused attention (faster on CPU), whose products
    run in half precision; scoring keeps the exact path. On a real prompt the two agree: the next-token
    distributions differ by rounding (KL well under what the Q8_0 serving copy's rounding costs, ~0.005), the
    most likely next token is the same almost everywhere. (A greedy draft may part from the exact path's after a
    few words, as it does on the serving copy.) `flash_attention = false` turns it off."""
    from dataclasses import replace

    import numpy as np

    engine.unload_all()
    engine.chat(MSGS, model_path=embedded_model, max_tokens=2, settings=settings)
    used = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads)  # what the chat loaded
    assert used.context_params.flash_attn_type == engine.llama_cpp().LLAMA_FLASH_ATTN_TYPE_ENABLED
    text = engine.render_chat(MSGS, embedded_model) + "Hi Bob,\n\nCould we move our meeting to Friday? Thanks."
    fused = _distributions(engine.load(embedded_model, n_ctx=512, threads=1, logits_all=True), text)
    exact = _distributions(engine.load(embedded_model, n_ctx=512, threads=1, logits_all=True, flash_attn=False), text)
    kl = (np.exp(exact) * (exact - fused)).sum(axis=1)
    assert kl.mean() < 0.005 and (exact.argmax(axis=1) == fused.argmax(axis=1)).mean() >= 0.9, kl.mean()
    assert 0 < np.abs(exact - fused).max()  # two kernels, not one loaded twice
    lib = engine.llama_cpp()
    engine.chat(MSGS, model_path=embedded_model, max_tokens=2, settings=replace(settings, flash_attention=False))
    plain = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads, flash_attn=False)
    assert plain is not used and plain.context_params.flash_attn_type == lib.LLAMA_FLASH_ATTN_TYPE_DISABLED


def test_a_given_reply_start_is_evaluated_with_the_prompt_and_the_model_writes_on(settings, embedded_model):
    """`prefix`: the reply's first words (the user's greeting) are prompt tokens, tokenized as they stand before
    a word (SmolLM2 merges a trailing "\\n\\n" into one token it never saw before a word); the model's
    continuation is what llama-cpp-python writes after the same tokens, and max_tokens counts the given ones."""
    from panza_local import fit

    llm = engine.load(embedded_model, n_ctx=settings.n_ctx, threads=settings.threads)
    given = engine.prefix_tokens(llm, "Hi Bob,\n\n")
    whole = llm.tokenize(b"Hi Bob,\n\nThanks for", add_bos=False, special=False)
    assert whole[:len(given)] == given and llm.detokenize(given) == b"Hi Bob,\n\n"
    assert len(llm.tokenize(b"Hi Bob,\n\n", add_bos=False, special=False)) < len(given)  # the merge it avoids
    stats = engine.Stats()
    ours = "".join(engine.stream_chat(MSGS, model_path=embedded_model, max_tokens=24, settings=settings, stats=stats,
                                      prefix="Hi Bob,\n\n"))
    assert not ours.startswith("Hi Bob")  # the given start is not written again ...
    prompt = fit.chat_tokens(MSGS, llm) + given
    direct = llm.create_completion(prompt, max_tokens=24 - len(given), temperature=0.0, top_p=0.95,
                                   repeat_penalty=1.1, seed=1)["choices"][0]["text"]
    assert ours == direct and stats.completion_tokens <= 24 - len(given)  # ... the model writes on from it
    assert stats.prompt_tokens == len(prompt)
    plain = engine.chat(MSGS, model_path=embedded_model, max_tokens=24, settings=settings)
    assert plain != ours
    # what the TUI evaluates while the user types takes the same start: the draft then evaluates nothing new
    assert engine.prefill(MSGS, model_path=embedded_model, settings=settings, prefix="Hi Bob,\n\n") > 0
    ahead = engine.Stats()
    assert "".join(engine.stream_chat(MSGS, model_path=embedded_model, max_tokens=24, settings=settings,
                                      stats=ahead, prefix="Hi Bob,\n\n")) == ours
    assert ahead.cached_tokens >= ahead.prompt_tokens - 1, ahead
