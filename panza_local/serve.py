"""`panza serve`: an OpenAI-compatible API on localhost that drafts in the user's voice.

`/v1/models` and `/v1/chat/completions` (streaming SSE and not), backed by the same `draft.prepare` /
`draft.stream` calls as the CLI: the last user message is the instruction, retrieval and the adapter come
from the model name (`panza`, `panza-norag`, `panza-stock`). Loopback by default; any other bind needs
settings.api_key. No CORS headers at all, and on loopback the Host header must be a loopback name, so a
web page cannot drive the server through DNS rebinding. One generation runs at a time.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class of the endpoints
# defined inside create_app (a string annotation there would resolve to a query parameter).
import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator

from .errors import ConfigError, PanzaError

log = logging.getLogger(__name__)

# model id -> (use_rag, use_adapter)
MODELS = {"panza": (True, True), "panza-norag": (False, True), "panza-stock": (False, False)}
MAX_TOKENS_CAP = 2048
_GEN_LOCK = threading.Lock()  # one generation at a time: a llama.cpp context serves one sequence
# One request planned at a time (store, index and tokenizer access as before, when planning ran under
# _GEN_LOCK), but beside a running generation: a prompt that cannot fit is answered without waiting for it.
_PLAN_LOCK = threading.Lock()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str) -> None:
    """Refuse a non-loopback bind without an API key."""
    if not is_loopback(host) and not api_key:
        raise ConfigError(f"refusing to serve on {host} without an API key: anyone on the network could "
                          "read drafts made from your mail",
                          fix="panza config set api_key \"$(python -c 'import secrets; print(secrets.token_urlsafe(24))')\" "
                              "(clients then send it as the Bearer token), or serve on 127.0.0.1")


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""

    def __init__(self, status: int, message: str, code: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def too_long(exc) -> APIError:
    """A prompt that cannot fit the context: 400 context_length_exceeded, as OpenAI answers it."""
    return APIError(400, f"{exc.message} (fix: {exc.fix})", "context_length_exceeded", "messages")


def parse_request(body: dict) -> dict:
    """Validate a chat-completions body; return the parts a draft needs."""
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    model = body.get("model") or "panza"
    if model not in MODELS:
        raise APIError(404, f"model {model!r} does not exist; use one of {', '.join(MODELS)}", "model_not_found")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "messages must be a non-empty list")
    turns = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise APIError(400, "each message needs a role of system, user or assistant")
        turns.append((m["role"], _content_text(m.get("content"))))
    users = [i for i, (role, _) in enumerate(turns) if role == "user"]
    if not users or not turns[users[-1]][1].strip():
        raise APIError(400, "the last user message (the instruction) is empty")
    last = users[-1]
    notes = "\n\n".join(t for r, t in turns if r in ("system", "developer") and t.strip())
    history = [{"role": r, "content": t} for r, t in turns[:last] if r in ("user", "assistant")]
    ext = body.get("panza") if isinstance(body.get("panza"), dict) else {}
    n = int(body.get("n") or 1)
    if n < 1 or n > 5:
        raise APIError(400, "n must be between 1 and 5")
    if n > 1 and body.get("stream"):
        raise APIError(400, "n > 1 is not supported with stream=true")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise APIError(400, "max_tokens must be a positive integer")
    temperature = body.get("temperature")
    if temperature is not None and not isinstance(temperature, (int, float)):
        raise APIError(400, "temperature must be a number")
    seed = body.get("seed")
    return {"model": model, "instruction": turns[last][1], "notes": notes, "history": history,
            "stream": bool(body.get("stream")), "n": n,
            "max_tokens": min(max_tokens, MAX_TOKENS_CAP) if max_tokens else None,
            "temperature": temperature, "seed": seed if isinstance(seed, int) else None,
            "to": ext.get("to"), "subject": ext.get("subject"),
            "include_usage": bool((body.get("stream_options") or {}).get("include_usage"))}


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if content is None:
        return ""
    raise APIError(400, "message content must be a string or a list of text parts")


def plan_for(req: dict, settings):
    """The DraftPlan for a parsed request (client system text and earlier turns kept in the prompt, fitted
    to the context: fit.ContextTooLong when the last user message cannot fit)."""
    from . import draft, fit

    use_rag, use_adapter = MODELS[req["model"]]
    if req["max_tokens"]:  # the reply budget the prompt is fitted around
        settings = dataclasses.replace(settings, max_tokens=req["max_tokens"])
    plan = draft.prepare(req["instruction"], to=req["to"], subject=req["subject"], use_rag=use_rag,
                         use_adapter=use_adapter, seed=req["seed"], settings=settings)
    if req["max_tokens"] and plan.max_tokens != req["max_tokens"]:
        plan.max_tokens = req["max_tokens"]  # the client's cap, not the profile's typical length
        fit.fit_plan(plan)
    if req["notes"] or req["history"]:
        fit.fit_plan(plan, history=req["history"], notes=req["notes"])
    return plan


async def _plan(req: dict, settings):
    """plan_for in a worker thread; a prompt that cannot fit is the client's error (400), not the server's."""
    from .fit import ContextTooLong

    def locked():
        with _PLAN_LOCK:
            return plan_for(req, settings)

    try:
        return await asyncio.to_thread(locked)
    except ContextTooLong as exc:
        raise too_long(exc) from None
    except PanzaError as exc:
        log.error("planning failed: %s", type(exc).__name__)
        raise APIError(500, exc.message + (f" (fix: {exc.fix})" if exc.fix else ""), "server_error") from None


def _generate(plan, req, seed=None) -> Iterator[str]:
    from . import draft

    yield from draft.stream(plan, seed=seed, temperature=req["temperature"])


def create_app(settings=None, *, host: str | None = None):
    """The FastAPI app (host: the address it is bound to, for the Host-header check)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from . import config

    settings = settings or config.load()
    bound = host or settings.serve_host
    app = FastAPI(title="panza-local", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if is_loopback(bound) and not is_loopback(_host_name(request.headers.get("host", ""))):
            return _error(403, "this server only answers requests addressed to localhost", "forbidden_host")
        if settings.api_key:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                return _error(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                              "invalid_api_key")
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return _error(exc.status, exc.message, exc.code, exc.param)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):  # still an OpenAI-shaped body, never a bare 500
        log.error("request failed: %s", type(exc).__name__)
        return _error(500, f"the server failed: {type(exc).__name__} (fix: see `panza doctor`)", "server_error")

    @app.get("/v1/models")
    def models():
        now = int(time.time())
        return {"object": "list", "data": [{"id": m, "object": "model", "created": now, "owned_by": "panza-local"}
                                           for m in MODELS]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the body is not valid JSON") from None
        req = parse_request(body)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        plan = await _plan(req, settings)  # before any byte of the answer: a bad request is still a 400
        if req["stream"]:
            return StreamingResponse(_sse(req, plan, cid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            choices, usage, meta = await asyncio.to_thread(_complete, req, plan)
        except PanzaError as exc:
            raise APIError(500, exc.message + (f" (fix: {exc.fix})" if exc.fix else ""), "server_error") from None
        return JSONResponse({"id": cid, "object": "chat.completion", "created": int(time.time()),
                             "model": req["model"], "choices": choices, "usage": usage, "panza": meta})

    return app


def _host_name(header: str) -> str:
    """The name part of a Host header ("[::1]:8765" -> "::1", "localhost:8765" -> "localhost")."""
    if header.startswith("[") and "]" in header:
        return header[1:header.index("]")]
    return header.rsplit(":", 1)[0]


def _error(status: int, message: str, code: str, param: str | None = None):
    from fastapi.responses import JSONResponse

    kind = "authentication_error" if status == 401 else ("server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": code, "param": param}}, status_code=status)


def _meta(plan) -> dict:
    return {"adapter": plan.adapter, "retrieved": [r.id for r in plan.retrieved], "notices": plan.notices}


def _finish_reason(plan) -> str:
    return "length" if plan.stats.get("completion_tokens", 0) >= plan.max_tokens else "stop"


def _complete(req: dict, plan) -> tuple[list, dict, dict]:
    with _GEN_LOCK:
        choices, prompt_tokens, completion_tokens = [], 0, 0
        base = req["seed"]
        if base is None and req["n"] > 1:
            base = random.randrange(1 << 30)  # alternatives must differ even when settings.seed is fixed
        for i in range(req["n"]):
            text = "".join(_generate(plan, req, seed=None if base is None else base + i))
            choices.append({"index": i, "message": {"role": "assistant", "content": text.strip()},
                            "finish_reason": _finish_reason(plan), "logprobs": None})
            prompt_tokens = plan.stats.get("prompt_tokens", 0)
            completion_tokens += plan.stats.get("completion_tokens", 0)
    log.info("chat completion: %d choice(s), %d completion tokens", len(choices), completion_tokens)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return choices, usage, _meta(plan)


async def _sse(req: dict, plan, cid: str):
    """Server-sent events: role chunk, content chunks, a finish chunk, [DONE]; generation in a worker thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def put(item) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def worker() -> None:
        try:
            with _GEN_LOCK:
                gen = _generate(plan, req, seed=req["seed"])
                try:
                    for piece in gen:
                        if cancel.is_set():
                            break
                        put(("piece", piece))
                finally:
                    gen.close()  # closed in the thread that opened it (the engine lock is per thread)
            put(("done", None))
        except PanzaError as exc:
            put(("error", exc.message))
        except Exception as exc:  # reported to the client; never kills the server
            log.exception("generation failed")
            put(("error", f"generation failed: {type(exc).__name__}"))

    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req["model"],
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    thread = threading.Thread(target=worker, name="panza-serve-gen", daemon=True)
    thread.start()
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await queue.get()
            if kind == "piece":
                yield chunk({"content": value})
            elif kind == "error":
                yield f"data: {json.dumps({'error': {'message': value, 'type': 'server_error'}})}\n\n"
                break
            else:
                yield chunk({}, _finish_reason(plan), panza=_meta(plan))
                if req["include_usage"]:
                    p, c = plan.stats.get("prompt_tokens", 0), plan.stats.get("completion_tokens", 0)
                    obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req["model"],
                           "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
                    yield f"data: {json.dumps(obj)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # a client that hung up stops the generation at the next token


def run(host: str | None = None, port: int | None = None, settings=None) -> None:
    """Serve until interrupted (uvicorn, access log without bodies)."""
    import uvicorn

    from . import config

    settings = settings or config.load()
    host = host or settings.serve_host
    port = settings.serve_port if port is None else port
    check_bind(host, settings.api_key)
    uvicorn.run(create_app(settings, host=host), host=host, port=port, log_level="warning")


@contextlib.contextmanager
def running(host: str = "127.0.0.1", port: int = 0, settings=None) -> Iterator[str]:
    """Run the server in a background thread for the `with` block; yields its base URL (…/v1)."""
    import uvicorn

    from . import config

    settings = settings or config.load()
    check_bind(host, settings.api_key)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, host=host), host=host, port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="panza-serve", daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise PanzaError(f"the server did not start on {host}:{port}", fix="pick another --port")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{sock[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
