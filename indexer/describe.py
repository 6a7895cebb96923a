"""Descriptions for products that have none, written at index time from their first image.

`index build --describe` (or CATALENS_DESCRIBE=missing): after the images are embedded and
before texts are, each live product without a description gets one from the captioner, read
off its first image's CLIP vector, marked `description_source: generated` in its attributes.
It is then embedded, keyword-indexed and shown like any description, with a "generated" label.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from catalens.captioner import Captioner
from catalens.db import Sessions
from catalens.schema import Product
from indexer.catalog import product_text
from indexer.embedding_cache import EmbeddingCache

LOG = logging.getLogger(__name__)
SOURCE_KEY = "description_source"
GENERATED = "generated"
BATCH = 256


def describe_missing(sessions: Sessions, cache: EmbeddingCache, captioner: Captioner, *,
                     scope: set[str] | None = None) -> int:
    """Write a generated description for the live products (in scope) that have none; returns how many."""
    written = 0
    with sessions.begin() as session:
        query = (select(Product).options(selectinload(Product.images))
                 .where(Product.deleted.is_(False), or_(Product.description.is_(None), Product.description == "")))
        if scope is not None:
            query = query.where(Product.product_id.in_(scope))
        products = list(session.execute(query.order_by(Product.id)).scalars())
        for start in range(0, len(products), BATCH):
            found = [(p, _first_vector(p, cache)) for p in products[start:start + BATCH]]
            batch = [(p, v) for p, v in found if v is not None]  # text-only products: nothing to read
            if not batch:
                continue
            vectors = np.stack([v for _, v in batch])
            for product, caption in zip((p for p, _ in batch), captioner.captions(vectors)):
                product.description = _sentence(caption)
                product.attributes = {**(product.attributes or {}), SOURCE_KEY: GENERATED}
                product.text_hash = hashlib.sha256(product_text(product.title, product.description).encode()).hexdigest()
                written += 1
    if written:
        LOG.info("wrote %d generated descriptions", written)
    return written


def _first_vector(product: Product, cache: EmbeddingCache) -> np.ndarray | None:
    for img in sorted(product.images, key=lambda i: i.position):
        if img.status == "ok" and img.content_hash:
            vec = cache.get(f"img:{img.content_hash}")
            if vec is not None:
                return np.asarray(vec, np.float32)
    return None


def _sentence(caption: str) -> str:
    text = caption.strip()
    return f"{text[:1].upper()}{text[1:]}." if text else ""
