"""The Chroma side of the index: one client per setting, one collection that records its embedding model.

`settings.chroma_url` empty: a PersistentClient under the home (telemetry off). Otherwise an HttpClient
to a Chroma server. The collection stores only embeddings and small metadata (kind, ids, dates,
addresses); message bodies stay in the local SQLite store, so a shared server never holds them.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from .. import paths
from ..errors import ConfigError, StoreError

log = logging.getLogger(__name__)

PREFIX = "panza-"
_CLIENTS: dict[str, object] = {}
_COLLECTIONS: dict[tuple, dict] = {}  # (url, model, kinds) -> {kind: collection}, for search
_READERS: dict[str, object] = {}  # persistent folder -> chroma_read engine (searches before any write)


def client(chroma_url: str = ""):
    """A Chroma client: persistent under the home, or HTTP to `chroma_url` (cached per target)."""
    key = chroma_url or str(paths.subdir("chroma"))
    if key in _CLIENTS:
        return _CLIENTS[key]
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    if _READERS.pop(key, None) is not None:  # one engine per folder in a process: the full client from now on
        _COLLECTIONS.clear()

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


def forget_collections() -> None:
    """Drop cached collection handles (another process may have rebuilt the index)."""
    _COLLECTIONS.clear()
    _READERS.clear()


def forget_clients() -> None:
    """Drop cached clients and collections (tests that remove a home, or a changed chroma_url)."""
    _CLIENTS.clear()
    _COLLECTIONS.clear()
    _READERS.clear()


def name_of(kind: str) -> str:
    """Collection name for one item kind (one collection per kind: a kind filter would cost a metadata scan)."""
    return f"{PREFIX}{kind}"


def _get(cli, kind: str, model: str):
    from . import embed

    try:
        return cli.get_collection(name_of(kind), embedding_function=embed.chroma_function(model))
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - NotFoundError's class moved between chromadb versions
        return None


def open_collections(chroma_url: str, model: str, dims: int, kinds: tuple[str, ...]) -> tuple[dict, str | None]:
    """({kind: collection}, notice): the index collections for embedding model `model`, created when missing.

    Collections built by another embedding model are useless (their vectors live in another space), so they
    are dropped and recreated empty; `notice` then says so and the caller re-embeds everything.
    """
    from . import embed

    cli = client(chroma_url)
    cols = {k: _get(cli, k, model) for k in kinds}
    stale = {(c.metadata or {}).get("model") for c in cols.values() if c is not None
             and ((c.metadata or {}).get("model") != model or int((c.metadata or {}).get("dims", dims)) != dims)}
    notice = None
    if stale:
        n = sum(c.count() for c in cols.values() if c is not None)
        old = ", ".join(sorted(str(m or "unknown") for m in stale))
        notice = f"the embedding model changed from {old} to {model}: rebuilding the index from scratch ({n} items)"
        log.warning(notice)
        for k, c in cols.items():
            if c is not None:
                cli.delete_collection(name_of(k))
                cols[k] = None
    _COLLECTIONS.clear()  # handles from before a rebuild point at deleted collections
    for k, c in cols.items():
        if c is None:
            cols[k] = cli.create_collection(name_of(k), configuration={"hnsw": {"space": "cosine"}},
                                            metadata={"model": model, "dims": dims},
                                            embedding_function=embed.chroma_function(model))
    return cols, notice


def get_collections(chroma_url: str, model: str, kinds: tuple[str, ...]) -> dict:
    """{kind: collection} for the kinds already indexed with `model` (empty: nothing usable yet)."""
    key = (chroma_url or str(paths.subdir("chroma")), model, tuple(kinds))
    if key in _COLLECTIONS:
        return _COLLECTIONS[key]
    reader = None if chroma_url or key[0] in _CLIENTS else _reader(key[0])
    if reader is not None:  # a search in a process that has not written: no `import chromadb` (seconds)
        from . import chroma_read

        def get(k):
            return chroma_read.collection(reader, name_of(k))
    else:
        cli = client(chroma_url)

        def get(k):
            return _get(cli, k, model)
    out = {}
    for k in kinds:
        c = get(k)
        if c is not None and (c.metadata or {}).get("model") == model:
            out[k] = c
    if len(out) == len(kinds):  # cache only a complete set: a missing kind may be created by the next sync
        _COLLECTIONS[key] = out
    return out


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


def _reader(folder: str):
    if folder not in _READERS:
        from . import chroma_read

        _READERS[folder] = chroma_read.open_reader(folder)
    return _READERS[folder]


def batch_size(col, wanted: int) -> int:
    """A batch no larger than the server accepts."""
    try:
        return max(1, min(wanted, col._client.get_max_batch_size()))
    except Exception:  # noqa: BLE001 - older servers
        return wanted
