"""The live layer: changes logged since the active snapshot, searched beside it.

Immutable like a snapshot: applying new changes makes a new layer (work in proportion to the
layer, never to the catalog), swapped in whole. Every product changed since the snapshot is
hidden there and held here whole: its record, and its vectors in a small exact index (new
ones from the change, or the snapshot's own copied over for a patch that kept them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from catalens.changes import Change, LiveVectors
from catalens.filters import Filters
from catalens.records import ProductRecord

if TYPE_CHECKING:
    from retrieval.searcher import Snapshot


@dataclass(frozen=True)
class LiveLayer:
    seq: int  # the last change applied
    records: dict[int, ProductRecord] = field(default_factory=dict)  # pk -> its record now (live products)
    deleted: frozenset[int] = frozenset()  # pks deleted since the snapshot
    vectors: dict[int, LiveVectors] = field(default_factory=dict)  # pk -> its vectors now (live products)
    # Derived once per layer: every live vector (ids, owner pks, image positions, matrix) ...
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    owners: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # ... and what of the snapshot stays visible: its sorted vector table (for filtered searches)
    # and its product rows (to drop hidden ones from unfiltered results); None: all of it.
    keep: np.ndarray | None = None
    hidden_rows: np.ndarray | None = None
    by_id: dict[str, int] = field(default_factory=dict)  # product_id -> pk, live and deleted ones

    @property
    def changed(self) -> int:
        """Products changed since the snapshot."""
        return len(self.records) + len(self.deleted)

    def hides(self, pk: int) -> bool:
        return pk in self.records or pk in self.deleted

    def apply(self, changes: Iterable[Change], snap: Snapshot) -> LiveLayer:
        """A new layer with these changes (oldest first) folded in."""
        records, deleted, vectors, by_id = dict(self.records), set(self.deleted), dict(self.vectors), dict(self.by_id)
        seq = self.seq
        for change in changes:
            seq = max(seq, change.seq)
            by_id[change.product_id] = change.pk
            if change.record is None:
                records.pop(change.pk, None)
                vectors.pop(change.pk, None)
                deleted.add(change.pk)
                continue
            deleted.discard(change.pk)
            records[change.pk] = change.record
            if change.vectors is not None:
                vectors[change.pk] = change.vectors
            elif change.pk not in vectors:
                copied = snap.product_vectors(change.pk)
                if copied is not None:
                    vectors[change.pk] = copied
        return build_layer(seq, records, frozenset(deleted), vectors, by_id, snap)

    def search(self, query: np.ndarray, filters: Filters, want: int) -> list[tuple[int, float, int, int]]:
        """(pk, score, image position or -1, vector id) of the best `want` live products passing the filters."""
        if not len(self.ids):
            return []
        # faiss, not numpy: a BLAS matrix-vector product takes its threads and, on a busy 2-core
        # machine, spins for milliseconds (13 ms a query at 10,000 changes, bench update).
        import faiss

        head = min(len(self.ids), 8 * want + 32)  # most queries end in the head
        while True:
            scores, at = faiss.knn(query[None, :], self.matrix, head, metric=faiss.METRIC_INNER_PRODUCT)
            out = self._best(at[0], scores[0], filters, want)
            if len(out) >= want or head >= len(self.ids):
                return out
            head = min(len(self.ids), head * 8)

    def _best(self, order: np.ndarray, scores: np.ndarray, filters: Filters,
              want: int) -> list[tuple[int, float, int, int]]:
        """The first `want` distinct passing products of vectors in `order` (scores in that order)."""
        out: list[tuple[int, float, int, int]] = []
        seen: set[int] = set()
        for slot, i in enumerate(order.tolist()):
            if i < 0:
                continue
            pk = int(self.owners[i])
            if pk in seen:
                continue
            seen.add(pk)
            if filters.active and not filters.matches(self.records[pk]):
                continue
            out.append((pk, float(scores[slot]), int(self.positions[i]), int(self.ids[i])))
            if len(out) >= want:
                break
        return out

    def rerank_features(self, vector_ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """(mask of ids with live reranker features, those features in the given order)."""
        found = np.zeros(len(vector_ids), bool)
        feats: list[np.ndarray | None] = [None] * len(vector_ids)
        where = {int(v): i for i, v in enumerate(self.ids.tolist())}
        for slot, vid in enumerate(vector_ids.tolist()):
            if vid not in where:
                continue
            lv = self.vectors.get(int(self.owners[where[vid]]))
            if lv is None or lv.rerank is None or lv.rerank_ids is None:
                continue
            hit = np.flatnonzero(lv.rerank_ids == vid)
            if len(hit):
                found[slot], feats[slot] = True, lv.rerank[int(hit[0])]
        return found, feats


def build_layer(seq: int, records: dict[int, ProductRecord], deleted: frozenset[int], vectors: dict[int, LiveVectors],
                by_id: dict[str, int], snap: Snapshot) -> LiveLayer:
    """The layer's derived arrays: the live vector matrix and the snapshot's visible vectors."""
    parts = [(pk, lv) for pk, lv in vectors.items() if pk in records and len(lv.ids)]
    if parts:
        ids = np.concatenate([lv.ids for _, lv in parts])
        owners = np.concatenate([np.full(len(lv.ids), pk, np.int64) for pk, lv in parts])
        positions = np.concatenate([lv.positions for _, lv in parts])
        matrix = np.ascontiguousarray(np.concatenate([lv.vectors for _, lv in parts]), dtype=np.float32)
    else:
        ids = owners = positions = np.zeros(0, np.int64)
        matrix = np.zeros((0, snap.manifest.dim), np.float32)
    hidden = np.array(sorted(set(records) | deleted), np.int64)
    keep = hidden_rows = None
    if len(hidden):
        _, sorted_rows, _ = snap.vector_table
        rows = snap.products.row_of_pk[hidden[hidden < len(snap.products.row_of_pk)]]
        hidden_rows = np.zeros(len(snap.products), bool)
        hidden_rows[rows[rows >= 0]] = True
        keep = ~hidden_rows[sorted_rows]
    return LiveLayer(seq, records, deleted, vectors, ids, owners, positions, matrix, keep, hidden_rows, by_id)
