"""The FastAPI application: create_app wires settings, model, searcher, errors and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from catalens.config import Settings, set_threads
from catalens.editing import CatalogEditor
from catalens.errors import CatalensError
from retrieval.jobs import JobRunner
from retrieval.limits import (
    MULTIPART_SLACK,
    BodyLimit,
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
    error_body,
    security_headers,
)
from retrieval.metrics import Metrics
from retrieval.schemas import error_responses
from retrieval.searcher import Searcher

LOG = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"


# Statuses Starlette/FastAPI raise themselves, as documented error codes (400 is handled apart).
HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 422: "invalid_input"}
# Every route can answer these before it runs: a malformed Content-Length, a body over its limit.
COMMON_ERRORS = error_responses(400, 413)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status_code=status, headers=headers, media_type="application/json")


def body_limits(settings: Settings) -> tuple[list[BodyLimit], BodyLimit]:
    """Per-path body limits: uploads, admin, and the JSON limit for every other route."""
    upload = BodyLimit("/v1/search/image", settings.max_upload_bytes, "CATALENS_MAX_UPLOAD_BYTES",
                       what="upload", slack=MULTIPART_SLACK)
    describe = BodyLimit("/v1/describe", settings.max_upload_bytes, "CATALENS_MAX_UPLOAD_BYTES",
                         what="upload", slack=MULTIPART_SLACK)
    admin = BodyLimit("/v1/admin", settings.max_admin_body_bytes, "CATALENS_MAX_ADMIN_BODY_BYTES")
    # A mix carries its image as base64 (4/3 of the bytes) beside a small JSON body.
    mix = BodyLimit("/v1/search/mix", settings.max_upload_bytes * 4 // 3 + settings.max_json_bytes,
                    "CATALENS_MAX_UPLOAD_BYTES", what="upload")
    default = BodyLimit("/", settings.max_json_bytes, "CATALENS_MAX_JSON_BYTES")
    return [upload, describe, admin, mix], default


def create_searcher(settings: Settings, *, rerank: bool = True) -> Searcher:
    """Load the models and open the database once per process (never per request); the reranker
    (torch) only if asked for, so a query on ONNX Runtime starts without importing torch."""
    from catalens.db import open_database
    from catalens.encoder import ClipEncoder
    from catalens.onnx_encoder import load_query_encoder
    from catalens.reranker import load_reranker

    _, sessions = open_database(settings.db_url)
    encoder = load_query_encoder(settings)
    torch_clip = encoder if isinstance(encoder, ClipEncoder) else None
    reranker = load_reranker(settings.reranker, clip=torch_clip,
                             device=torch_clip.device if torch_clip else "cpu") if rerank else None
    set_threads(settings.torch_threads())
    searcher = Searcher(settings, sessions, encoder, reranker=reranker)
    if rerank:
        searcher.captioner = load_bundled_captioner(settings)
    return searcher


def load_bundled_captioner(settings: Settings) -> Any:
    """The bundled captioner when the served CLIP is the one it reads (torch: loaded with the reranker)."""
    from catalens.captioner import CaptionerConfig, bundled_captioner_dir, load_captioner

    folder = bundled_captioner_dir()
    if not folder.is_dir() or CaptionerConfig.load(folder).base_model != settings.model:
        return None
    return load_captioner(folder)


def try_reload(searcher: Searcher) -> None:
    try:
        searcher.reload()
    except CatalensError as exc:
        LOG.warning("index not loaded: %s", exc.message)


def follow_changes(searcher: Searcher) -> None:
    """One look: a new active version or a rollback -> reload; else apply the new live changes (logged, never raised)."""
    try:
        searcher.catch_up()
    except CatalensError as exc:
        LOG.warning("index not (re)loaded: %s", exc.message)
    except Exception:  # the watch must outlive any engine's bad moment
        LOG.exception("looking for index changes failed; trying again at the next poll")


def prepare_editor(editor: CatalogEditor) -> None:
    try:
        editor.prepare()
    except Exception as exc:  # the first edit meets it again and reports it
        LOG.warning("catalog editor not prepared ahead of the first edit: %s", exc)


async def watch_index(searcher: Searcher, interval_s: float) -> None:
    """Pick up a newly published version and live changes (written by any process) without a
    restart, off the request path: visible to queries within interval_s plus the load."""
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(follow_changes, searcher)


def warm_up(searcher: Searcher, editor: CatalogEditor | None, settings: Settings) -> None:
    """After the server is ready: load the captioner and the reranker (torch, seconds) and hand them to
    the searcher (and the reranker to the editor), then prepare the editor. Logged, never raised: reranking stays off on failure."""
    from catalens.encoder import ClipEncoder
    from catalens.reranker import load_reranker

    try:
        searcher.captioner = load_bundled_captioner(settings)
        clip = searcher.encoder if isinstance(searcher.encoder, ClipEncoder) else None
        reranker = load_reranker(settings.reranker, clip=clip, device=clip.device if clip else "cpu")
        if reranker is None:
            searcher.reranker_pending = False
            return
        if editor is not None and hasattr(editor, "reranker") and getattr(editor, "reranker", None) is None:
            editor.reranker = reranker  # one copy in memory, shared with the edits
        searcher.attach_reranker(reranker)
        LOG.info("reranker %s loaded", getattr(reranker, "reranker_id", settings.reranker))
    except Exception:
        searcher.reranker_pending = False
        LOG.exception("the reranker did not load; searches are served without reranking")
    finally:
        if editor is not None:
            prepare_editor(editor)


def create_app(settings: Settings | None = None, *, searcher: Searcher | None = None,
               editor: CatalogEditor | None = None, warm_reranker: bool = False) -> FastAPI:
    """The query service. Pass a searcher to share an already loaded model (tests, benchmarks), and
    an editor (indexer.live.IndexEditor) to enable the admin write routes and background jobs.
    warm_reranker: the searcher comes without its reranker, loaded once the server is ready
    (`catalens serve`: ready without importing torch)."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal searcher
        if searcher is None:
            searcher = await asyncio.to_thread(create_searcher, settings)
        # A shared searcher (tests, benchmarks) reports to this app while it runs, then to
        # whoever it reported to before.
        previous_observe = searcher.observe
        searcher.observe = metrics.observe_stage
        app.state.searcher = searcher
        await asyncio.to_thread(try_reload, searcher)
        watcher = asyncio.create_task(watch_index(searcher, settings.live_poll_s))
        jobs = None
        warm: asyncio.Task[None] | None = None
        if editor is not None:
            jobs = JobRunner(searcher.sessions, editor, after=lambda: follow_changes(searcher))
            jobs.start()
        if warm_reranker and settings.reranker != "none" and searcher.reranker is None:
            searcher.reranker_pending = True
            warm = asyncio.create_task(asyncio.to_thread(warm_up, searcher, editor, settings))
        elif editor is not None:
            warm = asyncio.create_task(asyncio.to_thread(prepare_editor, editor))
        app.state.jobs = jobs
        try:
            yield
        finally:
            watcher.cancel()
            if warm is not None:
                await warm
            if jobs is not None:
                await asyncio.to_thread(jobs.stop)
            searcher.observe = previous_observe

    # redirect_slashes off: `/v1/search/text/` is a plain 404, never a 307 whose Location
    # is built from the client's Host header.
    app = FastAPI(title="Catalens", version="0.1.0", lifespan=lifespan, redirect_slashes=False,
                  description="Cross-modal product search: text and image queries over a product catalog.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.editor = editor
    _install_error_handlers(app)
    _install_metrics_middleware(app, metrics)
    # Added last = runs first: headers on every response, CORS, then the body limits.
    limits, default_limit = body_limits(settings)
    app.add_middleware(BodyLimitMiddleware, limits=limits, default=default_limit)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key"])
    app.add_middleware(SecurityHeadersMiddleware)

    from retrieval.routes import admin, config, describe, health, products, search

    for router in (search.router, describe.router, products.router, health.router, admin.router, config.router):
        app.include_router(router, responses=COMMON_ERRORS)
    if (WEB_DIR / "index.html").is_file():
        app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

        @app.get("/", include_in_schema=False)
        def index_page() -> FileResponse:
            return FileResponse(WEB_DIR / "index.html")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": {"code", "message"}} with its documented status."""

    @app.exception_handler(CatalensError)
    async def catalens_error(_: Request, exc: CatalensError) -> Response:
        # An engine that is down or busy says when to come back (503 + Retry-After).
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return error_response(exc.http_status, exc.code, exc.message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            reason = (errors[0].get("ctx") or {}).get("error") or errors[0].get("msg")
            position = next((x for x in errors[0].get("loc", ()) if isinstance(x, int)), None)
            where = f" at character {position}" if position is not None else ""
            return error_response(422, "invalid_input", f"body is not valid JSON: {reason}{where}")
        parts = []
        for err in errors[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            if not loc and tuple(err.get("loc", ())) == ("body",):
                loc = "body"
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(422, "invalid_input", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:
            # Raised by FastAPI/Starlette only when a body cannot be parsed: that is invalid
            # input (422) like any other, with the reason instead of a generic sentence.
            return error_response(422, "invalid_input", unparseable_body_message(request, exc))
        code = HTTP_ERROR_CODES.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Raised past every middleware, so the security headers are added here.
        LOG.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log",
                              headers=security_headers(request.url.path))


def unparseable_body_message(request: Request, exc: StarletteHTTPException) -> str:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower() or "none"
    cause = exc.__cause__
    if content_type.endswith("json") or content_type == "none":
        if isinstance(cause, RecursionError):
            return "body is not valid JSON: nested too deeply"
        if isinstance(cause, UnicodeDecodeError):
            return "body is not valid JSON: not UTF-8 text"
        return f"body is not valid JSON: {str(cause or '') or exc.detail}"
    reason = str(cause or "") or str(exc.detail)
    return f"body could not be parsed as {content_type}: {reason}"


def _install_metrics_middleware(app: FastAPI, metrics: Metrics) -> None:
    @app.middleware("http")
    async def record(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response
