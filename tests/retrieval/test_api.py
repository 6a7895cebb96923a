"""The HTTP API against a real index built with the bundled model."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.support import SampleIndex


# The engines start real servers (seconds each): in the full suite, not in the fast tier.
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow),
                                        pytest.param("milvus", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest) -> str:
    """Every API test runs on both catalogs of record (a build writes either; search reads neither)
    and on both vector stores (FAISS files, Milvus collections)."""
    return request.param


@pytest.fixture(scope="module")
def sample_index(sample_index: SampleIndex, backend: str, request: pytest.FixtureRequest) -> SampleIndex:
    named = {"postgresql": "pg_sample_index", "milvus": "milvus_sample_index"}
    return request.getfixturevalue(named[backend]) if backend in named else sample_index


@pytest.fixture(scope="module")
def client(client, backend: str, request: pytest.FixtureRequest):
    named = {"postgresql": "pg_client", "milvus": "milvus_client"}
    return request.getfixturevalue(named[backend]) if backend in named else client


def _attr(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["product_id"]: r for r in rows}


def _common_combo(rows: list[dict[str, str]]) -> tuple[str, str]:
    combos = Counter((r["category"], r["main_colour"]) for r in rows)
    return combos.most_common(1)[0][0]


def test_text_query_for_colour_and_category_returns_matching_products(client, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    category, colour = _common_combo(rows)
    wanted = {r["product_id"] for r in rows if (r["category"], r["main_colour"]) == (category, colour)}
    resp = client.post("/v1/search/text", json={"query": f"{colour} {category}", "k": len(wanted)})
    assert resp.status_code == 200
    body = resp.json()
    by_id = _attr(rows)
    top = [by_id[r["product_id"]] for r in body["results"]]
    assert len(top) == len(wanted) >= 3
    # A bare "<colour> <category>" names no pattern: the products of that colour and category,
    # solid or patterned, come before others (the bundled CLIP is trained with bare captions
    # for patterned products too; before, it read a bare query as a solid product).
    looks = [(r["category"], r["main_colour"], r["pattern"]) for r in top]
    assert sum(r["product_id"] in wanted for r in top) >= 0.8 * len(wanted), looks
    assert {r["pattern"] for r in top if r["product_id"] in wanted} - {"solid"}, "no patterned product among them"
    assert body["index_version"] and body["took_ms"] >= 0
    first = body["results"][0]
    assert set(first) >= {"product_id", "score", "title", "category", "brand", "price", "currency", "image_url"}


def test_catalog_image_query_returns_its_own_product_first(client, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    for row in rows[:5]:
        image_path = sample_index.sample_dir / row["image"].split("|")[0]
        resp = client.post("/v1/search/image", files={"file": ("q.jpg", image_path.read_bytes(), "image/jpeg")},
                           data={"k": "5"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["results"][0]["product_id"] == row["product_id"]


def test_results_are_products_not_images(client) -> None:
    body = client.post("/v1/search/text", json={"query": "striped sofa", "k": 50}).json()
    ids = [r["product_id"] for r in body["results"]]
    assert len(ids) == len(set(ids)) == 50


def test_similar_excludes_the_product_itself(client, sample_index: SampleIndex) -> None:
    pid = sample_index.rows()[3]["product_id"]
    resp = client.get(f"/v1/products/{pid}/similar", params={"k": 8})
    assert resp.status_code == 200
    ids = [r["product_id"] for r in resp.json()["results"]]
    assert len(ids) == 8 and pid not in ids


def test_similar_products_share_the_category(client, sample_index: SampleIndex) -> None:
    rows = _attr(sample_index.rows())
    for pid in list(rows)[:10]:
        results = client.get(f"/v1/products/{pid}/similar", params={"k": 3}).json()["results"]
        assert len(results) == 3
        assert all(rows[r["product_id"]]["category"] == rows[pid]["category"] for r in results)


def test_similar_across_categories_on_request_ranks_by_look(client, sample_index: SampleIndex) -> None:
    rows = _attr(sample_index.rows())
    pid = next(iter(rows))
    body = client.get(f"/v1/products/{pid}/similar", params={"k": 20, "same_category": "false"}).json()
    assert len({rows[r["product_id"]]["category"] for r in body["results"]}) > 1
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("filters", [
    {"category": ["mug"]},
    {"brand": ["Acme", "Lumen"]},
    {"price_min": 50, "price_max": 150},
    {"category": ["lamp", "vase"], "price_max": 60},
])
def test_filters_hold_for_every_result(client, sample_index: SampleIndex, filters: dict) -> None:
    rows = _attr(sample_index.rows())
    body = client.post("/v1/search/text", json={"query": "blue striped", "k": 20, "filters": filters}).json()
    assert body["results"], "the filter matches products, so there must be results"
    for r in body["results"]:
        row = rows[r["product_id"]]
        if "category" in filters:
            assert row["category"] in filters["category"]
        if "brand" in filters:
            assert row["brand"] in filters["brand"]
        if "price_min" in filters:
            assert float(row["price"]) >= filters["price_min"]
        if "price_max" in filters:
            assert float(row["price"]) <= filters["price_max"]


def test_selective_filter_still_returns_k_results(client, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    # A brand+category pair with only a handful of products: far below 1% of the vectors.
    pairs = Counter((r["brand"], r["category"]) for r in rows)
    (brand, category), count = min(((p, c) for p, c in pairs.items() if c >= 2), key=lambda pc: pc[1])
    body = client.post("/v1/search/text", json={
        "query": "green dotted hat", "k": count, "filters": {"brand": [brand], "category": [category]}}).json()
    assert len(body["results"]) == count


def test_image_search_honours_filters(client, sample_index: SampleIndex) -> None:
    row = sample_index.rows()[0]
    other = "mug" if row["category"] != "mug" else "sofa"
    image = (sample_index.sample_dir / row["image"].split("|")[0]).read_bytes()
    body = client.post("/v1/search/image", files={"file": ("q.jpg", image, "image/jpeg")},
                       data={"k": "5", "filters": json.dumps({"category": [other]})}).json()
    rows = _attr(sample_index.rows())
    assert body["results"] and all(rows[r["product_id"]]["category"] == other for r in body["results"])


def test_product_details_and_image(client, sample_index: SampleIndex) -> None:
    row = sample_index.rows()[0]
    body = client.get(f"/v1/products/{row['product_id']}").json()
    assert body["title"] == row["title"]
    assert body["attributes"]["main_colour"] == row["main_colour"]
    img = client.get(f"/v1/products/{row['product_id']}/image")
    assert img.status_code == 200
    assert Image.open(io.BytesIO(img.content)).size == (256, 256)
    thumb = client.get(f"/v1/products/{row['product_id']}/image", params={"size": "thumb"})
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 192


def test_facets_count_values(client, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    body = client.get("/v1/facets").json()
    counts = {f["value"]: f["count"] for f in body["category"]}
    assert counts == dict(Counter(r["category"] for r in rows))
    assert body["price"]["min"] == pytest.approx(min(float(r["price"]) for r in rows))


def test_health_ready_and_metrics(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.post("/v1/search/text", json={"query": "red hat"})
    text = client.get("/metrics").text
    assert 'catalens_requests_total{method="POST",route="/v1/search/text",status="200"}' in text
    for stage in ("encode", "ann", "metadata"):
        assert f'catalens_stage_seconds_count{{stage="{stage}"}}' in text


# --- every documented error, produced by its bad input -------------------------------------


def _error(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code
    assert resp.json()["error"]["message"]


def test_unknown_product_is_404(client) -> None:
    _error(client.get("/v1/products/nope"), 404, "not_found")
    _error(client.get("/v1/products/nope/similar"), 404, "not_found")
    _error(client.get("/v1/products/nope/image"), 404, "not_found")


@pytest.mark.parametrize("body", [
    {"query": ""}, {"query": "   "}, {"query": "x" * 1001}, {"query": "mug", "k": 0},
    {"query": "mug", "k": 101}, {"query": "mug", "filters": {"price_min": -1}},
    {"query": "mug", "filters": {"colour": ["red"]}}, {}, {"query": 5},
])
def test_bad_text_queries_are_422(client, body: dict) -> None:
    _error(client.post("/v1/search/text", json=body), 422, "invalid_input")


def test_malformed_json_is_422(client) -> None:
    resp = client.post("/v1/search/text", content=b"{not json", headers={"content-type": "application/json"})
    _error(resp, 422, "invalid_input")


def test_upload_that_is_not_an_image_is_415(client) -> None:
    resp = client.post("/v1/search/image", files={"file": ("q.jpg", b"this is text, not a JPEG", "image/jpeg")})
    _error(resp, 415, "unsupported_image")


def test_empty_upload_is_415(client) -> None:
    _error(client.post("/v1/search/image", files={"file": ("q.jpg", b"", "image/jpeg")}), 415, "unsupported_image")


def test_upload_without_file_is_422(client) -> None:
    _error(client.post("/v1/search/image", data={"k": "3"}), 422, "invalid_input")


def test_bad_filters_json_is_422(client, sample_index: SampleIndex) -> None:
    image = next((sample_index.sample_dir / "images").iterdir()).read_bytes()
    resp = client.post("/v1/search/image", files={"file": ("q.jpg", image, "image/jpeg")},
                       data={"filters": "{nope"})
    _error(resp, 422, "invalid_input")


def test_oversized_upload_is_413(client) -> None:
    big = b"\xff\xd8" + b"0" * (3 * 1024 * 1024)
    _error(client.post("/v1/search/image", files={"file": ("q.jpg", big, "image/jpeg")}), 413, "payload_too_large")


def test_oversized_chunked_upload_without_length_is_413(client) -> None:
    boundary = "catalensboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(64):
            yield b"0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = client.post("/v1/search/image", content=body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    _error(resp, 413, "payload_too_large")


def test_decompression_bomb_upload_is_413(client) -> None:
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 Mpx in a few KB
    assert len(bomb.getvalue()) < 100_000
    resp = client.post("/v1/search/image", files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    _error(resp, 413, "payload_too_large")


def test_disallowed_format_is_415(client) -> None:
    bmp = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(bmp, format="BMP")
    _error(client.post("/v1/search/image", files={"file": ("q.bmp", bmp.getvalue(), "image/bmp")}),
           415, "unsupported_image")


def test_no_index_yet_is_503(tmp_path: Path, encoder) -> None:
    from fastapi.testclient import TestClient

    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory, upgrade_database
    from retrieval.app import create_app
    from retrieval.searcher import Searcher

    settings = Settings(index_dir=tmp_path)
    upgrade_database(settings.db_url)
    searcher = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder)
    with TestClient(create_app(settings, searcher=searcher)) as c:
        _error(c.get("/readyz"), 503, "index_not_ready")
        _error(c.post("/v1/search/text", json={"query": "red mug"}), 503, "index_not_ready")
        assert c.get("/healthz").status_code == 200
