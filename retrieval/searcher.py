"""Query path: encoder -> FAISS (with filters) -> metadata. An immutable snapshot per index version."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cachetools import LRUCache
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from catalens import artifacts
from catalens.artifacts import TEXT_ID_BASE
from catalens.config import Settings
from catalens.encoder import ClipEncoder
from catalens.errors import CatalensError, IndexArtifactError, IndexNotReadyError, InvalidInputError, NotFoundError
from catalens.ranking import fused_score
from catalens.reranker import Reranker
from catalens.schema import Product, ProductImage

LOG = logging.getLogger(__name__)
# Says what to do, never where the index lives (that stays in the server log).
NOT_READY_MESSAGE = "no index is loaded yet: build one with `catalens index build --catalog FILE`"
# Filtered queries first fetch this many vectors per wanted product (times the snapshot's mean
# vectors per product), at least FILTERED_MIN_FETCH, and grow the fetch x4 while short.
FILTERED_FETCH_FACTOR = 2
FILTERED_MIN_FETCH = 32
ALLOWED_CACHE_SIZE = 64  # filters whose allowed vector ids a snapshot keeps (at most 8 B per vector each)


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
    vector_id: int = -1  # the product's best-matching vector (its image, or its text fallback)
    first_stage_score: float | None = None
    rerank_score: float | None = None
    caption: str | None = None  # generated at index time, when the build stored captions


@dataclass
class SearchOutcome:
    hits: list[Hit]
    index_version: str
    timings: dict[str, float] = field(default_factory=dict)
    reranked: bool = False


@dataclass
class Snapshot:
    """One loaded index version: never mutated, replaced whole on a swap."""

    manifest: artifacts.Manifest
    images: artifacts.FaissIndex
    texts: artifacts.FaissIndex
    owner: dict[int, tuple[int, int]]  # vector id -> (product pk, image position or -1)
    vectors_of: dict[int, list[int]] = field(default_factory=dict)  # product pk -> vector ids
    rerank: artifacts.RerankFeatures | None = None  # stored second-stage image features
    has_captions: bool = False  # decided once per version, so searches skip the lookup otherwise
    # Allowed vector ids per filter, for this version only: shoppers repeat filters (category pages),
    # and reading 50k ids from SQL was most of a broad filtered query. Rows whose fields changed
    # since are still checked against the filters when results are resolved.
    allowed_cache: LRUCache[Filters, np.ndarray] = field(
        default_factory=lambda: LRUCache(maxsize=ALLOWED_CACHE_SIZE), repr=False, compare=False)
    allowed_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def version_id(self) -> str:
        return self.manifest.version_id

    @functools.cached_property
    def vector_table(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(vector ids sorted, their product pks, 1 + the largest pk): filters map products to vectors."""
        vids = np.fromiter(self.owner, np.int64, len(self.owner))
        owners = np.fromiter((pk for pk, _ in self.owner.values()), np.int64, len(self.owner))
        order = np.argsort(vids)
        return vids[order], owners[order], int(owners.max(initial=0)) + 1


def load_snapshot(settings: Settings, sessions: sessionmaker[Session], encoder: ClipEncoder,
                  reranker_id: str | None = None) -> Snapshot:
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
    rerank = artifacts.load_rerank_features(path, manifest)
    if rerank is not None and manifest.reranker != reranker_id:
        # Features of another reranker would be read as garbage: decode candidates instead.
        LOG.warning("index version %s stores features of reranker %s, not of %s; reranking decodes images",
                    manifest.version_id, manifest.reranker, reranker_id)
        rerank = None
    with sessions() as session:
        has_captions = session.scalar(select(ProductImage.id).where(ProductImage.caption.is_not(None)).limit(1))
    snap = Snapshot(manifest, images, texts, owner, vectors_of, rerank, has_captions is not None)
    _ = snap.vector_table  # built here, off the request path, not by the first filtered query
    return snap


class Searcher:
    """Answers text, image and similar-product queries against the current snapshot."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], encoder: ClipEncoder,
                 *, observe: Callable[[str, float], None] | None = None, reranker: Reranker | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.encoder = encoder
        self.reranker = reranker
        self._rerank_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rerank")
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
            # The index folder stays in the log: a public 503 must not reveal server paths.
            LOG.debug("no index loaded from %s", self.settings.index_dir)
            raise IndexNotReadyError(NOT_READY_MESSAGE)
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
        snap = load_snapshot(self.settings, self.sessions, self.encoder,
                             self.reranker.reranker_id if self.reranker else None)
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

    def search_text(self, query: str, k: int, filters: Filters, *, rerank: bool = False,
                    rerank_top_n: int | None = None) -> SearchOutcome:
        """Text-to-image search; with rerank, the reranker reorders the first-stage top_n."""
        snap = self.snapshot
        t0 = time.perf_counter()
        vec = self.encode_text(query)
        if not rerank:
            return self._search(snap, vec, k, filters, encode_s=time.perf_counter() - t0)
        reranker = self.reranker
        if reranker is None:
            raise InvalidInputError("reranking is off on this server (CATALENS_RERANKER=none)")
        top_n = max(k, rerank_top_n or self.settings.rerank_top_n)
        outcome = self._search(snap, vec, top_n, filters, encode_s=time.perf_counter() - t0)
        return self._rerank(reranker, snap, query, outcome, k)

    def _rerank(self, reranker: Reranker, snap: Snapshot, query: str, outcome: SearchOutcome, k: int) -> SearchOutcome:
        """Reorder by the reranker within the time budget; past it, the first-stage order, unreranked."""
        t0 = time.perf_counter()
        for hit in outcome.hits:
            hit.first_stage_score = hit.score
        budget = self.settings.rerank_budget_ms / 1000
        future = self._rerank_pool.submit(self._rerank_scores, reranker, snap, query, outcome.hits)
        try:
            scores = future.result(timeout=budget)
        except FutureTimeout:
            future.cancel()
            LOG.warning("reranking took over its %.0f ms budget; first-stage order returned", budget * 1000)
            scores = None
        except Exception:  # a failing second stage must never fail the search
            LOG.exception("reranker failed; first-stage order returned")
            scores = None
        outcome.timings["rerank"] = time.perf_counter() - t0
        self.observe("rerank", outcome.timings["rerank"])
        if scores is None:
            outcome.hits = outcome.hits[:k]
            return outcome
        w = self.settings.rerank_weight
        for hit, score in zip(outcome.hits, scores):
            hit.rerank_score = None if score is None else float(score)
            if score is not None:
                hit.score = fused_score(float(score), hit.score, w)
        # Products with no image features (text-only) keep their place after the judged ones.
        outcome.hits.sort(key=lambda h: (h.rerank_score is None, -h.score))
        outcome.hits = outcome.hits[:k]
        outcome.reranked = True
        return outcome

    def _rerank_scores(self, reranker: Reranker, snap: Snapshot, query: str, hits: list[Hit]) -> list[float | None]:
        """One batched reranker pass over the candidates' stored features."""
        vids = np.array([h.vector_id for h in hits], np.int64)
        if snap.rerank is None:
            features, found = self._features_from_images(reranker, hits)
        else:
            found, features = snap.rerank.lookup(vids)
        scores = reranker.score(query, np.asarray(features)) if len(features) else np.zeros(0)
        out: list[float | None] = [None] * len(hits)
        for slot, score in zip(np.flatnonzero(found), scores):
            out[int(slot)] = float(score)
        return out

    def _features_from_images(self, reranker: Reranker, hits: list[Hit]) -> tuple[np.ndarray, np.ndarray]:
        """The slow path for versions built without stored features: decode the candidates' images."""
        import torch

        from catalens.images import decode_image, read_stored_image

        with self.sessions() as session:
            sources = {row.id: row.source for row in session.scalars(
                select(ProductImage).where(ProductImage.id.in_([h.vector_id for h in hits]),
                                           ProductImage.status == "ok"))}
        found = np.zeros(len(hits), bool)
        pixels = []
        for i, hit in enumerate(hits):
            if hit.vector_id not in sources:
                continue
            try:
                data = read_stored_image(sources[hit.vector_id], self.settings,
                                         images_root=self.snapshot.manifest.image_folder())
                pixels.append(reranker.preprocess(decode_image(data, max_pixels=self.settings.max_image_pixels,
                                                               max_aspect=self.settings.max_aspect_ratio)))
                found[i] = True
            except CatalensError:
                continue
        if not pixels:
            return np.zeros((0,)), found
        return reranker.image_features(torch.stack(pixels)), found

    def search_image(self, image: Any, k: int, filters: Filters, *, rerank: bool = False,
                     rerank_top_n: int | None = None) -> SearchOutcome:
        """Image-to-image search; with rerank, the top_n are rescored with the mirrored query too."""
        snap = self.snapshot
        t0 = time.perf_counter()
        if not rerank:
            vec = self.encoder.encode_images([image])[0]
            return self._search(snap, vec, k, filters, encode_s=time.perf_counter() - t0)
        from PIL import ImageOps

        # Second stage for image queries (measured in the README): the query and its mirror
        # image, averaged, against every view of each first-stage candidate. A shopper's
        # photo is as often mirrored as not; the pooled vector of one render is not.
        both = self.encoder.encode_images([image, ImageOps.mirror(image)])
        top_n = max(k, rerank_top_n or self.settings.rerank_top_n)
        outcome = self._search(snap, both[0], top_n, filters, encode_s=time.perf_counter() - t0)
        t1 = time.perf_counter()
        query = both.mean(axis=0)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        for hit in outcome.hits:
            views = snap.vectors_of.get(hit.product.id, [hit.vector_id])
            hit.first_stage_score = hit.score
            hit.rerank_score = hit.score = float((snap.images.reconstruct(np.array(views, np.int64)) @ query).max())
        outcome.hits.sort(key=lambda h: -h.score)
        outcome.hits = outcome.hits[:k]
        outcome.reranked = True
        outcome.timings["rerank"] = time.perf_counter() - t1
        self.observe("rerank", outcome.timings["rerank"])
        return outcome

    def similar(self, product_id: str, k: int, filters: Filters, *, same_category: bool = True) -> SearchOutcome:
        """Products like this one (by the mean of its image vectors), itself excluded.

        By default only its own category: a shopper asking for more like a mug wants mugs,
        while a CLIP space ranks a mug of the same colour next to a t-shirt of that colour.
        An explicit category filter wins.
        """
        snap = self.snapshot
        with self.sessions() as session:
            product = session.scalar(select(Product).where(Product.product_id == product_id,
                                                           Product.deleted.is_(False)))
            if product is None:
                raise NotFoundError(f"product {product_id!r} not found")
        if same_category and product.category and not filters.category:
            filters = replace(filters, category=(product.category,))
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
        want = k + (exclude is not None)
        if filters.active:
            # The filter runs inside FAISS: the allowed vector ids (from SQL) restrict the
            # search itself, which returns exactly min(fetch, allowed) vectors on any index
            # type. Products own several vectors, so the fetch grows until `want` products
            # came back or every allowed vector did: k products whenever k pass the filter.
            t0 = time.perf_counter()
            allowed = self._allowed_vector_ids(snap, filters)
            timings["metadata"] = time.perf_counter() - t0
            per_product = len(snap.owner) / max(1, len(snap.vectors_of))
            fetch = min(len(allowed), max(FILTERED_MIN_FETCH, math.ceil(FILTERED_FETCH_FACTOR * want * per_product)))
            hits: list[Hit] = []
            while fetch > 0:
                t0 = time.perf_counter()
                scores, ids = snap.images.search_filtered(query, fetch, allowed)
                timings["ann"] = timings.get("ann", 0.0) + time.perf_counter() - t0
                best = self._best_per_product(snap, scores[0], ids[0])
                # Resolve only the head of the ranking: the tail is read only if rows vanished
                # or stopped matching since the allowed set was read.
                head = dict(itertools.islice(best.items(), 2 * want + 8))
                hits = self._resolve(head, filters, want, timings, with_captions=snap.has_captions)
                if len(hits) < want and len(head) < len(best):
                    hits = self._resolve(best, filters, want, timings, with_captions=snap.has_captions)
                if len(hits) >= want or fetch >= len(allowed):
                    break
                fetch = min(len(allowed), fetch * 4)
        else:
            fetch = max(want * 4, 32)
            while True:
                t0 = time.perf_counter()
                scores, ids = snap.images.search(query, fetch)
                timings["ann"] = timings.get("ann", 0.0) + time.perf_counter() - t0
                best = self._best_per_product(snap, scores[0], ids[0])
                hits = self._resolve(best, filters, want, timings, with_captions=snap.has_captions)
                if len(hits) >= want or fetch >= snap.images.ntotal:
                    break
                fetch *= 4
        hits = [h for h in hits if h.product.id != exclude][:k]
        for stage, seconds in timings.items():
            self.observe(stage, seconds)
        return SearchOutcome(hits, snap.version_id, timings)

    def _allowed_vector_ids(self, snap: Snapshot, filters: Filters) -> np.ndarray:
        """Ids (int64, sorted) of the snapshot's vectors whose products pass the filters.

        The products come from SQL (Filters.clauses() over Product), once per filter and version
        (Snapshot.allowed_cache); they map to vector ids through the snapshot's vector table.
        """
        with snap.allowed_lock:
            cached = snap.allowed_cache.get(filters)
        if cached is not None:
            return cached
        vids, owners, n_pks = snap.vector_table
        with self.sessions() as session:
            pks = np.fromiter(session.scalars(select(Product.id).where(*filters.clauses())), np.int64)
        passes = np.zeros(n_pks, bool)
        passes[pks[(pks >= 0) & (pks < n_pks)]] = True  # newer products have no vectors in this snapshot
        allowed = vids[passes[owners]]
        allowed.flags.writeable = False  # shared by concurrent queries
        with snap.allowed_lock:
            snap.allowed_cache[filters] = allowed
        return allowed

    @staticmethod
    def _best_per_product(snap: Snapshot, scores: np.ndarray, ids: np.ndarray) -> dict[int, tuple[float, int, int]]:
        """Each product's best vector (score, image position or -1, vector id), best product first."""
        best: dict[int, tuple[float, int, int]] = {}
        for score, vid in zip(scores.tolist(), ids.tolist()):
            if vid < 0 or vid not in snap.owner:
                continue
            pk, pos = snap.owner[vid]
            if pk not in best:  # results arrive best-first
                best[pk] = (score, pos, vid)
        return best

    def _resolve(self, best: dict[int, tuple[float, int, int]], filters: Filters, want: int,
                 timings: dict[str, float], *, with_captions: bool = False) -> list[Hit]:
        """Fetch live products that pass the filters; deleted ids are dropped here."""
        if not best:
            return []
        t0 = time.perf_counter()
        with self.sessions() as session:
            products = {p.id: p for p in session.scalars(
                select(Product).where(Product.id.in_(list(best)), *filters.clauses()))}
            captions = dict(session.execute(select(ProductImage.id, ProductImage.caption).where(
                ProductImage.id.in_([vid for _, _, vid in best.values()]), ProductImage.caption.is_not(None))).all()) \
                if with_captions else {}
        timings["metadata"] = timings.get("metadata", 0.0) + time.perf_counter() - t0
        hits = [Hit(products[pk], score, pos if pos >= 0 else None, vid, caption=captions.get(vid))
                for pk, (score, pos, vid) in best.items() if pk in products]
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
