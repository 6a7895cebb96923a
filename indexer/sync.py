"""Sync stage: catalog rows -> the metadata store (products and their image lists), one transaction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from catalens.errors import CatalogError
from catalens.images import is_url
from catalens.records import DEFAULT_AVAILABILITY
from catalens.schema import IngestError, Product, ProductImage, utcnow
from indexer.catalog import CatalogRow, RowError, read_catalog


def read_rows(catalog: Path, *, images_root: Path | None, strict: bool) -> tuple[list[CatalogRow], list[RowError], int]:
    """(valid rows with image paths made absolute, bad rows, rows read); --strict stops at the first bad row."""
    root = images_root or catalog.resolve().parent
    rows: list[CatalogRow] = []
    errors: list[RowError] = []
    read = 0
    for item in read_catalog(catalog):
        read += 1
        if isinstance(item, RowError):
            if strict:
                raise CatalogError(f"{item} (--strict stops at the first bad row)")
            errors.append(item)
        else:
            rows.append(replace(item, images=tuple(resolve_source(src, root) for src in item.images)))
    if read == 0:
        raise CatalogError(f"{catalog}: the catalog has no rows")
    return rows, errors, read


def resolve_source(source: str, root: Path) -> str:
    """Store absolute paths, so the service can serve an image without knowing --images-root.

    Where a path may lead is checked when it is read (`build_roots`), not here.
    """
    if is_url(source) or Path(source).is_absolute():
        return source
    return str((root / source).resolve())


def record_row_errors(session: Session, version_id: str, errors: list[RowError]) -> None:
    session.add_all(IngestError(version_id=version_id, source_file=e.source_file, row=e.row,
                                product_id=e.product_id, field=e.field, code="bad_row",
                                message=e.message) for e in errors)


def sync_products(session: Session, rows: list[CatalogRow], *, full: bool) -> int:
    """Insert new and update changed products and their image lists; a full sync deletes the rest.

    Products keep their availability unless the row gives one (a catalog without the column
    must not put every product back in stock)."""
    query = select(Product).options(selectinload(Product.images))
    if not full:  # an incremental batch reads only its own products
        query = query.where(Product.product_id.in_([r.product_id for r in rows]))
    existing = {p.product_id: p for p in session.scalars(query)}
    for row in rows:
        product = existing.get(row.product_id)
        if product is None:
            product = Product(product_id=row.product_id)
            session.add(product)
        product.title, product.description = row.title, row.description
        product.category, product.brand, product.price = row.category, row.brand, row.price
        product.currency, product.attributes = row.currency, row.attributes
        if row.availability is not None or product.availability is None:
            product.availability = row.availability or DEFAULT_AVAILABILITY
        product.text_hash, product.deleted, product.updated_at = row.text_hash, False, utcnow()
        _sync_images(product, row.images)
    deleted = 0
    if full:
        present = {r.product_id for r in rows}
        for pid, product in existing.items():
            if pid not in present and not product.deleted:
                product.deleted = True
                deleted += 1
    return deleted


def _sync_images(product: Product, sources: tuple[str, ...]) -> None:
    current = {img.position: img for img in product.images}
    for position, source in enumerate(sources):
        img = current.get(position)
        if img is None:
            product.images.append(ProductImage(position=position, source=source, status="pending"))
        elif img.source != source:
            img.source, img.status, img.content_hash, img.error = source, "pending", None, None
    for position, img in current.items():
        if position >= len(sources):
            product.images.remove(img)
