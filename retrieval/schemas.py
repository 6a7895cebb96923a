"""Request and response bodies of the HTTP API (they become the OpenAPI schema at /docs)."""

from __future__ import annotations

import math
import unicodedata
from typing import Annotated, Any, Literal

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


SearchMode = Literal["hybrid", "vector", "keyword"]
MAX_MIX_PARTS = 8


class MixPartIn(BaseModel):
    """One part of a mixed query: exactly one of text, image (base64) or product_id, with a weight."""

    model_config = ConfigDict(extra="forbid")

    text: Text | None = Field(default=None, max_length=MAX_QUERY_CHARS)
    image: str | None = Field(default=None, description="a JPEG, PNG, WEBP or GIF image, base64 (or a data: URL)")
    product_id: Text | None = Field(default=None, max_length=200, description="an existing product's id")
    weight: float = Field(default=1.0, ge=-10, le=10, allow_inf_nan=False, strict=True,
                          description="how much of the query this part is; negative pushes results away from it")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else clean_query(value)


class MixSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[MixPartIn] = Field(max_length=MAX_MIX_PARTS, description="e.g. an image, +\"blue\" and "
                                   "-\"dots\" at weight -0.5: like this photo, but blue and without dots")
    k: int = Field(default=10, ge=1, le=MAX_K, strict=True)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    rerank: bool = Field(default=False, strict=True, description="the reranker reads the photo's caption, edited "
                         "by the words, against the top candidates")


class TextSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Text = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="what the shopper typed")
    k: int = Field(default=10, ge=1, le=MAX_K, strict=True)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    rerank: bool = Field(default=False, strict=True,
                         description="reorder the first-stage top candidates with the reranker")
    rerank_top_n: int = Field(default=20, ge=1, le=MAX_RERANK_TOP_N, strict=True,
                              description="first-stage candidates the reranker reads (at least k are read)")
    mode: SearchMode | None = Field(default=None, description="hybrid: keyword (BM25) and vector rankings fused; "
                                    "vector or keyword alone (default: the server's CATALENS_SEARCH_MODE, hybrid)")
    min_score: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False, strict=True,
                                    description="drop results whose match_probability is below this")

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
    match_probability: float | None = Field(
        default=None, description="calibrated probability in [0, 1] that this product is what the query asks for "
        "(fitted on the index version's own catalog; null when the version has no calibration)")
    exact_match: bool = Field(default=False, description="the query names this product (its SKU, its brand or a "
                              "model code in its text): it comes first and its match_probability is 1")
    facet_mismatch: dict[str, float] = Field(
        default_factory=dict, description="per catalog column the query names a value of (the version's lexicon "
        "reads 'stripy navy tee' as pattern, main colour, category): 0 this product has it, 1 it does not, 0.5 it "
        "has it in another role (a main colour named, found as the secondary). Hybrid and vector results are "
        "ordered by the weighted sum first (CATALENS_FACET_WEIGHTS), then by score; mixes likewise")


class SearchOut(BaseModel):
    results: list[ResultOut]
    took_ms: float
    index_version: str
    reranked: bool = Field(default=False, description="true when the reranker ordered these results")
    mode: str = Field(default="vector", description="the ranking that ordered these results")
    no_good_match: bool = Field(default=False, description="no result reaches the match threshold "
                                "(CATALENS_MATCH_THRESHOLD): these are only the closest products")


class GuessOut(BaseModel):
    value: str | None = Field(description="the catalog's own value (null: products without one, e.g. no "
                              "secondary colour)")
    p: float = Field(description="its probability among the facet's values")


class DescribeOut(BaseModel):
    """Each facet of the catalog (its category and attribute columns with a few values) as a key of its
    own, e.g. {"category": {"value": "mug", "p": 0.93}, "main_colour": {...}}, beside these fields."""

    model_config = ConfigDict(extra="allow")

    caption: str | None = Field(description="written by the captioner; null past the time budget or without one")
    title: str = Field(description="a suggested product title")
    similar: list[ResultOut] = Field(description="the most similar catalog products")
    index_version: str
    took_ms: float


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
    description_generated: bool = Field(default=False, description="the description was written by the captioner "
                                        "at index time (`index build --describe`), not by the catalog")
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
                     caption=hit.caption, match_probability=_rounded(hit.match_probability),
                     exact_match=hit.exact_match, facet_mismatch=hit.mismatch)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
