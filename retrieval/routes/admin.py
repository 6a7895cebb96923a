"""Admin routes: upsert and delete products, reload the active index version (API key required)."""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from catalens.errors import ForbiddenError, UnauthorizedError
from catalens.validation import attribute_problem, product_id_problem
from retrieval.deps import EditorDep, SearcherDep, SettingsDep
from retrieval.schemas import Text, error_responses, require_finite

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <CATALENS_API_KEY>")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's CATALENS_API_KEY")


def require_api_key(settings: SettingsDep,
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
                    header_key: Annotated[str | None, Security(_header_key)] = None) -> None:
    """Admin routes are off without a configured key; otherwise the request must carry it."""
    if not settings.api_key:
        raise ForbiddenError("admin routes are off: start the server with CATALENS_API_KEY set to enable them")
    given = header_key or (bearer.credentials if bearer else None)
    if not given:
        raise UnauthorizedError("admin routes need the API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise ForbiddenError("wrong API key")


ADMIN_ERRORS = error_responses(400, 401, 403, 409, 413, 422, 503)
# Extra product fields become stored attributes: JSON values this deep at most.
router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_api_key)],
                   responses=ADMIN_ERRORS)


class ProductIn(BaseModel):
    """One product in the catalog format; fields beyond these are kept as attributes."""

    model_config = ConfigDict(extra="allow")

    product_id: Text = Field(min_length=1, max_length=256)
    title: Text = Field(min_length=1, max_length=10_000)
    description: Text = Field(default="", max_length=100_000)
    image: Text | list[Text] | None = Field(
        default=None, description="http(s) URL, or a path inside the active catalog's folder or CATALENS_IMAGE_ROOTS "
                    "(relative to the catalog's folder); a list or '|'-separated for several")
    category: Text | None = None
    brand: Text | None = None
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    currency: Text | None = None

    _finite_price = field_validator("price")(require_finite)

    @field_validator("product_id")
    @classmethod
    def _fetchable_id(cls, value: str) -> str:
        problem = product_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _storable_attributes(self) -> ProductIn:
        for name, value in (self.model_extra or {}).items():
            problem = attribute_problem(value)
            if problem:
                raise ValueError(f"attribute {name!r} {problem}")
        return self


class UpsertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    products: list[ProductIn] = Field(min_length=1, max_length=1000)


class UpsertOut(BaseModel):
    index_version: str
    upserted: int
    images_ok: int
    images_failed: int
    images_embedded: int = Field(description="images run through the model (new or changed content)")
    images_cached: int = Field(description="images whose vector was already known (no model time)")
    texts_embedded: int
    texts_cached: int
    vectors: int
    errors: list[str] = Field(description="images that could not be read; their products stay findable by text")
    took_ms: float


class DeleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[Text, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=10_000)


class DeleteOut(BaseModel):
    index_version: str
    deleted: int
    missing: int = Field(description="ids that were not live products")


class ReloadOut(BaseModel):
    index_version: str
    previous: str | None


@router.post("/products", response_model=UpsertOut)
def upsert_products(body: UpsertIn, searcher: SearcherDep, editor: EditorDep) -> UpsertOut:
    """Add or update products; only new or changed images and texts are embedded."""
    started = time.perf_counter()
    records = [p.model_dump(exclude_none=True) for p in body.products]
    summary = editor.upsert(records, encoder=searcher.encoder)
    version = searcher.reload()
    return UpsertOut(index_version=version, upserted=summary.upserted, images_ok=summary.images_ok,
                     images_failed=summary.images_failed, images_embedded=summary.images_embedded,
                     images_cached=summary.images_cached, texts_embedded=summary.texts_embedded,
                     texts_cached=summary.texts_cached, vectors=summary.vectors,
                     errors=summary.errors, took_ms=round((time.perf_counter() - started) * 1000, 2))


@router.post("/products/delete", response_model=DeleteOut)
def delete_products(body: DeleteIn, searcher: SearcherDep, editor: EditorDep) -> DeleteOut:
    """Remove products from every endpoint and publish a version without their vectors."""
    result = editor.delete(list(dict.fromkeys(body.ids)))
    version = searcher.reload()
    return DeleteOut(index_version=version, deleted=result.deleted, missing=result.missing)


@router.post("/reload", response_model=ReloadOut)
def reload_index(searcher: SearcherDep) -> ReloadOut:
    """Load the active index version now (the server also notices a new one within seconds)."""
    previous = searcher.current_version
    return ReloadOut(index_version=searcher.reload(), previous=previous)
