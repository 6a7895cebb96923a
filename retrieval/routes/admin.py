"""Admin routes: live upserts, patches and deletes, background jobs, compaction, reload (API key required)."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from catalens.editing import CatalogEditor
from catalens.errors import DatabaseError, ForbiddenError, UnauthorizedError, VectorStoreUnavailableError
from catalens.records import Availability, normalize_availability
from catalens.validation import attribute_problem, product_id_problem
from retrieval.deps import EditorDep, JobsDep, SearcherDep, SettingsDep
from retrieval.jobs import JobRunner
from retrieval.schemas import Text, error_responses, require_finite
from retrieval.searcher import Searcher

LOG = logging.getLogger(__name__)

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


ADMIN_ERRORS = error_responses(400, 401, 403, 409, 413, 422, 503, 507)
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
    availability: Availability | StrictBool | None = Field(default=None, description="default in_stock; true = in_stock, "
                                                     "false = out_of_stock")

    _finite_price = field_validator("price")(require_finite)

    @field_validator("availability")
    @classmethod
    def _named_availability(cls, value: Any) -> Any:
        return None if value is None else normalize_availability(value)

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
    seq: int = Field(description="the last change this upsert logged; searches show it once applied")
    visible: bool = Field(description="true when this server's searches show the change already")
    index_version: str = Field(description="the snapshot the change is served over")
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
    seq: int
    visible: bool
    index_version: str
    deleted: int
    missing: int = Field(description="ids that were not live products")


class PatchIn(BaseModel):
    """Fields to change; the others keep their values. Images and ids change with an upsert."""

    model_config = ConfigDict(extra="forbid")

    title: Text | None = Field(default=None, min_length=1, max_length=10_000)
    description: Text | None = Field(default=None, max_length=100_000)
    category: Text | None = None
    brand: Text | None = None
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    currency: Text | None = None
    availability: Availability | StrictBool | None = Field(default=None, description="true = in_stock, false = out_of_stock")
    attributes: dict[str, Any] | None = None

    _finite_price = field_validator("price")(require_finite)

    @field_validator("availability")
    @classmethod
    def _named_availability(cls, value: Any) -> Any:
        return None if value is None else normalize_availability(value)


class PatchOut(BaseModel):
    seq: int
    visible: bool
    index_version: str
    product_id: str
    changed: list[str] = Field(description="fields whose value differed (none: nothing was logged)")
    took_ms: float


class JobOut(BaseModel):
    job_id: str
    kind: Literal["upsert", "delete", "compact"]
    status: Literal["queued", "running", "done", "failed"]
    total: int
    done: int
    errors: list[str]
    result: dict[str, Any] | None
    created_at: str
    updated_at: str
    url: str


class ReloadOut(BaseModel):
    index_version: str
    previous: str | None


def _job(jobs: JobRunner, job_id: str) -> JobOut:
    return JobOut(**jobs.get(job_id), url=f"/v1/admin/jobs/{job_id}")


def _accepted(jobs: JobRunner, job_id: str) -> JSONResponse:
    job = _job(jobs, job_id)
    return JSONResponse(job.model_dump(), status_code=202, headers={"Location": job.url})


def _applied(searcher: Searcher, jobs: JobRunner | None, editor: CatalogEditor, seq: int) -> bool:
    """Apply the new changes to this server's view now; start a compaction once enough are pending.

    The edit is committed already: an engine that fails here (Milvus down) makes it not yet
    visible, never a 503 that would have the client send it again."""
    try:
        visible = searcher.catch_up() >= seq
    except (VectorStoreUnavailableError, DatabaseError) as exc:
        LOG.warning("edit %d is logged but not yet applied here: %s", seq, exc.message)
        visible = False
    if jobs is not None and editor.compact_due():
        jobs.submit_compaction()
    return visible


@router.post("/products", response_model=UpsertOut, responses={202: {"model": JobOut}})
def upsert_products(body: UpsertIn, searcher: SearcherDep, editor: EditorDep, settings: SettingsDep,
                    jobs: JobsDep) -> UpsertOut | JSONResponse:
    """Add or update products, live: only new or changed images and texts are embedded.

    Over CATALENS_ADMIN_SYNC_LIMIT products the batch runs as a job: 202 with its URL.
    """
    started = time.perf_counter()
    records = [p.model_dump(exclude_none=True) for p in body.products]
    if len(records) > settings.admin_sync_limit:
        editor.check_upsert(records)  # a bad batch is a 422 now, not a failed job later
        return _accepted(jobs, jobs.submit("upsert", records, len(records)))
    summary = editor.upsert(records)
    return UpsertOut(seq=summary.seq, visible=_applied(searcher, jobs, editor, summary.seq),
                     index_version=searcher.current_version or "", upserted=summary.upserted,
                     images_ok=summary.images_ok, images_failed=summary.images_failed,
                     images_embedded=summary.images_embedded, images_cached=summary.images_cached,
                     texts_embedded=summary.texts_embedded, texts_cached=summary.texts_cached, vectors=summary.vectors,
                     errors=summary.errors, took_ms=round((time.perf_counter() - started) * 1000, 2))


@router.patch("/products/{product_id}", response_model=PatchOut, responses=error_responses(404))
def patch_product(product_id: str, body: PatchIn, searcher: SearcherDep, editor: EditorDep,
                  jobs: JobsDep) -> PatchOut:
    """Change some fields of one product (price, availability, title, ...), live."""
    started = time.perf_counter()
    result = editor.patch(product_id, body.model_dump(exclude_unset=True))
    return PatchOut(seq=result.seq, visible=_applied(searcher, jobs, editor, result.seq),
                    index_version=searcher.current_version or "", product_id=product_id, changed=result.changed,
                    took_ms=round((time.perf_counter() - started) * 1000, 2))


@router.post("/products/delete", response_model=DeleteOut, responses={202: {"model": JobOut}})
def delete_products(body: DeleteIn, searcher: SearcherDep, editor: EditorDep, settings: SettingsDep,
                    jobs: JobsDep) -> DeleteOut | JSONResponse:
    """Remove products from every endpoint, live (over CATALENS_ADMIN_SYNC_LIMIT ids: a job, 202)."""
    ids = list(dict.fromkeys(body.ids))
    if len(ids) > settings.admin_sync_limit:
        return _accepted(jobs, jobs.submit("delete", ids, len(ids)))
    result = editor.delete(ids)
    return DeleteOut(seq=result.seq, visible=_applied(searcher, jobs, editor, result.seq),
                     index_version=searcher.current_version or "", deleted=result.deleted, missing=result.missing)


@router.post("/compact", status_code=202, response_model=JobOut)
def compact(jobs: JobsDep) -> JSONResponse:
    """Fold the live changes into a new snapshot, in the background (one at a time)."""
    return _accepted(jobs, jobs.submit_compaction())


@router.get("/jobs/{job_id}", response_model=JobOut, responses=error_responses(404))
def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    """A background job's progress (done of total), errors and result."""
    return _job(jobs, job_id)


@router.post("/reload", response_model=ReloadOut)
def reload_index(searcher: SearcherDep) -> ReloadOut:
    """Load the active index version now (the server also notices a new one within a second)."""
    previous = searcher.current_version
    return ReloadOut(index_version=searcher.reload(), previous=previous)
