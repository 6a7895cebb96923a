"""Product routes: details, similar products, images, facets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from catalens.errors import NotFoundError
from retrieval.deps import SearcherDep, SettingsDep
from retrieval.routes.search import ERRORS, to_response
from retrieval.schemas import MAX_K, FacetsOut, ImageOut, ProductOut, SearchOut, image_url
from retrieval.searcher import Filters

router = APIRouter(prefix="/v1", tags=["products"])


@router.get("/products/{product_id}", response_model=ProductOut, responses=ERRORS)
def get_product(product_id: str, searcher: SearcherDep) -> ProductOut:
    """One product with all its attributes and images."""
    p = searcher.product(product_id)
    return ProductOut(
        product_id=p.product_id, title=p.title, description=p.description, category=p.category,
        brand=p.brand, price=p.price, currency=p.currency, attributes=p.attributes or {},
        images=[ImageOut(position=img.position, url=image_url(p.product_id, img.position) or "",
                         thumbnail_url=image_url(p.product_id, img.position, thumb=True)
                         if img.thumbnail else None, status=img.status, error=img.error, caption=img.caption)
                for img in p.images],
        index_version=searcher.current_version)


@router.get("/products/{product_id}/similar", response_model=SearchOut, responses=ERRORS)
def similar_products(product_id: str, searcher: SearcherDep,
                     k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                     category: Annotated[list[str] | None, Query()] = None,
                     brand: Annotated[list[str] | None, Query()] = None,
                     price_min: Annotated[float | None, Query(ge=0)] = None,
                     price_max: Annotated[float | None, Query(ge=0)] = None,
                     same_category: Annotated[bool, Query(description="only the product's own category, unless "
                                                                     "a category filter is given")] = True,
                     ) -> SearchOut:
    """Products that look like this one ("more like this"); the product itself is excluded."""
    started = time.perf_counter()
    filters = Filters(tuple(category or ()), tuple(brand or ()), price_min, price_max)
    return to_response(searcher.similar(product_id, k, filters, same_category=same_category), started)


@router.get("/products/{product_id}/image", responses={404: {}, 200: {"content": {"image/jpeg": {}}}})
def product_image(product_id: str, searcher: SearcherDep, settings: SettingsDep,
                  view: Annotated[int, Query(ge=0)] = 0,
                  size: Annotated[Literal["full", "thumb"], Query()] = "full") -> Response:
    """A product image (view N), full size or the thumbnail made at index time."""
    p = searcher.product(product_id)
    img = next((i for i in p.images if i.position == view), None)
    if img is None:
        raise NotFoundError(f"product {product_id!r} has no image {view}")
    if size == "thumb" and img.thumbnail:
        path = settings.index_dir / "thumbnails" / img.thumbnail
        if path.is_file():
            return FileResponse(path, media_type="image/jpeg",
                                headers={"Cache-Control": "public, max-age=86400"})
    if img.source.startswith(("http://", "https://")):
        return RedirectResponse(img.source)
    path = Path(img.source)
    if img.status != "ok" or not path.is_file():
        raise NotFoundError(f"image {view} of product {product_id!r} is not available")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


@router.get("/facets", response_model=FacetsOut)
def facets(searcher: SearcherDep) -> FacetsOut:
    """Filter values with product counts: categories, brands and the price range."""
    reranker = searcher.reranker.reranker_id if searcher.reranker else None
    return FacetsOut(**searcher.facets(), index_version=searcher.current_version, reranker=reranker)
