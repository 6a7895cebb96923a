"""The generated product world is deterministic and labelled correctly."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import Counter
from pathlib import Path

from sampledata import texts
from sampledata.catalog import MARKER, generate_products, write_sample_catalog
from sampledata.world import CATEGORIES, COLOURS, PATTERNS, ProductSpec, random_spec, render_product


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_same_seed_same_catalog(tmp_path: Path) -> None:
    a = write_sample_catalog(tmp_path / "a", n=30, seed=5, n_queries=10, progress=False).parent
    b = write_sample_catalog(tmp_path / "b", n=30, seed=5, n_queries=10, progress=False).parent
    assert _digest(a) == _digest(b)
    c = write_sample_catalog(tmp_path / "c", n=30, seed=6, n_queries=10, progress=False).parent
    assert (a / "catalog.csv").read_text() != (c / "catalog.csv").read_text()


def test_the_sample_world_never_changes(tmp_path: Path) -> None:
    """Pinned: the bundled models were trained on this world; a change here silently invalidates them."""
    out = write_sample_catalog(tmp_path, n=50, seed=3, n_queries=20, progress=False).parent
    # Later columns come from the ids alone (availability, sku, the model code closing the title and
    # the description): without them, the catalog the models saw first.
    with open(out / "catalog.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    at, sku_at = header.index("availability"), header.index("sku")
    title_at, description_at = header.index("title"), header.index("description")
    assert {r[at] for r in rows[1:]} == {"in_stock", "out_of_stock"}
    original = [header]
    for r in rows[1:]:
        r = list(r)
        r[title_at] = r[title_at].rsplit(" ", 1)[0]
        r[description_at] = r[description_at].rsplit(" Model ", 1)[0]
        original.append(r)
    buf = io.StringIO()
    csv.writer(buf).writerows([[v for i, v in enumerate(r) if i not in (at, sku_at)] for r in original])
    assert _sha(buf.getvalue().encode()) == "e6c01d093489fb750174e95c2288ad2f48feb44941ea507d543431d7da27ba7a"
    assert _sha((out / "queries.jsonl").read_bytes()) == "d00f76a2fe460252a6332aca99ef1e5d36a717d19d39d3afc0dce581771aa5f3"
    rng = random.Random(0)
    lines = []
    for i in range(500):
        spec = random_spec(rng)
        lines.append(texts.training_caption(spec, rng, full=i % 2 == 0))
        text, names = texts.labelled_caption(spec, rng)
        lines.append(text + " " + json.dumps(names, sort_keys=True))
        lines.append(texts.describe(spec, rng, brand="Acme", material="oak"))
    assert _sha("\n".join(lines).encode()) == "39c1c24e8d18a31e0854367d1c76b7cbf39475fdf9e67df5f7febcf9a352eb6e"


def test_parallel_rendering_and_reuse(tmp_path: Path) -> None:
    serial = write_sample_catalog(tmp_path / "serial", n=12, seed=5, n_queries=5, progress=False).parent
    parallel = write_sample_catalog(tmp_path / "parallel", n=12, seed=5, n_queries=5, progress=False,
                                    workers=2).parent
    assert _digest(parallel) == _digest(serial)  # the same bytes, whoever renders them
    image = next((parallel / "images").iterdir())
    image.unlink()
    write_sample_catalog(parallel, n=12, seed=5, n_queries=5, progress=False, reuse=True)
    assert not image.exists()  # a complete folder with the same parameters is returned as it is
    write_sample_catalog(parallel, n=12, seed=5, n_queries=5, progress=False)
    assert image.exists()  # without reuse it is written again
    (parallel / MARKER).unlink()
    write_sample_catalog(parallel, n=12, seed=5, n_queries=5, progress=False, reuse=True)
    assert (parallel / MARKER).is_file()  # no marker (an interrupted write): written again
    write_sample_catalog(parallel, n=13, seed=5, n_queries=5, progress=False, reuse=True)
    assert json.loads((parallel / MARKER).read_text())["n"] == 13  # other parameters: written again


def test_texts_name_every_thing_of_the_world() -> None:
    assert list(texts.CATEGORY_SYNONYMS) == CATEGORIES
    assert list(texts.COLOUR_SYNONYMS) == list(COLOURS)
    assert list(texts.PATTERN_ADJECTIVES) == PATTERNS
    assert set(texts.PATTERN_NOUNS) == set(PATTERNS) - {"solid"}


def test_world_covers_categories_colours_patterns_and_views() -> None:
    products = generate_products(2000, seed=1)
    assert len(CATEGORIES) >= 10 and len(COLOURS) >= 10 and set(PATTERNS) == {"solid", "striped", "dotted", "checkered"}
    assert set(Counter(p.spec.category for p in products)) == set(CATEGORIES)
    assert {p.n_views for p in products} == {1, 2, 3}
    twins = {p.product_id: p for p in products if p.twin_of}
    assert twins
    for p in twins.values():
        other = twins[p.twin_of]
        assert (p.spec.main, p.spec.secondary) == (other.spec.secondary, other.spec.main)
        assert (p.spec.category, p.spec.pattern) == (other.spec.category, other.spec.pattern)


def test_query_labels_follow_the_definitions(tmp_path: Path) -> None:
    write_sample_catalog(tmp_path, n=300, seed=9, n_queries=40, progress=False)
    import csv

    rows = {r["product_id"]: r for r in csv.DictReader(open(tmp_path / "catalog.csv"))}
    queries = [json.loads(line) for line in open(tmp_path / "queries.jsonl")]
    assert {q["set"] for q in queries} == {"plain", "color_swap", "image", "plain_zh", "bare", "keyword", "nomatch",
                                           "mixed"}
    for q in queries:
        rel = [rows[pid] for pid in q["relevant"]]
        assert rel or q["set"] == "nomatch"
        if q["set"] in ("plain", "plain_zh"):
            keys = {(r["category"], r["main_colour"], r["pattern"]) for r in rel}
            assert len(keys) == 1
            expected = {pid for pid, r in rows.items() if (r["category"], r["main_colour"], r["pattern"]) in keys}
            assert set(q["relevant"]) == expected
        elif q["set"] == "color_swap":
            assert len({(r["main_colour"], r["secondary_colour"]) for r in rel}) == 1
            assert q["text"].startswith(rel[0]["main_colour"])
        elif q["set"] == "bare":  # every product of that colour and category, solid ones graded highest
            keys = {(r["category"], r["main_colour"]) for r in rel}
            assert len(keys) == 1
            assert set(q["relevant"]) == {pid for pid, r in rows.items() if (r["category"], r["main_colour"]) in keys}
            assert all(q["grades"][r["product_id"]] == (2 if r["pattern"] == "solid" else 1) for r in rel)
        elif q["set"] == "keyword":
            if q["kind"] == "sku":
                assert [r["sku"] for r in rel] == [q["text"]]
            elif q["kind"] in ("model", "brand_model"):
                assert all(r["title"].endswith(q["text"].split()[-1]) for r in rel)
            else:
                assert all(q["text"].startswith(r["brand"]) for r in rel)
        elif q["set"] == "nomatch":
            assert all(r["category"] == rel[0]["category"] for r in rel)  # other categories never count
            assert set(q["grades"].values()) <= {1, 2}
        elif q["set"] == "mixed":
            assert q["parts"][0]["image"] == q["image"] and (tmp_path / q["image"]).is_file()
            looks = {(r["category"], r["pattern"]) for r in rel}
            assert len(looks) == 1 and len({r["main_colour"] for r in rel}) == 1
        else:
            assert (tmp_path / q["image"]).is_file()


def test_rendering_is_a_pure_function_of_spec_and_seed() -> None:
    spec = ProductSpec("mug", "red", "blue", "dotted")
    assert render_product(spec, 3).tobytes() == render_product(spec, 3).tobytes()
    assert render_product(spec, 3).tobytes() != render_product(spec, 4).tobytes()
