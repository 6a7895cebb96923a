"""Filters inside the ANN search: FaissIndex.search_filtered and the searcher's filtered path.

Real FAISS, no mocks. (a) 100,000 clustered vectors in the index types Catalens builds
(HNSW32 for big catalogs, the IVF ones `--faiss-factory` accepts), queried under broad,
neighbourhood-excluding, selective and exactly-k filters, through every route of
search_filtered. (b) a 20,000-product catalog written with the project's own models and
version writers, large enough that a category filter took the old over-fetch path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pytest

from catalens import artifacts
from catalens.artifacts import TEXT_ID_BASE, FaissIndex

pytestmark = pytest.mark.slow  # 100,000-vector indexes: the full suite, not the fast tier

N = 100_000
DIM = 64
CLUSTERS = 256
K = 10
N_QUERIES = 16  # < 20: faiss's single-query code paths, as the searcher uses


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int, rng: np.random.Generator, *, centres: np.ndarray,
              spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """(normalised vectors around random centres, the centre of each)."""
    labels = rng.integers(0, len(centres), n)
    vectors = centres[labels] + spread / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), labels


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    out = rng.standard_normal((n, dim), dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# --- (a) FaissIndex.search_filtered at 100k -------------------------------------------------


@dataclass
class Data:
    vectors: np.ndarray
    labels: np.ndarray
    ids: np.ndarray  # external id of each row: scattered image ids, and text-fallback ids
    queries: np.ndarray
    query_labels: np.ndarray


@pytest.fixture(scope="module")
def data() -> Data:
    rng = np.random.default_rng(7)
    centres = unit(rng, CLUSTERS, DIM)
    vectors, labels = clustered(N, DIM, rng, centres=centres)
    ids = rng.permutation(np.arange(1, 3 * N, 3, dtype=np.int64))  # not in row order, with gaps
    ids[-2000:] = TEXT_ID_BASE + rng.choice(10 * N, 2000, replace=False)  # products without images
    queries, query_labels = clustered(N_QUERIES, DIM, np.random.default_rng(8), centres=centres)
    return Data(vectors, labels, ids, queries, query_labels)


@dataclass
class Built:
    factory: str
    index: FaissIndex
    stored: np.ndarray  # what the index stores of each row (decoded codes): exact search is over these


FACTORIES = ["HNSW32", "IVF256,Flat", "IVF256,SQ8"]


@pytest.fixture(scope="module")
def indexes(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """Each factory's index over the data, built on first use, once per module, and read back from disk."""
    cache: dict[str, Built] = {}

    def get(factory: str) -> Built:
        if factory not in cache:
            path = tmp_path_factory.mktemp("ann") / "index.faiss"
            FaissIndex.build(data.vectors, data.ids, factory=factory).save(path)
            index = FaissIndex.load(path)  # as served
            cache[factory] = Built(factory, index, index.reconstruct(data.ids))
        return cache[factory]

    return get


def filter_rows(kind: str, data: Data) -> np.ndarray:
    """Rows passing a filter of this kind (deterministic per kind)."""
    rng = np.random.default_rng(len(kind))
    if kind == "broad":  # half the catalog, independent of the vectors
        return np.flatnonzero(rng.random(N) < 0.5)
    if kind == "broad-elsewhere":  # half the clusters, none the queries come from: a category filter
        others = np.setdiff1d(np.arange(CLUSTERS), data.query_labels)
        return np.flatnonzero(np.isin(data.labels, rng.permutation(others)[:CLUSTERS // 2]))
    if kind == "selective":  # 0.1%
        return np.sort(rng.choice(N, N // 1000, replace=False))
    if kind == "exactly-k":
        return np.sort(rng.choice(N, K, replace=False))
    if kind == "fewer-than-k":
        return np.sort(rng.choice(N, 3, replace=False))
    raise AssertionError(kind)


ROUTES = {
    "auto": {},
    # The selector inside FAISS even for sets small enough to score directly.
    "selector": {"GATHER_FLOATS": 0},
    # HNSW: the filtered graph walk at any selectivity (short at 0.1%: deeper walk, then the exact scan).
    "walk": {"GATHER_FLOATS": 0, "HNSW_MIN_SELECTIVITY": 0.0},
    # HNSW: where the walk is not used, the selector scan of the flat storage (not a gather).
    "scan": {"GATHER_FLOATS": 0, "GATHER_CHUNK_FLOATS": 0},
    # Exact scoring of every allowed row, reconstructed in chunks of 4,096 rows.
    "gather": {"GATHER_FLOATS": 1 << 40, "GATHER_CHUNK_FLOATS": DIM * 4096},
}
MIN_RECALL = {"broad": 0.9, "broad-elsewhere": 0.9, "selective": 1.0, "exactly-k": 1.0, "fewer-than-k": 1.0}


def recall(built: Built, data: Data, rows: np.ndarray, found: np.ndarray) -> float:
    """Share of results scoring at least the k-th best allowed score (ties count), exact over stored codes."""
    truth = built.stored[rows] @ data.queries.T  # (allowed, queries)
    k = found.shape[1]
    kth = -np.sort(-truth, axis=0)[k - 1]
    row_of = {int(i): r for r, i in enumerate(data.ids)}
    got = np.array([[built.stored[row_of[int(i)]] @ q for i in ids] for ids, q in zip(found, data.queries)])
    return float((got >= kth[:, None] - 1e-4).mean())


CASES = [(factory, route, kind) for factory in FACTORIES for route in ROUTES for kind in MIN_RECALL
         if route not in ("walk", "scan") or factory.startswith("HNSW")
         if route != "walk" or kind != "broad-elsewhere"]  # see the next test


@pytest.mark.parametrize(("factory", "route", "kind"), CASES)
def test_filtered_search_returns_k_allowed_ids_best_first(indexes: Callable[[str], Built], data: Data, factory: str,
                                                          route: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    built = indexes(factory)
    for name, value in ROUTES[route].items():
        monkeypatch.setattr(built.index, name, value)
    rows = filter_rows(kind, data)
    allowed = data.ids[rows]
    scores, found = built.index.search_filtered(data.queries, K, allowed)
    assert found.shape == (N_QUERIES, min(K, len(rows)))  # exactly k whenever k are allowed: never short
    assert np.isin(found, allowed).all()
    assert all(len(set(row.tolist())) == found.shape[1] for row in found)
    assert (np.diff(scores, axis=1) <= 1e-5).all()  # best first
    assert recall(built, data, rows, found) >= MIN_RECALL[kind]


def test_hnsw_walk_misses_matches_away_from_the_query(indexes: Callable[[str], Built], data: Data,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the walk runs only where the query's own neighbourhood passes the filter.

    FAISS's filtered walk keeps its efSearch best candidates, passing or not, so when a
    broad filter excludes the query's neighbourhood it returns k allowed ids (after a
    deeper walk) but not the best ones; the default route probes, then scans exactly.
    """
    built = indexes("HNSW32")
    rows = filter_rows("broad-elsewhere", data)
    assert len(rows) > 0.4 * N  # broad: 40% of the catalog or more
    monkeypatch.setattr(built.index, "HNSW_MIN_SELECTIVITY", 0.0)
    _, forced = built.index.search_filtered(data.queries, K, data.ids[rows])
    assert forced.shape == (N_QUERIES, K) and recall(built, data, rows, forced) < 0.5
    monkeypatch.undo()
    _, found = built.index.search_filtered(data.queries, K, data.ids[rows])
    assert recall(built, data, rows, found) == 1.0


@pytest.mark.parametrize("factory", ["Flat", "HNSW16,SQ8", "IVF1024,Flat", "IVF64,PQ8x4fs", "PCA16,IVF32,Flat",
                                     "IVF64_HNSW16,Flat"])
def test_other_index_types_return_k_allowed_ids(factory: str) -> None:
    """Lossy, fast-scan, pre-transformed, graph-quantized: never short, never outside the filter."""
    rng = np.random.default_rng(5)
    centres = unit(rng, 64, 32)
    vectors, _ = clustered(10_000, 32, rng, centres=centres)
    queries, _ = clustered(N_QUERIES, 32, rng, centres=centres)
    ids = rng.permutation(10_000).astype(np.int64) * 5 + 3
    index = FaissIndex.build(vectors, ids, factory=factory)
    for share, gather in ((0.5, 1 << 20), (0.01, 1 << 20), (0.01, 0), (0.001, 0)):
        index.GATHER_FLOATS = gather
        allowed = ids[rng.random(10_000) < share]
        scores, found = index.search_filtered(queries, K, allowed)
        assert found.shape == (N_QUERIES, min(K, len(allowed))) and np.isin(found, allowed).all(), (factory, share)
        if factory != "IVF64,PQ8x4fs":  # fast-scan's 4-bit distances are only roughly ordered
            assert (np.diff(scores, axis=1) <= 1e-5).all(), (factory, share)


@pytest.mark.parametrize("factory", FACTORIES)
def test_allowed_ids_may_be_unsorted_repeated_or_absent(indexes: Callable[[str], Built], data: Data,
                                                        factory: str) -> None:
    built = indexes(factory)
    rows = filter_rows("selective", data)
    messy = np.concatenate([data.ids[rows][::-1], data.ids[rows[:5]], [-5, 2, TEXT_ID_BASE - 1]])  # 2: not an id
    scores, found = built.index.search_filtered(data.queries, K, messy)
    want_scores, want = built.index.search_filtered(data.queries, K, np.sort(data.ids[rows]))
    assert np.array_equal(found, want) and np.allclose(scores, want_scores)
    empty_scores, empty = built.index.search_filtered(data.queries, K, np.array([-1, 2], np.int64))
    assert empty.shape == empty_scores.shape == (N_QUERIES, 0)


@pytest.mark.parametrize("factory", FACTORIES)
def test_reconstruct_by_id_after_reload(indexes: Callable[[str], Built], data: Data, factory: str) -> None:
    """IVF rows reconstruct through a direct map, built with the index and saved with it."""
    built = indexes(factory)
    assert np.allclose(built.stored[:50], data.vectors[:50], atol=0.05)
    assert np.array_equal(built.index.reconstruct(data.ids[:3]), built.stored[:3])


def test_faiss_selector_contract() -> None:
    """What search_filtered relies on (or works around) in the installed faiss."""
    import faiss

    rng = np.random.default_rng(3)
    centres = unit(rng, 64, 32)
    vectors, _ = clustered(20_000, 32, rng, centres=centres)
    queries, _ = clustered(8, 32, rng, centres=centres)
    ids = np.arange(20_000, dtype=np.int64) * 7 + 1000
    allowed = ids[rng.choice(20_000, 20, replace=False)]
    for factory, params in (("HNSW32", faiss.SearchParametersHNSW), ("IVF64,Flat", faiss.SearchParametersIVF)):
        index = faiss.index_factory(32, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add_with_ids(vectors, ids)
        # IndexIDMap(2) wraps a selector in IDSelectorTranslated: it sees the external ids.
        _, found = index.search(queries, K, params=params(sel=faiss.IDSelectorBatch(allowed)))
        assert np.isin(found[found >= 0], allowed).all()
        # ...and a selective filter comes back short from HNSW (efSearch 16) and IVF (nprobe 1):
        # SearchParameters default to those, whatever the index was saved with.
        assert (found < 0).any()
    assert faiss.SearchParametersHNSW().efSearch == 16 and faiss.SearchParametersIVF().nprobe == 1


# --- (b) the searcher on a 20,000-product catalog --------------------------------------------

N_PRODUCTS = 20_000
OLD_SUBSET_PRODUCTS = 6_667  # the old path pre-filtered at most SUBSET_LIMIT / 3 products, over-fetched above


@dataclass
class Catalog:
    db_url: str
    dim: int
    category: np.ndarray  # of product pk (index 0 unused)
    brand: np.ndarray
    price: np.ndarray
    vector_ids: np.ndarray  # image index: ids, their vectors and owning pks
    vectors: np.ndarray
    owners: np.ndarray
    text_vectors: np.ndarray  # of every pk (row pk - 1)
    centres: np.ndarray


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, encoder) -> Catalog:
    """Products, images and vectors written with the project's models; categories own clusters, like real ones."""
    from sqlalchemy import insert

    from catalens.db import open_database
    from catalens.schema import Product, ProductImage

    rng = np.random.default_rng(21)
    dim = encoder.dim
    centres = unit(rng, 128, dim)
    pks = np.arange(1, N_PRODUCTS + 1)
    categories = np.array(["apparel", "home", "toys", "garden", "books"])
    category = np.zeros(N_PRODUCTS + 1, np.int64)
    category[1:] = np.where(rng.random(N_PRODUCTS) < 0.5, 0, rng.integers(1, 5, N_PRODUCTS))
    brand = np.zeros(N_PRODUCTS + 1, np.int64)
    brand[1:] = rng.integers(0, 40, N_PRODUCTS)
    brand[rng.choice(pks, K, replace=False)] = 40  # "solo": exactly k products
    price = np.zeros(N_PRODUCTS + 1)
    price[1:] = np.round(rng.uniform(1, 500, N_PRODUCTS), 2)
    # Apparel lives in the first half of the embedding clusters, the rest in the second.
    cluster = np.where(category[1:] == 0, rng.integers(0, 64, N_PRODUCTS), rng.integers(64, 128, N_PRODUCTS))
    product_vec = centres[cluster] + 0.6 / np.sqrt(dim) * rng.standard_normal((N_PRODUCTS, dim), dtype=np.float32)
    n_images = rng.choice([0, 1, 2, 3], N_PRODUCTS, p=[0.05, 0.5, 0.3, 0.15])  # 0: text-only product

    def noisy(base: np.ndarray) -> np.ndarray:
        out = base + 0.25 / np.sqrt(dim) * rng.standard_normal(base.shape, dtype=np.float32)
        return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)

    text_vectors = noisy(product_vec)
    image_pk = np.repeat(pks, n_images)
    image_pos = np.concatenate([np.arange(c) for c in n_images])
    image_ids = np.arange(1, len(image_pk) + 1, dtype=np.int64)
    image_vectors = noisy(product_vec[image_pk - 1])
    text_only = pks[n_images == 0]
    vector_ids = np.concatenate([image_ids, TEXT_ID_BASE + text_only])
    vectors = np.concatenate([image_vectors, text_vectors[text_only - 1]])
    owners = np.concatenate([image_pk, text_only])

    db_url = f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalens.db'}"
    _, sessions = open_database(db_url)
    with sessions() as session:
        session.execute(insert(Product), [
            {"id": int(pk), "product_id": f"p{pk:05d}", "title": f"product {pk}", "description": "",
             "category": str(categories[category[pk]]), "brand": "solo" if brand[pk] == 40 else f"brand-{brand[pk]:02d}",
             "price": float(price[pk]), "currency": "EUR", "attributes": {}, "text_hash": f"{pk:064x}",
             "deleted": False} for pk in pks.tolist()])
        session.execute(insert(ProductImage), [
            {"id": int(i), "product_pk": int(pk), "position": int(pos), "source": f"img/{i}.jpg",
             "content_hash": f"{i:064x}", "status": "ok"} for i, pk, pos in zip(image_ids, image_pk, image_pos)]
            + [{"product_pk": int(pk), "position": 0, "source": f"img/broken-{pk}.jpg", "status": "error",
                "error": "decode failed"} for pk in text_only.tolist()])
        session.commit()
    return Catalog(db_url, dim, category, brand, price, vector_ids, vectors, owners, text_vectors, centres)


@pytest.fixture(scope="module", params=["HNSW32", "IVF128,Flat"])
def searcher_on(request: pytest.FixtureRequest, catalog: Catalog, encoder,
                tmp_path_factory: pytest.TempPathFactory):
    """A Searcher serving a version of the catalog built with this factory (shared database)."""
    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from catalens.product_table import PRODUCTS, write_products
    from indexer.store import read_records
    from retrieval.searcher import Searcher

    index_dir = tmp_path_factory.mktemp("version")
    images = FaissIndex.build(catalog.vectors, catalog.vector_ids, factory=request.param)
    texts = FaissIndex.build(catalog.text_vectors, np.arange(1, N_PRODUCTS + 1, dtype=np.int64), factory="Flat")
    version_id = artifacts.new_version_id()
    manifest = artifacts.Manifest(
        version_id=version_id, model=encoder.spec.model, pretrained=encoder.spec.pretrained, dim=catalog.dim,
        count=images.ntotal, text_count=texts.ntotal, factory=request.param, catalog="synthetic",
        catalog_checksum="-", model_id=encoder.model_id)
    staging = artifacts.staging_dir(index_dir, version_id)
    staging.mkdir(parents=True)
    sessions = create_session_factory(create_db_engine(catalog.db_url))
    with sessions() as session:
        records = read_records(session)
    owned: dict[int, list[tuple[int, int]]] = {}
    positions = {img.id: img.position for r in records for img in r.images}
    for vid, pk in zip(catalog.vector_ids.tolist(), catalog.owners.tolist()):
        owned.setdefault(pk, []).append((vid, positions.get(vid, -1) if vid < TEXT_ID_BASE else -1))
    write_products(staging / PRODUCTS, records, owned)
    artifacts.write_version_files(staging, manifest=manifest, images=images, texts=texts, written=(PRODUCTS,))
    artifacts.promote_staging(index_dir, version_id)
    artifacts.set_active(index_dir, version_id, since_seq=0)
    settings = Settings(index_dir=index_dir, database_url=catalog.db_url, threads=1)
    searcher = Searcher(settings, sessions, encoder)
    searcher.reload()
    yield searcher
    searcher._rerank_pool.shutdown()


def expected(catalog: Catalog, query: np.ndarray, passes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pks of passing products, best first by their best vector; those scores): exact."""
    scores = catalog.vectors @ query
    best = np.full(N_PRODUCTS + 1, -np.inf)
    np.maximum.at(best, catalog.owners, scores)
    pks = np.flatnonzero(passes & np.isfinite(best))
    order = np.argsort(-best[pks], kind="stable")
    return pks[order], best[pks[order]]


FILTERS = {
    # category: half the catalog, over the old pre-filter limit; and it excludes the
    # embedding neighbourhood of queries from the other categories' clusters.
    "category": ({"category": ("apparel",)}, lambda c: c.category == 0, 0.9),
    "brand+price": ({"brand": ("brand-07",), "price_min": 100.0, "price_max": 200.0},
                    lambda c: (c.brand == 7) & (c.price >= 100) & (c.price <= 200), 1.0),
    "exactly-k": ({"brand": ("solo",)}, lambda c: c.brand == 40, 1.0),
}


@pytest.mark.parametrize("k", [K, 60])
@pytest.mark.parametrize("name", list(FILTERS))
def test_searcher_filtered_query_returns_k_passing_products_best_first(searcher_on, catalog: Catalog,
                                                                      name: str, k: int) -> None:
    from retrieval.searcher import Filters

    spec, passing, min_recall = FILTERS[name]
    filters = Filters(**spec)  # type: ignore[arg-type]
    passes = passing(catalog)
    passes[0] = False
    if name == "category":
        assert passes.sum() > OLD_SUBSET_PRODUCTS  # the old code over-fetched and post-filtered here
    view = searcher_on.view
    rng = np.random.default_rng(k)
    for cluster in rng.choice(len(catalog.centres), 6, replace=False):  # queries in and out of the category
        query = catalog.centres[cluster] + 0.6 / np.sqrt(catalog.dim) * rng.standard_normal(catalog.dim)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        outcome = searcher_on._search(view, query, k, filters, encode_s=0.0)
        want_pks, want_scores = expected(catalog, query, passes)
        hits = outcome.hits
        assert len(hits) == min(k, len(want_pks))
        for hit in hits:
            assert passes[hit.product.pk]
            assert (hit.image_position is None) == (hit.vector_id >= TEXT_ID_BASE)
        scores = np.array([h.score for h in hits])
        assert (np.diff(scores) <= 1e-5).all()
        kth = want_scores[len(hits) - 1]
        assert (scores >= kth - 1e-4).mean() >= min_recall
        assert (scores <= want_scores[0] + 1e-4).all()


def test_similar_with_a_broad_filter_excludes_itself(searcher_on, catalog: Catalog) -> None:
    from retrieval.searcher import Filters

    pk = int(np.flatnonzero(catalog.category == 0)[5])
    outcome = searcher_on.similar(f"p{pk:05d}", K, Filters(price_max=400.0))
    assert len(outcome.hits) == K
    assert all(h.product.pk != pk and h.product.category == "apparel" and h.product.price <= 400
               for h in outcome.hits)


def test_products_changed_after_the_build_are_searched_live(searcher_on, catalog: Catalog) -> None:
    """Deletions, and patches that move products in or out of a filter, are in the next query: k
    results that all pass the filter with their newest fields, on HNSW and IVF."""
    from sqlalchemy import delete

    from catalens import changes
    from catalens.schema import CatalogChange
    from indexer.store import read_records
    from retrieval.searcher import Filters

    query = catalog.text_vectors[0]
    apparel = Filters(category=("apparel",))
    first = searcher_on._search(searcher_on.view, query, K, apparel, encode_s=0.0)
    gone = [h.product.pk for h in first.hits[:3]]
    moved_out = [h.product.pk for h in first.hits[3:5]]  # now "home"
    moved_in = [int(pk) for pk in np.flatnonzero(catalog.category == 1)[:2000]]  # now "apparel"
    with searcher_on.sessions.begin() as session:
        records = {r.pk: r for r in read_records(session, pks=gone + moved_out + moved_in)}
        for pk in gone:
            changes.append(session, "delete", records[pk])
        for pk in moved_out:
            changes.append(session, "patch", replace(records[pk], category="home"))
        for pk in moved_in:
            changes.append(session, "patch", replace(records[pk], category="apparel", price=1.0))
    try:
        searcher_on.refresh_live()
        assert searcher_on.view.live.changed == len(gone) + len(moved_out) + len(moved_in)
        again = searcher_on._search(searcher_on.view, query, K, apparel, encode_s=0.0)
        assert len(again.hits) == K
        assert not {h.product.pk for h in again.hits} & set(gone + moved_out)
        assert all(h.product.category == "apparel" for h in again.hits)
        cheap = searcher_on._search(searcher_on.view, query, K, Filters(category=("apparel",), price_max=1.0),
                                    encode_s=0.0)
        assert len(cheap.hits) == K and {h.product.pk for h in cheap.hits} <= set(moved_in)
        unfiltered = searcher_on._search(searcher_on.view, query, K, Filters(), encode_s=0.0)
        assert len(unfiltered.hits) == K and not {h.product.pk for h in unfiltered.hits} & set(gone)
    finally:
        with searcher_on.sessions.begin() as session:
            session.execute(delete(CatalogChange))
        searcher_on.reload()
