"""`--engine ray`: a build on a local Ray publishes exactly what the single-process build does."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import sqlite3
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
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpx, a few KB on disk
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


def test_ray_build_publishes_what_the_local_build_does(
        bad_world: Path, tmp_path: Path, encoder: Any, reranker: Any, caplog: pytest.LogCaptureFixture) -> None:
    import ray

    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    local, local_embedder = build(local_dir, bad_world, encoder, reranker)
    with caplog.at_level(logging.INFO, logger="indexer.ray_engine"):
        on_ray, ray_embedder = build(ray_dir, bad_world, encoder, reranker, engine="ray")

    # It ran on Ray: actors in other processes embedded every image, the driver's model only the texts,
    # and the local Ray the build started is shut down again.
    pids = [int(p) for p in re.findall(r"\d+", caplog.text.partition("pids")[2])]
    assert pids and os.getpid() not in pids, caplog.text
    assert on_ray.embedded == local.embedded > 0
    assert local_embedder.items == local.embedded + local.texts_embedded
    assert ray_embedder.items == on_ray.texts_embedded == local.texts_embedded
    assert not ray.is_initialized()

    for name in ("read", "indexed", "images_ok", "images_failed", "cached", "vectors", "texts_embedded"):
        assert getattr(on_ray, name) == getattr(local, name), name
    assert local.images_failed == 3

    want, got = published(local_dir), published(ray_dir)
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

    errors = ingest_errors(ray_dir)
    assert errors == ingest_errors(local_dir)
    assert {code for _, _, code, _ in errors} == {"unsupported_image", "payload_too_large", "image_fetch_failed"}
    assert thumbnails(ray_dir) == thumbnails(local_dir) and len(thumbnails(local_dir)) == local.images_ok


def test_ray_build_embeds_nothing_cached(bad_world: Path, tmp_path: Path, encoder: Any, reranker: Any) -> None:
    """A second Ray build over the same index reads the images but runs none through the model."""
    index_dir = tmp_path / "index"
    first, _ = build(index_dir, bad_world, encoder, reranker, engine="ray")
    again, _ = build(index_dir, bad_world, encoder, reranker, engine="ray")
    assert first.embedded > 0
    assert again.embedded == 0 and again.cached == first.images_ok == again.images_ok
