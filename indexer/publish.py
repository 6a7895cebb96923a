"""Publish stage: a staged version is validated, promoted, made active and recorded; old ones pruned.

The one lifecycle of every snapshot: a catalog build, a rebuild, a compaction. A version row
is 'building' from start() until publish() marks it 'ready', or fail() 'failed'; a failed or
killed one leaves the catalog of record as queries see it (indexer.store.restore_active).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from catalens import artifacts, changes, milvus_store
from catalens.config import Settings
from catalens.db import Sessions, open_database, refresh_statistics
from catalens.errors import CatalensError, InsufficientStorageError, PublishRefusedError
from catalens.product_table import PRODUCTS, ProductTable
from catalens.schema import IndexVersion
from indexer.lock import builder_lock, compaction_running
from indexer.store import restore, restore_active

LOG = logging.getLogger(__name__)
# An incremental batch smaller than this is never refused for its image failure ratio: one
# upserted product with a broken image is published text-only and its error reported.
MIN_IMAGES_FOR_RATIO = 10


def fail_stale_builds(settings: Settings, sessions: Sessions) -> list[str]:
    """Mark versions still 'building' as failed; call only while holding the builder lock.

    Whoever holds the lock is the only live builder, so any other 'building' row belongs
    to a builder that died (SIGKILL, OOM, power loss) before it could record its end; what it
    wrote to the catalog of record is put back to what queries see.
    """
    running_compaction = compaction_running(settings.index_dir)
    with sessions.begin() as session:
        rows = session.execute(select(IndexVersion.version_id, IndexVersion.kind)
                               .where(IndexVersion.status == "building")).all()
        # A compaction writes its snapshot without the builder lock: its row is stale only if no
        # process holds the compaction lock.
        stale = [v for v, kind in rows if kind != "compact" or not running_compaction]
        if stale:
            session.execute(update(IndexVersion).where(IndexVersion.version_id.in_(stale)).values(
                status="failed", summary={"error": "the builder died before finishing (found by a later build)"}))
    if stale:
        LOG.warning("marked %d interrupted build(s) as failed: %s", len(stale), ", ".join(stale))
    if any(kind != "compact" for v, kind in rows if v in stale):  # a compaction never writes the catalog of record
        restore_active(settings, sessions)
    return stale


@contextlib.contextmanager
def guarded(settings: Settings, what: str, *, new_version: bool = True) -> Iterator[None]:
    """Hold the builder lock around one change to the index (`what`: "build", "delete"), on a disk
    that has room: stale staging cleared, free space checked (507 before any write), a reserve a
    failed change frees to record its failure, and a full disk reported as one 507 line."""
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    with builder_lock(settings.index_dir):
        artifacts.clean_staging(settings.index_dir)
        artifacts.check_free_space(settings.index_dir, settings.min_free_bytes, new_version=new_version)
        try:
            artifacts.reserve_space(settings.index_dir)
            yield
        except Exception as exc:
            if isinstance(exc, InsufficientStorageError) or not artifacts.is_disk_full(exc, settings.index_dir):
                raise
            reason = (str(exc) or type(exc).__name__).splitlines()[0][:300]
            raise InsufficientStorageError(
                f"the disk of {settings.index_dir} is full ({reason}); the {what} stopped, its staging files "
                "were removed and the active index was not changed") from exc
        finally:
            artifacts.clean_staging(settings.index_dir)  # the reserve (a failed change has removed it already)


def start(sessions: Sessions, *, model_id: str, catalog: str, checksum: str, kind: str = "build") -> str:
    """Record a new version (or live edit) as 'building' and return its id."""
    version_id = artifacts.new_version_id()
    with sessions.begin() as session:
        session.add(IndexVersion(version_id=version_id, status="building", model=model_id, kind=kind,
                                 catalog=catalog, catalog_checksum=checksum))
    return version_id


def watermark(sessions: Sessions) -> int:
    """The last live change a snapshot built now holds (edits wait for the builder lock)."""
    with sessions() as session:
        return changes.last_seq(session)


def check_failure_ratio(settings: Settings, *, images_ok: int, images_failed: int, full: bool) -> None:
    """Refuse a build whose share of failed images is over CATALENS_MAX_ERROR_RATIO."""
    total = images_ok + images_failed
    if not full and total < MIN_IMAGES_FOR_RATIO:
        return
    if total and images_failed / total > settings.max_error_ratio:
        raise PublishRefusedError(
            f"{images_failed} of {total} images failed (over the {settings.max_error_ratio:.0%} "
            f"limit, CATALENS_MAX_ERROR_RATIO); the active index was not changed. "
            f"See: catalens index errors --index-dir {settings.index_dir}")


def publish(settings: Settings, sessions: Sessions, manifest: artifacts.Manifest, *, keep: int,
            summary: dict[str, Any], staging: Path | None = None) -> None:
    """Promote the staged version, make it active with the live changes after its watermark over it
    (atomic pointer swap), prune, record it 'ready' and drop the change log it holds."""
    artifacts.promote_staging(settings.index_dir, manifest.version_id, staging)
    if settings.milvus:
        to_vector_store(settings, sessions, manifest.version_id, since_seq=manifest.watermark)
    artifacts.set_active(settings.index_dir, manifest.version_id, since_seq=manifest.watermark)
    pruned = artifacts.prune_versions(settings.index_dir, keep)
    if settings.milvus and pruned:
        milvus_store.forget(_store(settings), sessions, pruned)
    with sessions.begin() as session:
        session.execute(update(IndexVersion).where(IndexVersion.version_id == manifest.version_id).values(
            status="ready", dim=manifest.dim, count=manifest.count, factory=manifest.factory, summary=summary))
        changes.prune(session, manifest.watermark)
    refresh_statistics(sessions)


def _store(settings: Settings) -> milvus_store.MilvusStore:
    # Filling a collection and loading it take longer than a query may wait.
    return milvus_store.MilvusStore(settings.vector_store, timeout_s=max(settings.engine_timeout_s, 300.0))


def to_vector_store(settings: Settings, sessions: Sessions, version_id: str, *, since_seq: int) -> None:
    """Make a published version what Milvus serves (its collection filled from the version's files
    unless it holds exactly that snapshot already), before the ACTIVE pointer moves to it."""
    path = artifacts.versions_dir(settings.index_dir) / version_id
    _, images, _ = artifacts.load_version(path)
    milvus_store.activate(_store(settings), sessions, version_id, ProductTable.load(path / PRODUCTS), images,
                          since_seq=since_seq)


def fail(settings: Settings, sessions: Sessions, version_id: str, exc: BaseException) -> None:
    """Remove what the version staged, record it 'failed' with its reason and put the catalog of
    record back to what queries see (best effort on a full disk: else the next build does)."""
    # Free space first (staging and its reserve): on a full disk, recording the failure needs it.
    artifacts.clean_staging(settings.index_dir)
    for tmp in (*settings.index_dir.glob("embeddings/*/.shard-*.tmp"),
                *settings.index_dir.glob("features/*/.shard-*.tmp")):
        tmp.unlink(missing_ok=True)
    error = f"disk full: {exc}" if artifacts.is_disk_full(exc) else str(exc)
    try:
        # Restored before the row leaves 'building': if this fails, the next build finds the
        # row still 'building' and restores then (fail_stale_builds).
        restore_active(settings, sessions)
        with sessions.begin() as session:
            session.execute(update(IndexVersion).where(IndexVersion.version_id == version_id)
                            .values(status="failed", summary={"error": error[:2000]}))
    except Exception as record_exc:
        LOG.error("could not record build %s as failed (%s): %s; the next build will", version_id, error[:200],
                  record_exc)


def rollback(settings: Settings, target: str | None = None) -> tuple[str, str | None]:
    """Make an earlier version active again, with exactly what it answered: the catalog of record
    goes back to its products, and no live change is served over it. Returns (target, previous)."""
    with builder_lock(settings.index_dir):
        engine, sessions = open_database(settings.db_url)
        try:
            fail_stale_builds(settings, sessions)
            versions = [m.version_id for m in artifacts.list_versions(settings.index_dir)]
            active = artifacts.read_active(settings.index_dir)
            if target is None:
                older = [v for v in versions if active is None or v < active]
                if not older:
                    raise CatalensError(f"no version older than {active} to roll back to")
                target = older[-1]
            path = artifacts.versions_dir(settings.index_dir) / target
            if target not in versions:
                raise CatalensError(f"no index version {target!r} in {artifacts.versions_dir(settings.index_dir)} "
                                    f"(see `catalens index versions`)")
            artifacts.load_version(path)  # complete and intact, before anything changes
            table = ProductTable.load(path / PRODUCTS)
            with sessions() as session:
                since = changes.last_seq(session)
            if settings.milvus:  # the slow step that can fail (Milvus down) first: nothing changed yet
                to_vector_store(settings, sessions, target, since_seq=since)
            with sessions.begin() as session:
                restore(session, table.all_records())
            # Killed between the steps: the catalog of record is already the target's and a
            # rerun finishes the swap.
            artifacts.set_active(settings.index_dir, target, since_seq=since)
            refresh_statistics(sessions)
        finally:
            engine.dispose()
    return target, active
