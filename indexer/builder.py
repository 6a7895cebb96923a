"""Runner: catalog -> metadata (one transaction) -> embeddings (resumable) -> index version -> publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from catalens import artifacts
from catalens.config import Settings
from catalens.db import check_integrity, create_db_engine, create_session_factory, upgrade_database
from catalens.encoder import ClipEncoder, ModelSpec, load_clip
from catalens.errors import CatalensError, CatalogError
from catalens.schema import IndexVersion, IngestError, Product, ProductImage, utcnow
from indexer.catalog import CatalogRow, RowError, catalog_checksum, read_catalog
from indexer.embedder import Embedder
from indexer.embedding_cache import EmbeddingCache
from indexer.lock import builder_lock
from indexer.reader import ImageJob, ImageReader, LoadedImage

LOG = logging.getLogger(__name__)
# Text-only fallback vectors (products whose every image failed) share the image index
# under ids offset by this base, so they can never collide with image row ids.
TEXT_ID_BASE = 1 << 40


class PublishRefusedError(CatalensError):
    code, http_status = "publish_refused", 422


@dataclass
class BuildSummary:
    """What a build did, printed at the end and stored with the version."""

    version_id: str | None
    catalog: str
    read: int = 0
    indexed: int = 0
    skipped: int = 0
    deleted: int = 0
    images_ok: int = 0
    images_failed: int = 0
    embedded: int = 0
    cached: int = 0
    vectors: int = 0
    factory: str = ""
    seconds: float = 0.0
    errors_hint: str = ""
    error_lines: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["error_lines"] = self.error_lines[:20]
        return data


@dataclass(frozen=True)
class BuildOptions:
    catalog: Path
    images_root: Path | None = None
    strict: bool = False
    factory: str | None = None
    full: bool = True  # a full build: products absent from the catalog are deleted
    progress: bool = True
    keep: int = 3


def open_database(settings: Settings) -> tuple[object, object]:
    """Engine + session factory, upgraded to the newest schema, integrity-checked."""
    engine = create_db_engine(settings.db_url)
    check_integrity(engine)
    upgrade_database(settings.db_url)
    return engine, create_session_factory(engine)


def build_index(settings: Settings, options: BuildOptions, *, encoder: ClipEncoder | None = None,
                embedder: Embedder | None = None) -> BuildSummary:
    """Build a new index version from a catalog and make it active; safe to kill and rerun."""
    start = time.monotonic()
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    with builder_lock(settings.index_dir):
        artifacts.clean_staging(settings.index_dir)
        _, sessions = open_database(settings)
        encoder = encoder or load_clip(ModelSpec(settings.model, settings.pretrained), device=settings.device)
        embedder = embedder or Embedder(encoder)
        _set_threads(settings)
        version_id = artifacts.new_version_id()
        summary = BuildSummary(version_id=version_id, catalog=str(options.catalog))
        checksum = catalog_checksum(options.catalog) if options.catalog.is_file() else ""
        with sessions.begin() as session:
            session.add(IndexVersion(version_id=version_id, status="building", model=encoder.model_id,
                                     catalog=str(options.catalog), catalog_checksum=checksum))
        try:
            rows, errors = _read_rows(options, summary)
            with sessions.begin() as session:
                _record_row_errors(session, version_id, errors)
                summary.deleted = sync_products(session, rows, full=options.full)
            cache = EmbeddingCache(settings.index_dir / "embeddings", encoder.model_id)
            _embed_images(settings, sessions, options, encoder, embedder, cache, version_id, summary)
            _embed_texts(sessions, embedder, cache, summary, batch_size=settings.batch_size)
            manifest = write_version(settings, sessions, cache, encoder.spec, encoder.dim, encoder.model_id,
                                     version_id=version_id,
                                     catalog=str(options.catalog), checksum=checksum, factory=options.factory)
            summary.vectors, summary.factory = manifest.count, manifest.factory
            if summary.skipped or summary.images_failed:
                summary.errors_hint = f"catalens index errors --index-dir {settings.index_dir} --version {version_id}"
            _refuse_bad_build(settings, summary)
            artifacts.promote_staging(settings.index_dir, version_id)
            artifacts.set_active(settings.index_dir, version_id)
            artifacts.prune_versions(settings.index_dir, options.keep)
        except BaseException as exc:
            with sessions.begin() as session:
                version = session.get(IndexVersion, version_id)
                if version is not None:
                    version.status = "failed"
                    version.summary = {"error": str(exc)[:2000]}
            artifacts.clean_staging(settings.index_dir)
            raise
        summary.seconds = round(time.monotonic() - start, 2)
        with sessions.begin() as session:
            version = session.get(IndexVersion, version_id)
            version.status, version.dim, version.count = "ready", manifest.dim, manifest.count
            version.factory, version.summary = manifest.factory, summary.as_dict()
        return summary


def _set_threads(settings: Settings) -> None:
    import faiss
    import torch

    threads = settings.torch_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def _resolve_source(source: str, root: Path) -> str:
    """Store absolute paths, so the service can serve an image without knowing --images-root."""
    if source.startswith(("http://", "https://")) or Path(source).is_absolute():
        return source
    return str((root / source).resolve())


def _read_rows(options: BuildOptions, summary: BuildSummary) -> tuple[list[CatalogRow], list[RowError]]:
    root = options.images_root or options.catalog.resolve().parent
    rows: list[CatalogRow] = []
    errors: list[RowError] = []
    for item in read_catalog(options.catalog):
        summary.read += 1
        if isinstance(item, RowError):
            if options.strict:
                raise CatalogError(f"{item} (--strict stops at the first bad row)")
            errors.append(item)
            summary.error_lines.append(str(item))
        else:
            rows.append(replace(item, images=tuple(_resolve_source(src, root) for src in item.images)))
    summary.skipped = len(errors)
    summary.indexed = len(rows)
    if summary.read == 0:
        raise CatalogError(f"{options.catalog}: the catalog has no rows")
    return rows, errors


def _record_row_errors(session: Session, version_id: str, errors: list[RowError]) -> None:
    session.add_all(IngestError(version_id=version_id, source_file=e.source_file, row=e.row,
                                product_id=e.product_id, field=e.field, code="bad_row",
                                message=e.message) for e in errors)


def sync_products(session: Session, rows: list[CatalogRow], *, full: bool) -> int:
    """Insert new and update changed products and their image lists; a full sync deletes the rest."""
    existing = {p.product_id: p for p in session.scalars(
        select(Product).options(selectinload(Product.images)))}
    for row in rows:
        product = existing.get(row.product_id)
        if product is None:
            product = Product(product_id=row.product_id)
            session.add(product)
        product.title, product.description = row.title, row.description
        product.category, product.brand, product.price = row.category, row.brand, row.price
        product.currency, product.attributes = row.currency, row.attributes
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


def _image_jobs(sessions, product_ids: set[str] | None = None) -> list[ImageJob]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        query = select(ProductImage.id, ProductImage.source).join(Product).where(Product.deleted.is_(False))
        if product_ids is not None:
            query = query.where(Product.product_id.in_(product_ids))
        return [ImageJob(i, s) for i, s in session.execute(query.order_by(ProductImage.id))]


def _batches(items: list[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _embed_images(settings: Settings, sessions, options: BuildOptions, encoder: ClipEncoder,  # type: ignore[no-untyped-def]
                  embedder: Embedder, cache: EmbeddingCache, version_id: str, summary: BuildSummary) -> None:
    """Read + decode in worker threads one batch ahead of the model; write each batch as a shard."""
    from tqdm import tqdm

    jobs = _image_jobs(sessions)
    reader = ImageReader(settings, images_root=options.images_root, preprocess=encoder.preprocess,
                         image_size=encoder.image_size, is_cached=lambda h: f"img:{h}" in cache)
    bar = tqdm(total=len(jobs), desc="embedding images", unit="img", disable=not options.progress)
    with ThreadPoolExecutor(settings.decode_workers) as pool:
        batches = list(_batches(jobs, settings.batch_size))
        pending = pool.map(reader, batches[0]) if batches else iter(())
        for i in range(len(batches)):
            loaded = list(pending)
            if i + 1 < len(batches):
                pending = pool.map(reader, batches[i + 1])  # decode the next batch during inference
            _embed_loaded(loaded, embedder, cache, summary)
            _record_images(sessions, loaded, version_id)
            bar.update(len(loaded))
    bar.close()


def _embed_loaded(loaded: list[LoadedImage], embedder: Embedder, cache: EmbeddingCache,
                  summary: BuildSummary) -> None:
    todo = [item for item in loaded if item.pixels is not None]
    for item in loaded:
        if item.error:
            summary.images_failed += 1
        else:
            summary.images_ok += 1
    summary.cached += sum(1 for item in loaded if not item.error and item.pixels is None)
    if todo:
        vectors = embedder.embed_pixels([item.pixels for item in todo])
        cache.put_many([f"img:{item.content_hash}" for item in todo], vectors)
        summary.embedded += len(todo)
        for item in todo:
            item.pixels = None


def _record_images(sessions, loaded: list[LoadedImage], version_id: str) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as session:
        for item in loaded:
            img = session.get(ProductImage, item.image_id)
            if img is None:
                continue
            img.content_hash, img.thumbnail = item.content_hash, item.thumbnail
            img.status, img.error = ("error", f"{item.error_code}: {item.error}") if item.error else ("ok", None)
            if item.error:
                session.add(IngestError(version_id=version_id, source_file=img.source, row=None,
                                        product_id=img.product.product_id, field="image",
                                        code=item.error_code or "image_error", message=item.error))


def _embed_texts(sessions, embedder: Embedder, cache: EmbeddingCache, summary: BuildSummary,  # type: ignore[no-untyped-def]
                 *, batch_size: int) -> None:
    with sessions() as session:
        products = session.execute(select(Product.text_hash, Product.title, Product.description)
                                   .where(Product.deleted.is_(False))).all()
    todo: dict[str, str] = {}
    for text_hash, title, description in products:
        if f"txt:{text_hash}" not in cache:
            todo[text_hash] = f"{title}. {description}".strip(". ") if description else title
    keys = list(todo)
    for i in range(0, len(keys), batch_size):
        chunk = keys[i:i + batch_size]
        cache.put_many([f"txt:{k}" for k in chunk], embedder.embed_texts([todo[k] for k in chunk]))


def collect_vectors(sessions, cache: EmbeddingCache, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
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

    def stack(vectors: list) -> np.ndarray:
        return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)

    return np.array(img_ids, np.int64), stack(img_vecs), np.array(text_ids, np.int64), stack(text_vecs)


def write_version(settings: Settings, sessions, cache: EmbeddingCache, spec: ModelSpec, dim: int,  # type: ignore[no-untyped-def]
                  model_id: str, *,
                  version_id: str, catalog: str, checksum: str, factory: str | None) -> artifacts.Manifest:
    """Build both FAISS indexes from the DB + embedding cache into staging, and validate them."""
    img_ids, img_vecs, text_ids, text_vecs = collect_vectors(sessions, cache, dim)
    factory = factory or artifacts.default_factory(len(img_ids))
    images = artifacts.FaissIndex.build(img_vecs, img_ids, factory=factory)
    texts = artifacts.FaissIndex.build(text_vecs, text_ids, factory="Flat")
    _smoke_query(images, img_vecs, img_ids)
    manifest = artifacts.Manifest(
        version_id=version_id, model=spec.model, pretrained=spec.pretrained, dim=dim,
        count=images.ntotal, text_count=texts.ntotal, factory=factory, catalog=catalog,
        catalog_checksum=checksum, model_id=model_id)
    staging = artifacts.staging_dir(settings.index_dir, version_id)
    artifacts.write_version_files(staging, manifest=manifest, images=images, texts=texts)
    artifacts.load_version(staging)  # validate what was written: counts, dimension, checksums
    return manifest


def _smoke_query(index: artifacts.FaissIndex, vectors: np.ndarray, ids: np.ndarray) -> None:
    """A vector must find itself: catches a broken factory or id mapping before publishing."""
    if not len(ids):
        raise PublishRefusedError("nothing to index: every product was rejected (see `catalens index errors`)")
    probe = vectors[:1]
    _, found = index.search(probe, min(10, index.ntotal))
    if ids[0] not in found[0]:
        raise PublishRefusedError("smoke query failed: a vector did not find itself in the new index")


def _refuse_bad_build(settings: Settings, summary: BuildSummary) -> None:
    total = summary.images_ok + summary.images_failed
    if total and summary.images_failed / total > settings.max_error_ratio:
        raise PublishRefusedError(
            f"{summary.images_failed} of {total} images failed (over the {settings.max_error_ratio:.0%} "
            f"limit, CATALENS_MAX_ERROR_RATIO); the active index was not changed. "
            f"See: catalens index errors --index-dir {settings.index_dir}")
