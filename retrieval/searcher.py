"""Query path: encoder -> FAISS (filters inside the search) + keyword BM25, fused -> records.

A request reads one View: an immutable snapshot (an index version: vectors and products) and
the live layer of changes over it. Nothing on the request path reads the metadata tables.
"""

from __future__ import annotations

import functools
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
from sqlalchemy.orm import Session, sessionmaker

from catalens import artifacts, changes, keywords, milvus_store
from catalens.calibration import CALIBRATION, Calibration, load_calibration, logit
from catalens.changes import LiveVectors
from catalens.config import Settings
from catalens.encoder import QueryEncoder
from catalens.errors import CatalensError, IndexArtifactError, IndexNotReadyError, InvalidInputError, NotFoundError
from catalens.facets import FacetPrototypes, Guess, vote
from catalens.filters import Filters
from catalens.keywords import KEYWORDS, KeywordIndex, Phrase
from catalens.lexicon import LEXICON, FacetCodes, Lexicon, load_lexicon
from catalens.product_table import PRODUCTS, ProductTable
from catalens.ranking import fused_score, reciprocal_rank_fusion, relative_score_fusion
from catalens.records import ProductRecord
from catalens.reranker import Reranker
from retrieval import mix
from retrieval.live import LiveLayer

LOG = logging.getLogger(__name__)
# Says what to do, never where the index lives (that stays in the server log).
NOT_READY_MESSAGE = "no index is loaded yet: build one with `catalens index build --catalog FILE`"
# Filtered queries first fetch this many vectors per wanted product (times the snapshot's mean
# vectors per product), at least FILTERED_MIN_FETCH, and grow the fetch x4 while short.
FILTERED_FETCH_FACTOR = 2
FILTERED_MIN_FETCH = 32
ALLOWED_CACHE_SIZE = 64  # filters whose allowed vectors a snapshot keeps (1 B per vector each)
FACETS_FIELDS = ("category", "brand", "availability")
MIX_DEPTH = 100  # candidates each positive part of a mixed query brings
NEIGHBOURS = 10  # nearest products whose facet values describe a mix's photo
# Under reranking, containing every query word adds this many logits (times full_match_weight).
FULL_MATCH_LOGIT = 2.0

__all__ = ["Filters", "Hit", "MixPart", "SearchOutcome", "Searcher", "Snapshot", "View", "load_snapshot"]


@dataclass
class Hit:
    product: ProductRecord
    score: float
    image_position: int | None
    vector_id: int = -1  # the product's best-matching vector (its image, or its text fallback)
    first_stage_score: float | None = None
    rerank_score: float | None = None
    similarity: float | None = None  # the query's cosine with the product's best vector
    exact_match: bool = False  # the query names this product: its SKU, brand or a model code
    full_match: bool = False  # its text contains every word of the query
    keyword_score: float | None = None  # its BM25 score, when the keyword ranking found it
    match_probability: float | None = None  # calibrated P(match), when the version has a calibration
    mismatch: dict[str, float] = field(default_factory=dict)  # per column: how far from the value the query names

    @property
    def caption(self) -> str | None:
        """Generated at index time, when the build stored captions."""
        img = self.product.image_at(self.image_position)
        return img.caption if img else None


@dataclass(frozen=True)
class TextCandidates:
    """A text query's candidates, (score, pk, row or -1, image position, vector id), best first after
    sorting (in order already when `ordered`); the pks the query names, those containing every query
    word, the vector ranking's cosines, and each candidate's facet mismatch."""

    best: list[tuple[float, int, int, int, int]]
    named: set[int]
    full: set[int]
    cosines: dict[int, float]
    mismatch: dict[int, dict[str, float]] = field(default_factory=dict)
    ordered: bool = False


@dataclass(frozen=True)
class MixPart:
    """One weighted part of a mixed query: a text, a decoded image or an existing product's id."""

    text: str | None = None
    image: Any = None
    product_id: str | None = None
    weight: float = 1.0


@dataclass
class Description:
    """What describe says of a photo: each facet's guess, a caption and title, the closest products."""

    attributes: dict[str, Guess]
    caption: str | None
    title: str
    similar: SearchOutcome


@dataclass
class SearchOutcome:
    hits: list[Hit]
    index_version: str
    timings: dict[str, float] = field(default_factory=dict)
    reranked: bool = False
    no_good_match: bool = False  # no hit's match probability reaches the threshold
    mode: str = "vector"


@dataclass
class Snapshot:
    """One loaded index version: never mutated, replaced whole on a swap."""

    manifest: artifacts.Manifest
    images: artifacts.FaissIndex
    products: ProductTable
    rerank: artifacts.RerankFeatures | None = None  # stored second-stage image features
    keywords: KeywordIndex | None = None
    calibration: Calibration | None = None
    texts: artifacts.FaissIndex | None = None  # product text vectors (facet prototypes for describe)
    lexicon: Lexicon | None = None  # phrases naming facet values, mined from the catalog
    facet_codes: FacetCodes | None = None  # each row's facet values as codes (for the lexicon's columns)
    facets_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _prototypes: list[FacetPrototypes] = field(default_factory=list, repr=False, compare=False)

    def prototypes(self) -> FacetPrototypes:
        """The version's facet prototypes, built at the first describe (seconds at 100,000 products)."""
        with self.facets_lock:
            if not self._prototypes:
                texts = self.texts
                assert texts is not None
                self._prototypes.append(FacetPrototypes.build(self.products.all_records(), texts.reconstruct))
            return self._prototypes[0]
    # Vectors allowed per filter (a mask over vector_table), for this version only: shoppers
    # repeat filters (category pages).
    allowed_cache: LRUCache[Filters, np.ndarray] = field(
        default_factory=lambda: LRUCache(maxsize=ALLOWED_CACHE_SIZE), repr=False, compare=False)
    allowed_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def version_id(self) -> str:
        return self.manifest.version_id

    @functools.cached_property
    def vector_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vector ids sorted, the product row of each, its image position or -1)."""
        table = self.products
        order = np.argsort(table.vector_ids, kind="stable")
        return table.vector_ids[order], table.vector_rows[order], table.vector_positions[order]

    @functools.cached_property
    def row_offsets(self) -> np.ndarray:
        """Where each product row's vectors start in the products file's flattened vector list."""
        return np.searchsorted(self.products.vector_rows, np.arange(len(self.products) + 1))

    def owners(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(product row, image position) of each vector id; row -1 for an id not in this version."""
        vids, rows, positions = self.vector_table
        at = np.minimum(np.searchsorted(vids, ids), max(len(vids) - 1, 0))
        ok = (vids[at] == ids) if len(vids) else np.zeros(len(ids), bool)
        return np.where(ok, rows[at], -1), np.where(ok, positions[at], -1)

    def vector_ids_of_row(self, row: int) -> np.ndarray:
        start, end = self.row_offsets[row], self.row_offsets[row + 1]
        return self.products.vector_ids[start:end]

    def product_vectors(self, pk: int) -> LiveVectors | None:
        """A product's vectors as this version holds them (copied into the live layer by a patch)."""
        row = self.products.row(pk)
        if row < 0:
            return None
        start, end = self.row_offsets[row], self.row_offsets[row + 1]
        ids = self.products.vector_ids[start:end]
        rerank = self.rerank.lookup(ids) if self.rerank is not None else None
        return LiveVectors(ids, self.products.vector_positions[start:end], self.images.reconstruct(ids),
                           ids[rerank[0]] if rerank is not None else None,
                           np.asarray(rerank[1]) if rerank is not None else None)


@dataclass(frozen=True)
class View:
    """What one request reads: a snapshot and the live changes over it."""

    snap: Snapshot
    live: LiveLayer

    @property
    def version_id(self) -> str:
        return self.snap.version_id


def load_snapshot(settings: Settings, encoder: QueryEncoder, reranker_id: str | None = None) -> tuple[Snapshot, int]:
    """Load and verify the active version, and the change seq its live layer starts after;
    refuse one built with another model."""
    state = artifacts.read_active_state(settings.index_dir)
    if state is None:
        raise IndexNotReadyError(f"no index in {settings.index_dir}: build one with "
                                 "`catalens index build --catalog FILE`")
    path = artifacts.versions_dir(settings.index_dir) / state.version_id
    manifest, images, texts = artifacts.load_version(path)
    if manifest.model_id != encoder.model_id or manifest.dim != encoder.dim:
        raise IndexArtifactError(
            f"index version {manifest.version_id} was built with model {manifest.model_id!r} "
            f"(dim {manifest.dim}) but the service loaded {encoder.model_id!r} (dim {encoder.dim}); "
            "serve with the same --model/--pretrained or rebuild the index")
    products = ProductTable.load(path / PRODUCTS)
    rerank = artifacts.load_rerank_features(path, manifest)
    if rerank is not None and manifest.reranker != reranker_id:
        # Features of another reranker would be read as garbage: decode candidates instead.
        # (No reranker on this server, e.g. a CLI search without --rerank: nothing to say.)
        if reranker_id is not None:
            LOG.warning("index version %s stores features of reranker %s, not of %s; reranking decodes images",
                        manifest.version_id, manifest.reranker, reranker_id)
        rerank = None
    # A version from before keyword indexes gets one built in memory (seconds at 100,000 products).
    kw = KeywordIndex(path / KEYWORDS) if KEYWORDS in manifest.files else KeywordIndex(None, products.all_records())
    calibration = load_calibration(path / CALIBRATION) if CALIBRATION in manifest.files else None
    lexicon = load_lexicon(path / LEXICON) if LEXICON in manifest.files else None
    codes = FacetCodes.build(products.column_values([c for cols in lexicon.domains.values() for c in cols])) \
        if lexicon is not None else None
    snap = Snapshot(manifest, images, products, rerank, kw, calibration, texts, lexicon, codes)
    _ = snap.vector_table, snap.row_offsets  # built here, off the request path
    return snap, state.since_seq


def suggested_title(attributes: dict[str, Guess], caption: str | None) -> str:
    """The caption, capitalised; without one, the guessed values with the category last."""
    text = caption or " ".join([*(g.value for c, g in attributes.items() if c != "category" and g.value),
                                *([attributes["category"].value] if "category" in attributes
                                  and attributes["category"].value else [])])
    return text[:1].upper() + text[1:]


_THREAD_STATE = threading.local()


def _one_faiss_thread() -> None:
    """One OpenMP thread for FAISS in this request thread: a query is one vector, concurrency comes
    from concurrent requests. OpenMP's thread count is per thread, so the server's worker threads
    otherwise ran every search on all cores (the live layer's scan took 10x longer under load)."""
    if not getattr(_THREAD_STATE, "faiss_single", False):
        import faiss

        faiss.omp_set_num_threads(1)
        _THREAD_STATE.faiss_single = True


class Searcher:
    """Answers text, image and similar-product queries against the current view."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], encoder: QueryEncoder,
                 *, observe: Callable[[str, float], None] | None = None, reranker: Reranker | None = None) -> None:
        self.settings = settings
        self.sessions = sessions  # the change log only; never read per request
        self.encoder = encoder
        self.reranker = reranker
        self.captioner: Any = None  # catalens.captioner.Captioner, for describe (torch: loaded with the reranker)
        # A reranker on its way (loaded after the server is ready): rerank requests get the
        # first-stage order meanwhile, as past the time budget, instead of a 422.
        self.reranker_pending = False
        self._rerank_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rerank")
        self.observe = observe or (lambda stage, seconds: None)
        self._view: View | None = None
        self._since_seq = 0
        self._swap_lock = threading.Lock()
        self._text_cache: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(1, settings.text_cache_size))
        self._cache_lock = threading.Lock()
        self._facets: tuple[int, str, dict[str, Any]] | None = None
        # Milvus holds the vectors (snapshot and live changes) when configured; else the view's FAISS.
        self.store = milvus_store.MilvusStore(settings.vector_store, timeout_s=settings.engine_timeout_s) \
            if settings.milvus else None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def view(self) -> View:
        view = self._view
        if view is None:
            # The index folder stays in the log: a public 503 must not reveal server paths.
            LOG.debug("no index loaded from %s", self.settings.index_dir)
            raise IndexNotReadyError(NOT_READY_MESSAGE)
        return view

    @property
    def snapshot(self) -> Snapshot:
        return self.view.snap

    @property
    def current(self) -> Snapshot | None:
        """The snapshot now being served, or None before the first index is loaded."""
        view = self._view
        return view.snap if view else None

    @property
    def current_version(self) -> str | None:
        view = self._view
        return view.version_id if view else None

    @property
    def active_state(self) -> tuple[str, int] | None:
        """(version, since_seq) now served: compared with the ACTIVE pointer to notice a swap or a rollback."""
        view = self._view
        return (view.version_id, self._since_seq) if view else None

    @property
    def live_seq(self) -> int:
        view = self._view
        return view.live.seq if view else 0

    def reload(self) -> str:
        """Load the active version and its live changes off the request path, then swap the view.

        In-flight requests keep the view they started with; Python frees the old one when
        the last of them drops its reference.
        """
        snap, since_seq = load_snapshot(self.settings, self.encoder,
                                        self.reranker.reranker_id if self.reranker else None)
        if self.store is not None:  # Milvus first: what the live layer shows, its collection holds
            milvus_store.sync(self.store, self.sessions, snap.version_id)
        with self.sessions() as session:
            live = LiveLayer(since_seq).apply(changes.since(session, since_seq), snap)
        with self._swap_lock:
            self._view, self._since_seq = View(snap, live), since_seq
        LOG.info("serving index version %s (%d vectors, %d live changes)", snap.version_id, snap.images.ntotal,
                 live.changed)
        return snap.version_id

    def attach_reranker(self, reranker: Reranker) -> None:
        """Start reranking with a reranker loaded after the server became ready; the version is
        loaded again so its stored features (kept only for the reranker that wrote them) are used."""
        self.reranker = reranker
        self.reranker_pending = False
        if self._view is not None:
            self.reload()

    def catch_up(self) -> int:
        """Serve what is active now: a new version or a rollback is loaded, else new live changes
        applied. Returns the last change applied."""
        state = artifacts.read_active_state(self.settings.index_dir)
        if state is not None and (state.version_id, state.since_seq) != self.active_state:
            self.reload()
            return self.live_seq
        return self.refresh_live()

    def refresh_live(self) -> int:
        """Apply the changes logged since the live layer's last one; returns the last applied seq.

        Costs what the new changes and the layer hold, never the catalog.
        """
        view = self._view
        if view is None:
            return 0
        if self.store is not None:
            milvus_store.sync(self.store, self.sessions, view.version_id)
        with self.sessions() as session:
            new = changes.since(session, view.live.seq)
        if not new:
            return view.live.seq
        live = view.live.apply(new, view.snap)
        with self._swap_lock:
            if self._view is view:  # a reload meanwhile wins
                self._view = View(view.snap, live)
        return live.seq

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
                    rerank_top_n: int | None = None, mode: str | None = None,
                    min_score: float | None = None) -> SearchOutcome:
        """Text search: the keyword (BM25) and vector rankings fused (mode hybrid), or one of them;
        with rerank, the reranker reorders the top_n. An exact SKU comes first.

        Hits carry calibrated match probabilities when the version has a calibration; those
        under min_score are dropped, and no_good_match says that none reached the threshold.
        """
        view = self.view
        mode = mode or self.settings.search_mode
        phrases = keywords.parse_query(query) if mode != "vector" else []
        reranker = self.reranker
        if rerank and reranker is None and not self.reranker_pending:
            raise InvalidInputError("reranking is off on this server (CATALENS_RERANKER=none)")
        want = max(k, rerank_top_n or self.settings.rerank_top_n) if rerank else k
        t0 = time.perf_counter()
        vec = self.encode_text(query)  # keyword mode too: the match probability reads the cosine
        timings = {"encode": time.perf_counter() - t0}
        found = self._text_best(view, query, None if mode == "keyword" else vec, phrases, want, filters, mode,
                                 timings)
        outcome = self._finish(view, found.best, want, None, timings, ordered=found.ordered)
        outcome.mode = mode
        for hit in outcome.hits:
            hit.mismatch = found.mismatch.get(hit.product.pk, {})
            hit.similarity = found.cosines.get(hit.product.pk)
            if hit.similarity is None:  # found by keywords only: its best vector against the query
                vectors = self._vectors_of(view, hit.product)
                hit.similarity = float((vectors @ vec).max()) if len(vectors) else 0.0
            hit.exact_match = hit.product.pk in found.named
            hit.full_match = hit.product.pk in found.full
        if rerank and reranker is not None:
            outcome = self._rerank(reranker, view, query, outcome, k)
        else:
            if rerank:
                LOG.info("the reranker is still loading; first-stage order returned")
            outcome.hits = outcome.hits[:k]
        self._calibrate(view, outcome, min_score)
        return outcome

    def _text_best(self, view: View, query: str, vec: np.ndarray | None, phrases: list[Phrase], want: int,
                   filters: Filters, mode: str, timings: dict[str, float]) -> TextCandidates:
        """The fused (or single-ranking) candidates of a text query, with what the keywords say of them.

        A product the query names (its SKU, its brand, a model code in its text) comes first; in
        hybrid, one containing every word, some of which name it ("Marlow bucket hat"), gets a
        vote as strong as a ranking's first place: fusion alone ranks such a hit (first by
        keywords, anywhere by looks) with the vector ranking's first. Words that only describe a
        look get no vote: there the vector ranking knows better which product has them.

        When the query names facet values (the version's lexicon reads "stripy navy tee" as a
        striped navy t-shirt), hybrid and vector order the candidates by how far each is from
        them, then by score: a patterned navy t-shirt before a solid navy mug, whatever CLIP says.
        """
        lexicon = view.snap.lexicon
        facets = lexicon.named(query) if lexicon is not None else {}
        reorder = bool(facets) and mode != "keyword"
        depth = max(want, self.settings.fusion_depth) if mode == "hybrid" or reorder else want
        vector = self._vector_best(view, vec, depth, filters, timings) if vec is not None else []
        vector = sorted(vector, key=lambda b: -b[0])[:depth]
        kw = self._keyword_best(view, phrases, depth, filters, timings) if phrases else []
        by_pk = {b[1]: b for b in kw} | {b[1]: b for b in vector}  # the vector side knows the best image
        full, named = self._keyword_flags(view, phrases, list(by_pk.values())) if phrases else (set(), set())
        if mode == "hybrid":
            weights = (self.settings.vector_weight, self.settings.keyword_weight)
            if self.settings.fusion == "rrf":
                fused = reciprocal_rank_fusion([[b[1] for b in vector], [b[1] for b in kw]], weights,
                                               self.settings.rrf_k)
                vote = self.settings.full_match_weight / (self.settings.rrf_k + 1)
            else:
                fused = relative_score_fusion([[(b[1], b[0]) for b in vector], [(b[1], b[0]) for b in kw]], weights)
                vote = self.settings.full_match_weight
            best = [(score + (vote if pk in full else 0.0), *by_pk[pk][1:]) for pk, score in fused.items()]
        else:
            best = vector or kw
        exact = self._exact_sku(view, query, filters) if phrases else []
        named |= {b[1] for b in exact}
        if named:
            top = max((b[0] for b in best), default=0.0) + 1.0
            pinned = {b[1]: (top + b[0], *b[1:]) for b in best if b[1] in named}
            pinned |= {b[1]: (top + 1.0, *b[1:]) for b in exact}  # the SKU itself before its brand's others
            best = [b for b in best if b[1] not in named] + list(pinned.values())
        cosines = {b[1]: b[0] for b in vector}
        if not facets or not best:
            return TextCandidates(best, named, full, cosines)
        assert lexicon is not None
        apart = self._mismatch(view, lexicon, facets, best)
        scores = np.array([-b[0] for b in best])
        if reorder:
            far = sum((lexicon.weight(c, self.settings.facet_weights) * a for c, a in apart.items()),
                      np.zeros(len(best)))
            order = np.lexsort((scores, far, np.array([b[1] not in named for b in best])))
        else:
            order = np.argsort(scores, kind="stable")
        best = [best[i] for i in order]
        # Per column, only for the candidates that can be returned (building them all cost as much as the sort).
        mismatch = {best[j][1]: {c: float(a[i]) for c, a in apart.items()} for j, i in enumerate(order[:want])}
        return TextCandidates(best, named, full, cosines, mismatch, ordered=True)

    @staticmethod
    def _mismatch(view: View, lexicon: Lexicon, facets: dict[str, list[str]],
                  best: list[tuple[float, int, int, int, int]]) -> dict[str, np.ndarray]:
        """Per column, how far each candidate is from the facet value the query names there: the snapshot's
        rows from the version's facet codes, live products from their records."""
        codes = view.snap.facet_codes
        assert codes is not None  # loaded with the lexicon
        rows = np.array([b[2] for b in best], np.int64)
        apart = lexicon.mismatch_rows(codes, np.maximum(rows, 0), facets)
        for i in np.flatnonzero(rows < 0):  # live products: their records are in memory
            for column, value in lexicon.mismatch(view.live.records[best[i][1]], facets).items():
                apart[column][i] = value
        return apart

    def _keyword_flags(self, view: View, phrases: list[Phrase],
                       candidates: list[tuple[float, int, int, int, int]]) -> tuple[set[int], set[int]]:
        """(pks of the candidates containing every phrase, one of which names them (a brand, a
        code), and pks of those the query names whole). Nothing to do, and no cost, for a query
        none of whose phrases could name a product (most descriptive queries)."""
        snap = view.snap
        assert snap.keywords is not None
        if not any(snap.keywords.can_name(p) for p in phrases):
            return set(), set()
        rows = [b[2] for b in candidates if b[2] >= 0]
        full, named = keywords.flags(phrases, {r.pk: keywords.document_terms(r) for r in snap.products.records(rows)})
        live_full, live_named = view.live.keyword_flags(phrases, [b[1] for b in candidates if b[2] < 0])
        return full | live_full, named | live_named

    def _keyword_best(self, view: View, phrases: list[Phrase], want: int, filters: Filters,
                      timings: dict[str, float]) -> list[tuple[float, int, int, int, int]]:
        """(BM25, pk, row or -1, image position, vector id) of the best `want` visible products
        passing the filters: the snapshot's FTS5 index and the live layer's records, on one scale."""
        t0 = time.perf_counter()
        snap, live = view.snap, view.live
        assert snap.keywords is not None
        phrases = snap.keywords.informative(phrases)
        mask = snap.products.mask(filters) if filters.active else None
        hidden = live.hidden_rows
        # A filter drops rows after the search: ask for as many as should leave `want` passing,
        # so that one FTS5 query is usually enough (each one scores every matching row).
        limit = want if mask is None else int(want / max(float(mask.mean()), 1e-3) * 1.5) + 10
        while True:  # filters and live changes drop rows after the search: fetch more while short
            found = snap.keywords.search(phrases, limit)
            rows = [(row, score) for row, score in found
                    if (mask is None or mask[row]) and (hidden is None or not hidden[row])]
            if len(rows) >= want or len(found) < limit:
                break
            limit *= 4
        best = [(score, int(snap.products.pks[row]), row, *self._first_vector(snap, row)) for row, score in rows]
        best += live.keyword_search(phrases, filters, want, snap.keywords)
        best.sort(key=lambda b: -b[0])
        timings["keyword"] = time.perf_counter() - t0
        return best[:want]

    @staticmethod
    def _first_vector(snap: Snapshot, row: int) -> tuple[int, int]:
        start = snap.row_offsets[row]
        return int(snap.products.vector_positions[start]), int(snap.products.vector_ids[start])

    def _exact_sku(self, view: View, query: str, filters: Filters) -> list[tuple[float, int, int, int, int]]:
        """The visible products passing the filters whose SKU is exactly the query."""
        snap, live = view.snap, view.live
        assert snap.keywords is not None
        out = []
        for row in snap.keywords.sku_rows(query):
            if live.hidden_rows is not None and live.hidden_rows[row]:
                continue
            if filters.active and not filters.matches(snap.products.records([row])[0]):
                continue
            out.append((0.0, int(snap.products.pks[row]), row, *self._first_vector(snap, row)))
        pk = live.sku_match(query)
        if pk is not None and (not filters.active or filters.matches(live.records[pk])):
            out.append((0.0, pk, -1, *live.first_vector(pk)))
        return out

    def _calibrate(self, view: View, outcome: SearchOutcome, min_score: float | None) -> None:
        """Match probabilities from the version's calibration; min_score drops the hits below it."""
        calibration = view.snap.calibration
        if calibration is None:
            return
        for hit in outcome.hits:
            mismatch = sum(v for column, v in hit.mismatch.items() if column in calibration.columns)
            # Named by the query (its SKU, its model), or containing every word with one naming it
            # ("Kestrel table"): the catalog's own text says it is what was asked for.
            hit.match_probability = 1.0 if hit.exact_match or hit.full_match else calibration.probability(
                hit.similarity if hit.similarity is not None else hit.score, hit.rerank_score, mismatch)
        threshold = self.settings.match_threshold
        outcome.no_good_match = not any((h.match_probability or 0.0) >= threshold for h in outcome.hits)
        if min_score is not None:
            outcome.hits = [h for h in outcome.hits if (h.match_probability or 0.0) >= min_score]

    def _rerank(self, reranker: Reranker, view: View, query: str, outcome: SearchOutcome, k: int) -> SearchOutcome:
        """Reorder by the reranker within the time budget; past it, the first-stage order, unreranked."""
        t0 = time.perf_counter()
        for hit in outcome.hits:  # the CLIP cosine (in hybrid, the fused score is not one)
            hit.first_stage_score = hit.similarity if hit.similarity is not None else hit.score
        scores = self._judged(reranker, view, query, outcome.hits)
        outcome.timings["rerank"] = time.perf_counter() - t0
        self.observe("rerank", outcome.timings["rerank"])
        if scores is None:
            outcome.hits = outcome.hits[:k]
            return outcome
        w = self.settings.rerank_weight
        for hit, score in zip(outcome.hits, scores):
            hit.rerank_score = None if score is None else float(score)
            if score is not None:
                hit.score = fused_score(float(score), hit.first_stage_score or 0.0, w)
                if hit.full_match:  # the keyword evidence the reranker cannot read (brands, names)
                    hit.score += self.settings.full_match_weight * FULL_MATCH_LOGIT
        # Products with no image features (text-only) keep their place after the judged ones.
        # The facet order holds over the reranker's too: it reads looks, the lexicon reads the catalog.
        lexicon = view.snap.lexicon if outcome.mode != "keyword" else None
        weights = self.settings.facet_weights
        outcome.hits.sort(key=lambda h: (not h.exact_match,
                                         lexicon.distance(h.mismatch, weights) if lexicon is not None else 0.0,
                                         h.rerank_score is None, -h.score))
        outcome.hits = outcome.hits[:k]
        outcome.reranked = True
        return outcome

    def _judged(self, reranker: Reranker, view: View, query: str, hits: list[Hit]) -> list[float | None] | None:
        """The reranker's scores of the hits within the time budget; None past it or when it fails."""
        budget = self.settings.rerank_budget_ms / 1000
        future = self._rerank_pool.submit(self._rerank_scores, reranker, view, query, hits)
        try:
            return future.result(timeout=budget)
        except FutureTimeout:
            future.cancel()
            LOG.warning("reranking took over its %.0f ms budget; first-stage order returned", budget * 1000)
        except Exception:  # a failing second stage must never fail the search
            LOG.exception("reranker failed; first-stage order returned")
        return None

    def _rerank_scores(self, reranker: Reranker, view: View, query: str, hits: list[Hit]) -> list[float | None]:
        """One batched reranker pass over the candidates' stored features (the live layer's first)."""
        vids = np.array([h.vector_id for h in hits], np.int64)
        if view.snap.rerank is None:
            features, found = self._features_from_images(reranker, view, hits)
        else:
            snap_found, snap_feats = view.snap.rerank.lookup(vids)  # features of the found slots, in order
            live_found, live_feats = view.live.rerank_features([(h.product.pk, h.vector_id) for h in hits])
            snap_row = {slot: i for i, slot in enumerate(np.flatnonzero(snap_found).tolist())}
            found = np.zeros(len(hits), bool)
            rows: list[np.ndarray] = []
            for slot, hit in enumerate(hits):
                live_feat = live_feats[slot]
                if live_feat is not None:
                    rows.append(live_feat)
                elif slot in snap_row and not view.live.hides(hit.product.pk):
                    rows.append(snap_feats[snap_row[slot]])
                else:
                    continue
                found[slot] = True
            features = np.stack(rows) if rows else np.zeros((0,))
        scores = reranker.score(query, np.asarray(features)) if len(features) else np.zeros(0)
        out: list[float | None] = [None] * len(hits)
        for at, score in zip(np.flatnonzero(found).tolist(), scores):
            # A non-finite score (a reranker's numeric failure) would scramble the sort: unjudged instead.
            out[at] = float(score) if math.isfinite(float(score)) else None
        return out

    def _features_from_images(self, reranker: Reranker, view: View, hits: list[Hit]) -> tuple[np.ndarray, np.ndarray]:
        """The slow path for versions built without stored features: decode the candidates' images."""
        import torch

        from catalens.images import decode_image, read_stored_image

        found = np.zeros(len(hits), bool)
        pixels = []
        for i, hit in enumerate(hits):
            img = hit.product.image_at(hit.image_position)
            if img is None or img.status != "ok":
                continue
            try:
                data = read_stored_image(img.source, self.settings, images_root=view.snap.manifest.image_folder())
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
        view = self.view
        t0 = time.perf_counter()
        if not rerank:
            vec = self.encoder.encode_images([image])[0]
            return self._search(view, vec, k, filters, encode_s=time.perf_counter() - t0)
        from PIL import ImageOps

        # Second stage for image queries (measured in the README): the query and its mirror
        # image, averaged, against every view of each first-stage candidate. A shopper's
        # photo is as often mirrored as not; the pooled vector of one render is not.
        both = self.encoder.encode_images([image, ImageOps.mirror(image)])
        top_n = max(k, rerank_top_n or self.settings.rerank_top_n)
        outcome = self._search(view, both[0], top_n, filters, encode_s=time.perf_counter() - t0)
        t1 = time.perf_counter()
        query = both.mean(axis=0)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        for hit in outcome.hits:
            hit.first_stage_score = hit.score
            hit.rerank_score = hit.score = float((self._vectors_of(view, hit.product) @ query).max())
        outcome.hits.sort(key=lambda h: -h.score)
        outcome.hits = outcome.hits[:k]
        outcome.reranked = True
        outcome.timings["rerank"] = time.perf_counter() - t1
        self.observe("rerank", outcome.timings["rerank"])
        return outcome

    def describe(self, image: Any, k: int = 5) -> Description:
        """Each facet of the catalog guessed for the photo against its own values (zero-shot, any
        CLIP), a caption within the rerank time budget (without one past it), a title and the k
        most similar products."""
        view = self.view
        if view.snap.texts is None or not view.snap.texts.ntotal:
            raise InvalidInputError("this index has no product texts to describe a photo against")
        prototypes = view.snap.prototypes()
        if not prototypes.values:
            raise InvalidInputError("this catalog has no facet values to describe a photo against (a category "
                                    "or attribute columns with a few values, such as colour or pattern)")
        vec = self.encoder.encode_images([image])[0]
        attributes = prototypes.guess(vec)
        caption = self._caption(image, vec)
        similar = self._search(view, vec, k, Filters(), encode_s=0.0)
        for hit in similar.hits:
            hit.similarity = hit.score
        return Description(attributes, caption, suggested_title(attributes, caption), similar)

    def _caption(self, image: Any, vec: np.ndarray) -> str | None:
        """The captioner's (or a captioning reranker's) caption, or None past the time budget."""
        captioner, reranker = self.captioner, self.reranker
        if captioner is None and not (reranker is not None and getattr(reranker, "can_caption", False)):
            return None
        if captioner is not None:
            future = self._rerank_pool.submit(captioner.captions, vec[None, :])
        else:
            assert reranker is not None
            future = self._rerank_pool.submit(lambda: reranker.caption(reranker.preprocess(image).unsqueeze(0)))
        try:
            return str(future.result(timeout=self.settings.rerank_budget_ms / 1000)[0])
        except FutureTimeout:
            future.cancel()
            LOG.warning("captioning took over its %.0f ms budget; described without a caption",
                        self.settings.rerank_budget_ms)
        except Exception:  # a failing captioner must never fail the description
            LOG.exception("captioning failed; described without a caption")
        return None

    def similar(self, product_id: str, k: int, filters: Filters, *, same_category: bool = True) -> SearchOutcome:
        """Products like this one (by the mean of its image vectors), itself excluded.

        By default only its own category: a shopper asking for more like a mug wants mugs,
        while a CLIP space ranks a mug of the same colour next to a t-shirt of that colour.
        An explicit category filter wins.
        """
        view = self.view
        product = self._record(view, product_id)
        if same_category and product.category and not filters.category:
            filters = replace(filters, category=(product.category,))
        vectors = self._vectors_of(view, product)
        if not len(vectors):
            raise NotFoundError(f"product {product_id!r} has no vectors in index version {view.version_id}")
        vec = vectors.mean(axis=0)
        vec /= max(float(np.linalg.norm(vec)), 1e-12)
        return self._search(view, vec, k, filters, encode_s=0.0, exclude=product.pk)

    def search_mix(self, parts: list[MixPart], k: int, filters: Filters, *, rerank: bool = False) -> SearchOutcome:
        """One query from weighted parts (texts, images, products); negative weights push away.

        Words that name a facet value edit the photo (`retrieval/mix.py`). The candidates are each
        positive part's nearest products (and the rewritten caption's). Each part scores every
        candidate by its cosine, standardised over the candidates (an image part's cosines sit
        near 0.9, a word's near 0.3: summed raw, the image would decide alone); the weighted sum,
        plus the wanted facet values a candidate has, ranks them, and `rerank` has the reranker
        read the rewritten caption against the top. Products named by a part are left out (a
        shopper asking for a variation has the original).
        """
        if not parts:
            raise InvalidInputError("a mix needs at least one part (text, image or product_id)")
        if abs(sum(p.weight for p in parts)) < 1e-6:
            raise InvalidInputError("the weights of a mix sum to zero: give the parts that describe what you "
                                    "want a positive weight")
        if not any(p.weight > 0 for p in parts):
            raise InvalidInputError("a mix needs a part with a positive weight: what to look for")
        view = self.view
        t0 = time.perf_counter()
        vectors, named = self._mix_vectors(view, parts)
        # Only words beside a photo or product are an edit (the prototypes are built at the first one).
        edits = view.snap.texts is not None and any(p.text is not None and p.weight > 0 for p in parts) \
            and any(p.text is None and p.weight > 0 for p in parts)
        refined = mix.refine(view.snap.prototypes(), parts, vectors, self._mix_caption, view.snap.lexicon,
                             lambda vec: self._neighbour_facets(view, vec)) if edits \
            else mix.Refinement(vectors, {}, None)
        vectors, weights = refined.vectors, [p.weight for p in parts]
        if refined.caption is not None:
            vectors, weights = [*vectors, self.encode_text(refined.caption)], [*weights, mix.CAPTION_WEIGHT]
        timings = {"encode": time.perf_counter() - t0}
        depth = max(MIX_DEPTH, 4 * k)
        pool: dict[int, tuple[float, int, int, int, int]] = {}
        for weight, vec in zip(weights, vectors):
            if weight > 0:
                for b in self._vector_best(view, vec, depth + len(named), filters, timings):
                    if b[1] not in named:
                        pool.setdefault(b[1], b)
        candidates = list(pool.values())
        if not candidates:
            return self._finish(view, [], k, None, timings)
        records = self._finish(view, candidates, len(candidates), None, {}).hits
        sims = np.array([[float((self._vectors_of(view, h.product) @ vec).max()) for h in records] for vec in vectors])
        z = (sims - sims.mean(axis=1, keepdims=True)) / (sims.std(axis=1, keepdims=True) + 1e-6)
        scores = np.array(weights) @ z + mix.FACET_WEIGHT * mix.agreement([h.product for h in records], refined.wanted)
        best = [(float(score), h.product.pk, pool[h.product.pk][2], pool[h.product.pk][3], pool[h.product.pk][4])
                for h, score in zip(records, scores)]
        lexicon = view.snap.lexicon
        if refined.facets and lexicon is not None:
            # Nearest to the values the words name and the photo shows first, as in a text search.
            calibration = view.snap.calibration
            visible = calibration.columns if calibration is not None and calibration.columns else refined.wanted
            apart = {h.product.pk: mix.mismatch(h.product, refined, lexicon, visible) for h in records}
            best.sort(key=lambda b: (lexicon.distance(apart[b[1]], self.settings.facet_weights), -b[0]))
        reranker = self.reranker if rerank and refined.caption is not None else None
        outcome = self._finish(view, best, max(k, mix.MIX_RERANK_TOP) if reranker else k, None, timings,
                               ordered=bool(refined.facets))
        outcome.mode = "mix"
        if refined.facets and lexicon is not None:
            for hit in outcome.hits:
                hit.mismatch = apart[hit.product.pk]
        if reranker is not None:
            assert refined.caption is not None
            outcome = self._mix_reranked(reranker, view, refined.caption, outcome, k)
        # No match probability: the calibration maps text-to-image cosines, and a mix's score is a
        # sum of standardised ones.
        return outcome

    def _neighbour_facets(self, view: View, vec: np.ndarray) -> dict[str, Guess]:
        """A photo's facet values read off its nearest catalog products."""
        best = self._vector_best(view, vec, NEIGHBOURS, Filters(), {})
        hits = self._finish(view, best, NEIGHBOURS, None, {}).hits
        columns = view.snap.prototypes().values
        return vote([h.product for h in hits], np.array([h.score for h in hits]), columns)

    def _mix_caption(self, vec: np.ndarray) -> str | None:
        """The captioner's caption of a photo's vector (no captioning reranker: a product part has no photo)."""
        return None if self.captioner is None else str(self.captioner.captions(vec[None, :])[0])

    def _mix_reranked(self, reranker: Reranker, view: View, caption: str, outcome: SearchOutcome,
                      k: int) -> SearchOutcome:
        """The top of a mix reordered by the reranker's logit on the rewritten caption, added to the mix score."""
        t0 = time.perf_counter()
        scores = self._judged(reranker, view, caption, outcome.hits)
        outcome.timings["rerank"] = time.perf_counter() - t0
        if scores is not None:
            for hit, score in zip(outcome.hits, scores):
                hit.rerank_score = score
                if score is not None:
                    hit.score += logit(score)
            lexicon, weights = view.snap.lexicon, self.settings.facet_weights
            outcome.hits.sort(key=lambda h: (lexicon.distance(h.mismatch, weights) if lexicon is not None else 0.0,
                                             h.rerank_score is None, -h.score))
            outcome.reranked = True
        outcome.hits = outcome.hits[:k]
        return outcome

    def _mix_vectors(self, view: View, parts: list[MixPart]) -> tuple[list[np.ndarray], set[int]]:
        """Each part's unit vector (a product's: the mean of its vectors) and the pks of named products."""
        texts = [p.text for p in parts if p.text is not None]
        text_vecs = dict(zip(texts, (self.encode_text(t) for t in texts)))
        images = [p.image for p in parts if p.image is not None]
        image_vecs = iter(self.encoder.encode_images(images)) if images else iter(())
        out: list[np.ndarray] = []
        named: set[int] = set()
        for part in parts:
            if part.text is not None:
                vec = text_vecs[part.text]
            elif part.image is not None:
                vec = next(image_vecs)
            else:
                try:
                    product = self._record(view, part.product_id or "")
                except NotFoundError as exc:
                    raise InvalidInputError(f"product {part.product_id!r} of the mix is not in the index") from exc
                named.add(product.pk)
                own = self._vectors_of(view, product)
                if not len(own):
                    raise InvalidInputError(f"product {part.product_id!r} of the mix has no vectors")
                vec = own.mean(axis=0)
            out.append(np.asarray(vec, np.float32) / max(float(np.linalg.norm(vec)), 1e-12))
        return out, named

    @staticmethod
    def _vectors_of(view: View, product: ProductRecord) -> np.ndarray:
        """Every vector of a product (its images, or its text fallback) as the view holds them."""
        live = view.live.vectors.get(product.pk)
        if live is not None:
            return live.vectors
        row = view.snap.products.row(product.pk)
        if row < 0:
            return np.zeros((0, view.snap.manifest.dim), np.float32)
        return view.snap.images.reconstruct(view.snap.vector_ids_of_row(row))

    def _search(self, view: View, vec: np.ndarray, k: int, filters: Filters, *,
                encode_s: float, exclude: int | None = None) -> SearchOutcome:
        timings = {"encode": encode_s}
        want = k + (exclude is not None)
        return self._finish(view, self._vector_best(view, vec, want, filters, timings, exclude), k, exclude, timings)

    def _vector_best(self, view: View, vec: np.ndarray, want: int, filters: Filters, timings: dict[str, float],
                     exclude: int | None = None) -> list[tuple[float, int, int, int, int]]:
        """(cosine, pk, row or -1, image position, vector id) of the best `want` products of the
        snapshot and of the live layer (unsorted), from FAISS or Milvus."""
        _one_faiss_thread()
        query = vec[None, :].astype(np.float32)
        if self.store is not None:
            return self._search_milvus(view, query[0], want, filters, timings, exclude)
        best = self._search_snapshot(view, query, want, filters, timings)
        if len(view.live.ids):
            t0 = time.perf_counter()
            for pk, score, pos, vid in view.live.search(query[0], filters, want):
                best.append((score, pk, -1, pos, vid))
            timings["live"] = time.perf_counter() - t0
        return best

    def _finish(self, view: View, best: list[tuple[float, int, int, int, int]], k: int, exclude: int | None,
                timings: dict[str, float], *, ordered: bool = False) -> SearchOutcome:
        """Best first (as given when `ordered`), the excluded product out, k hits with their records
        (snapshot rows or live records)."""
        if not ordered:
            best.sort(key=lambda b: -b[0])
        best = [b for b in best if b[1] != exclude][:k]
        t0 = time.perf_counter()
        snap_rows = [row for _, _, row, _, _ in best if row >= 0]
        from_snap = dict(zip(snap_rows, view.snap.products.records(snap_rows)))
        hits = [Hit(from_snap[row] if row >= 0 else view.live.records[pk], score, pos if pos >= 0 else None, vid)
                for score, pk, row, pos, vid in best]
        timings["metadata"] = time.perf_counter() - t0
        for stage, seconds in timings.items():
            self.observe(stage, seconds)
        return SearchOutcome(hits, view.version_id, timings)

    def _search_snapshot(self, view: View, query: np.ndarray, want: int, filters: Filters,
                         timings: dict[str, float]) -> list[tuple[float, int, int, int, int]]:
        """(score, pk, row, image position, vector id) of the snapshot's best `want` visible products.

        A filter runs inside FAISS: the allowed vectors (the filter's, minus those the live
        layer hides) restrict the search itself, which returns exactly min(fetch, allowed)
        vectors on any index type. Products own several vectors, so the fetch grows until
        `want` products came back or every allowed vector did: k products whenever k pass.
        """
        snap, live = view.snap, view.live
        allowed: np.ndarray | None = None
        if filters.active:
            t0 = time.perf_counter()
            allowed = self._allowed_vector_ids(view, filters)
            timings["filter"] = time.perf_counter() - t0
        limit = len(allowed) if allowed is not None else snap.images.ntotal
        per_product = len(snap.products.vector_ids) / max(1, len(snap.products))
        fetch = min(limit, max(FILTERED_MIN_FETCH, math.ceil(FILTERED_FETCH_FACTOR * want * per_product)))
        best: dict[int, tuple[float, int, int, int, int]] = {}
        while fetch > 0:
            t0 = time.perf_counter()
            if allowed is not None:
                scores, ids = snap.images.search_filtered(query, fetch, allowed)
            else:
                scores, ids = snap.images.search(query, fetch)
            timings["ann"] = timings.get("ann", 0.0) + time.perf_counter() - t0
            # Unfiltered, products the live layer changed are dropped here (a few per fetch); a
            # selector over every vector would cost each query more than the re-fetch does.
            best = self._best_per_product(snap, scores[0], ids[0], want, hidden=live.hidden_rows)
            if len(best) >= want or fetch >= limit:
                break
            fetch = min(limit, fetch * 4)
        return list(best.values())

    def _search_milvus(self, view: View, query: np.ndarray, want: int, filters: Filters, timings: dict[str, float],
                       exclude: int | None) -> list[tuple[float, int, int, int, int]]:
        """(score, pk, snapshot row or -1, image position, vector id) of the best `want` products from
        Milvus, whose collection holds the snapshot and the live changes; filters run inside it.

        A product Milvus returns that this server's live layer has changed since (a poll behind
        an edit) is judged by the record it shows: deleted or no longer passing, it is dropped.
        """
        assert self.store is not None
        snap, live = view.snap, view.live
        expr = milvus_store.filter_expr(filters, exclude)
        per_product = len(snap.products.vector_ids) / max(1, len(snap.products))
        fetch = max(FILTERED_MIN_FETCH, math.ceil(FILTERED_FETCH_FACTOR * want * per_product))
        best: dict[int, tuple[float, int, int, int, int]] = {}
        while True:
            t0 = time.perf_counter()
            found = self.store.search(view.version_id, query, fetch, expr)
            timings["ann"] = timings.get("ann", 0.0) + time.perf_counter() - t0
            best = {}
            for score, vid, pk, pos in found:
                if pk in best or pk in live.deleted:
                    continue
                record = live.records.get(pk)
                row = snap.products.row(pk) if record is None else -1
                if (record is None and row < 0) or (record is not None and not filters.matches(record)):
                    continue  # new to Milvus, not yet to this server's live layer; or changed since
                best[pk] = (score, pk, row, pos, vid)
                if len(best) >= want:
                    break
            if len(best) >= want or len(found) < fetch or fetch >= milvus_store.MAX_TOPK:
                return list(best.values())
            fetch = min(milvus_store.MAX_TOPK, fetch * 4)

    def _allowed_vector_ids(self, view: View, filters: Filters) -> np.ndarray:
        """Ids (int64, sorted) of the snapshot's vectors that pass the filters and the live layer leaves visible.

        The filter's mask over the vector table is computed once per filter and version
        (Snapshot.allowed_cache) from the products file's columns.
        """
        snap = view.snap
        vids, rows, _ = snap.vector_table
        with snap.allowed_lock:
            mask = snap.allowed_cache.get(filters)
        if mask is None:
            mask = snap.products.mask(filters)[rows]
            mask.flags.writeable = False  # shared by concurrent queries
            with snap.allowed_lock:
                snap.allowed_cache[filters] = mask
        live = view.live
        if live.keep is None:
            return vids[mask]
        with live.allowed_lock:
            allowed = live.allowed_cache.get(filters)
        if allowed is None:
            allowed = vids[mask & live.keep]
            allowed.flags.writeable = False
            with live.allowed_lock:
                live.allowed_cache[filters] = allowed
        return allowed

    @staticmethod
    def _best_per_product(snap: Snapshot, scores: np.ndarray, ids: np.ndarray, want: int, *,
                          hidden: np.ndarray | None = None) -> dict[int, tuple[float, int, int, int, int]]:
        """Each product's best vector, best product first, at most `want`, none of the hidden
        rows: row -> (score, pk, row, position, vid)."""
        rows, positions = snap.owners(ids)
        best: dict[int, tuple[float, int, int, int, int]] = {}
        for score, vid, row, pos in zip(scores.tolist(), ids.tolist(), rows.tolist(), positions.tolist()):
            if vid < 0 or row < 0 or row in best or (hidden is not None and hidden[row]):  # best-first
                continue
            best[row] = (score, int(snap.products.pks[row]), row, pos, vid)
            if len(best) >= want:
                break
        return best

    # --- products ----------------------------------------------------------------------

    def _record(self, view: View, product_id: str) -> ProductRecord:
        pk = view.live.by_id.get(product_id)
        if pk is not None:
            record = view.live.records.get(pk)
            if record is None:
                raise NotFoundError(f"product {product_id!r} not found")
            return record
        row = view.snap.products.row_of_id.get(product_id)
        if row is None:
            raise NotFoundError(f"product {product_id!r} not found")
        return view.snap.products.records([row])[0]

    def product(self, product_id: str) -> ProductRecord:
        """One product as queries see it now (the live layer's record, else the snapshot's)."""
        return self._record(self.view, product_id)

    def facets(self) -> dict[str, Any]:
        """Category, brand and availability values with counts, and the price range, over visible products."""
        view = self.view
        cached = self._facets
        if cached is not None and cached[:2] == (view.live.seq, view.version_id):
            return cached[2]
        table = view.snap.products
        visible = np.ones(len(table), bool)
        hidden = [table.row(pk) for pk in (*view.live.records, *view.live.deleted)]
        visible[[r for r in hidden if r >= 0]] = False
        out: dict[str, Any] = {}
        for name in FACETS_FIELDS:
            counts = getattr(table, name).counts(visible)
            for record in view.live.records.values():
                value = getattr(record, name)
                if value is not None:
                    counts[value] = counts.get(value, 0) + 1
            out[name] = [{"value": v, "count": c} for v, c in sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))]
        prices = table.price[visible & ~np.isnan(table.price)].tolist()
        prices += [r.price for r in view.live.records.values() if r.price is not None]
        out["price"] = {"min": min(prices) if prices else None, "max": max(prices) if prices else None}
        self._facets = (view.live.seq, view.version_id, out)
        return out
