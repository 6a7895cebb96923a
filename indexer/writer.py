"""Write stage: the catalog of record (products, vectors, reranker features) -> a validated staging version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from catalens import artifacts
from catalens.artifacts import TEXT_ID_BASE
from catalens.calibration import CALIBRATION, Calibration, save_calibration
from catalens.config import Settings
from catalens.db import Sessions
from catalens.encoder import ModelSpec
from catalens.errors import PublishRefusedError
from catalens.keywords import KEYWORDS, write_keyword_index
from catalens.lexicon import LEXICON, Lexicon, save_lexicon
from catalens.product_table import PRODUCTS, write_products
from catalens.records import ProductRecord
from indexer.embedding_cache import EmbeddingCache
from indexer.store import read_records


def collect_vectors(records: list[ProductRecord], cache: EmbeddingCache,
                    dim: int) -> tuple[np.ndarray, np.ndarray, dict[int, list[tuple[int, int]]]]:
    """(vector ids, vectors, product pk -> [(vector id, image position or -1)]) of the products' ok
    images; a product with none is findable by its text vector (id TEXT_ID_BASE + pk)."""
    ids: list[int] = []
    vecs: list[np.ndarray | None] = []
    owned: dict[int, list[tuple[int, int]]] = {}
    for record in records:
        for img in record.images:
            if img.status == "ok":
                ids.append(img.id)
                vecs.append(cache.get(f"img:{img.content_hash}"))
                owned.setdefault(record.pk, []).append((img.id, img.position))
        if record.pk not in owned:
            ids.append(TEXT_ID_BASE + record.pk)
            vecs.append(cache.get(f"txt:{record.text_hash}"))
            owned[record.pk] = [(TEXT_ID_BASE + record.pk, -1)]
    present = [v for v in vecs if v is not None]
    if len(present) < len(vecs):  # the plan embeds every live item first: a miss is a bug
        raise PublishRefusedError("an embedding the plan expected is missing from the cache; rerun the build")
    stacked = np.stack(present).astype(np.float32) if present else np.zeros((0, dim), np.float32)
    return np.array(ids, np.int64), stacked, owned


def text_vectors(records: list[ProductRecord], cache: EmbeddingCache, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(product pks, text vectors) of the products."""
    vecs = [cache.get(f"txt:{r.text_hash}") for r in records]
    if any(v is None for v in vecs):
        raise PublishRefusedError("a text embedding the plan expected is missing from the cache; rerun the build")
    stacked = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, dim), np.float32)  # type: ignore[arg-type]
    return np.array([r.pk for r in records], np.int64), stacked


def write_version(settings: Settings, sessions: Sessions, cache: EmbeddingCache, spec: ModelSpec, dim: int,
                  model_id: str, *, version_id: str, catalog: str, checksum: str, factory: str | None,
                  images_root: str = "", watermark: int = 0, features: EmbeddingCache | None = None,
                  calibrate: Callable[[list[ProductRecord], Lexicon], Calibration | None] | None = None
                  ) -> artifacts.Manifest:
    """A whole snapshot of the catalog of record into staging/, validated (see write_snapshot);
    `calibrate` fits its match probabilities on its records and lexicon."""
    with sessions() as session:
        records = read_records(session)
    lexicon = Lexicon.mine(records)
    return write_snapshot(records, artifacts.staging_dir(settings.index_dir, version_id), cache, spec, dim, model_id,
                          version_id=version_id, catalog=catalog, checksum=checksum, factory=factory,
                          images_root=images_root, watermark=watermark, features=features,
                          calibration=calibrate(records, lexicon) if calibrate else None, lexicon=lexicon)


def write_snapshot(records: list[ProductRecord], staging: Path, cache: EmbeddingCache, spec: ModelSpec, dim: int,
                   model_id: str, *, version_id: str, catalog: str, checksum: str, factory: str | None,
                   images_root: str = "", watermark: int = 0, features: EmbeddingCache | None = None,
                   calibration: Calibration | None = None, lexicon: Lexicon | None = None) -> artifacts.Manifest:
    """These products as a version in `staging`, validated: both FAISS indexes, the products file, the
    keyword index, the facet lexicon (mined from the records unless given), the match-probability
    calibration, the reranker features; `watermark` is the last live change it holds. Vectors come from the caches."""
    img_ids, img_vecs, owned = collect_vectors(records, cache, dim)
    text_ids, text_vecs = text_vectors(records, cache, dim)
    factory = factory or artifacts.default_factory(len(img_ids))
    images = artifacts.FaissIndex.build(img_vecs, img_ids, factory=factory)
    texts = artifacts.FaissIndex.build(text_vecs, text_ids, factory="Flat")
    _smoke_query(images, img_vecs, img_ids)
    rerank = collect_features(records, features) if features is not None else None
    manifest = artifacts.Manifest(
        version_id=version_id, model=spec.model, pretrained=spec.pretrained, dim=dim,
        count=images.ntotal, text_count=texts.ntotal, factory=factory, catalog=catalog,
        catalog_checksum=checksum, model_id=model_id, images_root=images_root, watermark=watermark,
        reranker=_feature_owner(features) if rerank is not None else None)
    staging.mkdir(parents=True, exist_ok=True)
    write_products(staging / PRODUCTS, records, owned)
    write_keyword_index(staging / KEYWORDS, records)
    save_lexicon(staging / LEXICON, lexicon or Lexicon.mine(records))
    written: tuple[str, ...] = (PRODUCTS, KEYWORDS, LEXICON)
    if calibration is not None:
        save_calibration(staging / CALIBRATION, calibration)
        written += (CALIBRATION,)
    artifacts.write_version_files(staging, manifest=manifest, images=images, texts=texts, rerank=rerank,
                                  written=written)
    artifacts.load_version(staging)  # validate what was written: counts, dimension, checksums
    return manifest


def collect_features(records: list[ProductRecord], features: EmbeddingCache) -> tuple[np.ndarray, np.ndarray] | None:
    """(image vector ids, (n, T, D) fp16 features) of every ok image with stored features."""
    ids, feats = [], []
    for record in records:
        for img in record.images:
            feat = features.get(f"rr:{img.content_hash}") if img.status == "ok" else None
            if feat is not None:
                ids.append(img.id)
                feats.append(feat)
    if not feats:
        return None
    return np.array(ids, np.int64), np.stack(feats).astype(np.float16)


def _feature_owner(features: EmbeddingCache | None) -> str | None:
    return (features.dir / "MODEL").read_text() if features is not None else None


def _smoke_query(index: artifacts.FaissIndex, vectors: np.ndarray, ids: np.ndarray) -> None:
    """A vector must find itself: catches a broken factory or id mapping before publishing."""
    if not len(ids):
        raise PublishRefusedError("nothing to index: every product was rejected (see `catalens index errors`)")
    probe = vectors[:1]
    _, found = index.search(probe, min(10, index.ntotal))
    if ids[0] not in found[0]:
        raise PublishRefusedError("smoke query failed: a vector did not find itself in the new index")
