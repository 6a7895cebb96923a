"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from catalens.errors import IndexNotReadyError
from retrieval.deps import NOT_READY_MESSAGE, MetricsDep, SearcherDep
from retrieval.schemas import error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
def readyz(searcher: SearcherDep) -> JSONResponse:
    """Ready once an index version is loaded (503 until then)."""
    snap = searcher.current
    if snap is None:
        raise IndexNotReadyError(NOT_READY_MESSAGE)
    reranker = "ready" if searcher.reranker is not None else "loading" if searcher.reranker_pending else "off"
    return JSONResponse({"status": "ready", "index_version": snap.version_id, "vectors": snap.images.ntotal,
                         "runtime": searcher.encoder.runtime, "reranker": reranker})


@router.get("/metrics", include_in_schema=False)
def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
