"""The facet lexicon: mined from a catalog's own texts, it reads what a query's words name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens import artifacts
from catalens.errors import IndexArtifactError
from catalens.lexicon import LEXICON, FacetCodes, Lexicon, load_lexicon
from catalens.product_table import PRODUCTS, ProductTable
from catalens.records import ProductRecord
from tests.support import SampleIndex


@pytest.fixture(scope="module")
def records(sample_index: SampleIndex) -> list[ProductRecord]:
    version = artifacts.active_version_path(sample_index.index_dir)
    return list(ProductTable.load(version / PRODUCTS).all_records())


@pytest.fixture(scope="module")
def lexicon(records: list[ProductRecord]) -> Lexicon:
    return Lexicon.mine(records)


def test_synonyms_the_catalog_uses_name_its_values(lexicon: Lexicon) -> None:
    # "jet black", "stripy", "tshirt": no word list, only how the sample's titles write them.
    assert lexicon.named("jet black stripy tshirt") == {"main_colour": ["black"], "pattern": ["striped"],
                                                          "category": ["t-shirt"]}
    assert lexicon.named("a couch with polka dots") == {"category": ["sofa"], "pattern": ["dotted"]}


def test_two_words_that_read_alone_disagree_name_one_value(lexicon: Lexicon) -> None:
    # "navy blue" is navy, not navy and then blue as a second colour.
    assert lexicon.named("navy blue mug") == {"main_colour": ["navy"], "category": ["mug"]}
    assert lexicon.named("blue mug") == {"main_colour": ["blue"], "category": ["mug"]}


def test_colours_take_their_roles_in_the_order_titles_name_them(lexicon: Lexicon, records: list[ProductRecord]) -> None:
    assert lexicon.ordered["main_colour"] and lexicon.domains["main_colour"] == ["main_colour", "secondary_colour"]
    named = lexicon.named("red mug with white stripes")
    assert named["main_colour"] == ["red", "white"]
    product = next(r for r in records if r.category == "mug" and r.attributes.get("pattern") == "striped")
    main, second = product.attributes["main_colour"], product.attributes["secondary_colour"]
    assert lexicon.mismatch(product, lexicon.named(f"{main} mug with {second} stripes")) == {
        "main_colour": 0.0, "secondary_colour": 0.0, "category": 0.0, "pattern": 0.0}
    # The colours swapped: each is there, in the other role.
    assert lexicon.mismatch(product, lexicon.named(f"{second} mug with {main} stripes")) == {
        "main_colour": 0.5, "secondary_colour": 0.5, "category": 0.0, "pattern": 0.0}


def test_the_columnar_mismatch_equals_the_records_one(lexicon: Lexicon, records: list[ProductRecord],
                                                     sample_index: SampleIndex) -> None:
    """What search orders by (codes per row, no records read) is what the records say."""
    table = ProductTable.load(artifacts.active_version_path(sample_index.index_dir) / PRODUCTS)
    codes = FacetCodes.build(table.column_values([c for cols in lexicon.domains.values() for c in cols]))
    rows = np.arange(len(records))
    for query in ("red mug with white stripes", "stripy navy blue tee", "cotton couch", "plain yellow lamp",
                  "green and red checked bag", "laptop charger"):
        named = lexicon.named(query)
        by_rows = lexicon.mismatch_rows(codes, rows, named)
        for row, record in enumerate(records):
            assert {c: float(a[row]) for c, a in by_rows.items()} == lexicon.mismatch(record, named), (query, row)


def test_words_the_catalog_does_not_use_name_nothing(lexicon: Lexicon) -> None:
    assert lexicon.named("laptop charger") == {}
    assert lexicon.named("NO-4821") == {}  # codes are keyword matches


def test_the_category_weighs_most_and_a_secondary_colour_half(lexicon: Lexicon) -> None:
    weights = {"category": 3.0, "pattern": 0.5}
    assert lexicon.distance({"category": 1.0}, weights) == 3.0
    assert lexicon.distance({"secondary_colour": 1.0, "main_colour": 1.0}, weights) == 1.5


def test_the_lexicon_round_trips_and_a_damaged_one_is_a_typed_error(lexicon: Lexicon, tmp_path: Path) -> None:
    path = tmp_path / LEXICON
    path.write_text(lexicon.to_json())
    assert load_lexicon(path) == lexicon
    assert load_lexicon(tmp_path / "missing.json") is None
    path.write_text('{"phrases": {"x": [1]}}')
    with pytest.raises(IndexArtifactError, match="unreadable lexicon"):
        load_lexicon(path)


def test_off_catalog_calibration_queries_use_no_word_of_the_catalog(lexicon: Lexicon,
                                                                    records: list[ProductRecord]) -> None:
    """The calibration's "nothing here is right" queries: common English words no product text uses."""
    import random

    from catalens.lexicon import words
    from indexer.calibrate import off_catalog

    queries = off_catalog(records, 30, random.Random(0))
    used = {w for r in records for w in words(f"{r.title} {r.description or ''} {r.category or ''}")}
    assert len(queries) == 30 and all(len(q.split()) == 2 for q in queries)
    assert not {w for q in queries for w in q.split()} & used
    assert all(lexicon.named(q) == {} for q in queries)
