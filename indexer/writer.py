"""Write stage: vectors and reranker features of every live product -> a validated staging version."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from catalens import artifacts
from catalens.artifacts import TEXT_ID_BASE
from catalens.config import Settings
from catalens.db import Sessions
from catalens.encoder import ModelSpec
from catalens.errors import PublishRefusedError
from catalens.schema import Product, ProductImage
from indexer.embedding_cache import EmbeddingCache


def collect_vectors(sessions: Sessions, cache: EmbeddingCache,
                    dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, image vectors, product ids, text vectors) for every live product, from the DB."""
    with sessions() as session:
        images = session.execute(
            select(ProductImage.id, ProductImage.content_hash, ProductImage.product_pk)
            .join(Product).where(Product.deleted.is_(False), ProductImage.status == "ok")
            .order_by(ProductImage.id)).all()
        products = session.execute(select(Product.id, Product.text_hash)
                                   .where(Product.deleted.is_(False)).order_by(Product.id)).all()
    with_image = {pk for _, _, pk in images}
    img_ids = [i for i, _, _ in images]
    img_vecs = [cache.get(f"img:{h}") for _, h, _ in images]
    text_ids = [pk for pk, _ in products]
    text_vecs = [cache.get(f"txt:{h}") for _, h in products]
    # Products with no usable image stay findable: their text vector joins the image index.
    for pk, vec in zip(text_ids, text_vecs):
        if pk not in with_image:
            img_ids.append(TEXT_ID_BASE + pk)
            img_vecs.append(vec)

    def stack(vectors: list[np.ndarray | None]) -> np.ndarray:
        present = [v for v in vectors if v is not None]
        if len(present) < len(vectors):  # the plan embeds every live item first: a miss is a bug
            raise PublishRefusedError("an embedding the plan expected is missing from the cache; rerun the build")
        return np.stack(present).astype(np.float32) if present else np.zeros((0, dim), np.float32)

    return np.array(img_ids, np.int64), stack(img_vecs), np.array(text_ids, np.int64), stack(text_vecs)


def write_version(settings: Settings, sessions: Sessions, cache: EmbeddingCache, spec: ModelSpec, dim: int,
                  model_id: str, *, version_id: str, catalog: str, checksum: str, factory: str | None,
                  images_root: str = "",
                  features: EmbeddingCache | None = None) -> artifacts.Manifest:
    """Build both FAISS indexes (and the reranker feature file) from the DB + caches into staging, validated."""
    img_ids, img_vecs, text_ids, text_vecs = collect_vectors(sessions, cache, dim)
    factory = factory or artifacts.default_factory(len(img_ids))
    images = artifacts.FaissIndex.build(img_vecs, img_ids, factory=factory)
    texts = artifacts.FaissIndex.build(text_vecs, text_ids, factory="Flat")
    _smoke_query(images, img_vecs, img_ids)
    rerank = collect_features(sessions, features) if features is not None else None
    manifest = artifacts.Manifest(
        version_id=version_id, model=spec.model, pretrained=spec.pretrained, dim=dim,
        count=images.ntotal, text_count=texts.ntotal, factory=factory, catalog=catalog,
        catalog_checksum=checksum, model_id=model_id, images_root=images_root,
        reranker=_feature_owner(features) if rerank is not None else None)
    staging = artifacts.staging_dir(settings.index_dir, version_id)
    artifacts.write_version_files(staging, manifest=manifest, images=images, texts=texts, rerank=rerank)
    artifacts.load_version(staging)  # validate what was written: counts, dimension, checksums
    return manifest


def collect_features(sessions: Sessions, features: EmbeddingCache) -> tuple[np.ndarray, np.ndarray] | None:
    """(image vector ids, (n, T, D) fp16 features) of every live image with stored features."""
    with sessions() as session:
        images = session.execute(
            select(ProductImage.id, ProductImage.content_hash).join(Product)
            .where(Product.deleted.is_(False), ProductImage.status == "ok").order_by(ProductImage.id)).all()
    ids, feats = [], []
    for image_id, digest in images:
        feat = features.get(f"rr:{digest}")
        if feat is not None:
            ids.append(image_id)
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
