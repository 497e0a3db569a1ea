"""Generation on an existing OpenAI-compatible server (the `engine_url` setting).

For models bigger than this machine: a GPU box or home server runs llama.cpp's server with the exported GGUF
LoRA (`--lora`), Ollama with the exported Modelfile (`ADAPTER`), or vLLM with the LoRA; panza keeps building
the prompts, retrieving past mail and cleaning drafts up here, and streams the reply from
`POST {engine_url}/v1/chat/completions`. `engine.stream_chat` hands over to `stream_chat` below when the
setting is set, so drafts, chat, serve and playback all follow. Standard library only.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError, OfflineError, PanzaError

TIMEOUT_S = 600.0  # a big model on a busy server may think for minutes before its first token


def base_url(settings) -> str:
    """The server's API root (…/v1), whichever of `http://host:port` or `http://host:port/v1` was set."""
    url = settings.engine_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"engine_url {url!r} is not an http(s) URL",
                          fix="panza config set engine_url http://HOST:PORT (or '' to generate on this machine)")
    return url if url.endswith("/v1") else url + "/v1"


def model_name(settings) -> str:
    """The model name the server is asked for: `engine_model`, else the active model's name."""
    return settings.engine_model or settings.model


def model_path(settings) -> Path:
    """What `engine.default_model` reports when generation is remote: the local GGUF if there is one (token
    counts and scoring still run here), else a name that says where generation happens."""
    from . import catalogue

    try:
        return catalogue.resolve(settings.model)
    except PanzaError:
        return Path(f"remote-{model_name(settings)}")


def _fix(settings) -> str:
    return (f"start the server at {settings.engine_url} (llama.cpp: python -m llama_cpp.server --model BASE.gguf "
            "--lora_path ADAPTER.gguf), or `panza config set engine_url ''` to generate on this machine")


def _request(settings, path: str, body: dict | None = None, timeout: float = TIMEOUT_S):
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
    if settings.engine_api_key:
        headers["Authorization"] = f"Bearer {settings.engine_api_key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url(settings) + path, data=data, headers=headers,
                                 method="POST" if body is not None else "GET")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", errors="replace").strip()
        exc.close()
        hint = ("check engine_api_key" if exc.code in (401, 403) else
                "check engine_model (the name the server knows the model by)" if exc.code in (400, 404) else
                "look at the server's log")
        raise PanzaError(f"the engine at {settings.engine_url} answered HTTP {exc.code}: {detail[:300]}",
                         fix=hint) from None
    except (urllib.error.URLError, OSError) as exc:
        raise OfflineError(f"the engine at {settings.engine_url} cannot be reached "
                           f"({getattr(exc, 'reason', exc)})", fix=_fix(settings)) from None


def ping(settings, timeout: float = 3.0) -> dict:
    """What `panza doctor` shows: whether the server answers, and the models it serves."""
    try:
        with _request(settings, "/models", timeout=timeout) as resp:
            data = json.loads(resp.read() or b"{}")
        return {"reachable": True, "models": [m.get("id") for m in data.get("data", [])]}
    except (PanzaError, ValueError) as exc:
        return {"reachable": False, "error": getattr(exc, "message", str(exc))}


def stream_chat(messages: list[dict], *, settings, max_tokens: int, temperature: float, stop: list[str],
                seed: int | None, top_p: float, repeat_penalty: float, grammar: str | None = None,
                stats=None) -> Iterator[str]:
    """Yield the reply to `messages` from the server as it streams (same knobs as the local engine)."""
    body = {"model": model_name(settings), "messages": messages, "stream": True, "max_tokens": max_tokens,
            "temperature": temperature, "top_p": top_p, "stop": stop,
            # llama.cpp's servers read these two; OpenAI-style servers that do not know them ignore them
            "repeat_penalty": repeat_penalty, "stream_options": {"include_usage": True}}
    if seed is not None and seed >= 0:
        body["seed"] = seed
    if grammar:
        body["grammar"] = grammar
    t0, usage = time.perf_counter(), {}
    with _request(settings, "/chat/completions", body) as resp:
        for event in _events(resp, settings):
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content") or (choice.get("text") or "")
                if delta:
                    if stats is not None:
                        if not stats.completion_tokens:
                            stats.ttft_s = time.perf_counter() - t0
                        stats.completion_tokens += 1
                    yield delta
    if stats is not None:
        stats.total_s = time.perf_counter() - t0
        stats.prompt_tokens = usage.get("prompt_tokens", stats.prompt_tokens)
        stats.completion_tokens = usage.get("completion_tokens", stats.completion_tokens)
        stats.extra["engine"] = settings.engine_url
    return stats


def _events(resp, settings) -> Iterator[dict]:
    """The JSON objects of a server-sent event stream, up to `data: [DONE]`."""
    try:
        for raw in resp:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if "error" in event:
                err = event["error"]
                raise PanzaError(f"the engine at {settings.engine_url} failed: "
                                 f"{err.get('message', err) if isinstance(err, dict) else err}",
                                 fix="look at the server's log")
            yield event
    except (OSError, urllib.error.URLError) as exc:
        raise OfflineError(f"the engine at {settings.engine_url} dropped the connection ({exc})",
                           fix=_fix(settings)) from None
