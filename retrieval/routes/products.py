"""Product routes: details, similar products, images, facets."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from catalens.config import Settings
from catalens.errors import CatalensError, NotFoundError
from catalens.filters import Filters
from catalens.images import MEDIA_TYPES, identify_format, is_url, read_stored_image
from catalens.records import Availability, ImageRecord
from retrieval.deps import RequireSnapshot, SearcherDep, SettingsDep
from retrieval.routes.search import to_response
from retrieval.schemas import MAX_K, FacetsOut, ImageOut, ProductOut, SearchOut, error_responses, image_url

router = APIRouter(prefix="/v1", tags=["products"])
LOG = logging.getLogger(__name__)
# Served image bytes are never content-sniffed, and never run as a document if opened as one.
IMAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}
# What the public may read about a failed image: its stable code and a sentence naming no
# URL, path, address or connection detail (the operator sees those in `catalens index errors`).
PUBLIC_IMAGE_ERRORS = {
    "image_fetch_failed": "the image could not be fetched",
    "image_source_refused": "the image source is not allowed",
    "unsupported_image": "the file is not a supported image",
    "payload_too_large": "the image is too large",
    "invalid_input": "the image was refused (for example an extreme aspect ratio)",
}


@router.get("/products/{product_id}", response_model=ProductOut, responses=error_responses(404, 422, 503),
            dependencies=[RequireSnapshot])
def get_product(product_id: str, searcher: SearcherDep) -> ProductOut:
    """One product with all its attributes and images."""
    p = searcher.product(product_id)
    return ProductOut(
        product_id=p.product_id, title=p.title, description=p.description, category=p.category,
        brand=p.brand, price=p.price, currency=p.currency, availability=p.availability,
        attributes=p.attributes or {},
        description_generated=(p.attributes or {}).get("description_source") == "generated",
        images=[ImageOut(position=img.position, url=image_url(p.product_id, img.position) or "",
                         thumbnail_url=image_url(p.product_id, img.position, thumb=True)
                         if img.thumbnail else None, status=img.status, error=public_image_error(img.error),
                         caption=img.caption)
                for img in p.images],
        index_version=searcher.current_version)


@router.get("/products/{product_id}/similar", response_model=SearchOut, responses=error_responses(404, 422, 503),
            dependencies=[RequireSnapshot])
def similar_products(product_id: str, searcher: SearcherDep,
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                     category: Annotated[list[str] | None, Query()] = None,
                     brand: Annotated[list[str] | None, Query()] = None,
                     price_min: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
                     price_max: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
                     availability: Annotated[list[Availability] | None, Query()] = None,
                     same_category: Annotated[bool, Query(description="only the product's own category, unless "
                                                                     "a category filter is given")] = True,
                     ) -> SearchOut:
    """Products that look like this one ("more like this"); the product itself is excluded."""
    started = time.perf_counter()
    filters = Filters(tuple(category or ()), tuple(brand or ()), price_min, price_max, tuple(availability or ()))
    return to_response(searcher.similar(product_id, k, filters, same_category=same_category), started)


@router.get("/products/{product_id}/image", dependencies=[RequireSnapshot],
            responses={**error_responses(404, 422, 503), 200: {"content": {"image/jpeg": {}}}})
def product_image(product_id: str, searcher: SearcherDep, settings: SettingsDep,
                  view: Annotated[int, Query(ge=0)] = 0,
                  size: Annotated[Literal["full", "thumb"], Query()] = "full") -> Response:
    """A product image (view N), full size or the thumbnail made at index time.

    Full size is re-read through the source policy (URL policy or image roots, size cap,
    deadline) and served as the format its header decodes as, never by redirect.
    """
    p = searcher.product(product_id)
    img = next((i for i in p.images if i.position == view), None)
    if img is None:
        raise NotFoundError(f"product {product_id!r} has no image {view}")
    thumb = _thumbnail_path(settings, img)
    if size == "thumb" and thumb is not None:
        return FileResponse(thumb, media_type="image/jpeg",
                            headers={"Cache-Control": "public, max-age=86400", **IMAGE_HEADERS})
    if img.status == "ok":
        full = _full_image(img.source, settings, images_root=searcher.snapshot.manifest.image_folder())
        if full is not None:
            return full
        if is_url(img.source) and thumb is not None:  # the source host is down or changed
            return FileResponse(thumb, media_type="image/jpeg",
                                headers={"Cache-Control": "no-cache", **IMAGE_HEADERS})
    raise NotFoundError(f"image {view} of product {product_id!r} is not available")


def _thumbnail_path(settings: Settings, img: ImageRecord) -> Path | None:
    path = settings.index_dir / "thumbnails" / img.thumbnail if img.thumbnail else None
    return path if path is not None and path.is_file() else None


def _full_image(source: str, settings: Settings, *, images_root: Path | None) -> Response | None:
    """The source's bytes as a response typed by their decoded format, or None if the policy
    refuses it, it is gone, or it is not an allowed image (any more)."""
    try:
        data = read_stored_image(source, settings, images_root=images_root)
        fmt = identify_format(data)
    except CatalensError as exc:
        LOG.info("full-size image not served: %s: %s", exc.code, exc.message)
        return None
    return Response(data, media_type=MEDIA_TYPES[fmt], headers={"Cache-Control": "public, max-age=3600",
                                                                **IMAGE_HEADERS})


def public_image_error(stored: str | None) -> str | None:
    """A stored per-image error ("code: reason") as the public sees it: the code and a generic sentence."""
    if not stored:
        return None
    code = stored.split(":", 1)[0].strip()
    return f"{code}: {PUBLIC_IMAGE_ERRORS[code]}" if code in PUBLIC_IMAGE_ERRORS \
        else "image_error: the image could not be read"


@router.get("/facets", response_model=FacetsOut, responses=error_responses(503), dependencies=[RequireSnapshot])
def facets(searcher: SearcherDep) -> FacetsOut:
    """Filter values with product counts: categories, brands, availability and the price range."""
    reranker = searcher.reranker.reranker_id if searcher.reranker else None
    return FacetsOut(**searcher.facets(), index_version=searcher.current_version, reranker=reranker)
