"""Runner: catalog -> metadata (one transaction) -> embeddings (resumable) -> index version -> publish."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from catalens import artifacts
from catalens.artifacts import TEXT_ID_BASE
from catalens.config import Settings
from catalens.db import open_database
from catalens.encoder import ClipEncoder, ModelSpec, load_clip
from catalens.errors import (
    CaptionUnsupportedError,
    CatalensError,
    CatalogError,
    InsufficientStorageError,
    PublishRefusedError,
)
from catalens.images import is_url, resolve_roots
from catalens.reranker import Reranker, load_reranker
from catalens.schema import IndexVersion, IngestError, Product, ProductImage, utcnow
from indexer.catalog import CatalogRow, RowError, catalog_checksum, check_catalog_path, read_catalog
from indexer.embedder import Embedder
from indexer.embedding_cache import EmbeddingCache
from indexer.lock import builder_lock
from indexer.reader import ImageJob, ImageReader, LoadedImage

LOG = logging.getLogger(__name__)
# An incremental batch smaller than this is never refused for its image failure ratio: one
# upserted product with a broken image is published text-only and its error reported.
MIN_IMAGES_FOR_RATIO = 10
# Merge the embedding cache's shards once a build leaves more than this many.
COMPACT_SHARDS = 64


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
    embedded: int = 0  # images run through the model
    cached: int = 0  # images whose vector came from the embedding cache (no model time)
    texts_embedded: int = 0  # distinct product texts run through the model
    texts_cached: int = 0  # product texts whose vector came from the cache
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
    caption: bool = False  # store a generated caption per image (needs a reranker that can caption)
    # Images that failed in an earlier build are dead letters: read again only when their
    # product is upserted, their source changes, or a build asks for it here.
    retry_failed: bool = False


def fail_stale_builds(sessions) -> list[str]:  # type: ignore[no-untyped-def]
    """Mark versions still 'building' as failed; call only while holding the builder lock.

    Whoever holds the lock is the only live builder, so any other 'building' row belongs
    to a builder that died (SIGKILL, OOM, power loss) before it could record its end.
    """
    with sessions.begin() as session:
        stale = list(session.scalars(select(IndexVersion.version_id).where(IndexVersion.status == "building")))
        if stale:
            session.execute(update(IndexVersion).where(IndexVersion.version_id.in_(stale)).values(
                status="failed", summary={"error": "the builder died before finishing (found by a later build)"}))
    if stale:
        LOG.warning("marked %d interrupted build(s) as failed: %s", len(stale), ", ".join(stale))
    return stale


def build_index(settings: Settings, options: BuildOptions, *, encoder: ClipEncoder | None = None,
                embedder: Embedder | None = None) -> BuildSummary:
    """Build a new index version from a catalog and make it active; safe to kill and rerun.

    A full build syncs the whole catalog (products absent from it are deleted); an
    incremental one (options.full=False) upserts its rows and reads only their images.
    Either way only images and texts missing from the embedding cache reach the model.
    """
    start = time.monotonic()
    check_catalog_path(options.catalog)
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    with builder_lock(settings.index_dir):
        artifacts.clean_staging(settings.index_dir)
        artifacts.check_free_space(settings.index_dir, settings.min_free_bytes)  # 507 before any write
        try:
            artifacts.reserve_space(settings.index_dir)  # freed by a failed build to record its failure
            engine, sessions = open_database(settings.db_url)
            try:
                return _build_locked(settings, options, sessions, encoder=encoder, embedder=embedder, start=start)
            finally:
                engine.dispose()
        except Exception as exc:
            if isinstance(exc, InsufficientStorageError) or not artifacts.is_disk_full(exc, settings.index_dir):
                raise
            reason = (str(exc) or type(exc).__name__).splitlines()[0][:300]
            raise InsufficientStorageError(
                f"the disk of {settings.index_dir} is full ({reason}); the build stopped, its staging files "
                "were removed and the active index was not changed") from exc
        finally:
            artifacts.clean_staging(settings.index_dir)  # the reserve (a failed build has removed it already)


def _build_locked(settings: Settings, options: BuildOptions, sessions, *,  # type: ignore[no-untyped-def]
                  encoder: ClipEncoder | None, embedder: Embedder | None, start: float) -> BuildSummary:
    fail_stale_builds(sessions)
    encoder = encoder or load_clip(ModelSpec(settings.model, settings.pretrained), device=settings.device)
    embedder = embedder or Embedder(encoder)
    if embedder.reranker is None and (settings.rerank_features or options.caption):
        embedder.reranker = load_reranker(settings.reranker, clip=encoder, device=encoder.device)
    if options.caption and not (embedder.reranker and embedder.reranker.can_caption):
        raise CaptionUnsupportedError(
            f"--caption needs a reranker that can write captions (CATALENS_RERANKER=coca:...); "
            f"{settings.reranker!r} cannot")
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
        _remove_partial_shards(cache)
        features = feature_cache(settings, embedder.reranker) if settings.rerank_features else None
        if features is not None:
            _remove_partial_shards(features)
        scope = None if options.full else {r.product_id for r in rows}
        _embed_images(settings, sessions, options, encoder, embedder, Caches(cache, features), version_id, summary,
                      scope=scope)
        _embed_texts(sessions, embedder, cache, summary, batch_size=settings.batch_size, scope=scope)
        # The manifest names the catalog a later `rebuild` without --catalog re-reads: an
        # incremental batch is not a whole catalog, so it keeps the one it was applied to.
        base_catalog, base_checksum = (str(options.catalog.resolve()), checksum) if options.full \
            else _base_catalog(settings, str(options.catalog.resolve()), checksum)
        manifest = write_version(settings, sessions, cache, encoder.spec, encoder.dim, encoder.model_id,
                                 version_id=version_id, features=features,
                                 catalog=base_catalog, checksum=base_checksum, factory=options.factory)
        summary.vectors, summary.factory = manifest.count, manifest.factory
        if summary.skipped or summary.images_failed:
            summary.errors_hint = f"catalens index errors --index-dir {settings.index_dir} --version {version_id}"
        _refuse_bad_build(settings, summary, full=options.full)
        artifacts.promote_staging(settings.index_dir, version_id)
        artifacts.set_active(settings.index_dir, version_id)
        artifacts.prune_versions(settings.index_dir, options.keep)
    except BaseException as exc:
        # Free space first (staging and its reserve): on a full disk, recording the failure needs it.
        artifacts.clean_staging(settings.index_dir)
        for tmp in (*settings.index_dir.glob("embeddings/*/.shard-*.tmp"),
                    *settings.index_dir.glob("features/*/.shard-*.tmp")):
            tmp.unlink(missing_ok=True)
        error = f"disk full: {exc}" if artifacts.is_disk_full(exc) else str(exc)
        try:
            with sessions.begin() as session:
                version = session.get(IndexVersion, version_id)
                if version is not None:
                    version.status = "failed"
                    version.summary = {"error": error[:2000]}
        except Exception as record_exc:  # the next build marks it failed (fail_stale_builds)
            LOG.error("could not record build %s as failed (%s): %s", version_id, error[:200], record_exc)
        raise
    summary.seconds = round(time.monotonic() - start, 2)
    with sessions.begin() as session:
        version = session.get(IndexVersion, version_id)
        version.status, version.dim, version.count = "ready", manifest.dim, manifest.count
        version.factory, version.summary = manifest.factory, summary.as_dict()
    if len(list(cache.dir.glob("shard-*.npz"))) > COMPACT_SHARDS:
        cache.compact()
    return summary


@dataclass
class Caches:
    """The CLIP vector cache and, when stored, the reranker's feature cache."""

    vectors: EmbeddingCache
    features: EmbeddingCache | None = None

    def has(self, digest: str) -> bool:
        return f"img:{digest}" in self.vectors and (self.features is None or f"rr:{digest}" in self.features)


def feature_cache(settings: Settings, reranker: Reranker | None) -> EmbeddingCache | None:
    """Reranker image features, cached like vectors (fp16) under the reranker's own id."""
    if reranker is None:
        return None
    return EmbeddingCache(settings.index_dir / "features", reranker.reranker_id, dtype=np.float16)


def _remove_partial_shards(cache: EmbeddingCache) -> None:
    """Temp files of shards a killed builder never finished (complete shards are kept)."""
    for tmp in cache.dir.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)


def _base_catalog(settings: Settings, catalog: str, checksum: str) -> tuple[str, str]:
    try:
        active = artifacts.read_manifest(artifacts.active_version_path(settings.index_dir))
    except CatalensError:
        return catalog, checksum
    return active.catalog, active.catalog_checksum


def _set_threads(settings: Settings) -> None:
    import faiss
    import torch

    threads = settings.torch_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def _resolve_source(source: str, root: Path) -> str:
    """Store absolute paths, so the service can serve an image without knowing --images-root.

    Where a path may lead is checked when it is read (`build_roots`), not here.
    """
    if is_url(source) or Path(source).is_absolute():
        return source
    return str((root / source).resolve())


def active_images_root(settings: Settings) -> Path | None:
    """The images root of the active version: the folder of the catalog it was built from."""
    try:
        active = artifacts.read_manifest(artifacts.active_version_path(settings.index_dir))
    except CatalensError:
        return None
    return Path(active.catalog).parent if active.catalog else None


def build_roots(settings: Settings, options: BuildOptions) -> tuple[Path, ...]:
    """Folders a build may read image files from: its images root, CATALENS_IMAGE_ROOTS and, for
    an incremental build (which also finishes images earlier builds left), the active catalog's."""
    own = options.images_root or options.catalog.resolve().parent
    base = None if options.full else active_images_root(settings)
    return resolve_roots([own, base, *settings.image_roots])


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


def _image_jobs(sessions, caches: Caches | None = None,  # type: ignore[no-untyped-def]
                product_ids: set[str] | None = None, *, caption: bool = False,
                retry_failed: bool = False) -> list[ImageJob]:
    """Images a build must read: all live ones, or (incremental) those of the given products
    plus any another build left unfinished (pending, or ok but missing from the caches).

    An image that failed ('error', its reason stored) is not read again by a full build unless
    retry_failed: a poisoned source must not cost every later build a fetch or a read.
    """
    with sessions() as session:
        rows = session.execute(
            select(ProductImage.id, ProductImage.source, ProductImage.status, ProductImage.content_hash,
                   ProductImage.caption, Product.product_id).join(Product).where(Product.deleted.is_(False))
            .order_by(ProductImage.id)).all()
    jobs = []
    for image_id, source, status, digest, text, product_id in rows:
        needs_caption = caption and text is None
        unfinished = status == "pending" or (status == "ok" and (
            needs_caption or (caches is not None and not caches.has(digest))))
        dead_letter = status == "error" and not retry_failed
        if unfinished or (product_ids is None and not dead_letter) or (product_ids and product_id in product_ids):
            jobs.append(ImageJob(image_id, source, needs_caption=needs_caption))
    return jobs


def _batches(items: list[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _embed_images(settings: Settings, sessions, options: BuildOptions, encoder: ClipEncoder,  # type: ignore[no-untyped-def]
                  embedder: Embedder, caches: Caches, version_id: str, summary: BuildSummary, *,
                  scope: set[str] | None = None) -> None:
    """Read + decode in worker threads one batch ahead of the model; write each batch as a shard."""
    from tqdm import tqdm

    jobs = _image_jobs(sessions, caches, scope, caption=options.caption, retry_failed=options.retry_failed)
    reranker = embedder.reranker
    shares_pixels = reranker is None or getattr(reranker, "clip", None) is encoder
    reader = ImageReader(settings, images_root=options.images_root, preprocess=encoder.preprocess,
                         image_size=encoder.image_size, is_cached=caches.has,
                         rerank_preprocess=None if shares_pixels else reranker.preprocess,
                         roots=build_roots(settings, options))
    bar = tqdm(total=len(jobs), desc="embedding images", unit="img", disable=not options.progress)
    with ThreadPoolExecutor(settings.decode_workers) as pool:
        batches = list(_batches(jobs, settings.batch_size))
        pending = pool.map(reader, batches[0]) if batches else iter(())
        for i in range(len(batches)):
            loaded = list(pending)
            if i + 1 < len(batches):
                pending = pool.map(reader, batches[i + 1])  # decode the next batch during inference
            _embed_loaded(loaded, embedder, caches, summary)
            _record_images(sessions, loaded, version_id, summary)
            bar.update(len(loaded))
    bar.close()


def _embed_loaded(loaded: list[LoadedImage], embedder: Embedder, caches: Caches,
                  summary: BuildSummary) -> None:
    """Run only what is missing through the models: CLIP vectors, reranker features, captions."""
    decoded = [item for item in loaded if item.pixels is not None]
    for item in loaded:
        if item.error:
            summary.images_failed += 1
        else:
            summary.images_ok += 1
    todo = [item for item in decoded if f"img:{item.content_hash}" not in caches.vectors]
    summary.cached += sum(1 for item in loaded if not item.error) - len(todo)
    feats = [item for item in decoded if f"rr:{item.content_hash}" not in caches.features] \
        if caches.features is not None else []
    same = todo and [id(item) for item in feats] == [id(item) for item in todo]
    both = embedder.embed_pixels_with_features([item.pixels for item in todo]) if same else None
    if both is not None:  # the bundled reranker reads this CLIP: one vision pass gives both
        caches.vectors.put_many([f"img:{item.content_hash}" for item in todo], both[0])
        caches.features.put_many([f"rr:{item.content_hash}" for item in todo], both[1])  # type: ignore[union-attr]
        summary.embedded += len(todo)
        feats = []
    elif todo:
        vectors = embedder.embed_pixels([item.pixels for item in todo])
        caches.vectors.put_many([f"img:{item.content_hash}" for item in todo], vectors)
        summary.embedded += len(todo)
    if caches.features is not None:
        if feats:
            pixels = [item.rerank_pixels if item.rerank_pixels is not None else item.pixels for item in feats]
            caches.features.put_many([f"rr:{item.content_hash}" for item in feats], embedder.rerank_features(pixels))
    captions = [item for item in decoded if item.needs_caption]
    if captions:
        pixels = [item.rerank_pixels if item.rerank_pixels is not None else item.pixels for item in captions]
        for item, text in zip(captions, embedder.captions(pixels)):
            item.caption = text
    for item in decoded:
        item.pixels = item.rerank_pixels = None


def _record_images(sessions, loaded: list[LoadedImage], version_id: str,  # type: ignore[no-untyped-def]
                   summary: BuildSummary) -> None:
    with sessions.begin() as session:
        for item in loaded:
            img = session.get(ProductImage, item.image_id)
            if img is None:
                continue
            img.content_hash, img.thumbnail = item.content_hash, item.thumbnail
            if item.caption is not None:
                img.caption = item.caption
            img.status, img.error = ("error", f"{item.error_code}: {item.error}") if item.error else ("ok", None)
            if item.error:
                session.add(IngestError(version_id=version_id, source_file=img.source, row=None,
                                        product_id=img.product.product_id, field="image",
                                        code=item.error_code or "image_error", message=item.error))
                summary.error_lines.append(f"{img.source} [{img.product.product_id}]: "
                                           f"{item.error_code or 'image_error'}: {item.error}")


def _embed_texts(sessions, embedder: Embedder, cache: EmbeddingCache, summary: BuildSummary,  # type: ignore[no-untyped-def]
                 *, batch_size: int, scope: set[str] | None = None) -> None:
    """Embed every live product text missing from the cache; count cache hits within scope."""
    with sessions() as session:
        products = session.execute(select(Product.product_id, Product.text_hash, Product.title, Product.description)
                                   .where(Product.deleted.is_(False)).order_by(Product.id)).all()
    todo: dict[str, str] = {}
    for product_id, text_hash, title, description in products:
        if f"txt:{text_hash}" not in cache:
            todo[text_hash] = f"{title}. {description}".strip(". ") if description else title
        elif scope is None or product_id in scope:
            summary.texts_cached += 1
    keys = list(todo)
    for i in range(0, len(keys), batch_size):
        chunk = keys[i:i + batch_size]
        cache.put_many([f"txt:{k}" for k in chunk], embedder.embed_texts([todo[k] for k in chunk]))
        summary.texts_embedded += len(chunk)


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
                  model_id: str, *, version_id: str, catalog: str, checksum: str, factory: str | None,
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
        catalog_checksum=checksum, model_id=model_id,
        reranker=_feature_owner(features) if rerank is not None else None)
    staging = artifacts.staging_dir(settings.index_dir, version_id)
    artifacts.write_version_files(staging, manifest=manifest, images=images, texts=texts, rerank=rerank)
    artifacts.load_version(staging)  # validate what was written: counts, dimension, checksums
    return manifest


def collect_features(sessions, features: EmbeddingCache) -> tuple[np.ndarray, np.ndarray] | None:  # type: ignore[no-untyped-def]
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


def _refuse_bad_build(settings: Settings, summary: BuildSummary, *, full: bool = True) -> None:
    total = summary.images_ok + summary.images_failed
    if not full and total < MIN_IMAGES_FOR_RATIO:
        return
    if total and summary.images_failed / total > settings.max_error_ratio:
        raise PublishRefusedError(
            f"{summary.images_failed} of {total} images failed (over the {settings.max_error_ratio:.0%} "
            f"limit, CATALENS_MAX_ERROR_RATIO); the active index was not changed. "
            f"See: catalens index errors --index-dir {settings.index_dir}")
