"""Compaction: fold the live changes into a new snapshot while live edits go on.

The new snapshot is a pure function of immutable inputs: the active version's products and
the logged changes up to a watermark W, with their vectors from the embedding caches (an edit
embeds before it logs). So the long part, building the index, needs no lock on the catalog:
edits after W stay in the log and are served over the new snapshot as its live layer. Only
the start (W) and the publish hold the builder lock; a build that published meanwhile wins.
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np

from catalens import artifacts, changes
from catalens.calibration import CALIBRATION, load_calibration
from catalens.config import Settings
from catalens.db import Sessions, open_database
from catalens.editing import CompactSummary
from catalens.encoder import ModelSpec
from catalens.errors import BuildLockedError, CatalensError, InsufficientStorageError, PublishRefusedError
from catalens.product_table import PRODUCTS, ProductTable
from catalens.records import ProductRecord
from indexer import publish
from indexer.embedding_cache import EmbeddingCache
from indexer.lock import builder_lock, compaction_lock
from indexer.writer import write_snapshot

LOG = logging.getLogger(__name__)
COMPACTING = "compacting"  # its own staging folder: builds and edits clear staging/, never this
PUBLISH_WAIT_S = 60.0  # for the builder lock at publish (edits hold it for milliseconds)


def fold(snapshot: ProductTable, log: list[changes.Change]) -> list[ProductRecord]:
    """The snapshot's products with the changes applied in order (deletions drop them)."""
    records = {r.pk: r for r in snapshot.all_records()}
    for change in log:
        if change.record is None:
            records.pop(change.pk, None)
        else:
            records[change.pk] = change.record
    return list(records.values())


def compact(settings: Settings, *, keep: int = 3) -> CompactSummary:
    """A new snapshot of the active version plus its live changes, made active; no model runs."""
    t0 = time.monotonic()
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    engine, sessions = open_database(settings.db_url)
    try:
        with compaction_lock(settings.index_dir):
            shutil.rmtree(settings.index_dir / COMPACTING, ignore_errors=True)  # a killed compaction's
            with builder_lock(settings.index_dir):
                artifacts.check_free_space(settings.index_dir, settings.min_free_bytes)
                publish.fail_stale_builds(settings, sessions)
                state = artifacts.read_active_state(settings.index_dir)
                if state is None:
                    raise CatalensError(f"no index in {settings.index_dir} to compact: build one with "
                                        "`catalens index build --catalog FILE`")
                path = artifacts.versions_dir(settings.index_dir) / state.version_id
                manifest = artifacts.verify_version(path, checksums=False)
                with sessions() as session:
                    log = changes.since(session, state.since_seq)
                watermark = log[-1].seq if log else state.since_seq
                version_id = publish.start(sessions, model_id=manifest.model_id, catalog=manifest.catalog,
                                           checksum=manifest.catalog_checksum, kind="compact")
            try:
                return _compact_unlocked(settings, sessions, manifest, state, log, version_id=version_id,
                                         watermark=watermark, keep=keep, t0=t0)
            except BaseException as exc:
                shutil.rmtree(settings.index_dir / COMPACTING, ignore_errors=True)
                _record_failure(sessions, version_id, exc)
                if artifacts.is_disk_full(exc, settings.index_dir) and not isinstance(exc, InsufficientStorageError):
                    raise InsufficientStorageError(
                        f"the disk of {settings.index_dir} is full; the compaction stopped and the active index "
                        "was not changed") from exc
                raise
    finally:
        engine.dispose()


def _compact_unlocked(settings: Settings, sessions: Sessions, manifest: artifacts.Manifest,
                      state: artifacts.ActiveState, log: list[changes.Change], *, version_id: str, watermark: int,
                      keep: int, t0: float) -> CompactSummary:
    path = artifacts.versions_dir(settings.index_dir) / state.version_id
    records = fold(ProductTable.load(path / PRODUCTS), log)
    cache = EmbeddingCache(settings.index_dir / "embeddings", manifest.model_id)
    features = EmbeddingCache(settings.index_dir / "features", manifest.reranker, dtype=np.float16) \
        if manifest.reranker else None
    staging = settings.index_dir / COMPACTING / version_id
    new = write_snapshot(records, staging, cache, ModelSpec(manifest.model, manifest.pretrained), manifest.dim,
                         manifest.model_id, version_id=version_id, catalog=manifest.catalog,
                         checksum=manifest.catalog_checksum, factory=manifest.factory,
                         images_root=manifest.images_root, watermark=watermark, features=features,
                         # Same model, nearly the same catalog: the active version's fit still holds.
                         calibration=load_calibration(path / CALIBRATION) if CALIBRATION in manifest.files else None)
    summary = {"compacted": state.version_id, "folded": len(log), "watermark": watermark}
    deadline = time.monotonic() + PUBLISH_WAIT_S
    while True:
        try:
            with builder_lock(settings.index_dir):
                now = artifacts.read_active_state(settings.index_dir)
                if now is None or now.version_id != state.version_id:
                    raise PublishRefusedError(f"index version {now.version_id if now else None} was published "
                                              f"while compacting {state.version_id}; this compaction is dropped")
                publish.publish(settings, sessions, new, keep=keep, summary=summary, staging=staging)
            break
        except BuildLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return CompactSummary(version_id=version_id, folded=len(log), vectors=new.count,
                          seconds=round(time.monotonic() - t0, 2))


def _record_failure(sessions: Sessions, version_id: str, exc: BaseException) -> None:
    from sqlalchemy import update

    from catalens.schema import IndexVersion

    try:
        with sessions.begin() as session:
            session.execute(update(IndexVersion).where(IndexVersion.version_id == version_id)
                            .values(status="failed", summary={"error": str(exc)[:2000]}))
    except Exception as record_exc:  # a later build marks it failed (fail_stale_builds)
        LOG.error("could not record compaction %s as failed: %s", version_id, record_exc)
