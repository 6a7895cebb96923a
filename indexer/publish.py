"""Publish stage: a staged version is validated, promoted, made active and recorded; old ones pruned.

The one lifecycle every change goes through: a catalog build, a rebuild, an upsert, a delete.
A version row is 'building' from start() until publish() marks it 'ready', or fail() 'failed'.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select, update

from catalens import artifacts
from catalens.config import Settings
from catalens.db import Sessions, refresh_statistics
from catalens.errors import InsufficientStorageError, PublishRefusedError
from catalens.schema import IndexVersion
from indexer.lock import builder_lock

LOG = logging.getLogger(__name__)
# An incremental batch smaller than this is never refused for its image failure ratio: one
# upserted product with a broken image is published text-only and its error reported.
MIN_IMAGES_FOR_RATIO = 10


def fail_stale_builds(sessions: Sessions) -> list[str]:
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


@contextlib.contextmanager
def guarded(settings: Settings, what: str) -> Iterator[None]:
    """Hold the builder lock around one change to the index (`what`: "build", "delete"), on a disk
    that has room: stale staging cleared, free space checked (507 before any write), a reserve a
    failed change frees to record its failure, and a full disk reported as one 507 line."""
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    with builder_lock(settings.index_dir):
        artifacts.clean_staging(settings.index_dir)
        artifacts.check_free_space(settings.index_dir, settings.min_free_bytes)
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


def start(sessions: Sessions, *, model_id: str, catalog: str, checksum: str) -> str:
    """Record a new version as 'building' and return its id."""
    version_id = artifacts.new_version_id()
    with sessions.begin() as session:
        session.add(IndexVersion(version_id=version_id, status="building", model=model_id,
                                 catalog=catalog, catalog_checksum=checksum))
    return version_id


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
            summary: dict[str, Any]) -> None:
    """Promote the staged version, make it active (atomic pointer swap), prune, record it 'ready'."""
    artifacts.promote_staging(settings.index_dir, manifest.version_id)
    artifacts.set_active(settings.index_dir, manifest.version_id)
    artifacts.prune_versions(settings.index_dir, keep)
    with sessions.begin() as session:
        session.execute(update(IndexVersion).where(IndexVersion.version_id == manifest.version_id).values(
            status="ready", dim=manifest.dim, count=manifest.count, factory=manifest.factory, summary=summary))
    refresh_statistics(sessions)


def fail(settings: Settings, sessions: Sessions, version_id: str, exc: BaseException) -> None:
    """Remove what the version staged and record it 'failed' with its reason (best effort on a full disk)."""
    # Free space first (staging and its reserve): on a full disk, recording the failure needs it.
    artifacts.clean_staging(settings.index_dir)
    for tmp in (*settings.index_dir.glob("embeddings/*/.shard-*.tmp"),
                *settings.index_dir.glob("features/*/.shard-*.tmp")):
        tmp.unlink(missing_ok=True)
    error = f"disk full: {exc}" if artifacts.is_disk_full(exc) else str(exc)
    try:
        with sessions.begin() as session:
            session.execute(update(IndexVersion).where(IndexVersion.version_id == version_id)
                            .values(status="failed", summary={"error": error[:2000]}))
    except Exception as record_exc:  # the next build marks it failed (fail_stale_builds)
        LOG.error("could not record build %s as failed (%s): %s", version_id, error[:200], record_exc)
