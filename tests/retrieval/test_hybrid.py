"""Hybrid search: the keyword index, fusion, named products, match probabilities and mixed queries,
against the sample index built with the bundled models (real FTS5, FAISS and CLIP)."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest

from catalens import keywords
from catalens.errors import InvalidInputError
from catalens.records import ProductRecord
from retrieval.evaluation import score_rankings
from tests.support import SampleIndex


def _search(client, query: str, **body) -> dict:
    resp = client.post("/v1/search/text", json={"query": query, "k": 10, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- the keyword index -----------------------------------------------------------------------


@pytest.mark.parametrize("query", ['"', "*", "NEAR", "AND", '" * NEAR AND OR', "---", "()"])
def test_a_query_of_only_punctuation_or_operators_has_nothing_to_match(query: str) -> None:
    with pytest.raises(InvalidInputError, match="no words to match"):
        keywords.parse_query(query)


def test_queries_become_quoted_phrases_so_no_input_reaches_fts5_syntax(tmp_path: Path) -> None:
    records = [ProductRecord(pk=1, product_id="a", title='Lumo LM-2048 "desk" lamp*', brand="Lumo"),
               ProductRecord(pk=2, product_id="b", title="Lumo NEAR chair", brand="Lumo")]
    keywords.write_keyword_index(tmp_path / "k.sqlite", records)
    index = keywords.KeywordIndex(tmp_path / "k.sqlite")
    for text in ('lm-2048 "desk', "lamp* AND (", 'NEAR(lumo chair, 2)', "lumo OR"):
        phrases = keywords.parse_query(text)
        assert index.search(phrases, 5)  # an FTS5 syntax error would raise here
    assert [row for row, _ in index.search(keywords.parse_query("LM-2048"), 5)] == [0]


def test_the_live_scorer_gives_fts5s_bm25(tmp_path: Path, sample_index: SampleIndex) -> None:
    """Live records are ranked beside the snapshot's: the same BM25, from the version's statistics."""
    from catalens.product_table import PRODUCTS, ProductTable

    version = next((sample_index.index_dir / "versions").iterdir())
    records = list(ProductTable.load(version / PRODUCTS).all_records())
    index = keywords.KeywordIndex(version / keywords.KEYWORDS)
    for text in ("striped mug", "Acme red bag", "polka dot chair blue"):
        phrases = keywords.parse_query(text)
        stats = index.stats(phrases)
        for row, score in index.search(phrases, 15):
            mine = keywords.bm25(phrases, keywords.document_terms(records[row]), stats)
            assert mine == pytest.approx(score, rel=1e-9)


# --- hybrid search -----------------------------------------------------------------------------


def test_an_exact_sku_comes_first_in_hybrid_and_keyword_mode(client, sample_index: SampleIndex) -> None:
    for row in sample_index.rows()[:8]:
        for mode in ("hybrid", "keyword"):
            body = _search(client, row["sku"].lower(), mode=mode)
            first = body["results"][0]
            assert first["product_id"] == row["product_id"], (mode, row["sku"])
            assert first["exact_match"] and first["match_probability"] == 1.0
            assert not body["no_good_match"] and body["mode"] == mode
    # What looks cannot find: the vector ranking alone does not know SKUs.
    misses = sum(_search(client, r["sku"], mode="vector")["results"][0]["product_id"] != r["product_id"]
                 for r in sample_index.rows()[:8])
    assert misses >= 6


def test_a_model_name_finds_its_product_where_the_vector_ranking_cannot(client, sample_index: SampleIndex) -> None:
    for row in sample_index.rows()[10:16]:
        model = row["title"].split()[-1]  # the sample world's titles end in the model code, e.g. "NO-4821"
        query = f"{row['brand']} {model}"
        hybrid = _search(client, query)["results"]
        assert hybrid[0]["product_id"] == row["product_id"] and hybrid[0]["exact_match"]
        assert row["product_id"] not in [r["product_id"] for r in _search(client, query, mode="vector")["results"][:1]]


def test_hybrid_keeps_the_vector_rankings_answer_to_a_description(client, sample_index: SampleIndex) -> None:
    """Words that only describe a look get no keyword vote: the products that look it stay on top."""
    rows = {r["product_id"]: r for r in sample_index.rows()}
    for row in sample_index.rows()[20:30]:
        query = f"{row['main_colour']} {row['pattern']} {row['category']}"
        top = [rows[r["product_id"]] for r in _search(client, query)["results"][:3]]
        assert any((r["category"], r["main_colour"], r["pattern"]) == (row["category"], row["main_colour"],
                                                                         row["pattern"]) for r in top), query


@pytest.mark.parametrize("query", ['"', "*", "NEAR", "AND", "!!!"])
def test_a_keyword_query_with_nothing_to_match_is_a_422(client, query: str) -> None:
    for mode in ("keyword", "hybrid"):
        resp = client.post("/v1/search/text", json={"query": query, "mode": mode})
        assert resp.status_code == 422, resp.text
        assert "no words to match" in resp.json()["error"]["message"]


def test_an_unknown_mode_is_a_422(client) -> None:
    resp = client.post("/v1/search/text", json={"query": "red mug", "mode": "fuzzy"})
    assert resp.status_code == 422 and "mode" in resp.text


def test_filters_apply_to_keyword_hits(client, sample_index: SampleIndex) -> None:
    row = sample_index.rows()[3]
    body = _search(client, row["sku"], filters={"category": [c for c in {"mug", "lamp"} - {row["category"]}][:1]})
    assert row["product_id"] not in [r["product_id"] for r in body["results"]]


# --- match probabilities ------------------------------------------------------------------------


def test_every_text_result_carries_a_calibrated_probability(client, sample_index: SampleIndex) -> None:
    row = sample_index.rows()[0]
    body = _search(client, f"{row['main_colour']} {row['pattern']} {row['category']}")
    probabilities = [r["match_probability"] for r in body["results"]]
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert max(probabilities) >= 0.5 and not body["no_good_match"]


def test_an_off_catalog_query_says_no_good_match_and_min_score_cuts_the_tail(client) -> None:
    for query in ("laptop charger", "wireless headphones", "garden hose"):
        body = _search(client, query)
        assert body["no_good_match"], query
        assert body["results"]  # the closest products are still shown, flagged
        assert _search(client, query, min_score=0.5)["results"] == []


def test_a_combination_no_product_has_says_so_and_shows_the_closest_first(client, sample_index: SampleIndex) -> None:
    """"<colour> <pattern> <category>" with no such product: no_good_match, and the first results are of that
    category with that colour in them (before the lexicon: the closest looks, other categories among them)."""
    rows = sample_index.rows()
    have = {(r["category"], r["main_colour"], r["pattern"]) for r in rows}
    absent = sorted((c, m, p) for c, m, _ in have for p in ("striped", "dotted", "checkered")
                    if (c, m, p) not in have and sum(r["category"] == c and r["main_colour"] == m for r in rows) >= 2)
    assert len(absent) >= 5
    for category, colour, pattern in absent[:5]:
        body = _search(client, f"{colour} {pattern} {category}")
        assert body["no_good_match"], (colour, pattern, category)
        top = [next(r for r in rows if r["product_id"] == hit["product_id"]) for hit in body["results"][:2]]
        for row in top:
            assert row["category"] == category and colour in (row["main_colour"], row["secondary_colour"]), \
                ((colour, pattern, category), [(r["category"], r["main_colour"], r["pattern"]) for r in top])
        assert body["results"][0]["facet_mismatch"]["pattern"] == 1 or \
            body["results"][0]["facet_mismatch"]["main_colour"] == 0.5


def test_the_calibration_is_stored_with_the_version(sample_index: SampleIndex) -> None:
    from catalens import artifacts
    from catalens.calibration import CALIBRATION, load_calibration

    version = artifacts.active_version_path(sample_index.index_dir)
    assert CALIBRATION in artifacts.read_manifest(version).files  # checksummed like every version file
    calibration = load_calibration(version / CALIBRATION)
    assert calibration is not None and calibration.pairs >= 100
    assert calibration.first_stage.coef[0] > 0  # a higher cosine is a likelier match
    assert calibration.probability(0.9) > calibration.probability(0.1)
    # A hit lacking a value the query names (as the lexicon reads it, in a column pictures show) is less likely.
    assert set(calibration.columns) >= {"category", "main_colour", "pattern"} and calibration.first_stage.coef[1] < 0
    assert calibration.probability(0.9, mismatch=1.0) < 0.5 <= calibration.probability(0.9)


def test_words_in_most_products_are_not_searched_and_change_no_ranking(tmp_path: Path) -> None:
    """"in" is in every title: BM25 gives it no weight, yet FTS5 would score every row for it."""
    titles = ["red mug in stone", "blue mug in stone", "red vase in glass", "teal lamp in metal", "grey lamp in metal",
              "green bowl in glass"]
    records = [ProductRecord(pk=i, product_id=f"p{i}", title=t) for i, t in enumerate(titles, start=1)]
    keywords.write_keyword_index(tmp_path / "k.sqlite", records)
    index = keywords.KeywordIndex(tmp_path / "k.sqlite")
    phrases = keywords.parse_query("red mug in stone")
    assert index.informative(phrases) == [("red",), ("mug",), ("stone",)]
    assert index.informative(keywords.parse_query("in")) == [("in",)]  # nothing else left: kept
    full = index.search(phrases, 3)
    lean = index.search(index.informative(phrases), 3)
    assert [r for r, _ in lean] == [r for r, _ in full]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(lean, full))


# --- mixed queries ------------------------------------------------------------------------------


def _image_b64(sample_index: SampleIndex, row: dict[str, str]) -> str:
    return base64.b64encode((sample_index.sample_dir / row["image"].split("|")[0]).read_bytes()).decode()


def test_a_photo_refined_with_words_moves_to_the_named_colour(client, sample_index: SampleIndex) -> None:
    rows = sample_index.rows()
    row = rows[0]
    colour = next(c for c in ("blue", "red", "green", "yellow") if c != row["main_colour"])
    body = client.post("/v1/search/mix", json={"parts": [{"image": _image_b64(sample_index, row)},
                                                         {"text": colour, "weight": 1.0}], "k": 5})
    assert body.status_code == 200, body.text
    by_id = {r["product_id"]: r for r in rows}
    colours = [by_id[r["product_id"]]["main_colour"] for r in body.json()["results"]]
    assert colours.count(colour) >= 3, colours
    assert body.json()["mode"] == "mix"


def test_the_photos_caption_is_rewritten_with_the_named_value() -> None:
    import numpy as np

    from catalens.facets import FacetPrototypes
    from retrieval.mix import rewrite

    colours: list[str | None] = ["navy", "red", "white", "navy blue"]
    facets = FacetPrototypes({"main_colour": colours, "pattern": ["dotted", "solid"]},
                             {"main_colour": np.eye(4, dtype=np.float32), "pattern": np.eye(2, dtype=np.float32)})
    # the photo's guessed value is the one replaced, even where another value of the column comes first
    assert rewrite("white mug with navy dots", facets, {"main_colour": "red"}, {"main_colour": "navy"}) == \
        "white mug with red dots"
    # a guess the caption does not contain: the column's one value it does
    assert rewrite("navy mug", facets, {"main_colour": "red"}, {"main_colour": "white"}) == "red mug"
    assert rewrite("Navy Blue mug", facets, {"main_colour": "red"}, {"main_colour": "navy blue"}) == "red mug"
    # nothing to replace, or no way to tell which: no rewritten caption
    assert rewrite("a mug", facets, {"main_colour": "red"}, {"main_colour": "navy"}) is None
    assert rewrite("white mug with navy dots", facets, {"main_colour": "red"}, {"main_colour": "red"}) is None


def test_a_photo_and_a_colour_keep_the_photos_category_and_pattern(client, sample_index: SampleIndex) -> None:
    """The sample's `mixed` queries: the first result has the photo's category and pattern in the named colour
    (before the words were read by the lexicon and the photo by its neighbours, a solid product of that
    colour came first in half of them; before any edit, in most)."""
    import json

    queries = [json.loads(line) for line in (sample_index.sample_dir / "queries.jsonl").read_text().splitlines()]
    mixed = [q for q in queries if q["set"] == "mixed"]
    right = 0
    for q in mixed:
        parts = [{"image": base64.b64encode((sample_index.sample_dir / p["image"]).read_bytes()).decode()}
                 if "image" in p else {"text": p["text"]} for p in q["parts"]]
        body = client.post("/v1/search/mix", json={"parts": parts, "k": 1})
        assert body.status_code == 200, body.text
        right += body.json()["results"][0]["product_id"] in q["relevant"]
    assert len(mixed) >= 10 and right / len(mixed) >= 0.8, (right, len(mixed))


def test_a_product_part_leaves_the_product_out(client, sample_index: SampleIndex) -> None:
    pid = sample_index.rows()[5]["product_id"]
    body = client.post("/v1/search/mix", json={"parts": [{"product_id": pid}, {"text": "striped"}], "k": 10})
    assert body.status_code == 200, body.text
    assert pid not in [r["product_id"] for r in body.json()["results"]]


@pytest.mark.parametrize("parts, message", [
    ([], "at least one part"),
    ([{"text": "blue", "weight": 1}, {"text": "red", "weight": -1}], "sum to zero"),
    ([{"text": "blue", "weight": -1}], "positive weight"),
    ([{"product_id": "no-such-product"}], "not in the index"),
    ([{"text": "blue", "product_id": "x"}], "exactly one of"),
    ([{}], "exactly one of"),
    ([{"image": "not base64!"}], "not base64"),
    ([{"image": base64.b64encode(b"not an image").decode()}], ""),
])
def test_bad_mixes_are_422s(client, parts: list, message: str) -> None:
    resp = client.post("/v1/search/mix", json={"parts": parts})
    assert resp.status_code in (415, 422), resp.text
    assert message in resp.json()["error"]["message"]


# --- evaluation ----------------------------------------------------------------------------------


def test_graded_ndcg_and_the_flagged_share() -> None:
    ranked = [["solid", "striped", "other"], ["other", "solid", "striped"], ["x"]]
    relevant = [{"solid", "striped"}, {"solid", "striped"}, set()]
    grades = [{"solid": 2.0, "striped": 1.0}, {"solid": 2.0, "striped": 1.0}, None]
    out = score_rankings(ranked, relevant, grades, [False, True, True])
    assert out["n"] == 3 and out["flagged"] == round(2 / 3, 4)
    assert out["recall@1"] == 0.5  # the off-catalog query (nothing relevant) counts only in `flagged`
    ideal = 2 + 1 / 1.5849625007211562
    second = 2 / 1.5849625007211562 + 1 / 2
    assert out["ndcg@10"] == round((1.0 + second / ideal) / 2, 4)


def test_the_keyword_index_is_an_immutable_version_file(sample_index: SampleIndex) -> None:
    from catalens import artifacts

    version = artifacts.active_version_path(sample_index.index_dir)
    assert keywords.KEYWORDS in artifacts.read_manifest(version).files
    with sqlite3.connect(f"file:{version / keywords.KEYWORDS}?mode=ro", uri=True) as conn:
        skus = conn.execute("SELECT count(*) FROM skus").fetchone()[0]
    assert skus == len(sample_index.rows())


def test_a_chinese_query_finds_the_products_its_english_twin_finds(client, sample_index: SampleIndex) -> None:
    """The bundled CLIP reads the generator's Chinese phrasing: "红色条纹马克杯" is a red striped mug."""
    from collections import Counter

    from sampledata.texts import ZH_CATEGORIES, ZH_COLOURS, ZH_PATTERN_ADJECTIVES

    rows = sample_index.rows()
    by_id = {r["product_id"]: r for r in rows}
    combos = Counter((r["category"], r["main_colour"], r["pattern"]) for r in rows)
    for (category, colour, pattern), _ in combos.most_common(6):
        query = ZH_COLOURS[colour][0] + ZH_PATTERN_ADJECTIVES[pattern][0] + ZH_CATEGORIES[category][0]
        top = [by_id[r["product_id"]] for r in _search(client, query)["results"][:3]]
        assert any((r["category"], r["main_colour"], r["pattern"]) == (category, colour, pattern) for r in top), \
            (query, [(r["category"], r["main_colour"], r["pattern"]) for r in top])


def test_a_live_patch_is_measured_by_its_new_facet_values(sample_index: SampleIndex, tmp_path: Path,
                                                         encoder) -> None:
    """The facet order reads the snapshot's codes, and a product changed since from its live record."""
    import shutil
    from dataclasses import replace

    from catalens import changes
    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from catalens.filters import Filters
    from indexer.store import read_records
    from retrieval.searcher import Searcher

    settings = Settings(index_dir=shutil.copytree(sample_index.index_dir, tmp_path / "idx"), threads=1)
    searcher = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder)
    searcher.reload()
    row = next(r for r in sample_index.rows() if r["pattern"] == "striped")
    query = f"{row['main_colour']} striped {row['category']}"

    def hit_of(pid: str) -> dict[str, float]:
        hits = searcher.search_text(query, 50, Filters()).hits
        return next(h.mismatch for h in hits if h.product.product_id == pid)

    assert hit_of(row["product_id"])["pattern"] == 0
    with searcher.sessions.begin() as session:
        record = next(r for r in read_records(session) if r.product_id == row["product_id"])
        changes.append(session, "patch", replace(record, attributes={**record.attributes, "pattern": "dotted"}))
    searcher.refresh_live()
    assert hit_of(row["product_id"])["pattern"] == 1
