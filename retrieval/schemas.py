"""Request and response bodies of the HTTP API (they become the OpenAPI schema at /docs)."""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from catalens.records import Availability
from catalens.validation import text_problem

MAX_K = 100
MAX_RERANK_TOP_N = 100
MAX_QUERY_CHARS = 1000


def require_text(value: str) -> str:
    """Refuse strings that cannot be encoded as UTF-8 (lone surrogates from JSON escapes)."""
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Every free-text field of a request: valid Unicode, so the database and the encoder can take it.
Text = Annotated[str, AfterValidator(require_text)]


def is_blank_char(ch: str) -> bool:
    """Control, format (zero-width spaces, BOM, ...) and separator characters carry no query."""
    category = unicodedata.category(ch)
    return category in ("Cc", "Cf") or category.startswith("Z") or ch.isspace()


def clean_query(value: str) -> str:
    """NULs removed, blank characters trimmed from both ends; ValueError when nothing is left."""
    value = value.replace("\x00", "")
    start, end = 0, len(value)
    while start < end and is_blank_char(value[start]):
        start += 1
    while end > start and is_blank_char(value[end - 1]):
        end -= 1
    if start == end:
        raise ValueError("query must not be blank (only spaces, control or invisible characters)")
    return value[start:end]


def require_finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class FiltersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: list[Text] = Field(default_factory=list, max_length=200)
    brand: list[Text] = Field(default_factory=list, max_length=200)
    price_min: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    price_max: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    availability: list[Availability] = Field(default_factory=list, max_length=4,
                                             description="e.g. [\"in_stock\"]: only products a shopper can buy now")

    _finite = field_validator("price_min", "price_max")(require_finite)


class TextSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Text = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="what the shopper typed")
    k: int = Field(default=10, ge=1, le=MAX_K, strict=True)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    rerank: bool = Field(default=False, strict=True,
                         description="reorder the first-stage top candidates with the reranker")
    rerank_top_n: int = Field(default=20, ge=1, le=MAX_RERANK_TOP_N, strict=True,
                              description="first-stage candidates the reranker reads (at least k are read)")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return clean_query(value)


class ResultOut(BaseModel):
    product_id: str
    score: float
    title: str
    category: str | None
    brand: str | None
    price: float | None
    currency: str | None
    availability: str
    image_url: str | None
    thumbnail_url: str | None
    first_stage_score: float | None = Field(default=None, description="CLIP cosine, when reranked")
    rerank_score: float | None = Field(default=None, description="reranker match score in [0, 1], when reranked")
    caption: str | None = Field(default=None, description="caption generated at index time, if stored")


class SearchOut(BaseModel):
    results: list[ResultOut]
    took_ms: float
    index_version: str
    reranked: bool = Field(default=False, description="true when the reranker ordered these results")


class ImageOut(BaseModel):
    position: int
    url: str
    thumbnail_url: str | None
    status: str
    error: str | None
    caption: str | None = None


class ProductOut(BaseModel):
    product_id: str
    title: str
    description: str
    category: str | None
    brand: str | None
    price: float | None
    currency: str | None
    availability: str
    attributes: dict[str, Any]
    images: list[ImageOut]
    index_version: str | None


class FacetValue(BaseModel):
    value: str
    count: int


class PriceRange(BaseModel):
    min: float | None
    max: float | None


class FacetsOut(BaseModel):
    category: list[FacetValue]
    brand: list[FacetValue]
    availability: list[FacetValue]
    price: PriceRange
    index_version: str | None
    reranker: str | None = Field(default=None, description="the second stage this server runs, if any")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


ERROR_DESCRIPTIONS = {
    400: "malformed request: a bad Content-Length (`bad_request`)",
    401: "the API key is missing (`unauthorized`)",
    403: "a wrong API key, or admin routes are off (`forbidden`)",
    404: "unknown product or image (`not_found`)",
    409: "another build holds the lock (`build_locked`)",
    413: "the body is over its limit (`payload_too_large`): CATALENS_MAX_JSON_BYTES for JSON, "
         "CATALENS_MAX_UPLOAD_BYTES (or over CATALENS_MAX_IMAGE_PIXELS) for uploads, "
         "CATALENS_MAX_ADMIN_BODY_BYTES for admin routes",
    415: "the upload is not a JPEG, PNG, WEBP or GIF image (`unsupported_image`)",
    422: "invalid input: bad field values, an unparseable body (`invalid_input`)",
    503: "no index loaded yet (`index_not_ready`) or the index is unusable",
    507: "the index folder's disk is too full for the change (`insufficient_storage`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses, all in the one documented error shape."""
    return {status: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def image_url(product_id: str, position: int | None, *, thumb: bool = False) -> str | None:
    if position is None:
        return None
    from urllib.parse import quote

    suffix = "&size=thumb" if thumb else ""
    return f"/v1/products/{quote(product_id, safe='')}/image?view={position}{suffix}"


def result_from_hit(hit: Any) -> ResultOut:
    """A searcher Hit as the API's result row."""
    p = hit.product
    return ResultOut(product_id=p.product_id, score=round(float(hit.score), 6), title=p.title,
                     category=p.category, brand=p.brand, price=p.price, currency=p.currency,
                     availability=p.availability, image_url=image_url(p.product_id, hit.image_position),
                     thumbnail_url=image_url(p.product_id, hit.image_position, thumb=True),
                     first_stage_score=_rounded(hit.first_stage_score), rerank_score=_rounded(hit.rerank_score),
                     caption=hit.caption)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
