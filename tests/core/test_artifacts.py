"""Index versions on disk: verified before serving, never half-written, bound to their model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from catalens import artifacts
from catalens.config import Settings
from catalens.errors import IndexArtifactError
from tests.support import SampleIndex


@pytest.fixture()
def index_copy(sample_index: SampleIndex, tmp_path: Path) -> Path:
    dst = tmp_path / "idx"
    shutil.copytree(sample_index.index_dir, dst)
    return dst


def _active(index_dir: Path) -> Path:
    return artifacts.active_version_path(index_dir)


def test_manifest_describes_the_files(sample_index: SampleIndex) -> None:
    manifest, images, texts = artifacts.load_version(_active(sample_index.index_dir))
    assert manifest.count == images.ntotal and manifest.text_count == texts.ntotal == len(sample_index.rows())
    assert manifest.dim == 128 and manifest.catalog_checksum and set(manifest.files) == {
        "images.faiss", "texts.faiss", "products.parquet", "rerank_ids.npy", "rerank_features.npy", "keywords.sqlite",
        "lexicon.json",
        "calibration.json"}


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_index_file_is_refused(index_copy: Path, damage: str) -> None:
    path = _active(index_copy) / "images.faiss"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexArtifactError, match="corrupt"):
        artifacts.load_version(_active(index_copy))


def test_version_without_manifest_is_incomplete(index_copy: Path) -> None:
    (_active(index_copy) / "manifest.json").unlink()
    with pytest.raises(IndexArtifactError, match="incomplete"):
        artifacts.load_version(_active(index_copy))


@pytest.mark.reliability
def test_row16_service_refuses_an_index_built_with_another_model(index_copy: Path, encoder) -> None:
    from retrieval.searcher import load_snapshot

    manifest_path = _active(index_copy) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"], manifest["pretrained"] = "ViT-B-32", "laion2b_s34b_b79k"
    manifest["model_id"] = "ViT-B-32:laion2b_s34b_b79k"
    manifest_path.write_text(json.dumps(manifest))
    settings = Settings(index_dir=index_copy)
    with pytest.raises(IndexArtifactError, match="ViT-B-32"):
        load_snapshot(settings, encoder)


def test_a_failed_reload_keeps_serving_the_current_version(index_copy: Path, encoder) -> None:
    from catalens.db import create_db_engine, create_session_factory
    from retrieval.searcher import Filters, Searcher

    settings = Settings(index_dir=index_copy)
    searcher = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder)
    version = searcher.reload()
    (_active(index_copy) / "texts.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexArtifactError):
        searcher.reload()
    assert searcher.current_version == version
    assert searcher.search_text("red mug", 3, Filters()).hits


def test_atomic_pointer_and_rollback(index_copy: Path) -> None:
    first = artifacts.read_active(index_copy)
    twin = artifacts.versions_dir(index_copy) / "20990101T000000000000Z"
    shutil.copytree(artifacts.versions_dir(index_copy) / first, twin)
    artifacts.set_active(index_copy, twin.name, since_seq=0)
    assert artifacts.read_active(index_copy) == twin.name
    assert not list(index_copy.glob(".ACTIVE*.tmp"))
    with pytest.raises(IndexArtifactError):
        artifacts.set_active(index_copy, "no-such-version", since_seq=0)
    assert artifacts.read_active(index_copy) == twin.name


def test_faiss_ids_are_database_keys(sample_index: SampleIndex) -> None:
    from sqlalchemy import select

    from catalens.db import create_db_engine, create_session_factory
    from catalens.schema import ProductImage

    _, images, _ = artifacts.load_version(_active(sample_index.index_dir))
    sessions = create_session_factory(create_db_engine(Settings(index_dir=sample_index.index_dir).db_url))
    with sessions() as session:
        db_ids = set(session.scalars(select(ProductImage.id).where(ProductImage.status == "ok")))
    assert set(images.ids().tolist()) == db_ids
    assert np.allclose(np.linalg.norm(images.reconstruct(np.array(sorted(db_ids)[:5])), axis=1), 1, atol=1e-4)


def test_ivf_and_hnsw_indexes_are_saved_with_search_settings_that_reach_the_recall_target(tmp_path: Path) -> None:
    import faiss

    from catalens.artifacts import HNSW_EF_SEARCH, IVF_NPROBE, FaissIndex

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(2000, dtype=np.int64) * 7
    for factory, attr, want in (("IVF32,SQ8", "nprobe", IVF_NPROBE), ("HNSW16", None, HNSW_EF_SEARCH)):
        FaissIndex.build(vectors, ids, factory=factory).save(tmp_path / "x.faiss")
        loaded = FaissIndex.load(tmp_path / "x.faiss")  # keep a reference: faiss's inner index belongs to it
        inner = faiss.downcast_index(loaded.index.index)
        assert (inner.nprobe if attr else inner.hnsw.efSearch) == want, factory
