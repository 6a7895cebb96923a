"""Plan stage: which images and texts a build must read and embed (everything else is cached)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from catalens import artifacts
from catalens.config import Settings
from catalens.db import Sessions
from catalens.errors import CatalensError
from catalens.images import resolve_roots
from catalens.schema import Product, ProductImage
from indexer.catalog import product_text
from indexer.embedding_cache import Caches, EmbeddingCache
from indexer.reader import ImageJob


def active_images_root(settings: Settings) -> Path | None:
    """The images root of the active version (its --images-root, else its catalog's folder)."""
    try:
        return artifacts.read_manifest(artifacts.active_version_path(settings.index_dir)).image_folder()
    except CatalensError:
        return None


def build_roots(settings: Settings, *, catalog: Path | None, images_root: Path | None,
                full: bool) -> tuple[Path, ...]:
    """Folders a build may read image files from: its images root, CATALENS_IMAGE_ROOTS and, for
    an incremental build (which also finishes images earlier builds left), the active catalog's."""
    own = images_root or (catalog.resolve().parent if catalog is not None else None)
    base = None if full else active_images_root(settings)
    return resolve_roots([own, base, *settings.image_roots])


def image_jobs(sessions: Sessions, caches: Caches | None = None,
               product_ids: set[str] | None = None, *, caption: bool = False,
               retry_failed: bool = False, only: bool = False) -> list[ImageJob]:
    """Images a build must read: all live ones, or (incremental) those of the given products
    plus any another build left unfinished (pending, or ok but missing from the caches);
    `only` those products' (a live edit: its cost follows the change, not the catalog).

    An image that failed ('error', its reason stored) is not read again by a full build unless
    retry_failed: a poisoned source must not cost every later build a fetch or a read.
    """
    query = select(ProductImage.id, ProductImage.source, ProductImage.status, ProductImage.content_hash,
                   ProductImage.caption, Product.product_id).join(Product).where(Product.deleted.is_(False))
    if only and product_ids is not None:
        query = query.where(Product.product_id.in_(product_ids))
    with sessions() as session:
        rows = session.execute(query.order_by(ProductImage.id)).all()
    jobs = []
    for image_id, source, status, digest, text, product_id in rows:
        needs_caption = caption and text is None
        unfinished = status == "pending" or (status == "ok" and (
            needs_caption or (caches is not None and (digest is None or not caches.has(digest)))))
        dead_letter = status == "error" and not retry_failed
        if unfinished or (product_ids is None and not dead_letter) or (product_ids and product_id in product_ids):
            jobs.append(ImageJob(image_id, source, needs_caption=needs_caption))
    return jobs


def text_jobs(sessions: Sessions, cache: EmbeddingCache, *,
              scope: set[str] | None = None, only: bool = False) -> tuple[dict[str, str], int]:
    """({text hash: text} of live products (`only` those in scope) missing from the cache, cache hits within scope)."""
    query = select(Product.product_id, Product.text_hash, Product.title, Product.description) \
        .where(Product.deleted.is_(False))
    if only and scope is not None:
        query = query.where(Product.product_id.in_(scope))
    with sessions() as session:
        products = session.execute(query.order_by(Product.id)).all()
    todo: dict[str, str] = {}
    hits = 0
    for product_id, text_hash, title, description in products:
        if f"txt:{text_hash}" not in cache:
            todo[text_hash] = product_text(title, description)
        elif scope is None or product_id in scope:
            hits += 1
    return todo, hits
