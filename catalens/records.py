"""A product as a published version or a live change holds it: every field search filters on or shows.

Records are what a snapshot stores per product and what a live change carries, so both can
be served, and the catalog of record restored, without reading the metadata tables.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

Availability = Literal["in_stock", "out_of_stock", "preorder", "backorder"]
AVAILABILITY: tuple[str, ...] = get_args(Availability)
DEFAULT_AVAILABILITY = "in_stock"
# Spellings catalogs use for the same states (schema.org and Google Merchant, booleans, "in stock").
_AVAILABILITY_ALIASES = {"true": "in_stock", "yes": "in_stock", "1": "in_stock", "instock": "in_stock",
                         "false": "out_of_stock", "no": "out_of_stock", "0": "out_of_stock",
                         "outofstock": "out_of_stock", "soldout": "out_of_stock", "sold_out": "out_of_stock"}


def normalize_availability(value: Any) -> str:
    """One of AVAILABILITY from what a catalog writes ("In stock", "out-of-stock", true, 0); ValueError if none."""
    if isinstance(value, bool):
        return "in_stock" if value else "out_of_stock"
    text = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    text = text.removeprefix("https://schema.org/").removeprefix("http://schema.org/")
    if text in AVAILABILITY:
        return text
    if text in _AVAILABILITY_ALIASES or text.replace("_", "") in _AVAILABILITY_ALIASES:
        return _AVAILABILITY_ALIASES.get(text) or _AVAILABILITY_ALIASES[text.replace("_", "")]
    raise ValueError(f"availability must be one of {', '.join(AVAILABILITY)} (or true/false), got {value!r}")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a product; `id` is its vector id."""

    id: int
    position: int
    source: str
    status: str
    content_hash: str | None = None
    error: str | None = None
    thumbnail: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class ProductRecord:
    """A product's fields at one point in time; `pk` is the id of its text vector."""

    pk: int
    product_id: str
    title: str
    description: str = ""
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    currency: str | None = None
    availability: str = DEFAULT_AVAILABILITY
    attributes: dict[str, Any] = field(default_factory=dict)
    text_hash: str = ""
    images: tuple[ImageRecord, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> ProductRecord:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        data["images"] = tuple(ImageRecord(**img) for img in data.get("images") or ())
        return cls(**data)

    def image_at(self, position: int | None) -> ImageRecord | None:
        return next((img for img in self.images if img.position == position), None)


def record_of(product: Any) -> ProductRecord:
    """The record of a catalog-of-record row (catalens.schema.Product with its images loaded)."""
    return ProductRecord(
        pk=int(product.id), product_id=product.product_id, title=product.title, description=product.description or "",
        category=product.category, brand=product.brand, price=product.price, currency=product.currency,
        availability=product.availability or DEFAULT_AVAILABILITY, attributes=dict(product.attributes or {}),
        text_hash=product.text_hash,
        images=tuple(ImageRecord(id=int(img.id), position=img.position, source=img.source, status=img.status,
                                 content_hash=img.content_hash, error=img.error, thumbnail=img.thumbnail,
                                 caption=img.caption) for img in sorted(product.images, key=lambda i: i.position)))
