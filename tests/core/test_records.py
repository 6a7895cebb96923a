"""A version's products file and the change log's payloads: what they store comes back the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens.changes import LiveVectors
from catalens.filters import Filters
from catalens.product_table import ProductTable, write_products
from catalens.records import ImageRecord, ProductRecord


def record(pk: int, **fields: object) -> ProductRecord:
    base: dict = dict(pk=pk, product_id=f"p{pk}", title=f"product {pk}", category="mug" if pk % 2 else "vase",
                      brand=f"b{pk % 3}", price=float(pk), currency="EUR",
                      availability="in_stock" if pk % 4 else "out_of_stock", attributes={"size": {"cm": pk}},
                      text_hash=f"{pk:064x}",
                      images=(ImageRecord(id=100 + pk, position=0, source=f"/img/{pk}.jpg", status="ok",
                                          content_hash="h", caption=f"cap {pk}"),))
    base.update(fields)
    return ProductRecord(**base)


@pytest.fixture()
def table(tmp_path: Path) -> ProductTable:
    records = [record(pk) for pk in range(1, 41)] + [record(41, price=None, category=None, images=())]
    owned = {r.pk: [(100 + r.pk, 0)] for r in records[:-1]} | {41: [(1 << 40 | 41, -1)]}
    path = tmp_path / "products.parquet"
    write_products(path, reversed(records), owned)
    return ProductTable.load(path)


def test_records_come_back_as_written(table: ProductTable) -> None:
    assert len(table) == 41 and list(table.pks) == list(range(1, 42))
    got = table.records([table.row(7), table.row(41)])
    assert got == [record(7), record(41, price=None, category=None, images=())]
    assert list(table.all_records()) == [record(pk) for pk in range(1, 41)] + [got[1]]


@pytest.mark.parametrize("filters", [Filters(category=("mug",)), Filters(brand=("b1", "b2"), price_max=20.0),
                                     Filters(availability=("out_of_stock",)), Filters(price_min=10.0),
                                     Filters(category=("none-such",)), Filters()])
def test_column_filters_agree_with_the_record_filter(table: ProductTable, filters: Filters) -> None:
    mask = table.mask(filters)
    assert [bool(m) for m in mask] == [filters.matches(r) for r in table.all_records()]


def test_vector_columns_say_whose_vector_is_which(table: ProductTable) -> None:
    assert table.vector_ids.tolist()[:2] == [101, 102] and table.vector_ids[-1] == (1 << 40 | 41)
    assert table.pks[table.vector_rows].tolist() == list(range(1, 42))
    assert table.vector_positions.tolist() == [0] * 40 + [-1]


def test_live_vectors_survive_the_log() -> None:
    rng = np.random.default_rng(0)
    lv = LiveVectors(np.array([5, 9]), np.array([0, 1]), rng.standard_normal((2, 8)).astype(np.float32),
                     np.array([9]), rng.standard_normal((1, 3, 4)).astype(np.float16))
    back = LiveVectors.decode(lv.encode())
    for name in ("ids", "positions", "vectors", "rerank_ids", "rerank"):
        np.testing.assert_array_equal(getattr(back, name), getattr(lv, name))
    plain = LiveVectors.decode(LiveVectors(np.array([1]), np.array([-1]), np.ones((1, 8), np.float32)).encode())
    assert plain.rerank is None and plain.rerank_ids is None
