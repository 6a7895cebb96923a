"""The live change log: upserts, patches and deletes since the active snapshot, in sequence order.

Every live change lands in the catalog of record and, in the same transaction, here: the
product's whole record after the change and, when its vectors changed, their new values.
A serving process folds the changes after its snapshot's watermark into a live layer
(retrieval.live); a new snapshot (a build or `index compact`) folds them in, and the log
up to its watermark is dropped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from catalens.db import serialize_appends
from catalens.records import ProductRecord
from catalens.schema import CatalogChange

KINDS = ("upsert", "patch", "delete")


@dataclass(frozen=True)
class LiveVectors:
    """A product's vectors in the image index: ids (image ids, or the text fallback's id),
    image positions (-1 for the text fallback), float32 vectors; reranker features where stored."""

    ids: np.ndarray
    positions: np.ndarray
    vectors: np.ndarray
    rerank_ids: np.ndarray | None = None
    rerank: np.ndarray | None = None

    def encode(self) -> bytes:
        arrays: dict[str, Any] = {"ids": self.ids, "positions": self.positions, "vectors": self.vectors}
        if self.rerank is not None and self.rerank_ids is not None:
            arrays |= {"rerank_ids": self.rerank_ids, "rerank": self.rerank}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> LiveVectors:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            rerank = (z["rerank_ids"], z["rerank"]) if "rerank" in z else (None, None)
            return cls(z["ids"].astype(np.int64), z["positions"].astype(np.int64), z["vectors"].astype(np.float32),
                       *rerank)


@dataclass(frozen=True)
class Change:
    seq: int
    product_id: str
    pk: int
    kind: str
    record: ProductRecord | None  # None: deleted
    vectors: LiveVectors | None  # None: the product's vectors did not change


def append(session: Session, kind: str, record: ProductRecord, vectors: LiveVectors | None = None) -> None:
    """Log one change (inside the caller's transaction, beside its catalog-of-record write)."""
    if kind not in KINDS:
        raise ValueError(f"unknown change kind {kind!r}")
    serialize_appends(session)
    session.add(CatalogChange(product_id=record.product_id, pk=record.pk, kind=kind,
                              record=None if kind == "delete" else record.to_json(),
                              vectors=vectors.encode() if vectors is not None else None))


def last_seq(session: Session) -> int:
    """The newest sequence number (0 for an empty log)."""
    return int(session.scalar(select(func.max(CatalogChange.seq))) or 0)


def count_since(session: Session, seq: int) -> int:
    return int(session.scalar(select(func.count()).select_from(CatalogChange).where(CatalogChange.seq > seq)) or 0)


def since(session: Session, seq: int, *, limit: int | None = None) -> list[Change]:
    """Changes after seq, oldest first."""
    query = select(CatalogChange).where(CatalogChange.seq > seq).order_by(CatalogChange.seq)
    if limit is not None:
        query = query.limit(limit)
    return [Change(seq=row.seq, product_id=row.product_id, pk=row.pk, kind=row.kind,
                   record=ProductRecord.from_json(row.record) if row.record else None,
                   vectors=LiveVectors.decode(row.vectors) if row.vectors else None)
            for row in session.scalars(query)]


def prune(session: Session, through: int) -> None:
    """Drop changes a published snapshot holds (seq <= its watermark)."""
    session.execute(delete(CatalogChange).where(CatalogChange.seq <= through))
