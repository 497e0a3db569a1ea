"""`panza serve` on a real uvicorn server on 127.0.0.1, answered to the official `openai` client."""

from __future__ import annotations

import dataclasses
import json
import threading

import httpx
import pytest

from panza_local import serve
from panza_local.errors import ConfigError

STREAMED = 40  # tokens of the streamed answer


@pytest.fixture
def settings(home, monkeypatch):
    from panza_local import config

    monkeypatch.setenv("PANZA_THREADS", "1")  # 2 threads on 2 shared cores measured 10-20x slower
    return config.load({"n_ctx": 2048, "seed": 5, "temperature": 0.0, "max_tokens": 12, "threads": 1})


@pytest.fixture
def url(settings):
    with serve.running(settings=settings) as base:
        yield base


def test_models_and_completion_with_the_openai_client(url):
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)
    assert {m.id for m in client.models.list().data} == set(serve.MODELS)
    r = client.chat.completions.create(
        model="panza", max_tokens=8,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Ask Bob to move the Friday call to 3pm"}])
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 20
    extra = r.model_extra["panza"]  # no index, no adapter in a fresh home: said, not crashed
    assert extra["adapter"] is None and extra["retrieved"] == [] and len(extra["notices"]) == 2

    # long enough for a body line: a greeting alone is held back until the body starts (what a CPU's greedy
    # tokens are differs between CPUs: 8 were all greeting on one)
    stream = client.chat.completions.create(
        model="panza-stock", max_tokens=STREAMED, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Ask Bob to move the Friday call to 3pm"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip() and finishes in (["stop"], ["length"])
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # really streamed
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens <= STREAMED
    # greedy decoding: the streamed and the collected answer to the same request agree
    same = client.chat.completions.create(
        model="panza-stock", max_tokens=STREAMED,
        messages=[{"role": "user", "content": "Ask Bob to move the Friday call to 3pm"}])
    assert same.choices[0].message.content == text.strip()


def test_bad_requests_answer_in_openai_shape(url):
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=url, api_key="x", max_retries=0)
    with pytest.raises(NotFoundError, match="panza-stock"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(BadRequestError, match="instruction"):
        client.chat.completions.create(model="panza", messages=[{"role": "user", "content": "  "}])


def test_concurrent_requests_are_serialised(url):
    results, errors = [], []

    def ask(i):
        try:
            r = httpx.post(f"{url}/chat/completions", timeout=300,
                           json={"model": "panza-stock", "max_tokens": 4, "seed": i,
                                 "messages": [{"role": "user", "content": f"Say hello to person {i}"}]})
            results.append(r.status_code)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [200, 200, 200]


def test_no_cors_and_dns_rebinding_refused(url):
    r = httpx.options(f"{url}/chat/completions", headers={"Origin": "https://evil.example",
                                                          "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in r.headers}
    r = httpx.get(f"{url}/models", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in {k.lower() for k in r.headers}
    rebound = httpx.get(f"{url}/models", headers={"Host": "evil.example:8765"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "forbidden_host"


def test_api_key_is_enforced(settings):
    from openai import AuthenticationError, OpenAI

    keyed = dataclasses.replace(settings, api_key="s3cret-key")
    with serve.running(settings=keyed) as base:
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        assert httpx.get(f"{base}/models").status_code == 401
        ids = {m.id for m in OpenAI(base_url=base, api_key="s3cret-key", max_retries=0).models.list().data}
        assert "panza" in ids


def test_non_loopback_bind_needs_an_api_key(settings, capsys):
    from panza_local.cli import main

    with pytest.raises(ConfigError, match="api_key"):
        serve.check_bind("0.0.0.0", "")
    serve.check_bind("0.0.0.0", "k")  # with a key: allowed
    serve.check_bind("::1", "")
    assert serve.is_loopback("127.0.0.2") and serve.is_loopback("localhost") and not serve.is_loopback("10.0.0.1")
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0" in err and "fix:" in err


def test_parse_request_maps_a_chat_to_a_draft():
    req = serve.parse_request({
        "model": "panza-norag", "max_tokens": 99999, "temperature": 0.2,
        "messages": [{"role": "system", "content": "You are ThunderAI."},
                     {"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"},
                     {"role": "user", "content": [{"type": "text", "text": "Reply yes to Bob"}]}],
        "panza": {"to": "bob@example.org"}})
    assert req["instruction"] == "Reply yes to Bob" and req["notes"] == "You are ThunderAI."
    assert req["history"] == [{"role": "user", "content": "first"}, {"role": "assistant", "content": "reply"}]
    assert req["max_tokens"] == serve.MAX_TOKENS_CAP and req["to"] == "bob@example.org"
    with pytest.raises(serve.APIError):
        serve.parse_request({"messages": [{"role": "tool", "content": "x"}]})
    with pytest.raises(serve.APIError):
        serve.parse_request({"messages": [{"role": "user", "content": "x"}], "n": 2, "stream": True})


def test_client_hanging_up_mid_stream_frees_the_engine(url):
    body = {"model": "panza-stock", "max_tokens": 300, "stream": True,
            "messages": [{"role": "user", "content": "Write a long email about the quarterly budget"}]}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=300) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    # the abandoned generation stops at its next token; the next request is served, not stuck behind it
    r = httpx.post(f"{url}/chat/completions", timeout=300,
                   json={"model": "panza-stock", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3


# -- input that does not fit the context ---------------------------------------------------------------------

LONG = " ".join(f"word{i % 50} budget" for i in range(2500))  # ~7k tokens: over the 2,048-token context


def test_an_instruction_over_the_context_is_a_400_in_openai_shape(url):
    from openai import BadRequestError, OpenAI

    body = {"model": "panza-stock", "max_tokens": 8, "messages": [{"role": "user", "content": LONG}]}
    for stream in (False, True):  # streaming too: refused before the first byte of an event stream
        r = httpx.post(f"{url}/chat/completions", json={**body, "stream": stream}, timeout=120)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == "context_length_exceeded"
        assert err["param"] == "messages"
        assert "2,048 tokens" in err["message"] and "fix:" in err["message"]
    with pytest.raises(BadRequestError) as exc:  # what a client library makes of it
        OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(**body)
    assert exc.value.code == "context_length_exceeded"
    # the server is fine afterwards
    ok = httpx.post(f"{url}/chat/completions", timeout=300,
                    json={"model": "panza-stock", "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]})
    assert ok.status_code == 200


def test_a_long_history_is_trimmed_oldest_first_with_a_notice(url):
    turns = []
    for i in range(12):  # ~250 tokens each: about 3,000 tokens of history
        turns.append({"role": "user" if i % 2 == 0 else "assistant",
                      "content": f"turn{i} " + " ".join(f"t{i}w{j % 40}" for j in range(90))})
    body = {"model": "panza-stock", "max_tokens": 4, "messages": [*turns, {"role": "user", "content": "Say yes"}]}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    notices = [n for n in out["panza"]["notices"] if n.startswith("to fit the model's context (2,048 tokens)")]
    assert len(notices) == 1 and "oldest of 12 earlier chat turns" in notices[0], out["panza"]["notices"]
    assert out["usage"]["prompt_tokens"] + 4 <= 2048
    # streamed: the same notice in the final chunk's panza field
    with httpx.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}, timeout=300) as s:
        assert s.status_code == 200
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    final = [e for e in events if e.get("panza")]
    assert final and notices[0] in final[-1]["panza"]["notices"]
