"""Typed dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from catalens.config import Settings
from catalens.editing import CatalogEditor
from catalens.errors import ForbiddenError, IndexNotReadyError
from retrieval.jobs import JobRunner
from retrieval.metrics import Metrics
from retrieval.searcher import NOT_READY_MESSAGE, Searcher, Snapshot


def get_searcher(request: Request) -> Searcher:
    return request.app.state.searcher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_editor(request: Request) -> CatalogEditor:
    """The catalog editor the composition root wired in; admin writes are off without one."""
    editor = request.app.state.editor
    if editor is None:
        raise ForbiddenError("admin writes are off in this process: it was started without a catalog editor")
    return editor


def get_jobs(request: Request) -> JobRunner:
    """The background job runner (there is one whenever admin writes are on)."""
    get_editor(request)
    return request.app.state.jobs


def require_snapshot(request: Request) -> Snapshot:
    """The snapshot being served; 503 index_not_ready before the first index is loaded."""
    snap = get_searcher(request).current
    if snap is None:
        raise IndexNotReadyError(NOT_READY_MESSAGE)
    return snap


SearcherDep = Annotated[Searcher, Depends(get_searcher)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EditorDep = Annotated[CatalogEditor, Depends(get_editor)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
SnapshotDep = Annotated[Snapshot, Depends(require_snapshot)]
RequireSnapshot = Depends(require_snapshot)
