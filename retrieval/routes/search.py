"""Search routes: text, image upload."""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import FormData

from catalens.config import Settings
from catalens.errors import InvalidInputError, PayloadTooLargeError
from catalens.filters import Filters
from catalens.images import decode_image
from retrieval.deps import RequireSnapshot, SearcherDep, SettingsDep
from retrieval.schemas import (
    MAX_K,
    MAX_RERANK_TOP_N,
    FiltersIn,
    MixPartIn,
    MixSearchIn,
    SearchOut,
    TextSearchIn,
    error_responses,
    result_from_hit,
)
from retrieval.searcher import MixPart, SearchOutcome

router = APIRouter(prefix="/v1/search", tags=["search"])
TEXT_ERRORS = error_responses(400, 413, 422, 503)
IMAGE_ERRORS = error_responses(400, 413, 415, 422, 503)
ERRORS = IMAGE_ERRORS  # the errors a search can answer with (kept for importers)
# The `filters` form field: a small JSON object (an object of lists, two levels deep).
MAX_FILTERS_CHARS = 64 * 1024
MAX_FILTERS_DEPTH = 32
FORM_FIELDS = ("file", "k", "filters", "rerank", "rerank_top_n")


def to_filters(body: FiltersIn) -> Filters:
    return Filters(tuple(body.category), tuple(body.brand), body.price_min, body.price_max, tuple(body.availability))


def to_response(outcome: SearchOutcome, started: float) -> SearchOut:
    return SearchOut(results=[result_from_hit(h) for h in outcome.hits],
                     took_ms=round((time.perf_counter() - started) * 1000, 2),
                     index_version=outcome.index_version, reranked=outcome.reranked, mode=outcome.mode,
                     no_good_match=outcome.no_good_match)


@router.post("/text", response_model=SearchOut, responses=TEXT_ERRORS, dependencies=[RequireSnapshot])
def search_text(body: TextSearchIn, searcher: SearcherDep) -> SearchOut:
    """Find products matching a text query (text-to-image search), optionally reranked."""
    started = time.perf_counter()
    return to_response(searcher.search_text(body.query, body.k, to_filters(body.filters), rerank=body.rerank,
                                            rerank_top_n=body.rerank_top_n, mode=body.mode,
                                            min_score=body.min_score), started)


@router.post("/mix", response_model=SearchOut, responses=IMAGE_ERRORS, dependencies=[RequireSnapshot])
def search_mix(body: MixSearchIn, searcher: SearcherDep, settings: SettingsDep) -> SearchOut:
    """One query from weighted parts: text, an image (base64), an existing product; negative weights push away."""
    started = time.perf_counter()
    parts = [to_mix_part(part, settings) for part in body.parts]
    return to_response(searcher.search_mix(parts, body.k, to_filters(body.filters), rerank=body.rerank), started)


def to_mix_part(part: MixPartIn, settings: Settings) -> MixPart:
    """A request part as the searcher's MixPart: its image decoded under the upload limits."""
    given = [name for name in ("text", "image", "product_id") if getattr(part, name) is not None]
    if len(given) != 1:
        raise InvalidInputError(f"each part of a mix has exactly one of text, image or product_id (got "
                                f"{', '.join(given) or 'none'})")
    if part.image is None:
        return MixPart(text=part.text, product_id=part.product_id, weight=part.weight)
    raw = part.image.split(",", 1)[1] if part.image.startswith("data:") else part.image
    if len(raw) * 3 // 4 > settings.max_upload_bytes:
        raise PayloadTooLargeError(f"an image part is larger than {settings.max_upload_bytes:,} bytes "
                                   "(the limit is set by CATALENS_MAX_UPLOAD_BYTES)")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"an image part is not base64: {exc}") from exc
    image = decode_image(data, max_pixels=settings.max_image_pixels, max_aspect=settings.max_aspect_ratio)
    return MixPart(image=image, weight=part.weight)


async def read_upload(request: Request, file: UploadFile, settings: Settings) -> Any:
    """The one uploaded image, decoded under the upload limits (413, 415, 422 otherwise)."""
    refuse_repeated_fields(await request.form())
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLargeError(f"upload is larger than {settings.max_upload_bytes:,} bytes "
                                   "(the limit is set by CATALENS_MAX_UPLOAD_BYTES)")
    return await run_in_threadpool(decode_image, data, max_pixels=settings.max_image_pixels,
                                   max_aspect=settings.max_aspect_ratio)


@router.post("/image", response_model=SearchOut, responses=IMAGE_ERRORS, dependencies=[RequireSnapshot])
async def search_image(request: Request, searcher: SearcherDep, settings: SettingsDep,
                       file: Annotated[UploadFile, File(description="a JPEG, PNG, WEBP or GIF image; one per request")],
                       k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                       filters: Annotated[str | None, Form(description="filters as JSON",
                                                           max_length=MAX_FILTERS_CHARS)] = None,
                       rerank: Annotated[bool, Form(description="rescore the top candidates with the query "
                                                                "and its mirror image")] = False,
                       rerank_top_n: Annotated[int, Form(ge=1, le=MAX_RERANK_TOP_N)] = 20) -> SearchOut:
    """Find products that look like an uploaded image, optionally reranked."""
    started = time.perf_counter()
    parsed = parse_filters_json(filters)
    image = await read_upload(request, file, settings)
    outcome = await run_in_threadpool(searcher.search_image, image, k, to_filters(parsed), rerank=rerank,
                                      rerank_top_n=rerank_top_n)
    return to_response(outcome, started)


def refuse_repeated_fields(form: FormData) -> None:
    """A second `file` (or a second k, filters, ...) part is refused, not silently dropped."""
    for name in FORM_FIELDS:
        count = len(form.getlist(name))
        if count > 1 and name == "file":
            raise InvalidInputError(f"one file per request: the body has {count} 'file' parts")
        if count > 1:
            raise InvalidInputError(f"one value per field: '{name}' was sent {count} times")


def json_depth_exceeds(raw: str, limit: int) -> bool:
    """True when JSON text nests arrays/objects more than `limit` deep (strings are skipped).

    Checked before json.loads, whose recursion would otherwise end in a RecursionError.
    """
    depth = 0
    in_string = escaped = False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_filters_json(raw: str | None) -> FiltersIn:
    example = '{"category": ["mug"], "price_max": 20}'
    if not raw:
        return FiltersIn()
    if len(raw) > MAX_FILTERS_CHARS:
        raise InvalidInputError(f"filters are longer than {MAX_FILTERS_CHARS:,} characters")
    if json_depth_exceeds(raw, MAX_FILTERS_DEPTH):
        raise InvalidInputError(f"filters are nested too deeply (more than {MAX_FILTERS_DEPTH} levels); "
                                f"they must be a JSON object like {example}")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInputError(f"filters must be a JSON object like {example}: {reason}") from exc
    try:
        return FiltersIn.model_validate(value)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInputError(f"filters must be a JSON object like {example}: {details}") from exc
