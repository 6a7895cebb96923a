"""Catalog reading: three formats, multi-image cells, and errors that name file, row and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalens.errors import CatalogError
from indexer.catalog import CatalogRow, RowError, parse_images, read_catalog

ROWS = [
    {"product_id": "a1", "title": "Red mug", "image": "a.jpg|b.jpg", "price": "9.5", "colour": "red"},
    {"product_id": "", "title": "No id", "image": "c.jpg", "price": "1"},
    {"product_id": "a3", "title": "Bad price", "image": "d.jpg", "price": "-3"},
    {"product_id": "a1", "title": "Duplicate", "image": "e.jpg", "price": "2"},
    {"product_id": "a5", "title": "", "image": "f.jpg", "price": "2"},
    {"product_id": "a6", "title": "Lamp", "image": '["g.jpg", "h.jpg", "i.jpg"]', "price": ""},
]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["product_id", "title", "image", "price", "colour"])
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist([{**{"colour": None}, **r} for r in rows]), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_each_format_reads_rows_and_reports_bad_ones(tmp_path: Path, suffix: str) -> None:
    items = list(read_catalog(write(tmp_path / f"cat{suffix}", ROWS)))
    good = [i for i in items if isinstance(i, CatalogRow)]
    bad = [i for i in items if isinstance(i, RowError)]
    assert [g.product_id for g in good] == ["a1", "a6"]
    assert good[0].images == ("a.jpg", "b.jpg") and good[0].price == 9.5
    assert good[0].attributes == {"colour": "red"}
    assert good[1].images == ("g.jpg", "h.jpg", "i.jpg") and good[1].price is None
    assert [(b.row, b.field) for b in bad] == [(2, "product_id"), (3, "price"), (4, "product_id"), (5, "title")]
    assert all(str(tmp_path) in str(b) and f"row {b.row}" in str(b) for b in bad)
    assert "duplicate" in bad[2].message


def test_invalid_json_line_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"product_id": "x", "title": "ok"}\n{broken\n')
    items = list(read_catalog(path))
    assert isinstance(items[0], CatalogRow) and isinstance(items[1], RowError) and items[1].row == 2


@pytest.mark.parametrize("content,suffix,match", [
    ("title\nx\n", ".csv", "product_id"),
    ("", ".xlsx", "unsupported catalog format"),
    ("not parquet", ".parquet", "Parquet"),
])
def test_unreadable_catalogs_raise_one_clear_error(tmp_path: Path, content: str, suffix: str, match: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_text(content)
    with pytest.raises(CatalogError, match=match):
        list(read_catalog(path))


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        list(read_catalog(tmp_path / "nope.csv"))


@pytest.mark.parametrize("cell,expected", [
    ("a.jpg", ("a.jpg",)), ("a.jpg | b.jpg", ("a.jpg", "b.jpg")), ('["x.png"]', ("x.png",)),
    (["u", "v"], ("u", "v")), ("", ()), (None, ()),
])
def test_image_cells(cell, expected) -> None:
    assert parse_images(cell) == expected


@pytest.mark.parametrize("pid,reason", [("a/b", "'/'"), ("P\x001", "control"), (" P1", "whitespace"),
                                        ("P1\u200b", "invisible")])
def test_product_ids_that_could_not_be_fetched_back_are_row_errors(tmp_path: Path, pid: str, reason: str) -> None:
    from indexer.catalog import parse_record

    result = parse_record({"product_id": pid, "title": "t"}, row=3, source="c.jsonl")
    assert isinstance(result, RowError) and result.field == "product_id" and reason in result.message


def test_non_finite_or_deeply_nested_attributes_are_row_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    deep: object = 1
    for _ in range(50):
        deep = [deep]
    path.write_text(json.dumps({"product_id": "A", "title": "a", "weight": float("inf")}) + "\n"
                    + json.dumps({"product_id": "B", "title": "b", "tags": deep}) + "\n")
    errors = [item for item in read_catalog(path) if isinstance(item, RowError)]
    assert [(e.product_id, e.field) for e in errors] == [("A", "weight"), ("B", "tags")]
    assert "finite" in errors[0].message and "nested" in errors[1].message


def test_a_jsonl_line_that_is_not_utf8_or_nested_too_deeply_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"product_id": "A", "title": "a"}\n{"product_id": "B", "title": "\xff\xfe"}\n'
                     + b"[" * 100_000 + b"\n" + b'{"product_id": "C", "title": "\\ud800"}\n'
                     + b'{"product_id": "D", "title": "d"}\n')
    items = list(read_catalog(path))
    assert [i.product_id for i in items if isinstance(i, CatalogRow)] == ["A", "D"]
    errors = [i for i in items if isinstance(i, RowError)]
    assert [e.row for e in errors] == [2, 3, 4]
    assert "UTF-8" in errors[0].message and "deeply" in errors[1].message and "surrogate" in errors[2].message


def test_a_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("product_id,title,title\np1,a,b\n")
    with pytest.raises(CatalogError, match="more than once.*title"):
        list(read_catalog(path))


@pytest.mark.parametrize("value,expected", [("in_stock", "in_stock"), ("In stock", "in_stock"),
                                            ("out-of-stock", "out_of_stock"), ("https://schema.org/PreOrder", "preorder"),
                                            ("false", "out_of_stock"), (True, "in_stock"), ("", None)])
def test_availability_is_read_in_the_spellings_shops_write(value: object, expected: str | None) -> None:
    from indexer.catalog import parse_record

    row = parse_record({"product_id": "p1", "title": "Mug", "availability": value}, row=1, source="c.csv")
    assert isinstance(row, CatalogRow) and row.availability == expected and "availability" not in row.attributes


def test_an_unknown_availability_is_a_row_error_naming_the_field() -> None:
    from indexer.catalog import parse_record

    error = parse_record({"product_id": "p1", "title": "Mug", "availability": "sometimes"}, row=4, source="c.csv")
    assert isinstance(error, RowError) and error.field == "availability" and error.row == 4
    assert "in_stock" in error.message


@pytest.mark.parametrize("fields,named", [({}, "at least one field"), ({"colour": "red"}, "'colour'"),
                                          ({"image": "a.jpg"}, "'image'"), ({"title": " "}, "'title'"),
                                          ({"price": -1}, "'price'"), ({"price": float("nan")}, "'price'"),
                                          ({"price": True}, "'price'"), ({"availability": "maybe"}, "'availability'"),
                                          ({"attributes": [1]}, "'attributes'"), ({"category": 3}, "'category'")])
def test_a_bad_patch_is_refused_naming_its_field(fields: dict, named: str) -> None:
    from catalens.errors import InvalidInputError
    from indexer.live import check_patch

    with pytest.raises(InvalidInputError, match=named):
        check_patch(fields)


def test_a_patch_is_normalised() -> None:
    from indexer.live import check_patch

    assert check_patch({"price": 3, "availability": "Out of stock", "brand": " ", "description": None}) == {
        "price": 3.0, "availability": "out_of_stock", "brand": None, "description": ""}
