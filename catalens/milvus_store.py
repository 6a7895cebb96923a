"""Milvus as the vector store (CATALENS_VECTOR_STORE=milvus://host:port), the same version model.

* Snapshot: a collection per index version, filled from the version's own files (its vectors
  and products.parquet) with an HNSW index and the scalar fields filters read (category,
  brand, price, availability), so filters run inside Milvus's search.
* Atomic switch: the alias `catalens_active` (`<name>_active` for milvus://host:port/<name>) names the active version's collection; publish
  and rollback move it, beside the ACTIVE pointer. A server searches the collection of the
  version it has loaded, by name, so its records and vectors always come from one version.
* Live layer: the change log's upserts, patches and deletes are applied to the active
  collection as deletes and inserts, by whoever syncs first (a server's poll, an edit), under
  a row lock in the database that records how far each collection got (VectorCollection).
* Rollback: a collection that took live changes no longer equals its snapshot, so it is
  filled again from the version's files before the alias moves back to it.

Every call has a timeout; an unreachable or failing Milvus is a VectorStoreUnavailableError
(503 with Retry-After), and the client reconnects on the next call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from sqlalchemy import delete, select, update

from catalens import changes
from catalens.db import Sessions
from catalens.errors import ConfigError, IndexArtifactError, VectorStoreUnavailableError
from catalens.filters import Filters
from catalens.schema import VectorCollection

if TYPE_CHECKING:
    from catalens.artifacts import FaissIndex
    from catalens.product_table import ProductTable

LOG = logging.getLogger(__name__)
DEFAULT_PREFIX = "catalens"
INSERT_BATCH = 2048
MAX_TOPK = 16384  # Milvus's limit on one search
HNSW = {"M": 32, "efConstruction": 200}  # as the FAISS default at this scale (HNSW32)
# Session: a process reads its own writes (the server that applied an edit shows it when it answers)
# without Strong's wait for the next time tick, which cost every search ~200 ms (measured here).
CONSISTENCY = "Session"
T = TypeVar("T")


def collection_name(version_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Milvus names allow letters, digits and underscores."""
    return f"{prefix}_v" + "".join(c if c.isalnum() else "_" for c in version_id.lower())


def filter_expr(filters: Filters, exclude_pk: int | None = None) -> str:
    """The filters as a Milvus boolean expression (empty: no filter)."""
    parts = []
    for name in ("category", "brand", "availability"):
        values = getattr(filters, name)
        if values:
            parts.append(f"{name} in {_strings(values)}")
    if filters.price_min is not None:
        parts.append(f"(has_price == true and price >= {float(filters.price_min)!r})")
    if filters.price_max is not None:
        parts.append(f"(has_price == true and price <= {float(filters.price_max)!r})")
    if exclude_pk is not None:
        parts.append(f"pk != {int(exclude_pk)}")
    return " and ".join(parts)


def _strings(values: Sequence[str]) -> str:
    import json

    return json.dumps(list(values))  # a JSON string list is a valid Milvus list literal, escapes included


@dataclass(frozen=True)
class Row:
    """One vector of a product as Milvus holds it."""

    vid: int
    pk: int
    position: int
    category: str
    brand: str
    availability: str
    price: float | None
    vector: np.ndarray

    def entity(self) -> dict[str, Any]:
        return {"vid": self.vid, "pk": self.pk, "position": self.position, "category": self.category,
                "brand": self.brand, "availability": self.availability, "has_price": self.price is not None,
                "price": float(self.price) if self.price is not None else 0.0, "vector": self.vector}


class MilvusStore:
    """A MilvusClient with timeouts, typed errors and reconnection; one per process."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        address, _, prefix = url.removeprefix("milvus://").partition("/")
        self.uri = "http://" + address
        # milvus://host:port/name: collections name_v<version> and alias name_active, so several
        # deployments (or tests) share one server (Milvus 2.3's databases are not in pymilvus 3's reach).
        self.prefix = prefix or DEFAULT_PREFIX
        if not self.prefix.replace("_", "").isalnum() or not self.prefix[0].isalpha():
            raise ConfigError(f"milvus://{address}/{prefix}: the name after the port must be letters, digits and _")
        self.alias = f"{self.prefix}_active"
        self.timeout_s = timeout_s
        self._client: Any = None
        self._lock = threading.Lock()

    # --- plumbing ----------------------------------------------------------------------

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    from pymilvus import MilvusClient
                except ImportError as exc:
                    raise ConfigError("a Milvus vector store needs pymilvus: pip install 'catalens[milvus]'") from exc
                _quiet_pymilvus()
                self._client = MilvusClient(uri=self.uri, timeout=self.timeout_s)
            return self._client

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One client call with the timeout; any failure is a 503 to retry, and the next call reconnects."""
        try:
            client = self._get_client()
            return getattr(client, method)(*args, timeout=self.timeout_s, **kwargs)
        except (ConfigError, IndexArtifactError):
            raise
        except Exception as exc:
            with self._lock:
                client, self._client = self._client, None
            if client is not None:
                try:
                    client.close()
                except Exception:  # closing a broken channel may fail too
                    LOG.debug("closing the Milvus client failed", exc_info=True)
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise VectorStoreUnavailableError(f"Milvus at {self.uri.removeprefix('http://')} did not answer "
                                              f"{method} ({reason}); retry shortly") from exc

    # --- collections -------------------------------------------------------------------

    def name(self, version_id: str) -> str:
        return collection_name(version_id, self.prefix)

    def has(self, version_id: str) -> bool:
        return bool(self.call("has_collection", self.name(version_id)))

    def drop(self, version_id: str) -> None:
        name = self.name(version_id)
        if self.call("has_collection", name):
            self.call("drop_collection", name)

    def create(self, version_id: str, dim: int) -> None:
        """An empty collection for one version (any half-made one dropped first), HNSW on the vectors."""
        from pymilvus import DataType, MilvusClient

        self.drop(version_id)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("vid", DataType.INT64, is_primary=True)
        schema.add_field("pk", DataType.INT64)
        schema.add_field("position", DataType.INT64)
        schema.add_field("category", DataType.VARCHAR, max_length=512)
        schema.add_field("brand", DataType.VARCHAR, max_length=512)
        schema.add_field("availability", DataType.VARCHAR, max_length=32)
        schema.add_field("has_price", DataType.BOOL)
        schema.add_field("price", DataType.DOUBLE)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index = self._get_client().prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params=HNSW)
        self.call("create_collection", self.name(version_id), schema=schema, index_params=index,
                  consistency_level=CONSISTENCY)

    def fill(self, version_id: str, products: ProductTable, vectors: FaissIndex, *,
             progress: Callable[[int], None] | None = None) -> int:
        """Create the version's collection from its files: every vector with its product's fields."""
        self.create(version_id, vectors.dim)
        vids, rows, positions = products.vector_ids, products.vector_rows, products.vector_positions
        category = _column(products.category)
        brand = _column(products.brand)
        availability = _column(products.availability)
        for start in range(0, len(vids), INSERT_BATCH):
            ids = vids[start:start + INSERT_BATCH]
            matrix = vectors.reconstruct(ids)
            batch = [Row(int(v), int(products.pks[r]), int(p), category[r], brand[r], availability[r],
                         None if np.isnan(products.price[r]) else float(products.price[r]), matrix[i])
                     for i, (v, r, p) in enumerate(zip(ids.tolist(), rows[start:start + INSERT_BATCH].tolist(),
                                                       positions[start:start + INSERT_BATCH].tolist()))]
            self.call("insert", self.name(version_id), [b.entity() for b in batch])
            if progress is not None:
                progress(len(batch))
        self.call("flush", self.name(version_id))
        self.call("load_collection", self.name(version_id))
        return len(vids)

    def point_alias(self, version_id: str) -> None:
        """The alias names this version's collection now (atomic in Milvus)."""
        name = self.name(version_id)
        if self.alias_target() is None:
            self.call("create_alias", name, self.alias)  # the first version
        else:
            self.call("alter_alias", name, self.alias)

    def alias_target(self) -> str | None:
        """The collection the alias names, or None before the first publish."""
        for name in self.call("list_collections"):
            if name.startswith(f"{self.prefix}_v") and self.alias in _names(self.call("list_aliases", name)):
                return str(name)
        return None

    # --- search and live changes -------------------------------------------------------

    def search(self, version_id: str, query: np.ndarray, k: int, expr: str) -> list[tuple[float, int, int, int]]:
        """(score, vector id, product pk, image position) of the best k vectors passing expr, best first."""
        k = min(k, MAX_TOPK)
        result = self.call("search", self.name(version_id), data=[query.astype(np.float32).tolist()],
                           limit=k, filter=expr, output_fields=["pk", "position"], consistency_level=CONSISTENCY,
                           search_params={"metric_type": "IP", "params": {"ef": max(64, k)}})
        return [(float(hit["distance"]), int(hit["id"]), int(hit["entity"]["pk"]), int(hit["entity"]["position"]))
                for hit in result[0]]

    def _rows_of(self, version_id: str, pks: list[int]) -> dict[int, list[tuple[int, int, np.ndarray]]]:
        """(vid, position, vector) of the rows each product has now."""
        out: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        for start in range(0, len(pks), 512):
            found = self.call("query", self.name(version_id), filter=f"pk in {pks[start:start + 512]}",
                              output_fields=["vid", "pk", "position", "vector"], consistency_level=CONSISTENCY)
            for r in found:
                out.setdefault(int(r["pk"]), []).append((int(r["vid"]), int(r["position"]),
                                                         np.asarray(r["vector"], np.float32)))
        return out

    def apply(self, version_id: str, log: Sequence[changes.Change]) -> None:
        """Fold changes (oldest first) into the collection: each changed product's vectors are upserted
        with its current fields, then the rows it no longer has (or all, deleted) are removed.

        Idempotent and safe to cut off anywhere: rows are replaced, never removed before their
        replacement is in, so a rerun after a crash finds every vector it needs.
        """
        final: dict[int, changes.Change] = {}
        new_vectors: dict[int, changes.LiveVectors] = {}
        for change in log:
            final[change.pk] = change
            if change.vectors is not None:
                new_vectors[change.pk] = change.vectors
            elif change.record is None:
                new_vectors.pop(change.pk, None)
        keep = [pk for pk, c in final.items() if c.record is not None and pk not in new_vectors]
        current = self._rows_of(version_id, keep) if keep else {}
        rows: list[Row] = []
        for pk, change in final.items():
            record = change.record
            if record is None:
                continue
            fields = (record.category or "", record.brand or "", record.availability or "", record.price)
            if pk in new_vectors:
                lv = new_vectors[pk]
                rows += [Row(int(v), pk, int(p), *fields, lv.vectors[i])
                         for i, (v, p) in enumerate(zip(lv.ids.tolist(), lv.positions.tolist()))]
            else:
                rows += [Row(v, pk, p, *fields, vec) for v, p, vec in current.get(pk, [])]
        for start in range(0, len(rows), INSERT_BATCH):
            self.call("upsert", self.name(version_id), [r.entity() for r in rows[start:start + INSERT_BATCH]])
        # Then every other row of the changed products goes (a deleted product's, an image removed
        # by an upsert): a vector id belongs to one product, so one expression covers a whole batch.
        touched = list(final)
        for start in range(0, len(touched), 512):
            pks = touched[start:start + 512]
            batch = set(pks)
            kept = [r.vid for r in rows if r.pk in batch]
            self.call("delete", self.name(version_id),
                      filter=f"pk in {pks}" + (f" and vid not in {kept}" if kept else ""))


def _quiet_pymilvus() -> None:
    """pymilvus logs each failed call with its traceback (configured when it is imported); the typed
    error says it in one line."""
    for name in [*logging.root.manager.loggerDict, "pymilvus"]:
        if name.startswith("pymilvus"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _names(aliases: Any) -> list[str]:
    """list_aliases answers a list or a dict with 'aliases', by pymilvus version."""
    return list(aliases.get("aliases", [])) if isinstance(aliases, dict) else list(aliases)


def _column(codes: Any) -> list[str]:
    """A product table's string column, row by row ('' for none: Milvus VARCHARs are not nullable)."""
    values = [*codes.values, ""]
    return [values[c] for c in codes.codes.tolist()]


# --- the version model over Milvus -----------------------------------------------------------


def sync(store: MilvusStore, sessions: Sessions, version_id: str) -> int:
    """Apply the change log after what the version's collection holds; returns the last seq applied.

    Whoever runs it first does the work (servers' polls, edits), one at a time: the row of
    the collection is locked (an UPDATE first, which also takes SQLite's write lock).
    """
    with sessions() as session:
        row = session.get(VectorCollection, version_id)
        last = changes.last_seq(session)
    if row is None:
        raise IndexArtifactError(f"index version {version_id} is not in Milvus yet: publish it again "
                                 "(`catalens index rebuild`) or roll back")
    if last <= row.applied_seq:
        return row.applied_seq
    with sessions.begin() as session:
        session.execute(update(VectorCollection).where(VectorCollection.version_id == version_id)
                        .values(applied_seq=VectorCollection.applied_seq))
        applied = int(session.scalar(select(VectorCollection.applied_seq)
                                     .where(VectorCollection.version_id == version_id)) or 0)
        log = changes.since(session, applied)
        if log:
            store.apply(version_id, log)
            applied = log[-1].seq
            session.execute(update(VectorCollection).where(VectorCollection.version_id == version_id)
                            .values(applied_seq=applied))
    return applied


def activate(store: MilvusStore, sessions: Sessions, version_id: str, products: ProductTable, vectors: FaissIndex,
             *, since_seq: int) -> None:
    """Make the version's collection what Milvus serves: filled from its files unless it holds exactly
    its snapshot already (one that took live changes, met again by a rollback, is refilled),
    brought up to the log, and named by the alias."""
    with sessions() as session:
        row = session.get(VectorCollection, version_id)
        pristine = row is not None and row.applied_seq == row.base_seq
    if not (pristine and store.has(version_id)):
        with sessions.begin() as session:  # "not there" until the fill has finished
            session.execute(delete(VectorCollection).where(VectorCollection.version_id == version_id))
        LOG.info("filling Milvus collection %s with %d vectors", store.name(version_id),
                    len(products.vector_ids))
        store.fill(version_id, products, vectors)
    with sessions.begin() as session:
        row = session.get(VectorCollection, version_id)
        if row is None:
            session.add(VectorCollection(version_id=version_id, base_seq=since_seq, applied_seq=since_seq))
        else:
            row.base_seq = row.applied_seq = since_seq
    sync(store, sessions, version_id)
    store.point_alias(version_id)


def forget(store: MilvusStore, sessions: Sessions, version_ids: Sequence[str]) -> None:
    """Drop the collections of pruned versions (best effort: a later prune retries)."""
    for version_id in version_ids:
        with sessions.begin() as session:
            session.execute(delete(VectorCollection).where(VectorCollection.version_id == version_id))
        try:
            store.drop(version_id)
        except VectorStoreUnavailableError as exc:
            LOG.warning("could not drop Milvus collection of pruned version %s: %s", version_id, exc.message)
