"""Request and response bodies of the HTTP API (they become the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_K = 100
MAX_RERANK_TOP_N = 100


class FiltersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: list[str] = Field(default_factory=list, max_length=200)
    brand: list[str] = Field(default_factory=list, max_length=200)
    price_min: float | None = Field(default=None, ge=0)
    price_max: float | None = Field(default=None, ge=0)


class TextSearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=1000, description="what the shopper typed")
    k: int = Field(default=10, ge=1, le=MAX_K)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    rerank: bool = Field(default=False, description="reorder the first-stage top candidates with the reranker")
    rerank_top_n: int = Field(default=20, ge=1, le=MAX_RERANK_TOP_N,
                              description="first-stage candidates the reranker reads (at least k are read)")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must not be blank")
        return value.strip()


class ResultOut(BaseModel):
    product_id: str
    score: float
    title: str
    category: str | None
    brand: str | None
    price: float | None
    currency: str | None
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
    price: PriceRange
    index_version: str | None
    reranker: str | None = Field(default=None, description="the second stage this server runs, if any")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


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
                     image_url=image_url(p.product_id, hit.image_position),
                     thumbnail_url=image_url(p.product_id, hit.image_position, thumb=True),
                     first_stage_score=_rounded(hit.first_stage_score), rerank_score=_rounded(hit.rerank_score),
                     caption=hit.caption)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
