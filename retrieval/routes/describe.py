"""Describe a product photo: the catalog's facets guessed for it, a caption, a title, similar products."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from retrieval.deps import RequireSnapshot, SearcherDep, SettingsDep
from retrieval.routes.search import IMAGE_ERRORS, read_upload
from retrieval.schemas import MAX_K, DescribeOut, GuessOut, result_from_hit
from retrieval.searcher import Description

router = APIRouter(prefix="/v1", tags=["describe"])


def to_describe_out(description: Description, started: float) -> DescribeOut:
    guesses = {name: GuessOut(value=g.value, p=g.p).model_dump() for name, g in description.attributes.items()}
    return DescribeOut(caption=description.caption, title=description.title,
                       similar=[result_from_hit(h) for h in description.similar.hits],
                       index_version=description.similar.index_version,
                       took_ms=round((time.perf_counter() - started) * 1000, 2), **guesses)


@router.post("/describe", response_model=DescribeOut, responses=IMAGE_ERRORS, dependencies=[RequireSnapshot])
async def describe(request: Request, searcher: SearcherDep, settings: SettingsDep,
                   file: Annotated[UploadFile, File(description="a JPEG, PNG, WEBP or GIF image; one per request")],
                   k: Annotated[int, Form(ge=1, le=MAX_K)] = 5) -> DescribeOut:
    """What a seller's photo shows, in the catalog's own terms: each facet's value with its probability
    (zero-shot, against the catalog's values), a caption, a suggested title and the k most similar products."""
    started = time.perf_counter()
    image = await read_upload(request, file, settings)
    return to_describe_out(await run_in_threadpool(searcher.describe, image, k), started)
