"""Background admin jobs: large batches and compactions, run one at a time off the request path.

A job is a row (catalens.schema.AdminJob) holding its input, so a restart loses nothing: jobs
that were queued or running when the process stopped run again (upserts and deletes are
idempotent, and a half-applied edit was put back by the builder's stale-edit check).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from sqlalchemy import select, update

from catalens.db import Sessions
from catalens.editing import CatalogEditor
from catalens.errors import BuildLockedError, CatalensError, NotFoundError
from catalens.schema import AdminJob, utcnow

LOG = logging.getLogger(__name__)
DELETE_CHUNK = 1000
LOCK_RETRY_S = 2.0  # a build holds the index: the job waits its turn


class JobRunner:
    """One worker thread over the jobs table; `after` runs after each job (the service applies the changes)."""

    def __init__(self, sessions: Sessions, editor: CatalogEditor, *, after: Callable[[], None] = lambda: None) -> None:
        self.sessions = sessions
        self.editor = editor
        self.after = after
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self.sessions.begin() as session:  # the last process died mid-job: run it again
            session.execute(update(AdminJob).where(AdminJob.status == "running").values(status="queued"))
        self._thread = threading.Thread(target=self._loop, name="admin-jobs", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, kind: str, payload: Any, total: int) -> str:
        """Queue a job and return its id."""
        job_id = uuid.uuid4().hex
        with self.sessions.begin() as session:
            session.add(AdminJob(job_id=job_id, kind=kind, status="queued", total=total, done=0, payload=payload,
                                 errors=[]))
        self._wake.set()
        return job_id

    def submit_compaction(self) -> str:
        """Queue a compaction unless one is already waiting or running."""
        with self.sessions() as session:
            pending = session.scalar(select(AdminJob.job_id).where(
                AdminJob.kind == "compact", AdminJob.status.in_(("queued", "running"))))
        return pending or self.submit("compact", None, 1)

    def get(self, job_id: str) -> dict[str, Any]:
        with self.sessions() as session:
            job = session.get(AdminJob, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id!r} not found")
            return {"job_id": job.job_id, "kind": job.kind, "status": job.status, "total": job.total,
                    "done": job.done, "errors": list(job.errors or []), "result": job.result,
                    "created_at": job.created_at.isoformat(), "updated_at": job.updated_at.isoformat()}

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            while not self._stop.is_set() and (job_id := self._next()) is not None:
                self._run(job_id)

    def _next(self) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(AdminJob.job_id).where(AdminJob.status == "queued")
                                  .order_by(AdminJob.created_at).limit(1))

    def _set(self, job_id: str, **values: Any) -> None:
        with self.sessions.begin() as session:
            session.execute(update(AdminJob).where(AdminJob.job_id == job_id).values(updated_at=utcnow(), **values))

    def _run(self, job_id: str) -> None:
        with self.sessions() as session:
            job = session.get(AdminJob, job_id)
            assert job is not None
            kind, payload = job.kind, job.payload
        self._set(job_id, status="running")
        try:
            result = self._execute(job_id, kind, payload)
        except BuildLockedError:  # a build or compaction holds the index: retry after it
            self._set(job_id, status="queued")
            self._stop.wait(LOCK_RETRY_S)
            return
        except CatalensError as exc:
            self._set(job_id, status="failed", errors=[f"{exc.code}: {exc.message}"])
            return
        except Exception as exc:  # a job must never kill the worker
            LOG.exception("admin job %s failed", job_id)
            self._set(job_id, status="failed", errors=[f"internal_error: {type(exc).__name__}"])
            return
        finally:
            self.after()
        done, errors = result.pop("total_done"), result.pop("errors", [])
        self._set(job_id, status="done", result=result, done=done, errors=errors)
        if kind != "compact" and self.editor.compact_due():
            self.submit_compaction()

    def _execute(self, job_id: str, kind: str, payload: Any) -> dict[str, Any]:
        if kind == "upsert":
            summary = self.editor.upsert(payload, on_progress=lambda n: self._set(job_id, done=n))
            data = asdict(summary)
            data["total_done"] = summary.upserted
            return data
        if kind == "delete":
            deleted = missing = seq = 0
            for start in range(0, len(payload), DELETE_CHUNK):
                part = self.editor.delete(payload[start:start + DELETE_CHUNK])
                deleted, missing, seq = deleted + part.deleted, missing + part.missing, part.seq
                self._set(job_id, done=start + len(payload[start:start + DELETE_CHUNK]))
            return {"seq": seq, "deleted": deleted, "missing": missing, "total_done": len(payload)}
        if kind == "compact":
            data = asdict(self.editor.compact())
            data["total_done"] = 1
            return data
        raise CatalensError(f"unknown job kind {kind!r}")
