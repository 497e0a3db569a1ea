"""`panza serve`: the OpenAI-compatible API on localhost."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible API (/v1/models, /v1/chat/completions) on localhost")
    p.add_argument("--host", help="address to bind (default: settings.serve_host, 127.0.0.1); "
                                  "anything but loopback requires settings.api_key")
    p.add_argument("--port", type=int, help="port (default: settings.serve_port)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import config, serve
    from ._out import console

    settings = config.load({"serve_host": args.host, "serve_port": args.port})
    serve.check_bind(settings.serve_host, settings.api_key)
    from .. import engine

    engine.preload(settings)  # model, adapter (and its serving copy) load while the server starts listening
    host = f"[{settings.serve_host}]" if ":" in settings.serve_host else settings.serve_host
    console().print(f"panza serve: http://{host}:{settings.serve_port}/v1  "
                    f"(models: {', '.join(serve.MODELS)}; "
                    f"{'API key required' if settings.api_key else 'no API key'}; Ctrl-C stops)")
    serve.run(settings.serve_host, settings.serve_port, settings)
    return 0
