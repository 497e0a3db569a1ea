"""The Chroma side of the index: one client per setting, one collection that records its embedding model.

`settings.chroma_url` empty: a PersistentClient under the home (telemetry off). Otherwise an HttpClient
to a Chroma server. The collection stores only embeddings and small metadata (kind, ids, dates,
addresses); message bodies stay in the local SQLite store, so a shared server never holds them.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from . import paths
from .errors import ConfigError, StoreError

log = logging.getLogger(__name__)

COLLECTION = "panza"
_CLIENTS: dict[str, object] = {}


def client(chroma_url: str = ""):
    """A Chroma client: persistent under the home, or HTTP to `chroma_url` (cached per target)."""
    key = chroma_url or str(paths.subdir("chroma"))
    if key in _CLIENTS:
        return _CLIENTS[key]
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    if not chroma_url:
        cli = chromadb.PersistentClient(path=key, settings=chroma_settings)
    else:
        host, port, ssl = parse_url(chroma_url)
        try:
            cli = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=chroma_settings)
            cli.heartbeat()
        except Exception as exc:  # noqa: BLE001 - httpx/chromadb raise many types; the message matters
            raise StoreError(f"cannot reach the Chroma server at {chroma_url} ({type(exc).__name__})",
                             fix="start the server (`chroma run --path DIR`), or use the local index with "
                                 "`panza config set chroma_url ''`") from None
    _CLIENTS[key] = cli
    return cli


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, ssl) of a Chroma server URL such as http://127.0.0.1:8000."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"chroma_url {url!r} is not an http(s) URL",
                          fix="panza config set chroma_url http://HOST:PORT (or '' for the local index)")
    ssl = parsed.scheme == "https"
    return parsed.hostname, parsed.port or (443 if ssl else 8000), ssl


def forget_clients() -> None:
    """Drop cached clients (tests that remove a home, or a changed chroma_url)."""
    _CLIENTS.clear()


def open_collection(chroma_url: str, model: str, dims: int):
    """(collection, notice): the index collection for embedding model `model`.

    A collection built by another embedding model is useless (its vectors live in another space), so it
    is dropped and recreated empty; `notice` then says so and the caller re-embeds everything.
    """
    from . import embed

    cli = client(chroma_url)
    ef = embed.chroma_function(model)
    notice = None
    try:
        col = cli.get_collection(COLLECTION, embedding_function=ef)
    except Exception:  # noqa: BLE001 - NotFoundError's class moved between chromadb versions
        col = None
    if col is not None:
        meta = col.metadata or {}
        old = meta.get("model")
        if old != model or int(meta.get("dims", dims)) != dims:
            notice = (f"the embedding model changed from {old or 'unknown'} to {model}: "
                      f"rebuilding the index from scratch ({col.count()} items)")
            log.warning(notice)
            cli.delete_collection(COLLECTION)
            col = None
    if col is None:
        col = cli.create_collection(COLLECTION, configuration={"hnsw": {"space": "cosine"}},
                                    metadata={"model": model, "dims": dims}, embedding_function=ef)
    return col, notice


def get_collection(chroma_url: str, model: str):
    """The existing collection (None when nothing was indexed yet or it was built by another model)."""
    from . import embed

    try:
        col = client(chroma_url).get_collection(COLLECTION, embedding_function=embed.chroma_function(model))
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - not found
        return None
    return col if (col.metadata or {}).get("model") == model else None


def all_ids(col, page: int = 5000) -> set[str]:
    """Every id in the collection (paged: get() without a limit loads all metadata at once)."""
    out: set[str] = set()
    offset = 0
    while True:
        got = col.get(include=[], limit=page, offset=offset)
        out.update(got["ids"])
        if len(got["ids"]) < page:
            return out
        offset += page


def batch_size(col, wanted: int) -> int:
    """A batch no larger than the server accepts."""
    try:
        return max(1, min(wanted, col._client.get_max_batch_size()))
    except Exception:  # noqa: BLE001 - older servers
        return wanted
