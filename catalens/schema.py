"""The metadata tables (SQLAlchemy 2). Alembic migrations in migrations/ create and change them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Product(Base):
    """One catalog product; `id` is the FAISS id of its text vector."""

    __tablename__ = "products"
    # AUTOINCREMENT: a deleted row's id is never reused, so a stale FAISS vector can't alias it.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(String(256), unique=True, index=True)
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str | None] = mapped_column(String(256), index=True)
    brand: Mapped[str | None] = mapped_column(String(256), index=True)
    price: Mapped[float | None] = mapped_column(Float, index=True)
    currency: Mapped[str | None] = mapped_column(String(16))
    availability: Mapped[str] = mapped_column(String(32), default="in_stock", server_default="in_stock", index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    text_hash: Mapped[str] = mapped_column(String(64))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    images: Mapped[list[ProductImage]] = relationship(
        back_populates="product", cascade="all, delete-orphan", order_by="ProductImage.position")


class ProductImage(Base):
    """One image of a product; `id` is its FAISS id. status is 'ok' or 'error' (with reason)."""

    __tablename__ = "product_images"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_pk: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    thumbnail: Mapped[str | None] = mapped_column(Text)
    caption: Mapped[str | None] = mapped_column(Text)  # generated at index time (`index build --caption`)

    product: Mapped[Product] = relationship(back_populates="images")


class IndexVersion(Base):
    """A built (or failed) index version, whose files live in <index-dir>/versions/<version_id>/,
    or a live edit (kind 'edit': 'building' until its changes are logged, then 'ready')."""

    __tablename__ = "index_versions"

    version_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # building | ready | failed
    kind: Mapped[str] = mapped_column(String(16), default="build", server_default="build")  # build | edit
    model: Mapped[str] = mapped_column(String(512))
    dim: Mapped[int | None] = mapped_column(Integer)
    count: Mapped[int | None] = mapped_column(Integer)
    factory: Mapped[str | None] = mapped_column(String(128))
    catalog: Mapped[str | None] = mapped_column(Text)
    catalog_checksum: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IngestError(Base):
    """A catalog row or image that could not be ingested, with where and why."""

    __tablename__ = "ingest_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[str | None] = mapped_column(String(64), index=True)
    source_file: Mapped[str] = mapped_column(Text)
    row: Mapped[int | None] = mapped_column(Integer)
    product_id: Mapped[str | None] = mapped_column(String(256))
    field: Mapped[str | None] = mapped_column(String(128))
    code: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CatalogChange(Base):
    """One live change to the catalog since the active snapshot: the product's whole record after
    it (none for a delete) and, when its vectors changed, their new values (catalens.changes)."""

    __tablename__ = "catalog_changes"
    __table_args__ = {"sqlite_autoincrement": True}  # a sequence number is never reused

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    product_id: Mapped[str] = mapped_column(String(256), index=True)
    pk: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # upsert | patch | delete
    record: Mapped[str | None] = mapped_column(Text)
    vectors: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdminJob(Base):
    """A large admin batch run in the background: its input, progress and outcome."""

    __tablename__ = "admin_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # upsert | delete | compact
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | done | failed
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    errors: Mapped[list[str] | None] = mapped_column(JSON, default=list, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class VectorCollection(Base):
    """An index version held in an external vector store (Milvus): the change its collection was
    made at (base_seq) and the last live change applied to it. No row: not (fully) there."""

    __tablename__ = "vector_collections"

    version_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    base_seq: Mapped[int] = mapped_column(Integer, default=0)
    applied_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
