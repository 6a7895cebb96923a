"""GET /v1/config: the server rules the web page reads instead of copying them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient


def config_client(searcher, **overrides) -> TestClient:
    """An app of our own with these settings (the session `client` is started already)."""
    from retrieval.app import create_app

    app = create_app(searcher.settings.model_copy(update=overrides), searcher=searcher)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def config_api(searcher) -> Iterator[TestClient]:
    with config_client(searcher, max_upload_bytes=3 * 1024 * 1024) as c:
        yield c


def test_config_says_what_the_server_enforces(config_api: TestClient, searcher) -> None:
    from retrieval.schemas import MAX_K, MAX_RERANK_TOP_N

    resp = config_api.get("/v1/config")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"image_formats", "max_upload_bytes", "max_query_chars", "max_k", "max_rerank_top_n",
                         "reranker"}
    assert body["image_formats"] == ["image/gif", "image/jpeg", "image/png", "image/webp"]  # MPO is a JPEG
    assert body["max_upload_bytes"] == 3 * 1024 * 1024
    assert body["max_k"] == MAX_K and body["max_rerank_top_n"] == MAX_RERANK_TOP_N
    assert body["reranker"] == searcher.reranker.reranker_id  # as /v1/facets names it
    # The advertised query length is the one the search route enforces.
    longest = "a" * body["max_query_chars"]
    assert config_api.post("/v1/search/text", json={"query": longest, "k": 1}).status_code == 200
    too_long = config_api.post("/v1/search/text", json={"query": longest + "a", "k": 1})
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "invalid_input"


def test_config_formats_are_the_decoders(config_api: TestClient) -> None:
    """Every advertised MIME type is a format decode_image accepts, and every accepted one is advertised."""
    from PIL import Image

    from catalens.images import ALLOWED_FORMATS

    Image.init()
    advertised = set(config_api.get("/v1/config").json()["image_formats"])
    assert advertised == {Image.MIME[f] for f in ALLOWED_FORMATS if f != "MPO"}


def test_config_is_in_the_openapi_schema(config_api: TestClient) -> None:
    schema = config_api.get("/openapi.json").json()
    op = schema["paths"]["/v1/config"]["get"]
    assert op["tags"] == ["config"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ConfigOut")
