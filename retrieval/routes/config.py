"""GET /v1/config: the server's rules a client needs before it sends anything.

The web page reads these instead of copying them: which image formats an upload may be,
how many bytes it may have, how long a text query may be and how many results to ask for.
Everything here is derived from the code and the settings that enforce the rule.
"""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, Field

from catalens.images import ALLOWED_FORMATS
from retrieval import schemas
from retrieval.deps import SearcherDep, SettingsDep

router = APIRouter(prefix="/v1", tags=["config"])

# An MPO (multi-picture JPEG) is image/jpeg to a browser, so "image/jpeg" already covers it;
# image/mpo in a file input's `accept` would only confuse pickers.
_NOT_ADVERTISED = frozenset({"MPO"})


class ConfigOut(BaseModel):
    image_formats: list[str] = Field(description="MIME types an image search upload may be")
    max_upload_bytes: int = Field(description="largest image search upload, in bytes")
    max_query_chars: int = Field(description="longest text query, in characters")
    max_k: int = Field(description="most results one search returns (k is 1..max_k)")
    max_rerank_top_n: int = Field(description="most first-stage candidates the reranker may read")
    reranker: str | None = Field(description="the second stage this server runs, if any")


@cache
def image_mime_types() -> tuple[str, ...]:
    """ALLOWED_FORMATS (Pillow format names) as MIME types, sorted."""
    Image.init()  # Image.MIME is filled in as Pillow's format plugins register
    return tuple(sorted(Image.MIME[f] for f in ALLOWED_FORMATS - _NOT_ADVERTISED))


@router.get("/config", response_model=ConfigOut)
def get_config(settings: SettingsDep, searcher: SearcherDep) -> ConfigOut:
    """Limits and options of this server, for clients that check input before sending it."""
    return ConfigOut(
        image_formats=list(image_mime_types()),
        max_upload_bytes=settings.max_upload_bytes,
        max_query_chars=schemas.MAX_QUERY_CHARS,
        max_k=schemas.MAX_K,
        max_rerank_top_n=schemas.MAX_RERANK_TOP_N,
        reranker=searcher.reranker.reranker_id if searcher.reranker else None,
    )
