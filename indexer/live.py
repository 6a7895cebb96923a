"""Live edits: upserts, patches and deletes that cost what they change, and the compaction that
folds them into a new snapshot.

An edit writes the catalog of record and logs each changed product (catalens.changes) in one
transaction; serving processes pick the log up within a second and search it beside the
active snapshot. No edit rewrites the main index: only the edited products' new images and
texts are embedded. `compact` (by hand, or once CATALENS_COMPACT_AFTER changes are pending)
builds a new snapshot of the catalog of record from the embedding cache.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update

from catalens import artifacts, changes, milvus_store
from catalens.changes import LiveVectors
from catalens.config import Settings
from catalens.db import Sessions, open_database
from catalens.editing import CompactSummary, DeleteSummary, PatchSummary, UpsertSummary
from catalens.encoder import ClipEncoder, ModelSpec, load_clip
from catalens.errors import IndexArtifactError, InvalidInputError, NotFoundError, VectorStoreUnavailableError
from catalens.images import resolve_roots
from catalens.records import ProductRecord, normalize_availability, record_of
from catalens.reranker import Reranker, load_reranker
from catalens.schema import IndexVersion, Product
from catalens.validation import attribute_problem, text_problem
from indexer import publish
from indexer.catalog import CatalogRow, product_text
from indexer.compaction import compact as compact_snapshot
from indexer.embedder import EmbedCounts, Embedder, embed_images, embed_texts
from indexer.embedding_cache import Caches, EmbeddingCache, feature_cache
from indexer.lock import builder_lock
from indexer.maintenance import validate_records
from indexer.plan import active_images_root, build_roots, image_jobs, text_jobs
from indexer.reader import ImageReader
from indexer.runner import BuildOptions, build_index
from indexer.store import read_records
from indexer.sync import read_rows, record_row_errors, sync_products
from indexer.writer import collect_features, collect_vectors

# Fields a patch may set; everything else about a product comes with an upsert.
PATCHABLE = ("title", "description", "category", "brand", "price", "currency", "availability", "attributes")
EDIT_CHUNK = 100  # products per transaction of a large upsert (progress is reported per chunk)


@dataclass
class EditContext:
    """What consecutive edits share in one process: the model and the caches (loaded once)."""

    settings: Settings
    encoder: ClipEncoder | None = None
    reranker: Reranker | None = None
    _caches: Caches | None = field(default=None, repr=False)
    _sessions: Sessions | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def db(self) -> Sessions:
        """Sessions on the catalog of record, opened (and migrated) once per context."""
        with self._lock:
            if self._sessions is None:
                _, self._sessions = open_database(self.settings.db_url)
            return self._sessions

    def model(self) -> ClipEncoder:
        """The active version's model (the configured one before the first version)."""
        if self.encoder is None:
            spec = ModelSpec(self.settings.model, self.settings.pretrained)
            if artifacts.read_active(self.settings.index_dir) is not None:
                manifest = artifacts.read_manifest(artifacts.active_version_path(self.settings.index_dir))
                spec = ModelSpec(manifest.model, manifest.pretrained)
            self.encoder = load_clip(spec, device=self.settings.device)
        return self.encoder

    def caches(self) -> Caches:
        """The vector cache (and feature cache) of the active version's model, refreshed from disk."""
        with self._lock:
            encoder = self.model()
            if self._caches is None:
                features = None
                if self.settings.rerank_features:
                    if self.reranker is None:
                        self.reranker = load_reranker(self.settings.reranker, clip=encoder, device=encoder.device)
                    features = feature_cache(self.settings, self.reranker)
                self._caches = Caches(EmbeddingCache(self.settings.index_dir / "embeddings", encoder.model_id),
                                      features)
            else:
                self._caches.vectors.refresh()
                if self._caches.features is not None:
                    self._caches.features.refresh()
            return self._caches


def _vectors(record: ProductRecord, caches: Caches, dim: int) -> LiveVectors:
    ids, vecs, owned = collect_vectors([record], caches.vectors, dim)
    positions = np.array([pos for _, pos in owned.get(record.pk, [])], np.int64)
    feats = collect_features([record], caches.features) if caches.features is not None else None
    return LiveVectors(ids, positions, vecs, *(feats if feats is not None else (None, None)))


def pending_changes(settings: Settings, sessions: Sessions) -> int:
    """Live changes over the active snapshot, not yet folded into one."""
    state = artifacts.read_active_state(settings.index_dir)
    with sessions() as session:
        return changes.count_since(session, state.since_seq if state else 0)


# --- upsert ------------------------------------------------------------------------------------


def upsert_rows(ctx: EditContext, rows: list[CatalogRow], *, source: str, images_root: Path | None,
                row_errors: Sequence[Any] = (), progress: bool = False) -> UpsertSummary:
    """Add or update products live: only their new or changed images and texts are embedded,
    and their records and vectors join the change log in the transaction that commits them."""
    settings = ctx.settings
    first = artifacts.read_active(settings.index_dir) is None
    encoder = ctx.model()
    sessions = ctx.db()
    with publish.guarded(settings, "upsert", new_version=False):
        caches = ctx.caches()  # after the preflight: a refused change writes nothing
        publish.fail_stale_builds(settings, sessions)
        edit_id = publish.start(sessions, model_id=encoder.model_id, catalog=source, checksum="", kind="edit")
        try:
            summary = _upsert_locked(ctx, sessions, caches, rows, edit_id=edit_id, images_root=images_root,
                                     row_errors=row_errors, progress=progress)
        except BaseException as exc:
            publish.fail(settings, sessions, edit_id, exc)
            raise
    if first:  # nothing to serve the changes over yet: they become the first snapshot
        build_index(settings, BuildOptions(catalog=None, progress=progress), encoder=encoder)
    return summary


def _upsert_locked(ctx: EditContext, sessions: Sessions, caches: Caches, rows: list[CatalogRow], *, edit_id: str,
                   images_root: Path | None, row_errors: Sequence[Any], progress: bool) -> UpsertSummary:
    settings, encoder = ctx.settings, ctx.model()
    scope = {r.product_id for r in rows}
    with sessions.begin() as session:
        record_row_errors(session, edit_id, list(row_errors))
        sync_products(session, rows, full=False)
    embedder = Embedder(encoder, reranker=ctx.reranker if caches.features is not None else None)
    jobs = image_jobs(sessions, caches, scope, only=True)
    texts, texts_cached = text_jobs(sessions, caches.vectors, scope=scope, only=True)
    counts = EmbedCounts()
    reader = ImageReader(settings, images_root=images_root, preprocess=encoder.preprocess,
                         image_size=encoder.image_size, is_cached=caches.has,
                         rerank_preprocess=embedder.separate_rerank_preprocess(),
                         roots=build_roots(settings, catalog=None, images_root=images_root, full=False))
    embed_images(jobs, reader, embedder, caches, sessions=sessions, version_id=edit_id, counts=counts,
                 batch_size=settings.batch_size, workers=settings.decode_workers, progress=progress)
    embed_texts(texts, embedder, caches.vectors, counts, batch_size=settings.batch_size)
    publish.check_failure_ratio(settings, images_ok=counts.images_ok, images_failed=counts.images_failed, full=False)
    with sessions.begin() as session:
        pks = session.scalars(select(Product.id).where(Product.product_id.in_(scope)))
        records = read_records(session, pks=list(pks))
        for record in records:
            changes.append(session, "upsert", record, _vectors(record, caches, encoder.dim))
        session.execute(update(IndexVersion).where(IndexVersion.version_id == edit_id)
                        .values(status="ready", count=len(records)))
        seq = changes.last_seq(session)
    return UpsertSummary(seq=seq, upserted=len(records), images_ok=counts.images_ok,
                         images_failed=counts.images_failed, images_embedded=counts.embedded,
                         images_cached=counts.cached, texts_embedded=counts.texts_embedded, texts_cached=texts_cached,
                         vectors=sum(max(1, sum(i.status == "ok" for i in r.images)) for r in records),
                         errors=[str(e) for e in row_errors][:100] + counts.error_lines[:100])


def upsert_records(ctx: EditContext, records: list[dict[str, Any]], *,
                   on_progress: Callable[[int], None] | None = None) -> UpsertSummary:
    """Catalog-format records (the admin API), validated whole first, applied in chunks of EDIT_CHUNK."""
    images_root = active_images_root(ctx.settings)
    rows = validate_records(records, images_root=images_root,
                            roots=resolve_roots([images_root, *ctx.settings.image_roots]))
    rows = [_absolute(row, images_root) for row in rows]
    total: UpsertSummary | None = None
    for start in range(0, len(rows), EDIT_CHUNK):
        part = upsert_rows(ctx, rows[start:start + EDIT_CHUNK], source="request", images_root=images_root)
        total = part if total is None else total.plus(part)
        if on_progress is not None:
            on_progress(min(len(rows), start + EDIT_CHUNK))
    assert total is not None  # validate_records refuses an empty batch
    return total


def upsert_file(ctx: EditContext, catalog: Path, *, images_root: Path | None, strict: bool,
                progress: bool) -> UpsertSummary:
    """`catalens index upsert --catalog FILE`: the file's valid rows, live; bad rows reported."""
    rows, errors, _ = read_rows(catalog, images_root=images_root, strict=strict)
    if not rows:
        raise InvalidInputError(f"{catalog}: no valid rows to upsert ({len(errors)} bad; "
                                "see `catalens index errors`)" if errors else f"{catalog}: no rows")
    return upsert_rows(ctx, rows, source=str(catalog), images_root=images_root or catalog.resolve().parent,
                       row_errors=errors, progress=progress)


def _absolute(row: CatalogRow, images_root: Path | None) -> CatalogRow:
    from dataclasses import replace

    from indexer.sync import resolve_source

    return replace(row, images=tuple(resolve_source(s, images_root) for s in row.images)) if images_root else row


# --- patch -------------------------------------------------------------------------------------


def check_patch(fields: dict[str, Any]) -> dict[str, Any]:
    """The patch's fields, normalised; InvalidInputError naming the first bad one."""
    if not fields:
        raise InvalidInputError(f"a patch needs at least one field of: {', '.join(PATCHABLE)}")
    unknown = sorted(set(fields) - set(PATCHABLE))
    if unknown:
        raise InvalidInputError(f"field {unknown[0]!r} cannot be patched (patchable: {', '.join(PATCHABLE)}; "
                                "images and ids change with an upsert)")
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "title":
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError("field 'title' must be a non-empty string")
            value = value.strip()
        elif name in ("description", "category", "brand", "currency"):
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"field {name!r} must be a string or null")
            value = (value or "").strip() if name == "description" else (value.strip() or None if value else None)
        elif name == "price":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise InvalidInputError(f"field 'price' must be a finite number >= 0 or null, got {value!r}")
            value = None if value is None else float(value)
        elif name == "availability":
            try:
                value = normalize_availability(value)
            except ValueError as exc:
                raise InvalidInputError(f"field 'availability': {exc}") from exc
        elif name == "attributes":
            if not isinstance(value, dict):
                raise InvalidInputError("field 'attributes' must be an object")
            problem = attribute_problem(value)
            if problem:
                raise InvalidInputError(f"field 'attributes' {problem}")
        if isinstance(value, str) and (problem := text_problem(value)):
            raise InvalidInputError(f"field {name!r} {problem}")
        out[name] = value
    return out


def patch_product(ctx: EditContext, product_id: str, fields: dict[str, Any]) -> PatchSummary:
    """Change some fields of one live product; a new title or description re-embeds its text only."""
    fields = check_patch(fields)
    settings = ctx.settings
    sessions = ctx.db()
    with builder_lock(settings.index_dir):
        artifacts.check_free_space(settings.index_dir, settings.min_free_bytes, new_version=False)
        publish.fail_stale_builds(settings, sessions)
        with sessions.begin() as session:
            product = session.scalar(select(Product).where(Product.product_id == product_id,
                                                           Product.deleted.is_(False)))
            if product is None:
                raise NotFoundError(f"product {product_id!r} not found")
            changed = [name for name, value in fields.items() if getattr(product, name) != value]
            for name in changed:
                setattr(product, name, fields[name])
            vectors = None
            if {"title", "description"} & set(changed):
                vectors = _new_text(ctx, product)
            if changed:
                session.flush()
                changes.append(session, "patch", record_of(product), vectors)
            seq = changes.last_seq(session)
    return PatchSummary(seq=seq, product_id=product_id, changed=changed)


def _new_text(ctx: EditContext, product: Product) -> LiveVectors | None:
    """Embed the product's new text; its vectors change only if the text is its fallback vector."""
    import hashlib

    text = product_text(product.title, product.description)
    product.text_hash = hashlib.sha256(text.encode()).hexdigest()
    caches = ctx.caches()
    key = f"txt:{product.text_hash}"
    if key not in caches.vectors:
        caches.vectors.put_many([key], ctx.model().encode_texts([text]))
    if any(img.status == "ok" for img in product.images):
        return None
    return _vectors(record_of(product), caches, ctx.model().dim)


# --- delete ------------------------------------------------------------------------------------


def delete_products(ctx: EditContext, product_ids: list[str]) -> DeleteSummary:
    """Mark products deleted and log the deletions, in one transaction; gone from queries within a second."""
    settings, sessions = ctx.settings, ctx.db()
    with builder_lock(settings.index_dir):
        artifacts.check_free_space(settings.index_dir, settings.min_free_bytes, new_version=False)
        publish.fail_stale_builds(settings, sessions)
        with sessions.begin() as session:
            live = list(session.execute(select(Product.id, Product.product_id).where(
                Product.product_id.in_(product_ids), Product.deleted.is_(False))))
            session.execute(update(Product).where(Product.id.in_([pk for pk, _ in live])).values(deleted=True))
            for pk, pid in live:
                changes.append(session, "delete", ProductRecord(pk=pk, product_id=pid, title=""))
            seq = changes.last_seq(session)
    return DeleteSummary(seq=seq, deleted=len(live), missing=len(set(product_ids)) - len(live))


# --- compaction --------------------------------------------------------------------------------


def compact(ctx: EditContext, *, keep: int = 3) -> CompactSummary:
    """Fold the live changes into a new snapshot (indexer.compaction); edits go on meanwhile."""
    return compact_snapshot(ctx.settings, keep=keep)


def sync_vector_store(ctx: EditContext) -> str:
    """Apply logged changes to the active version's Milvus collection now (servers do it on their
    next poll too); '' when done or when FAISS holds the vectors, else a note that it waits."""
    if not ctx.settings.milvus:
        return ""
    state = artifacts.read_active_state(ctx.settings.index_dir)
    if state is None:
        return ""
    try:
        milvus_store.sync(milvus_store.MilvusStore(ctx.settings.vector_store, timeout_s=ctx.settings.engine_timeout_s),
                          ctx.db(), state.version_id)
    except (VectorStoreUnavailableError, IndexArtifactError) as exc:
        return f"\nlogged, not yet in Milvus ({exc.message}); a server's next poll applies it"
    return ""


def compact_due(ctx: EditContext) -> bool:
    """Whether the live changes passed CATALENS_COMPACT_AFTER (0: never automatically)."""
    settings = ctx.settings
    if settings.compact_after <= 0 or artifacts.read_active(settings.index_dir) is None:
        return False
    return pending_changes(settings, ctx.db()) >= settings.compact_after


@dataclass
class IndexEditor:
    """The catalens.editing.CatalogEditor the query service's admin routes call (one per process)."""

    settings: Settings
    encoder: ClipEncoder | None = None
    reranker: Reranker | None = None
    _ctx: EditContext | None = field(default=None, repr=False)

    @property
    def ctx(self) -> EditContext:
        if self._ctx is None:
            self._ctx = EditContext(self.settings, self.encoder, self.reranker)
        return self._ctx

    def upsert(self, records: list[dict[str, Any]], *,
               on_progress: Callable[[int], None] | None = None) -> UpsertSummary:
        return upsert_records(self.ctx, records, on_progress=on_progress)

    def check_upsert(self, records: list[dict[str, Any]]) -> None:
        images_root = active_images_root(self.settings)
        validate_records(records, images_root=images_root,
                         roots=resolve_roots([images_root, *self.settings.image_roots]))

    def patch(self, product_id: str, fields: dict[str, Any]) -> PatchSummary:
        return patch_product(self.ctx, product_id, fields)

    def delete(self, product_ids: list[str]) -> DeleteSummary:
        return delete_products(self.ctx, product_ids)

    def compact(self) -> CompactSummary:
        return compact(self.ctx)

    def compact_due(self) -> bool:
        return compact_due(self.ctx)

    def prepare(self) -> None:
        self.ctx.db()
        if artifacts.read_active(self.settings.index_dir) is not None:
            self.ctx.caches()  # ~2 s at 100,000 products: not on the first edit's clock

