"""Index changes that need no model: deleting products and republishing from the embedding cache."""

from __future__ import annotations

from sqlalchemy import select, update

from catalens import artifacts
from catalens.config import Settings
from catalens.encoder import ModelSpec
from catalens.schema import IndexVersion, Product
from indexer.builder import open_database, write_version
from indexer.embedding_cache import EmbeddingCache
from indexer.lock import builder_lock


def delete_products(settings: Settings, product_ids: list[str]) -> dict:
    """Mark products deleted (one transaction) and publish a version without them."""
    with builder_lock(settings.index_dir):
        manifest = artifacts.read_manifest(artifacts.active_version_path(settings.index_dir))
        _, sessions = open_database(settings)
        with sessions.begin() as session:  # type: ignore[attr-defined]
            live = set(session.scalars(select(Product.product_id).where(
                Product.product_id.in_(product_ids), Product.deleted.is_(False))))
            session.execute(update(Product).where(Product.product_id.in_(live)).values(deleted=True))
        spec = ModelSpec(manifest.model, manifest.pretrained)
        cache = EmbeddingCache(settings.index_dir / "embeddings", manifest.model_id)
        version_id = artifacts.new_version_id()
        new = write_version(settings, sessions, cache, spec, manifest.dim, manifest.model_id, version_id=version_id,
                            catalog=manifest.catalog, checksum=manifest.catalog_checksum,
                            factory=manifest.factory)
        artifacts.promote_staging(settings.index_dir, version_id)
        artifacts.set_active(settings.index_dir, version_id)
        with sessions.begin() as session:  # type: ignore[attr-defined]
            session.add(IndexVersion(version_id=version_id, status="ready", model=manifest.model_id, dim=new.dim,
                                     count=new.count, factory=new.factory, catalog=manifest.catalog,
                                     catalog_checksum=manifest.catalog_checksum,
                                     summary={"deleted": sorted(live)}))
        return {"deleted": len(live), "missing": len(set(product_ids) - live), "version_id": version_id}
