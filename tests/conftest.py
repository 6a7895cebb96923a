"""Shared fixtures: one real sample catalog, index and model per test session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import SampleIndex, milvus_url, searcher_on

SAMPLE_N = 400
SAMPLE_SEED = 11
E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/e2e/ drives real processes (`catalens` commands, servers, Chromium): never in the fast tier."""
    for item in items:
        if E2E in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("sample")
    write_sample_catalog(out, n=SAMPLE_N, seed=SAMPLE_SEED, n_queries=60, progress=False)
    return out


@pytest.fixture(scope="session")
def encoder():
    from catalens.encoder import ModelSpec, load_clip

    return load_clip(ModelSpec("catalens-demo"), device="cpu")


@pytest.fixture(scope="session")
def reranker(encoder):
    """The bundled ITM reranker on the same loaded CLIP."""
    from catalens.reranker import load_reranker

    return load_reranker("catalens-itm", clip=encoder)


@pytest.fixture(scope="session")
def sqlite_sample_index(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, encoder, reranker) -> SampleIndex:
    from catalens.config import Settings
    from indexer.embedder import Embedder
    from indexer.runner import BuildOptions, build_index

    index_dir = tmp_path_factory.mktemp("index")
    settings = Settings(index_dir=index_dir, threads=1)
    build_index(settings, BuildOptions(catalog=sample_dir / "catalog.csv", progress=False), encoder=encoder,
                embedder=Embedder(encoder, reranker=reranker))
    return SampleIndex(sample_dir, index_dir)


@pytest.fixture(scope="session")
def sample_index(sqlite_sample_index: SampleIndex) -> SampleIndex:
    """The sample catalog built with the bundled models (SQLite); a module may override it."""
    return sqlite_sample_index


def _client_on(searcher: Any) -> Iterator:
    from fastapi.testclient import TestClient

    from retrieval.app import create_app

    app = create_app(searcher.settings.model_copy(update={"max_upload_bytes": 2 * 1024 * 1024}),
                     searcher=searcher)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="session")
def searcher(sqlite_sample_index: SampleIndex, encoder, reranker):
    return searcher_on(sqlite_sample_index, encoder, reranker)


@pytest.fixture(scope="session")
def client(searcher) -> Iterator:
    yield from _client_on(searcher)


# --- PostgreSQL: a real server for the tests that run on both catalogs of record ----------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL server on 127.0.0.1 (bench/engines.py), for the whole session.

    Skipped only where PostgreSQL is not installed and this is not CI (`make test` installs it).
    """
    from bench.engines import postgres_bindir, postgres_server

    if postgres_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: `make test` installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with postgres_server() as pg:
        yield pg


def _sample_on_engines(sample_dir: Path, index_dir: Path, encoder: Any, reranker: Any, *,
                       database_url: str | None = None, vector_store: str = "faiss") -> SampleIndex:
    """The session's sample catalog built again on other engines (same model, same catalog)."""
    from catalens.config import Settings
    from indexer.embedder import Embedder
    from indexer.runner import BuildOptions, build_index

    settings = Settings(index_dir=index_dir, database_url=database_url, vector_store=vector_store, threads=1)
    build_index(settings, BuildOptions(catalog=sample_dir / "catalog.csv", progress=False), encoder=encoder,
                embedder=Embedder(encoder, reranker=reranker))
    return SampleIndex(sample_dir, index_dir, database_url, vector_store)


@pytest.fixture(scope="session")
def pg_sample_index(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, encoder, reranker,
                    postgres) -> SampleIndex:
    """The sample index again, its catalog of record in PostgreSQL."""
    return _sample_on_engines(sample_dir, tmp_path_factory.mktemp("pg-index"), encoder, reranker,
                              database_url=postgres.create())


@pytest.fixture(scope="session")
def pg_client(pg_sample_index: SampleIndex, encoder, reranker) -> Iterator:
    yield from _client_on(searcher_on(pg_sample_index, encoder, reranker))


@pytest.fixture(scope="module")
def trusted_image_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For modules whose catalogs name images in other tmp folders or on a 127.0.0.1 image host:
    allow both (CATALENS_IMAGE_ROOTS, CATALENS_URL_ALLOW) for in-process builds, CLIs and servers."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CATALENS_IMAGE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
        env.setenv("CATALENS_URL_ALLOW", json.dumps(["127.0.0.1"]))
        yield


# --- Milvus: a real (embedded standalone) server for the tests that run on both vector stores --


@pytest.fixture(scope="session")
def milvus() -> Iterator[Any]:
    """The `milvus` package's Milvus 2.3 standalone server on 127.0.0.1 (bench/engines.py), for the session."""
    from bench.engines import milvus_server

    with milvus_server() as server:
        yield server


@pytest.fixture(scope="session")
def milvus_sample_index(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, encoder, reranker,
                        milvus) -> SampleIndex:
    """The sample index again, its vectors in Milvus."""
    return _sample_on_engines(sample_dir, tmp_path_factory.mktemp("milvus-index"), encoder, reranker,
                              vector_store=milvus_url(milvus))


@pytest.fixture(scope="session")
def milvus_client(milvus_sample_index: SampleIndex, encoder, reranker) -> Iterator:
    yield from _client_on(searcher_on(milvus_sample_index, encoder, reranker))
