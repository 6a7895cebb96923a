"""The live layer: changes logged since the active snapshot, searched beside it.

Immutable like a snapshot: applying new changes makes a new layer (work in proportion to the
layer, never to the catalog), swapped in whole. Every product changed since the snapshot is
hidden there and held here whole: its record, and its vectors in a small exact index (new
ones from the change, or the snapshot's own copied over for a patch that kept them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cachetools import LRUCache

from catalens import keywords
from catalens.changes import Change, LiveVectors
from catalens.filters import Filters
from catalens.keywords import KeywordIndex, Phrase
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
    # The snapshot's allowed vector ids per filter with this layer's changes masked out (a few
    # filters, as Snapshot.allowed_cache): a new layer starts empty.
    allowed_cache: LRUCache[Filters, np.ndarray] = field(default_factory=lambda: LRUCache(maxsize=16),
                                                         repr=False, compare=False)
    # ... and its own vectors that pass each filter.
    passing_cache: LRUCache[Filters, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=lambda: LRUCache(maxsize=16), repr=False, compare=False)
    allowed_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # The live records' words, an index from word to records and their SKUs: built at the
    # layer's first keyword query (work in proportion to the layer).
    _keyword_state: dict[str, dict] = field(default_factory=dict, repr=False, compare=False)

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
        # faiss, not numpy: a BLAS matrix-vector product takes its threads and, on a busy 2-core
        # machine, spins for milliseconds (13 ms a query at 10,000 changes, bench update).
        import faiss

        ids, owners, positions, matrix = self._passing(filters)
        if not len(ids):
            return []
        head = min(len(ids), 8 * want + 32)  # most queries end in the head
        while True:
            scores, at = faiss.knn(query[None, :], matrix, head, metric=faiss.METRIC_INNER_PRODUCT)
            out = self._best(at[0], scores[0], ids, owners, positions, want)
            if len(out) >= want or head >= len(ids):
                return out
            head = min(len(ids), head * 8)

    def _passing(self, filters: Filters) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The live vectors whose products pass the filters (all without filters), kept per filter."""
        if not filters.active:
            return self.ids, self.owners, self.positions, self.matrix
        with self.allowed_lock:
            cached = self.passing_cache.get(filters)
        if cached is None:
            passes = {pk for pk, record in self.records.items() if filters.matches(record)}
            keep = np.fromiter((pk in passes for pk in self.owners.tolist()), bool, len(self.owners))
            cached = (self.ids[keep], self.owners[keep], self.positions[keep], np.ascontiguousarray(self.matrix[keep]))
            with self.allowed_lock:
                self.passing_cache[filters] = cached
        return cached

    @staticmethod
    def _best(order: np.ndarray, scores: np.ndarray, ids: np.ndarray, owners: np.ndarray, positions: np.ndarray,
              want: int) -> list[tuple[int, float, int, int]]:
        """The first `want` distinct products of the vectors in `order` (scores in that order)."""
        out: list[tuple[int, float, int, int]] = []
        seen: set[int] = set()
        for slot, i in enumerate(order.tolist()):
            if i < 0:
                continue
            pk = int(owners[i])
            if pk in seen:
                continue
            seen.add(pk)
            out.append((pk, float(scores[slot]), int(positions[i]), int(ids[i])))
            if len(out) >= want:
                break
        return out

    def _keyword_tables(self) -> dict[str, dict]:
        with self.allowed_lock:
            if not self._keyword_state:
                docs = {pk: keywords.document_terms(record) for pk, record in self.records.items()}
                words: dict[str, set[int]] = {}
                for pk, fields in docs.items():
                    for field_words in fields:
                        for word in field_words:
                            words.setdefault(word, set()).add(pk)
                skus = {keywords.normalize_sku(sku): pk for pk, record in self.records.items()
                        if (sku := keywords.sku_of(record))}
                self._keyword_state.update(docs=docs, words=words, skus=skus)
            return self._keyword_state

    def keyword_search(self, phrases: list[Phrase], filters: Filters, want: int,
                       index: KeywordIndex) -> list[tuple[float, int, int, int, int]]:
        """(BM25 on the snapshot's scale, pk, -1, image position, vector id) of the best `want` live
        products passing the filters."""
        if not self.records:
            return []
        tables = self._keyword_tables()
        candidates = set().union(*(tables["words"].get(p[0], set()) for p in phrases))
        candidates = {pk for pk in candidates if not filters.active or filters.matches(self.records[pk])}
        if not candidates:
            return []
        stats = index.stats(phrases)
        out = []
        for pk in candidates:
            score = keywords.bm25(phrases, tables["docs"][pk], stats)
            if score > 0:
                out.append((score, pk, -1, *self.first_vector(pk)))
        out.sort(key=lambda b: -b[0])
        return out[:want]

    def keyword_flags(self, phrases: list[Phrase], pks: list[int]) -> tuple[set[int], set[int]]:
        """(live products among pks containing every phrase with some phrase naming them, those the
        query names whole: keywords.names)."""
        docs = self._keyword_tables()["docs"] if self.records else {}
        return keywords.flags(phrases, {pk: docs[pk] for pk in pks if pk in docs})

    def sku_match(self, text: str) -> int | None:
        """The live product whose SKU is exactly the text, if any."""
        if not self.records:
            return None
        return self._keyword_tables()["skus"].get(keywords.normalize_sku(text))

    def first_vector(self, pk: int) -> tuple[int, int]:
        """(image position or -1, vector id or -1) of a live product's first vector."""
        lv = self.vectors.get(pk)
        if lv is None or not len(lv.ids):
            return -1, -1
        return int(lv.positions[0]), int(lv.ids[0])

    def rerank_features(self, hits: list[tuple[int, int]]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """For (product pk, vector id) pairs: (mask of those with live reranker features, the features)."""
        found = np.zeros(len(hits), bool)
        feats: list[np.ndarray | None] = [None] * len(hits)
        for slot, (pk, vid) in enumerate(hits):
            lv = self.vectors.get(pk)
            if lv is None or lv.rerank is None or lv.rerank_ids is None:
                continue
            at = np.flatnonzero(lv.rerank_ids == vid)
            if len(at):
                found[slot], feats[slot] = True, lv.rerank[int(at[0])]
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
