"""The generated product world is deterministic and labelled correctly."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from catalens.world import CATEGORIES, COLOURS, PATTERNS, generate_products, render_product, write_sample_catalog


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_catalog(tmp_path: Path) -> None:
    a = write_sample_catalog(tmp_path / "a", n=30, seed=5, n_queries=10, progress=False).parent
    b = write_sample_catalog(tmp_path / "b", n=30, seed=5, n_queries=10, progress=False).parent
    assert _digest(a) == _digest(b)
    c = write_sample_catalog(tmp_path / "c", n=30, seed=6, n_queries=10, progress=False).parent
    assert (a / "catalog.csv").read_text() != (c / "catalog.csv").read_text()


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
    assert {q["set"] for q in queries} == {"plain", "color_swap", "image"}
    for q in queries:
        rel = [rows[pid] for pid in q["relevant"]]
        assert rel
        if q["set"] == "plain":
            keys = {(r["category"], r["main_colour"], r["pattern"]) for r in rel}
            assert len(keys) == 1
            expected = {pid for pid, r in rows.items() if (r["category"], r["main_colour"], r["pattern"]) in keys}
            assert set(q["relevant"]) == expected
        elif q["set"] == "color_swap":
            assert len({(r["main_colour"], r["secondary_colour"]) for r in rel}) == 1
            assert q["text"].startswith(rel[0]["main_colour"])
        else:
            assert (tmp_path / q["image"]).is_file()


def test_rendering_is_a_pure_function_of_spec_and_seed() -> None:
    from catalens.world import ProductSpec

    spec = ProductSpec("mug", "red", "blue", "dotted")
    assert render_product(spec, 3).tobytes() == render_product(spec, 3).tobytes()
    assert render_product(spec, 3).tobytes() != render_product(spec, 4).tobytes()
