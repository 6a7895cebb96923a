"""Query path: encoder -> FAISS (with filters) -> metadata. An immutable snapshot per index version."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cachetools import LRUCache
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from catalens import artifacts
from catalens.config import Settings
from catalens.encoder import ClipEncoder
from catalens.errors import IndexArtifactError, IndexNotReadyError, NotFoundError
from catalens.schema import Product, ProductImage
from indexer.builder import TEXT_ID_BASE

LOG = logging.getLogger(__name__)
# Filters that leave at most this many candidate vectors are answered by exact search over
# exactly those vectors (SQL pre-filter): always k results, whatever the selectivity.
# Broader filters over-fetch from the ANN index and post-filter, growing the fetch until k.
SUBSET_LIMIT = 20_000


@dataclass(frozen=True)
class Filters:
    category: tuple[str, ...] = ()
    brand: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None

    @property
    def active(self) -> bool:
        return bool(self.category or self.brand or self.price_min is not None or self.price_max is not None)

    def clauses(self) -> list[Any]:
        out: list[Any] = [Product.deleted.is_(False)]
        if self.category:
            out.append(Product.category.in_(self.category))
        if self.brand:
            out.append(Product.brand.in_(self.brand))
        if self.price_min is not None:
            out.append(Product.price >= self.price_min)
        if self.price_max is not None:
            out.append(Product.price <= self.price_max)
        return out


@dataclass
class Hit:
    product: Product
    score: float
    image_position: int | None


@dataclass
class SearchOutcome:
    hits: list[Hit]
    index_version: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    """One loaded index version: never mutated, replaced whole on a swap."""

    manifest: artifacts.Manifest
    images: artifacts.FaissIndex
    texts: artifacts.FaissIndex
    owner: dict[int, tuple[int, int]]  # vector id -> (product pk, image position or -1)
    vectors_of: dict[int, list[int]] = field(default_factory=dict)  # product pk -> vector ids

    @property
    def version_id(self) -> str:
        return self.manifest.version_id


def load_snapshot(settings: Settings, sessions: sessionmaker[Session], encoder: ClipEncoder) -> Snapshot:
    """Load and verify the active version; refuse one built with another model."""
    path = artifacts.active_version_path(settings.index_dir)
    manifest, images, texts = artifacts.load_version(path)
    if manifest.model_id != encoder.model_id or manifest.dim != encoder.dim:
        raise IndexArtifactError(
            f"index version {manifest.version_id} was built with model {manifest.model_id!r} "
            f"(dim {manifest.dim}) but the service loaded {encoder.model_id!r} (dim {encoder.dim}); "
            "serve with the same --model/--pretrained or rebuild the index")
    with sessions() as session:
        rows = session.execute(select(ProductImage.id, ProductImage.product_pk, ProductImage.position)).all()
    owner = {int(i): (int(pk), int(pos)) for i, pk, pos in rows}
    for pid in texts.ids():
        owner[TEXT_ID_BASE + int(pid)] = (int(pid), -1)
    present = set(images.ids().tolist())
    owner = {vid: where for vid, where in owner.items() if vid in present}
    vectors_of: dict[int, list[int]] = {}
    for vid, (pk, _) in owner.items():
        vectors_of.setdefault(pk, []).append(vid)
    return Snapshot(manifest, images, texts, owner, vectors_of)


class Searcher:
    """Answers text, image and similar-product queries against the current snapshot."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], encoder: ClipEncoder,
                 *, observe: Callable[[str, float], None] | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.encoder = encoder
        self.observe = observe or (lambda stage, seconds: None)
        self._snapshot: Snapshot | None = None
        self._swap_lock = threading.Lock()
        self._text_cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(1, settings.text_cache_size))
        self._cache_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise IndexNotReadyError(
                f"no index is loaded from {self.settings.index_dir}: build one with "
                "`catalens index build --catalog FILE`")
        return snap

    @property
    def current(self) -> Snapshot | None:
        """The snapshot now being served, or None before the first index is loaded."""
        return self._snapshot

    @property
    def current_version(self) -> str | None:
        snap = self._snapshot
        return snap.version_id if snap else None

    def reload(self) -> str:
        """Load the active version off the request path, then swap the reference under a lock.

        In-flight requests keep the snapshot they started with; Python frees the old one
        when the last of them drops its reference.
        """
        snap = load_snapshot(self.settings, self.sessions, self.encoder)
        with self._swap_lock:
            self._snapshot = snap
        LOG.info("serving index version %s (%d vectors)", snap.version_id, snap.images.ntotal)
        return snap.version_id

    # --- queries -----------------------------------------------------------------------

    def encode_text(self, text: str) -> np.ndarray:
        with self._cache_lock:
            cached = self._text_cache.get(text)
        if cached is not None:
            return cached
        vec = self.encoder.encode_texts([text])[0]
        with self._cache_lock:
            self._text_cache[text] = vec
        return vec

    def search_text(self, query: str, k: int, filters: Filters) -> SearchOutcome:
        snap = self.snapshot
        t0 = time.perf_counter()
        vec = self.encode_text(query)
        return self._search(snap, vec, k, filters, encode_s=time.perf_counter() - t0)

    def search_image(self, image: Any, k: int, filters: Filters) -> SearchOutcome:
        snap = self.snapshot
        t0 = time.perf_counter()
        vec = self.encoder.encode_images([image])[0]
        return self._search(snap, vec, k, filters, encode_s=time.perf_counter() - t0)

    def similar(self, product_id: str, k: int, filters: Filters) -> SearchOutcome:
        """Products like this one (by the mean of its image vectors), itself excluded."""
        snap = self.snapshot
        with self.sessions() as session:
            product = session.scalar(select(Product).where(Product.product_id == product_id,
                                                           Product.deleted.is_(False)))
            if product is None:
                raise NotFoundError(f"product {product_id!r} not found")
        ids = np.array(snap.vectors_of.get(product.id, []), np.int64)
        if not len(ids):  # added after this version was built
            raise NotFoundError(f"product {product_id!r} is not in index version {snap.version_id} yet")
        vectors = snap.images.reconstruct(ids)
        vec = vectors.mean(axis=0)
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
        return self._search(snap, vec, k, filters, encode_s=0.0, exclude=product.id)

    def _search(self, snap: Snapshot, vec: np.ndarray, k: int, filters: Filters, *,
                encode_s: float, exclude: int | None = None) -> SearchOutcome:
        timings = {"encode": encode_s}
        query = vec[None, :].astype(np.float32)
        allowed = self._allowed_vector_ids(snap, filters) if filters.active else None
        want = k + (exclude is not None)
        if allowed is not None:
            t0 = time.perf_counter()
            scores, ids = snap.images.search_subset(query, len(allowed), allowed)
            timings["ann"] = time.perf_counter() - t0
            best = self._best_per_product(snap, scores[0], ids[0])
            hits = self._resolve(best, filters, want, timings)
        else:
            fetch = max(want * 4, 32)
            while True:
                t0 = time.perf_counter()
                scores, ids = snap.images.search(query, fetch)
                timings["ann"] = timings.get("ann", 0.0) + time.perf_counter() - t0
                best = self._best_per_product(snap, scores[0], ids[0])
                hits = self._resolve(best, filters, want, timings)
                if len(hits) >= want or fetch >= snap.images.ntotal:
                    break
                fetch *= 4
        hits = [h for h in hits if h.product.id != exclude][:k]
        for stage, seconds in timings.items():
            self.observe(stage, seconds)
        return SearchOutcome(hits, snap.version_id, timings)

    def _allowed_vector_ids(self, snap: Snapshot, filters: Filters) -> np.ndarray | None:
        """Vector ids of products passing the filters, if few enough for exact search."""
        with self.sessions() as session:
            count = session.scalar(select(func.count()).select_from(Product).where(*filters.clauses()))
            if count is None or count * 3 > SUBSET_LIMIT:
                return None
            pks = set(session.scalars(select(Product.id).where(*filters.clauses())))
        return np.array([vid for pk in pks for vid in snap.vectors_of.get(pk, ())], np.int64)

    @staticmethod
    def _best_per_product(snap: Snapshot, scores: np.ndarray, ids: np.ndarray) -> dict[int, tuple[float, int]]:
        best: dict[int, tuple[float, int]] = {}
        for score, vid in zip(scores.tolist(), ids.tolist()):
            if vid < 0 or vid not in snap.owner:
                continue
            pk, pos = snap.owner[vid]
            if pk not in best:  # results arrive best-first
                best[pk] = (score, pos)
        return best

    def _resolve(self, best: dict[int, tuple[float, int]], filters: Filters, want: int,
                 timings: dict[str, float]) -> list[Hit]:
        """Fetch live products that pass the filters; deleted ids are dropped here."""
        if not best:
            return []
        t0 = time.perf_counter()
        with self.sessions() as session:
            products = {p.id: p for p in session.scalars(
                select(Product).where(Product.id.in_(list(best)), *filters.clauses()))}
        timings["metadata"] = timings.get("metadata", 0.0) + time.perf_counter() - t0
        hits = [Hit(products[pk], score, pos if pos >= 0 else None)
                for pk, (score, pos) in best.items() if pk in products]
        hits.sort(key=lambda h: -h.score)
        return hits[:want]

    # --- products ----------------------------------------------------------------------

    def product(self, product_id: str) -> Product:
        with self.sessions() as session:
            product = session.scalar(select(Product).where(Product.product_id == product_id,
                                                           Product.deleted.is_(False)))
            if product is None:
                raise NotFoundError(f"product {product_id!r} not found")
            _ = product.images  # load while the session is open
            return product

    def facets(self) -> dict[str, list[dict[str, Any]]]:
        """Category and brand values with counts, and the price range, over live products."""
        with self.sessions() as session:
            live = Product.deleted.is_(False)
            out: dict[str, Any] = {}
            for name, column in (("category", Product.category), ("brand", Product.brand)):
                rows = session.execute(select(column, func.count()).where(live, column.is_not(None))
                                       .group_by(column).order_by(func.count().desc(), column)).all()
                out[name] = [{"value": v, "count": c} for v, c in rows]
            low, high = session.execute(select(func.min(Product.price), func.max(Product.price)).where(live)).one()
            out["price"] = {"min": low, "max": high}
        return out
