"""Reading product catalogs (CSV, JSONL, Parquet) into validated rows, with per-row errors."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalens.errors import CatalogError
from catalens.records import normalize_availability
from catalens.validation import attribute_problem, product_id_problem, text_problem

KNOWN_FIELDS = ("product_id", "title", "description", "image", "category", "brand", "price", "currency",
                "availability")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def product_text(title: str, description: str | None) -> str:
    """The one text a product is embedded by: its title, then its description."""
    return f"{title}. {description}".strip(". ") if description else title


@dataclass(frozen=True)
class CatalogRow:
    """A validated catalog product."""

    row: int
    product_id: str
    title: str
    description: str = ""
    images: tuple[str, ...] = ()
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    currency: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    availability: str | None = None  # one of catalens.records.AVAILABILITY; None: not given

    @property
    def text(self) -> str:
        """The text that is embedded for the product."""
        return product_text(self.title, self.description)

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class RowError:
    """A row that was not ingested: where it is and what is wrong with it."""

    source_file: str
    row: int
    field: str | None
    message: str
    product_id: str | None = None

    def __str__(self) -> str:
        where = f"{self.source_file}: row {self.row}"
        return f"{where}, field {self.field!r}: {self.message}" if self.field else f"{where}: {self.message}"


def check_catalog_path(path: Path) -> str:
    """The catalog's format, or a CatalogError naming the file (checked before any model loads)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unsupported catalog format {path.suffix!r} (use .csv, .jsonl or .parquet)")
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found")
    return fmt


def read_catalog(path: Path) -> Iterator[CatalogRow | RowError]:
    """Yield a CatalogRow or a RowError per record; rows are numbered from 1 (header excluded)."""
    fmt = check_catalog_path(path)
    records = {"csv": _csv_records, "jsonl": _jsonl_records, "parquet": _parquet_records}[fmt](path)
    seen: set[str] = set()
    for row, record in records:
        if isinstance(record, RowError):
            yield record
            continue
        result = parse_record(record, row=row, source=str(path))
        if isinstance(result, CatalogRow):
            if result.product_id in seen:
                yield RowError(str(path), row, "product_id", f"duplicate product_id {result.product_id!r}",
                               result.product_id)
                continue
            seen.add(result.product_id)
        yield result


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            _require_columns(path, list(reader.fieldnames or []))
            for row, record in enumerate(reader, start=1):
                if None in record:
                    yield row, RowError(str(path), row, None, "more values than header columns")
                    continue
                yield row, record
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise CatalogError(f"{path}: malformed CSV: {exc}") from exc


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    # Bytes per line: one line that is not UTF-8 is a row error, not the end of the catalog.
    with open(path, "rb") as fh:
        row = 0
        for raw in fh:
            if not raw.strip():
                continue
            row += 1
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield row, RowError(str(path), row, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
                continue
            except json.JSONDecodeError as exc:
                yield row, RowError(str(path), row, None, f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            except RecursionError:
                yield row, RowError(str(path), row, None, "invalid JSON: nested too deeply")
                continue
            if not isinstance(record, dict):
                yield row, RowError(str(path), row, None, "each line must be a JSON object")
                continue
            yield row, record


def _parquet_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise CatalogError(f"{path}: not a readable Parquet file: {exc}") from exc
    _require_columns(path, table.schema_arrow.names)
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _require_columns(path: Path, columns: list[str]) -> None:
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise CatalogError(f"{path}: column(s) named more than once in the header: {', '.join(repeated)}")
    missing = [c for c in ("product_id", "title") if c not in columns]
    if missing:
        raise CatalogError(f"{path}: required column(s) missing: {', '.join(missing)} (found: {', '.join(columns)})")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def parse_images(value: Any) -> tuple[str, ...]:
    """An image cell: a JSON list, a `|`-separated string, a list, or a single reference."""
    if _blank(value):
        return ()
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        text = str(value).strip()
        if text.startswith("["):
            parsed = json.loads(text)
            if not isinstance(parsed, list):
                raise ValueError("JSON image value must be a list")
            items = [str(v).strip() for v in parsed]
        else:
            items = [part.strip() for part in text.split("|")]
    return tuple(i for i in items if i)


def parse_record(record: dict[str, Any], *, row: int, source: str) -> CatalogRow | RowError:
    """Validate one raw record; every problem names its field."""
    pid = record.get("product_id")

    def error(field_name: str | None, message: str) -> RowError:
        return RowError(source, row, field_name, message, None if _blank(pid) else str(pid))

    if _blank(pid):
        return error("product_id", "required value is empty")
    pid = str(pid) if not isinstance(pid, float) else str(int(pid)) if pid.is_integer() else str(pid)
    if len(pid) > 256:
        return error("product_id", "longer than 256 characters")
    problem = product_id_problem(pid)
    if problem:
        return error("product_id", f"{problem}: {pid!r}")
    title = record.get("title")
    if _blank(title):
        return error("title", "required value is empty")
    for name in KNOWN_FIELDS:
        value = record.get(name)
        if isinstance(value, str) and (problem := text_problem(value)):
            return error(name, problem)
    raw_price: Any = record.get("price")  # any cell value; float() says whether it is a number
    price: float | None = None
    if not _blank(raw_price):
        try:
            price = float(raw_price)
        except (TypeError, ValueError):
            return error("price", f"not a number: {raw_price!r}")
        if not math.isfinite(price) or price < 0:
            return error("price", f"must be a number >= 0, got {price!r}")
    availability = None
    if not _blank(record.get("availability")):
        try:
            availability = normalize_availability(record["availability"])
        except ValueError as exc:
            return error("availability", str(exc))
    try:
        images = parse_images(record.get("image"))
    except (ValueError, json.JSONDecodeError) as exc:
        return error("image", f"cannot parse image list: {exc}")
    attributes = {k: v for k, v in record.items() if k not in KNOWN_FIELDS and not _blank(v)}
    for name, value in attributes.items():
        problem = attribute_problem(value)
        if problem:
            return error(name, problem)
    try:
        json.dumps(attributes)
    except TypeError:
        attributes = {k: str(v) for k, v in attributes.items()}

    def text(name: str) -> str | None:
        value = record.get(name)
        return None if _blank(value) else str(value).strip()

    return CatalogRow(row=row, product_id=pid, title=str(title).strip(),
                      description=text("description") or "", images=images,
                      category=text("category"), brand=text("brand"), price=price,
                      currency=text("currency"), attributes=attributes, availability=availability)
