"""Read-only access to the local Chroma index without importing the `chromadb` package.

`import chromadb` pulls in pydantic settings, OpenTelemetry, gRPC exporters, httpx and jsonschema: 1-2 s on
an idle 2-core laptop (9 s under load here), more than the rest of a cold draft. A search needs none of
it: the persistent client is a thin layer over Chroma's Rust engine (`chromadb_rust_bindings`, shipped in
the same wheel), which loads in ~0.2 s. This module opens that engine on the home's index for queries
only; everything that writes (index sync) keeps the full client (`chroma_store.client`). If the engine's
interface is not the one this module knows (another chromadb release), `open_reader` returns None and
callers use the full client: slower, never wrong.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_TENANT, _DB = "default_tenant", "default_database"


class ReadCollection:
    """The subset of chromadb's Collection that search uses: `metadata`, `count()`, `query()`."""

    def __init__(self, bindings, raw):
        self._b = bindings
        self._id = str(raw.id)
        self.name = raw.name
        self.metadata = raw.metadata or {}

    def count(self) -> int:
        """Number of items in the collection."""
        return int(self._b.count(self._id, _TENANT, _DB))

    def query(self, query_embeddings, n_results: int = 10, where: dict | None = None,
              include: list[str] | tuple[str, ...] = ("metadatas", "distances")) -> dict:
        """Nearest items, as chromadb's Collection.query returns them (ids, metadatas, distances, embeddings)."""
        qs = [[float(x) for x in q] for q in query_embeddings]
        r = self._b.query(self._id, None, qs, int(n_results), json.dumps(where) if where else None, None,
                          list(include), _TENANT, _DB)
        return {"ids": r.ids, "metadatas": r.metadatas, "distances": r.distances, "embeddings": r.embeddings}


def open_reader(persist_dir: str | Path):
    """The Rust engine on a persistent index folder, or None (no index there, or an unknown engine)."""
    persist_dir = Path(persist_dir)
    sqlite = persist_dir / "chroma.sqlite3"
    if not sqlite.exists():
        return None
    try:
        import chromadb_rust_bindings as rb

        cfg = rb.SqliteDBConfig(hash_type=rb.MigrationHash.MD5, migration_mode=rb.MigrationMode.Validate,
                                url=str(sqlite))
        # hnsw_cache_size: how many collections' HNSW indexes stay open; panza has a handful
        return rb.Bindings(allow_reset=False, sqlite_db_config=cfg, persist_path=str(persist_dir),
                           hnsw_cache_size=64)
    except Exception as exc:  # noqa: BLE001 - any failure (version skew, migrations pending): use the full client
        log.info("fast index reader unavailable (%s: %s); using the chromadb client", type(exc).__name__, exc)
        return None


def collection(bindings, name: str) -> ReadCollection | None:
    """Collection `name` through the engine, or None when it does not exist."""
    if not _exists(bindings, name):
        return None
    return ReadCollection(bindings, bindings.get_collection(name, _TENANT, _DB))


def _exists(bindings, name: str) -> bool:
    # the engine reports a missing collection with chromadb.errors.NotFoundError, and building that error
    # imports all of chromadb: list the names instead
    return any(getattr(c, "name", None) == name for c in bindings.list_collections(None, None, _TENANT, _DB))
