"""The products of one index version, in one Parquet file beside its vectors.

Search reads nothing else: filters run on its columns (numpy), results are rows of it, and
its records restore the catalog of record on a rollback. One file per version, written once,
so a version is a whole snapshot and immutable, wherever the catalog of record lives.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

from catalens.errors import IndexArtifactError
from catalens.filters import Filters
from catalens.records import ProductRecord

PRODUCTS = "products.parquet"
RECENT_RECORDS = 20_000  # records kept decoded per loaded version (a few KB each)


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("pk", pa.int64()), ("product_id", pa.string()), ("title", pa.string()), ("description", pa.string()),
        ("category", pa.string()), ("brand", pa.string()), ("price", pa.float64()), ("currency", pa.string()),
        ("availability", pa.string()), ("attributes", pa.string()), ("text_hash", pa.string()),
        ("images", pa.string()),
        # The vectors of the version that belong to the product (its ok images, or its text fallback).
        ("vector_ids", pa.list_(pa.int64())), ("vector_positions", pa.list_(pa.int32())),
    ])


def write_products(path: Path, records: Iterable[ProductRecord], vectors: dict[int, list[tuple[int, int]]]) -> None:
    """Write the records (sorted by pk) with each product's (vector id, image position or -1) pairs; fsynced."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(records, key=lambda r: r.pk)
    columns: dict[str, list[Any]] = {name: [] for name in _schema().names}
    for r in rows:
        for name in ("pk", "product_id", "title", "description", "category", "brand", "price", "currency",
                     "availability", "text_hash"):
            columns[name].append(getattr(r, name))
        columns["attributes"].append(json.dumps(r.attributes, separators=(",", ":")))
        columns["images"].append(json.dumps([asdict(img) for img in r.images], separators=(",", ":")))
        pairs = vectors.get(r.pk, [])
        columns["vector_ids"].append([v for v, _ in pairs])
        columns["vector_positions"].append([p for _, p in pairs])
    table = pa.Table.from_pydict(columns, schema=_schema())
    with open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())


class _Codes:
    """A string column as integer codes (-1 = none) and its distinct values, for vectorised filters."""

    def __init__(self, column: Any) -> None:
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(column).combine_chunks()
        self.values: list[str] = encoded.dictionary.to_pylist()
        self.codes = encoded.indices.to_numpy(zero_copy_only=False)
        self.codes = np.where(np.isnan(self.codes), -1, self.codes).astype(np.int32) \
            if self.codes.dtype.kind == "f" else self.codes.astype(np.int32)
        self.code_of = {v: i for i, v in enumerate(self.values)}

    def isin(self, wanted: Sequence[str]) -> np.ndarray:
        codes = [self.code_of[v] for v in wanted if v in self.code_of]
        return np.isin(self.codes, np.array(codes, np.int32)) if codes else np.zeros(len(self.codes), bool)

    def counts(self, keep: np.ndarray) -> dict[str, int]:
        counts = np.bincount(self.codes[keep & (self.codes >= 0)], minlength=len(self.values))
        return {v: int(c) for v, c in zip(self.values, counts) if c}


class ProductTable:
    """One version's products, read-only: column arrays for filters and facets, rows as records."""

    def __init__(self, table: Any) -> None:
        import pyarrow.compute as pc

        self.table = table
        self.pks = table.column("pk").to_numpy().astype(np.int64)
        self.row_of_pk = np.full(int(self.pks.max(initial=-1)) + 1, -1, np.int64)
        self.row_of_pk[self.pks] = np.arange(len(self.pks))
        self.row_of_id = {pid: row for row, pid in enumerate(table.column("product_id").to_pylist())}
        self.category = _Codes(table.column("category"))
        self.brand = _Codes(table.column("brand"))
        self.availability = _Codes(table.column("availability"))
        self.price = table.column("price").to_numpy(zero_copy_only=False).astype(np.float64)
        vids = table.column("vector_ids").combine_chunks()
        self.vector_ids = pc.list_flatten(vids).to_numpy().astype(np.int64)
        self.vector_rows = pc.list_parent_indices(vids).to_numpy().astype(np.int64)
        self.vector_positions = pc.list_flatten(table.column("vector_positions").combine_chunks()) \
            .to_numpy().astype(np.int64)
        # Records of rows results showed lately: products recur across queries, and a columnar take
        # plus JSON decoding was as much of a query's time as the ANN search (py-spy, README).
        self._recent: LRUCache[int, ProductRecord] = LRUCache(maxsize=RECENT_RECORDS)
        self._recent_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> ProductTable:
        import pyarrow.parquet as pq

        try:
            return cls(pq.read_table(path, schema=_schema()))
        except FileNotFoundError as exc:
            raise IndexArtifactError(f"index version {path.parent.name} has no {PRODUCTS}") from exc
        except Exception as exc:  # pyarrow raises several types for an unreadable file
            raise IndexArtifactError(f"index version {path.parent.name}: unreadable {PRODUCTS}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.pks)

    def row(self, pk: int) -> int:
        """The row of a product pk, or -1 if this version does not hold it."""
        return int(self.row_of_pk[pk]) if 0 <= pk < len(self.row_of_pk) else -1

    def mask(self, filters: Filters) -> np.ndarray:
        """Rows that pass the filters (a product without a price never passes a price bound)."""
        keep = np.ones(len(self.pks), bool)
        if filters.category:
            keep &= self.category.isin(filters.category)
        if filters.brand:
            keep &= self.brand.isin(filters.brand)
        if filters.availability:
            keep &= self.availability.isin(filters.availability)
        with np.errstate(invalid="ignore"):  # NaN (no price) compares False: filtered out
            if filters.price_min is not None:
                keep &= self.price >= filters.price_min
            if filters.price_max is not None:
                keep &= self.price <= filters.price_max
        return keep

    def records(self, rows: Sequence[int]) -> list[ProductRecord]:
        """The records of the given rows, in that order: recent ones from memory, the others in one
        columnar take (never a read per row). Records are frozen, so sharing them is safe."""
        if not len(rows):
            return []
        found: dict[int, ProductRecord] = {}
        with self._recent_lock:
            for row in rows:
                record = self._recent.get(row)
                if record is not None:
                    found[row] = record
        missing = list(dict.fromkeys(row for row in rows if row not in found))
        if missing:
            picked = self.table.take(np.asarray(missing, np.int64)).drop_columns(["vector_ids", "vector_positions"])
            fresh = dict(zip(missing, map(_record, picked.to_pylist())))
            with self._recent_lock:
                self._recent.update(fresh)
            found.update(fresh)
        return [found[row] for row in rows]

    def column_values(self, columns: Sequence[str]) -> dict[str, list[str | None]]:
        """Each column's value per row: the category, or an attribute (the attributes decoded once)."""
        out: dict[str, list[str | None]] = {}
        attributes: list[dict[str, Any]] | None = None
        for column in columns:
            if column == "category":
                out[column] = self.table.column("category").to_pylist()
                continue
            if attributes is None:
                attributes = [json.loads(a or "{}") for a in self.table.column("attributes").to_pylist()]
            out[column] = [v if isinstance(v := a.get(column), str) and v else None for a in attributes]
        return out

    def all_records(self, batch: int = 8192) -> Iterable[ProductRecord]:
        """Every record, in row order, without filling the recent-records cache."""
        for start in range(0, len(self.pks), batch):
            picked = self.table.slice(start, batch).drop_columns(["vector_ids", "vector_positions"])
            yield from map(_record, picked.to_pylist())


def _record(data: dict[str, Any]) -> ProductRecord:
    """A record from one row of the products file (its JSON columns decoded)."""
    data["attributes"] = json.loads(data["attributes"] or "{}")
    data["images"] = json.loads(data["images"] or "[]")
    return ProductRecord.from_json(data)
