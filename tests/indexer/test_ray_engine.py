"""`--engine ray`: a build on a local Ray publishes exactly what the single-process build does."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

N_PRODUCTS = 48
BATCH = 16  # several decode tasks and actor calls for ~60 images


@pytest.fixture(scope="module")
def bad_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample catalog whose first three products have a corrupt, an oversized and a missing image."""
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("ray-world")
    catalog = write_sample_catalog(out, n=N_PRODUCTS, seed=5, n_queries=5, progress=False)
    (out / "bad").mkdir()
    (out / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 50)
    buf = io.BytesIO()
    # 50 Mpx: over CATALENS_MAX_IMAGE_PIXELS, under Pillow's own bomb warning (whose message would
    # depend on decode-thread timing: warnings.catch_warnings is process-wide).
    Image.new("1", (7_100, 7_100)).save(buf, format="PNG")
    (out / "bad" / "bomb.png").write_bytes(buf.getvalue())
    with open(catalog, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row, image in zip(rows, ("bad/corrupt.jpg", "bad/bomb.png", "bad/missing.jpg")):
        row["image"] = image
    with open(catalog, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return catalog


def build(index_dir: Path, catalog: Path, encoder: Any, reranker: Any, **options: Any) -> tuple[Any, Any]:
    """(summary, the driver's Embedder) of a build with the session's CLIP and ITM reranker."""
    from catalens.config import Settings
    from indexer.embedder import Embedder
    from indexer.runner import BuildOptions, build_index

    embedder = Embedder(encoder, reranker=reranker)
    settings = Settings(index_dir=index_dir, threads=1, batch_size=BATCH)
    summary = build_index(settings, BuildOptions(catalog=catalog, progress=False, **options), encoder=encoder,
                          embedder=embedder)
    return summary, embedder


def published(index_dir: Path) -> dict[str, dict[str, Any]]:
    """Per product of the active version: its image vectors in position order, text vector, reranker
    features and image records (status, error, hash, thumbnail)."""
    from catalens import artifacts
    from catalens.product_table import PRODUCTS, ProductTable

    path = artifacts.active_version_path(index_dir)
    manifest, images, texts = artifacts.load_version(path)
    features = artifacts.load_rerank_features(path, manifest)
    assert features is not None
    table = ProductTable.load(path / PRODUCTS)
    feature_row = {int(i): row for row, i in enumerate(features.ids)}
    out = {}
    for row, record in enumerate(table.all_records()):
        mine = table.vector_rows == row
        order = np.argsort(table.vector_positions[mine])
        ids, positions = table.vector_ids[mine][order], table.vector_positions[mine][order]
        out[record.product_id] = {
            "vectors": images.reconstruct(ids),  # a product without an ok image: its text vector, position -1
            "positions": positions.tolist(),
            "features": [np.asarray(features.features[feature_row[int(i)]], np.float32)
                         for i, p in zip(ids, positions) if p >= 0],
            "text": texts.reconstruct(np.array([record.pk], np.int64)),
            "records": [(i.position, i.source, i.status, i.error, i.content_hash, i.thumbnail) for i in record.images],
        }
    return out


def ingest_errors(index_dir: Path) -> set[tuple[str, str, str, str]]:
    with sqlite3.connect(index_dir / "catalens.db") as db:
        return set(db.execute("SELECT product_id, field, code, message FROM ingest_errors"))


def thumbnails(index_dir: Path) -> dict[str, bytes]:
    root = index_dir / "thumbnails"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.jpg")}


class PidLog(logging.Handler):
    """The actor pids the Ray engine logs at the end of its embed stage."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pids: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.pids += [int(p) for p in re.findall(r"\d+", record.getMessage().partition("pids")[2])]


@dataclass
class Builds:
    local_dir: Path
    ray_dir: Path
    local: Any  # BuildSummary
    on_ray: Any
    local_items: int  # what the driver's own model embedded (Embedder.items)
    ray_items: int
    actor_pids: list[int]
    ray_left_running: bool


@pytest.fixture(scope="module")
def builds(bad_world: Path, tmp_path_factory: pytest.TempPathFactory, encoder: Any, reranker: Any) -> Builds:
    """The same catalog built once by each engine, into separate index folders."""
    import ray

    root = tmp_path_factory.mktemp("ray-builds")
    local, local_embedder = build(root / "local", bad_world, encoder, reranker)
    log, handler = logging.getLogger("indexer.ray_engine"), PidLog()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        on_ray, ray_embedder = build(root / "ray", bad_world, encoder, reranker, engine="ray")
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    return Builds(root / "local", root / "ray", local, on_ray, local_embedder.items, ray_embedder.items,
                  handler.pids, ray.is_initialized())


def test_ray_build_runs_on_ray_actors_and_shuts_its_ray_down(builds: Builds) -> None:
    """Other processes embedded every image; the driver's model only the texts."""
    assert builds.actor_pids and os.getpid() not in builds.actor_pids
    assert builds.on_ray.embedded == builds.local.embedded > 0
    assert builds.local_items == builds.local.embedded + builds.local.texts_embedded
    assert builds.ray_items == builds.on_ray.texts_embedded == builds.local.texts_embedded
    assert not builds.ray_left_running


def test_ray_build_publishes_what_the_local_build_does(builds: Builds) -> None:
    local, on_ray = builds.local, builds.on_ray
    for name in ("read", "indexed", "images_ok", "images_failed", "cached", "vectors", "texts_embedded"):
        assert getattr(on_ray, name) == getattr(local, name), name
    assert local.images_failed == 3

    want, got = published(builds.local_dir), published(builds.ray_dir)
    assert sorted(got) == sorted(want) and len(want) == N_PRODUCTS
    for product_id, expected in want.items():
        actual = got[product_id]
        assert actual["records"] == expected["records"], product_id
        assert actual["positions"] == expected["positions"], product_id
        assert np.allclose(actual["vectors"], expected["vectors"], atol=1e-5), product_id
        assert np.allclose(actual["text"], expected["text"], atol=1e-5), product_id
        assert len(actual["features"]) == len(expected["features"]), product_id
        for got_features, want_features in zip(actual["features"], expected["features"]):
            assert np.allclose(got_features, want_features, atol=1e-2), product_id  # stored as fp16


def test_ray_build_records_bad_images_and_thumbnails_as_the_local_build_does(builds: Builds) -> None:
    errors = ingest_errors(builds.ray_dir)
    assert errors == ingest_errors(builds.local_dir)
    assert {code for _, _, code, _ in errors} == {"unsupported_image", "payload_too_large", "image_fetch_failed"}
    thumbs = thumbnails(builds.local_dir)
    assert thumbnails(builds.ray_dir) == thumbs and len(thumbs) == builds.local.images_ok


def start_local_ray() -> None:
    """A caller's Ray on 127.0.0.1. Once, right after the fixture's cluster stopped, its raylet did not
    register within Ray's 30 s on 2 cores: a second start is Ray's startup, not what these tests check."""
    import ray

    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
            return
        except Exception as exc:
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()


def test_ray_rebuild_on_a_running_ray_embeds_nothing_cached(builds: Builds, tmp_path: Path, bad_world: Path,
                                                            encoder: Any, reranker: Any) -> None:
    """On the caller's Ray (used, left running), a rebuild reads the images but runs none through the model."""
    import ray

    index_dir = shutil.copytree(builds.ray_dir, tmp_path / "index")
    start_local_ray()
    try:
        again, _ = build(index_dir, bad_world, encoder, reranker, engine="ray")
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert again.embedded == 0 and again.cached == again.images_ok == builds.on_ray.images_ok
    assert published(index_dir).keys() == published(builds.ray_dir).keys()


def test_cli_refuses_a_bad_ray_address_in_one_line(bad_world: Path, tmp_path: Path) -> None:
    from tests.support import run_cli

    for flags, message in ((["--engine", "ray", "--ray-address", "http://head:10001"], "expected 'auto'"),
                           (["--ray-address", "auto"], "--ray-address needs --engine ray")):
        result = run_cli("index", "build", "--catalog", str(bad_world), "--index-dir", str(tmp_path), *flags)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
        assert not (tmp_path / "catalens.db").exists()  # refused before the build started


def test_ray_worker_with_other_weights_fails_the_build_with_a_typed_error(bad_world: Path, tmp_path: Path,
                                                                          encoder: Any) -> None:
    """An actor whose model is not the driver's (another node's install) must not fill the caches."""
    from catalens.config import Settings
    from catalens.errors import ModelLoadError
    from indexer.runner import BuildOptions, build_index

    other = dataclasses.replace(encoder, model_id=f"{encoder.model_id}-retrained")
    settings = Settings(index_dir=tmp_path, threads=1, batch_size=BATCH, reranker="none")
    with pytest.raises(ModelLoadError, match="a Ray worker loaded") as caught:
        build_index(settings, BuildOptions(catalog=bad_world, progress=False, engine="ray"), encoder=other)
    assert "\n" not in caught.value.message
    assert not (tmp_path / "ACTIVE").exists()
