"""Describe a product photo: the catalog's facets guessed zero-shot, a caption, a title, similar products."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image

from catalens.facets import describable_columns
from catalens.records import ProductRecord
from tests.support import SampleIndex

FACETS = ("category", "main_colour", "secondary_colour", "pattern")


def _photo(sample_index: SampleIndex, row: dict[str, str]) -> bytes:
    return (sample_index.sample_dir / row["image"].split("|")[0]).read_bytes()


def test_describe_names_the_catalogs_own_facets_of_a_photo(client, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()[:30]
    right = {name: 0 for name in FACETS}
    for row in rows:
        resp = client.post("/v1/describe", files={"file": ("p.jpg", _photo(sample_index, row), "image/jpeg")})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(FACETS) <= set(body) and "sku" not in body  # the catalog's columns, not its identifiers
        for name in FACETS:
            assert 0.0 <= body[name]["p"] <= 1.0
            right[name] += body[name]["value"] == (row[name] or None)
        assert body["similar"][0]["product_id"] == row["product_id"]
        assert body["title"]
    assert right["category"] >= 28 and right["main_colour"] >= 25 and right["pattern"] >= 22, right


def test_the_bundled_captioner_names_what_the_photo_shows(client, sample_index: SampleIndex) -> None:
    from sampledata.texts import parse_caption

    named = 0
    rows = sample_index.rows()[:20]
    for row in rows:
        body = client.post("/v1/describe", files={"file": ("p.jpg", _photo(sample_index, row), "image/jpeg")}).json()
        spec = parse_caption(body["caption"] or "")
        named += spec is not None and (spec.category, spec.main) == (row["category"], row["main_colour"])
        assert body["title"].lower() == (body["caption"] or "").lower()
    assert named >= 16, named


def test_past_its_time_budget_describe_answers_without_a_caption(searcher, sample_index: SampleIndex) -> None:
    from catalens.images import decode_image

    row = sample_index.rows()[0]
    image = decode_image(_photo(sample_index, row), max_pixels=10**8)
    assert searcher.describe(image).caption  # within the budget, the captioner writes one
    import time

    busy = [searcher._rerank_pool.submit(time.sleep, 1.0) for _ in range(2)]  # the second stage is saturated
    settings = searcher.settings
    searcher.settings = settings.model_copy(update={"rerank_budget_ms": 50})
    try:
        described = searcher.describe(image)
    finally:
        searcher.settings = settings
        for job in busy:
            job.result()
    assert described.caption is None  # past it, the attributes come without waiting for a caption
    assert described.attributes["category"].value == row["category"]


@pytest.mark.parametrize("data, status", [(b"not an image", 415), (b"", 415)])
def test_describe_refuses_what_image_search_refuses(client, data: bytes, status: int) -> None:
    resp = client.post("/v1/describe", files={"file": ("x.jpg", data, "image/jpeg")})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"]


def test_describe_refuses_an_upload_over_the_limit(client) -> None:
    img = Image.effect_noise((1500, 1500), 128).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert len(buf.getvalue()) > 2 * 1024 * 1024  # the test client's server takes 2 MB
    resp = client.post("/v1/describe", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 413


def test_a_catalog_without_facets_has_nothing_to_describe_against() -> None:
    plain = [ProductRecord(pk=i, product_id=f"p{i}", title=f"thing {i}", attributes={"sku": f"S{i}"})
             for i in range(20)]
    assert describable_columns(plain) == {}
    shaped = [replace(r, category=("mug", "lamp")[r.pk % 2], attributes={"colour": ("red", "blue")[r.pk % 2],
                                                                           "note": f"free text {r.pk}"})
              for r in plain]
    assert describable_columns(shaped) == {"category": ["lamp", "mug"], "colour": ["blue", "red"]}


def test_index_build_describe_writes_the_missing_descriptions(sample_index: SampleIndex, encoder,
                                                             tmp_path) -> None:
    """Products imported without a description get one from their photo, marked generated, searchable."""
    from fastapi.testclient import TestClient

    from retrieval.app import create_app
    from tests.support import build_in_process, read_rows, searcher_on, write_rows

    rows = read_rows(sample_index.catalog)[:24]
    for row in rows[:12]:
        row["description"] = ""
    index = tmp_path / "index"
    summary = build_in_process(index, write_rows(tmp_path / "c.csv", rows), encoder, describe=True,
                               images_root=sample_index.sample_dir)
    assert summary.described == 12
    searcher = searcher_on(SampleIndex(sample_index.sample_dir, index), encoder, None)
    with TestClient(create_app(searcher.settings, searcher=searcher)) as client:
        for row in rows[:3]:
            body = client.get(f"/v1/products/{row['product_id']}").json()
            assert body["description_generated"] and body["description"]
            assert row["category"] in body["description"]  # the photo's category, in the world's words
            # Searchable: its words reach the keyword index of the version.
            found = client.post("/v1/search/text", json={"query": body["description"], "mode": "keyword",
                                                         "k": 24}).json()
            assert row["product_id"] in [r["product_id"] for r in found["results"]]
        kept = client.get(f"/v1/products/{rows[20]['product_id']}").json()
        assert kept["description"] == rows[20]["description"] and not kept["description_generated"]
