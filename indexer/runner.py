"""Runner: a build in stages, sync -> plan -> embed -> write -> publish, each one timed.

Safe to kill and rerun: the embed stage resumes from the caches, the write stage stages a new
version beside the active one, and only publish (an atomic pointer swap) changes what queries see.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from catalens import artifacts
from catalens.config import Settings, set_threads
from catalens.db import Sessions, open_database
from catalens.digests import file_sha256
from catalens.encoder import ClipEncoder, ModelSpec, load_clip
from catalens.errors import CaptionUnsupportedError, CatalensError
from catalens.onnx_encoder import load_index_encoder
from catalens.reranker import load_reranker
from indexer import publish
from indexer.calibrate import fit_calibration
from indexer.catalog import CatalogRow, check_catalog_path
from indexer.embedder import EmbedCounts, Embedder, embed_images, embed_texts
from indexer.embedding_cache import Caches, EmbeddingCache, feature_cache, remove_partial_shards
from indexer.lock import compaction_lock
from indexer.plan import build_roots, image_jobs, text_jobs
from indexer.reader import ImageReader
from indexer.sync import read_rows, record_row_errors, sync_products
from indexer.writer import write_version

LOG = logging.getLogger(__name__)
# Merge the embedding cache's shards once a build leaves more than this many.
COMPACT_SHARDS = 64
STAGES = ("sync", "plan", "embed", "write", "publish")


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
    described: int = 0  # products given a generated description (--describe)
    vectors: int = 0
    factory: str = ""
    runtime: str = "torch"  # where the CLIP passes ran (CATALENS_RUNTIME)
    seconds: float = 0.0
    errors_hint: str = ""
    error_lines: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES), for the benchmark

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_lines"] = self.error_lines[:20]
        return data


@dataclass(frozen=True)
class BuildOptions:
    catalog: Path | None  # None: a new snapshot of the catalog of record (rebuild, compact)
    images_root: Path | None = None
    strict: bool = False
    factory: str | None = None
    full: bool = True  # a full build: products absent from the catalog are deleted
    progress: bool = True
    keep: int = 3
    caption: bool = False  # store a generated caption per image (needs a reranker that can caption)
    describe: bool = False  # write a generated description for products without one (the bundled captioner)
    # Images that failed in an earlier build are dead letters: read again only when their
    # product is upserted, their source changes, or a build asks for it here.
    retry_failed: bool = False
    engine: Literal["local", "ray"] = "local"  # ray: decode and embed images on Ray Data (extra catalens[ray])
    ray_address: str | None = None  # engine ray: None/'local' starts one here, 'auto' or ray://HOST:PORT joins one


@contextlib.contextmanager
def timed(summary: BuildSummary, stage: str) -> Iterator[None]:
    """Add the seconds spent in the block to summary.stages[stage]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        summary.stages[stage] = round(summary.stages.get(stage, 0.0) + time.perf_counter() - t0, 4)


def build_index(settings: Settings, options: BuildOptions, *, encoder: ClipEncoder | None = None,
                embedder: Embedder | None = None) -> BuildSummary:
    """Build a new index version and make it active; safe to kill and rerun.

    From a catalog file, a full build syncs the whole catalog into the catalog of record
    (products absent from it are deleted); without one it snapshots the catalog of record as
    it is (rebuild, compaction). Only images and texts missing from the embedding cache reach
    the model. Until the publish, queries see nothing of it; a refused or failed build puts
    the catalog of record back as it was.
    """
    start = time.monotonic()
    if options.catalog is not None:
        check_catalog_path(options.catalog)
    # The builder lock first: a second builder is told a build is running, a build during a
    # compaction that a compaction is (the compaction takes the builder lock only briefly).
    with publish.guarded(settings, "build"), compaction_lock(settings.index_dir):
        engine, sessions = open_database(settings.db_url)
        try:
            return _build_locked(settings, options, sessions, encoder=encoder, embedder=embedder, start=start)
        finally:
            engine.dispose()


def _build_locked(settings: Settings, options: BuildOptions, sessions: Sessions, *,
                  encoder: ClipEncoder | None, embedder: Embedder | None, start: float) -> BuildSummary:
    publish.fail_stale_builds(settings, sessions)
    encoder = encoder or load_clip(ModelSpec(settings.model, settings.pretrained), device=settings.device)
    embedder = embedder or Embedder(encoder)
    if embedder.reranker is None and (settings.rerank_features or options.caption):
        embedder.reranker = load_reranker(settings.reranker, clip=encoder, device=encoder.device)
    if embedder.onnx is None:
        embedder.onnx = load_index_encoder(settings, encoder, embedder.reranker)
    if options.caption and not (embedder.reranker and embedder.reranker.can_caption):
        raise CaptionUnsupportedError(
            f"--caption needs a reranker that can write captions (CATALENS_RERANKER=coca:...); "
            f"{settings.reranker!r} cannot")
    set_threads(settings.torch_threads())
    checksum = file_sha256(options.catalog) if options.catalog is not None and options.catalog.is_file() else ""
    catalog = str(options.catalog) if options.catalog is not None else "catalog of record"
    version_id = publish.start(sessions, model_id=encoder.model_id, catalog=catalog, checksum=checksum)
    summary = BuildSummary(version_id=version_id, catalog=catalog, runtime=embedder.runtime)
    try:
        manifest, cache = _run_stages(settings, options, sessions, encoder, embedder, summary, checksum=checksum)
        summary.seconds = round(time.monotonic() - start, 2)
        with timed(summary, "publish"):
            publish.publish(settings, sessions, manifest, keep=options.keep, summary=summary.as_dict())
    except BaseException as exc:
        publish.fail(settings, sessions, version_id, exc)
        raise
    if len(list(cache.dir.glob("shard-*.npz"))) > COMPACT_SHARDS:
        cache.compact()
    return summary


def _run_stages(settings: Settings, options: BuildOptions, sessions: Sessions, encoder: ClipEncoder,
                embedder: Embedder, summary: BuildSummary, *, checksum: str) -> tuple[artifacts.Manifest, EmbeddingCache]:
    """sync -> plan -> embed -> write; returns the staged, validated manifest (publish is the caller's)."""
    version_id = summary.version_id or ""
    rows: list[CatalogRow] = []
    with timed(summary, "sync"):
        if options.catalog is not None:
            rows, errors, summary.read = read_rows(options.catalog, images_root=options.images_root,
                                                   strict=options.strict)
            summary.skipped, summary.indexed = len(errors), len(rows)
            summary.error_lines.extend(str(e) for e in errors)
            with sessions.begin() as session:
                record_row_errors(session, version_id, errors)
                summary.deleted = sync_products(session, rows, full=options.full)
        watermark = publish.watermark(sessions)
    with timed(summary, "plan"):
        cache = EmbeddingCache(settings.index_dir / "embeddings", encoder.model_id)
        remove_partial_shards(cache)
        features = feature_cache(settings, embedder.reranker) if settings.rerank_features else None
        if features is not None:
            remove_partial_shards(features)
        caches = Caches(cache, features)
        scope = None if options.full or options.catalog is None else {r.product_id for r in rows}
        jobs = image_jobs(sessions, caches, scope, caption=options.caption, retry_failed=options.retry_failed)
        texts, summary.texts_cached = text_jobs(sessions, cache, scope=scope)
    with timed(summary, "embed"):
        counts = EmbedCounts()
        reader = ImageReader(settings, images_root=options.images_root, preprocess=encoder.preprocess,
                             image_size=encoder.image_size, is_cached=caches.has,
                             rerank_preprocess=embedder.separate_rerank_preprocess(),
                             roots=build_roots(settings, catalog=options.catalog, images_root=options.images_root,
                                               full=options.full and options.catalog is not None))
        if options.engine == "ray":
            from indexer.ray_engine import embed_images_ray

            embed_images_ray(jobs, reader, embedder, caches, sessions=sessions, version_id=version_id, counts=counts,
                             batch_size=settings.batch_size, progress=options.progress, address=options.ray_address)
        else:
            embed_images(jobs, reader, embedder, caches, sessions=sessions, version_id=version_id, counts=counts,
                         batch_size=settings.batch_size, workers=settings.decode_workers, progress=options.progress)
        if options.describe or settings.describe == "missing":
            summary.described = _describe(settings, sessions, cache, encoder, scope)
            texts, summary.texts_cached = text_jobs(sessions, cache, scope=scope)  # the new descriptions' texts
        embed_texts(texts, embedder, cache, counts, batch_size=settings.batch_size)
        summary.images_ok, summary.images_failed = counts.images_ok, counts.images_failed
        summary.embedded, summary.cached, summary.texts_embedded = counts.embedded, counts.cached, counts.texts_embedded
        summary.error_lines.extend(counts.error_lines)
    with timed(summary, "write"):
        # The manifest names the catalog file the catalog of record last took whole, and the
        # folder its relative image paths resolved against: a rebuild keeps the active one's.
        if options.catalog is not None and options.full:
            base_catalog, base_checksum = str(options.catalog.resolve()), checksum
            base_root = str((options.images_root or options.catalog.parent).resolve())
        else:
            base_catalog, base_checksum, base_root = _base_catalog(settings)
        manifest = write_version(settings, sessions, cache, encoder.spec, encoder.dim, encoder.model_id,
                                 version_id=version_id, features=features, images_root=base_root,
                                 catalog=base_catalog, checksum=base_checksum, factory=options.factory,
                                 watermark=watermark,
                                 calibrate=lambda records, lexicon: fit_calibration(
                                     records, embedder.onnx or encoder, embedder.reranker, cache, features, lexicon))
        summary.vectors, summary.factory = manifest.count, manifest.factory
        if summary.skipped or summary.images_failed:
            summary.errors_hint = f"catalens index errors --index-dir {settings.index_dir} --version {version_id}"
        publish.check_failure_ratio(settings, images_ok=summary.images_ok, images_failed=summary.images_failed,
                                    full=options.full)
    return manifest, cache


def _describe(settings: Settings, sessions: Sessions, cache: EmbeddingCache, encoder: ClipEncoder,
              scope: set[str] | None) -> int:
    """Generated descriptions for the products without one; the captioner must read this CLIP."""
    from catalens.captioner import CaptionerConfig, bundled_captioner_dir, load_captioner
    from indexer.describe import describe_missing

    folder = bundled_captioner_dir()
    if not folder.is_dir() or CaptionerConfig.load(folder).base_model != encoder.spec.model:
        raise CaptionUnsupportedError(
            f"--describe needs a captioner for the model {encoder.spec.model!r}; the bundled one reads "
            f"{CaptionerConfig.load(folder).base_model if folder.is_dir() else 'nothing'}")
    return describe_missing(sessions, cache, load_captioner(folder), scope=scope)


def _base_catalog(settings: Settings) -> tuple[str, str, str]:
    """(catalog, checksum, images root) of the active version, which a rebuild or an incremental batch keeps."""
    try:
        active = artifacts.read_manifest(artifacts.active_version_path(settings.index_dir))
    except CatalensError:
        return "", "", ""
    folder = active.image_folder()
    return active.catalog, active.catalog_checksum, str(folder) if folder else ""
