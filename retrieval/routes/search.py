"""Search routes: text, image upload."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from catalens.errors import InvalidInputError
from catalens.images import decode_image
from retrieval.deps import SearcherDep, SettingsDep
from retrieval.schemas import MAX_K, MAX_RERANK_TOP_N, ErrorOut, FiltersIn, SearchOut, TextSearchIn, result_from_hit
from retrieval.searcher import Filters, SearchOutcome

router = APIRouter(prefix="/v1/search", tags=["search"])
ERRORS = {code: {"model": ErrorOut} for code in (413, 415, 422, 503)}


def to_filters(body: FiltersIn) -> Filters:
    return Filters(tuple(body.category), tuple(body.brand), body.price_min, body.price_max)


def to_response(outcome: SearchOutcome, started: float) -> SearchOut:
    return SearchOut(results=[result_from_hit(h) for h in outcome.hits],
                     took_ms=round((time.perf_counter() - started) * 1000, 2),
                     index_version=outcome.index_version, reranked=outcome.reranked)


@router.post("/text", response_model=SearchOut, responses=ERRORS)
def search_text(body: TextSearchIn, searcher: SearcherDep) -> SearchOut:
    """Find products matching a text query (text-to-image search), optionally reranked."""
    started = time.perf_counter()
    return to_response(searcher.search_text(body.query, body.k, to_filters(body.filters), rerank=body.rerank,
                                            rerank_top_n=body.rerank_top_n), started)


@router.post("/image", response_model=SearchOut, responses=ERRORS)
async def search_image(searcher: SearcherDep, settings: SettingsDep,
                       file: Annotated[UploadFile, File(description="a JPEG, PNG, WEBP or GIF image")],
                       k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                       filters: Annotated[str | None, Form(description="filters as JSON")] = None,
                       rerank: Annotated[bool, Form(description="rescore the top candidates with the query "
                                                                "and its mirror image")] = False,
                       rerank_top_n: Annotated[int, Form(ge=1, le=MAX_RERANK_TOP_N)] = 20) -> SearchOut:
    """Find products that look like an uploaded image, optionally reranked."""
    started = time.perf_counter()
    parsed = parse_filters_json(filters)
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        from catalens.errors import PayloadTooLargeError

        raise PayloadTooLargeError(f"upload is larger than {settings.max_upload_bytes:,} bytes")
    image = await run_in_threadpool(decode_image, data, max_pixels=settings.max_image_pixels)
    outcome = await run_in_threadpool(searcher.search_image, image, k, to_filters(parsed), rerank=rerank,
                                      rerank_top_n=rerank_top_n)
    return to_response(outcome, started)


def parse_filters_json(raw: str | None) -> FiltersIn:
    if not raw:
        return FiltersIn()
    try:
        return FiltersIn.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidInputError(f"filters must be a JSON object like "
                                f'{{"category": ["mug"], "price_max": 20}}: {exc}') from exc
