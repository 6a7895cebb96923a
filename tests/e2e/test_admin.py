"""Admin HTTP routes against a real `catalens serve` process: API key checks, upsert, delete, reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Server,
    absolute_images,
    build_in_process,
    image_search,
    read_rows,
    start_server,
    stop_server,
    text_search,
    write_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("trusted_image_sources")]

KEY = "test-admin-key-7f3a"
ROUTES = [("POST", "/v1/admin/reload", None),
          ("POST", "/v1/admin/products", {"products": [{"product_id": "X", "title": "x"}]}),
          ("POST", "/v1/admin/products/delete", {"ids": ["X"]}), ("PATCH", "/v1/admin/products/X", {"price": 1.0}),
          ("POST", "/v1/admin/compact", None), ("GET", "/v1/admin/jobs/some-job", None)]


@pytest.fixture(scope="module")
def admin_world(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> tuple[list[dict[str, str]], Path]:
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("admin-world")
    write_sample_catalog(out, n=40, seed=31, n_queries=5, progress=False)
    rows = absolute_images(read_rows(out / "catalog.csv"), out)
    index_dir = out / "idx"
    build_in_process(index_dir, write_rows(out / "served.csv", rows[:30]), encoder)
    return rows, index_dir


@pytest.fixture(scope="module")
def server(admin_world: tuple[list[dict[str, str]], Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("admin-log") / "serve.log"
    srv = start_server(admin_world[1], env={"CATALENS_API_KEY": KEY}, log=log)
    yield srv
    stop_server(srv)


def admin(server: Server, path: str, body: Any = None, *, key: str | None = KEY, timeout: float = 120) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=timeout)


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_admin_routes_refuse_a_missing_or_wrong_key(server: Server, method: str, path: str, body: Any) -> None:
    def send(**kw: Any) -> httpx.Response:
        return httpx.request(method, server.url + path, timeout=30, **kw)

    missing = send(json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert "X-API-Key" in missing.json()["error"]["message"]
    not_bearer = send(json=body, headers={"Authorization": f"Basic {KEY}"})
    assert not_bearer.status_code == 401
    for headers in ({"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"},
                    {"X-API-Key": KEY + "x"}, {"Authorization": f"Bearer {KEY[:-1]}"}):
        wrong = send(json=body, headers=headers)
        assert wrong.status_code == 403 and wrong.json()["error"] == {"code": "forbidden", "message": "wrong API key"}
    invalid_body = send(json={"nonsense": True})
    assert invalid_body.status_code == 401  # the key is checked before the body


def test_reload_with_the_key_in_either_header(server: Server) -> None:
    ready = httpx.get(f"{server.url}/readyz", timeout=10).json()["index_version"]
    by_bearer = admin(server, "/v1/admin/reload")
    by_header = httpx.post(f"{server.url}/v1/admin/reload", headers={"X-API-Key": KEY}, timeout=30)
    for resp in (by_bearer, by_header):
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"index_version": ready, "previous": ready}


def test_admin_routes_are_off_without_a_configured_key(admin_world: tuple[list[dict[str, str]], Path],
                                                       encoder: Any) -> None:
    from fastapi.testclient import TestClient

    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from retrieval.app import create_app
    from retrieval.searcher import Searcher

    settings = Settings(index_dir=admin_world[1], threads=1, api_key=None)
    searcher = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder)
    with TestClient(create_app(settings, searcher=searcher), raise_server_exceptions=False) as client:
        for method, path, body in ROUTES:
            for headers in ({}, {"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
                resp = client.request(method, path, json=body, headers=headers)
                assert resp.status_code == 403, (path, headers, resp.text)
                error = resp.json()["error"]
                assert error["code"] == "forbidden" and "CATALENS_API_KEY" in error["message"]
        assert client.post("/v1/search/text", json={"query": "red mug"}).status_code == 200


def test_upsert_and_delete_over_http(server: Server, admin_world: tuple[list[dict[str, str]], Path]) -> None:
    rows, index_dir = admin_world
    old = httpx.get(f"{server.url}/readyz", timeout=10).json()["index_version"]
    new_image = rows[35]["image"].split("|")[0]  # not in the served catalog: new content
    retitled = rows[3]
    products = [
        {"product_id": "NEW-1", "title": "Hand thrown teal jug", "description": "A jug.", "image": new_image,
         "category": "vase", "brand": "Acme", "price": 19.5, "currency": "EUR", "glaze": "matte"},
        {"product_id": retitled["product_id"], "title": "Renamed " + retitled["title"],
         "description": retitled["description"], "image": retitled["image"], "category": retitled["category"],
         "brand": retitled["brand"], "price": float(retitled["price"]), "currency": retitled["currency"]},
    ]
    resp = admin(server, "/v1/admin/products", {"products": products})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    # Live: applied over the same version before the response, no republish.
    assert body["index_version"] == old and body["visible"] and body["upserted"] == 2 and body["errors"] == []
    assert body["images_embedded"] == 1  # only NEW-1's image; the renamed product's come from the cache
    assert body["images_cached"] == len(retitled["image"].split("|"))
    assert body["texts_embedded"] == 2 and body["texts_cached"] == 0
    found = image_search(server, Path(new_image), k=3)
    assert found["index_version"] == body["index_version"] and found["results"][0]["product_id"] == "NEW-1"
    product = httpx.get(f"{server.url}/v1/products/NEW-1", timeout=10).json()
    assert product["attributes"] == {"glaze": "matte"} and product["price"] == 19.5
    renamed = httpx.get(f"{server.url}/v1/products/{retitled['product_id']}", timeout=10).json()
    assert renamed["title"].startswith("Renamed ")

    broken = admin(server, "/v1/admin/products", {"products": [
        {"product_id": "NEW-2", "title": "Quartz moonlight carafe", "image": str(index_dir / "missing.jpg")}]})
    assert broken.status_code == 200, broken.text
    assert broken.json()["images_failed"] == 1 and "NEW-2" in broken.json()["errors"][0]
    assert text_search(server, "Quartz moonlight carafe", k=3)["results"][0]["product_id"] == "NEW-2"

    for bad, needle in (([{"product_id": "B", "title": "b", "image": "/etc/hostname"}],
                         "outside the allowed image folders"),
                        ([{"product_id": "B", "title": "b", "price": -1}], "price"),
                        ([{"product_id": "B", "title": " "}], "title"),
                        ([], "products")):
        resp = admin(server, "/v1/admin/products", {"products": bad})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_input", resp.text
        assert needle in resp.json()["error"]["message"], resp.text

    before = httpx.get(f"{server.url}/readyz", timeout=10).json()["index_version"]
    deleted = admin(server, "/v1/admin/products/delete", {"ids": ["NEW-1", "NEW-1", "no-such-product"]})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"] == 1 and deleted.json()["missing"] == 1
    assert deleted.json()["index_version"] == before and deleted.json()["visible"]
    assert httpx.get(f"{server.url}/v1/products/NEW-1", timeout=10).status_code == 404
    assert "NEW-1" not in [r["product_id"] for r in image_search(server, Path(new_image), k=50)["results"]]
    again = admin(server, "/v1/admin/products/delete", {"ids": ["NEW-1"]})
    assert again.json() == {"index_version": before, "deleted": 0, "missing": 1, "visible": True,
                            "seq": deleted.json()["seq"]}  # nothing changed, nothing logged
