"""The FastAPI application: create_app wires settings, model, searcher, errors and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from catalens import artifacts
from catalens.config import Settings
from catalens.errors import CatalensError
from retrieval.metrics import Metrics
from retrieval.searcher import Searcher
from retrieval.uploads import BodyLimitMiddleware

LOG = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
WATCH_INTERVAL_S = 2.0


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_searcher(settings: Settings) -> Searcher:
    """Load the model and open the database once per process (never per request)."""
    from catalens.db import check_integrity, create_db_engine, create_session_factory, upgrade_database
    from catalens.encoder import ModelSpec, load_clip

    engine = create_db_engine(settings.db_url)
    check_integrity(engine)
    upgrade_database(settings.db_url)
    encoder = load_clip(ModelSpec(settings.model, settings.pretrained), device=settings.device)
    import torch

    from catalens.reranker import load_reranker

    torch.set_num_threads(settings.torch_threads())
    reranker = load_reranker(settings.reranker, clip=encoder, device=encoder.device)
    return Searcher(settings, create_session_factory(engine), encoder, reranker=reranker)


def try_reload(searcher: Searcher) -> None:
    try:
        searcher.reload()
    except CatalensError as exc:
        LOG.warning("index not loaded: %s", exc.message)


async def watch_active_pointer(searcher: Searcher, index_dir: Path) -> None:
    """Pick up a newly published version without a restart (loaded off the request path)."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        try:
            active = artifacts.read_active(index_dir)
        except CatalensError:
            continue
        if active and active != searcher.current_version:
            await asyncio.to_thread(try_reload, searcher)


def create_app(settings: Settings | None = None, *, searcher: Searcher | None = None) -> FastAPI:
    """The query service. Pass a searcher to share an already loaded model (tests, benchmarks)."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal searcher
        if searcher is None:
            searcher = await asyncio.to_thread(create_searcher, settings)
        searcher.observe = metrics.observe_stage
        app.state.searcher = searcher
        await asyncio.to_thread(try_reload, searcher)
        watcher = asyncio.create_task(watch_active_pointer(searcher, settings.index_dir))
        yield
        watcher.cancel()

    app = FastAPI(title="Catalens", version="0.1.0", lifespan=lifespan,
                  description="Cross-modal product search: text and image queries over a product catalog.")
    app.state.settings = settings
    app.state.metrics = metrics
    _install_error_handlers(app)
    _install_metrics_middleware(app, metrics)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes,
                       paths=frozenset({"/v1/search/image"}))

    from retrieval.routes import admin, health, products, search

    app.include_router(search.router)
    app.include_router(products.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    if (WEB_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

        @app.get("/", include_in_schema=False)
        def index_page() -> FileResponse:
            return FileResponse(WEB_DIR / "index.html")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": {"code", "message"}} with its documented status."""

    @app.exception_handler(CatalensError)
    async def catalens_error(_: Request, exc: CatalensError) -> JSONResponse:
        return error_response(exc.http_status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(422, "invalid_input", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        LOG.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")


def _install_metrics_middleware(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response
