"""The catalog of record: every product's current fields, read as records and restored from them.

Builds and live edits write the metadata tables; what queries see comes only from published
snapshots and the change log. So a refused, failed or killed build, and a rollback, put the
tables back to what queries see: the active snapshot's records with the live changes after it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from catalens import artifacts, changes
from catalens.config import Settings
from catalens.db import Sessions
from catalens.errors import CatalensError
from catalens.product_table import PRODUCTS, ProductTable
from catalens.records import DEFAULT_AVAILABILITY, ImageRecord, ProductRecord
from catalens.schema import Product, ProductImage, utcnow

LOG = logging.getLogger(__name__)


def read_records(session: Session, *, pks: Iterable[int] | None = None, live_only: bool = True) -> list[ProductRecord]:
    """Records of the catalog of record (live products, or the given pks), by pk; two queries, no ORM objects."""
    wanted = None if pks is None else sorted(set(pks))
    query = select(Product.id, Product.product_id, Product.title, Product.description, Product.category,
                   Product.brand, Product.price, Product.currency, Product.availability, Product.attributes,
                   Product.text_hash).order_by(Product.id)
    image_query = select(ProductImage.product_pk, ProductImage.id, ProductImage.position, ProductImage.source,
                         ProductImage.status, ProductImage.content_hash, ProductImage.error, ProductImage.thumbnail,
                         ProductImage.caption).order_by(ProductImage.product_pk, ProductImage.position)
    if live_only:
        query = query.where(Product.deleted.is_(False))
        image_query = image_query.join(Product).where(Product.deleted.is_(False))
    if wanted is not None:
        query = query.where(Product.id.in_(wanted))
        image_query = image_query.where(ProductImage.product_pk.in_(wanted))
    images: dict[int, list[ImageRecord]] = {}
    for pk, img_id, position, source, status, digest, error, thumbnail, caption in session.execute(image_query):
        images.setdefault(int(pk), []).append(ImageRecord(img_id, position, source, status, digest, error, thumbnail,
                                                          caption))
    return [ProductRecord(pk=int(pk), product_id=pid, title=title, description=desc or "", category=cat, brand=brand,
                          price=price, currency=cur, availability=avail or DEFAULT_AVAILABILITY,
                          attributes=dict(attrs or {}), text_hash=text_hash, images=tuple(images.get(int(pk), ())))
            for pk, pid, title, desc, cat, brand, price, cur, avail, attrs, text_hash in session.execute(query)]


def write_record(session: Session, record: ProductRecord) -> None:
    """Make the catalog of record hold exactly this record (its row and images, by id)."""
    values: dict[str, Any] = dict(product_id=record.product_id, title=record.title, description=record.description,
                  category=record.category, brand=record.brand, price=record.price, currency=record.currency,
                  availability=record.availability, attributes=record.attributes, text_hash=record.text_hash,
                  deleted=False, updated_at=utcnow())
    product = session.get(Product, record.pk)
    if product is None:
        session.add(Product(id=record.pk, **values))
    else:
        for name, value in values.items():
            setattr(product, name, value)
    session.flush()
    keep = [img.id for img in record.images]
    session.execute(delete(ProductImage).where(ProductImage.product_pk == record.pk, ProductImage.id.not_in(keep)))
    for img in record.images:
        row = session.get(ProductImage, img.id)
        fields: dict[str, Any] = dict(product_pk=record.pk, position=img.position, source=img.source, status=img.status,
                      content_hash=img.content_hash, error=img.error, thumbnail=img.thumbnail, caption=img.caption)
        if row is None:
            session.add(ProductImage(id=img.id, **fields))
        else:
            for name, value in fields.items():
                setattr(row, name, value)


def active_records(settings: Settings, session: Session) -> dict[int, ProductRecord] | None:
    """What queries see now, by pk (the active snapshot's products with the live changes applied),
    or None when there is no readable active version."""
    try:
        state = artifacts.read_active_state(settings.index_dir)
        if state is None:
            return None
        path = artifacts.versions_dir(settings.index_dir) / state.version_id
        artifacts.verify_version(path, checksums=False)
        table = ProductTable.load(path / PRODUCTS)
    except CatalensError as exc:
        LOG.warning("the catalog of record cannot be restored from the active version: %s", exc)
        return None
    records = {r.pk: r for r in table.all_records()}
    for change in changes.since(session, state.since_seq):
        if change.record is None:
            records.pop(change.pk, None)
        else:
            records[change.pk] = change.record
    return records


def restore_active(settings: Settings, sessions: Sessions, *, product_ids: Iterable[str] | None = None) -> int:
    """Put the catalog of record back to what queries see (all of it, or these products); returns
    the products rewritten. Without an active version (a first build failed) nothing is served,
    so nothing needs restoring."""
    with sessions.begin() as session:
        records = active_records(settings, session)
        if records is None:
            return 0
        return restore(session, records.values(), product_ids=product_ids)


def restore(session: Session, records: Iterable[ProductRecord], *, product_ids: Iterable[str] | None = None) -> int:
    """Rewrite rows that differ from the records; products without a record are marked deleted."""
    wanted = None if product_ids is None else set(product_ids)
    target = {r.pk: r for r in records if wanted is None or r.product_id in wanted}
    scope_pks = None
    if wanted is not None:
        scope_pks = set(session.scalars(select(Product.id).where(Product.product_id.in_(wanted)))) | set(target)
    current = {r.pk: r for r in read_records(session, pks=scope_pks, live_only=False)}
    deleted = set(session.scalars(select(Product.id).where(Product.deleted.is_(True))))
    rewritten = 0
    for pk, record in target.items():
        if current.get(pk) != record or pk in deleted:
            # A row with this product_id under another pk (added by the failed build) gives way.
            session.execute(delete(Product).where(Product.product_id == record.product_id, Product.id != pk))
            write_record(session, record)
            rewritten += 1
    gone = [pk for pk in current if pk not in target and pk not in deleted]
    if gone:
        session.execute(update(Product).where(Product.id.in_(gone)).values(deleted=True, updated_at=utcnow()))
    return rewritten + len(gone)
