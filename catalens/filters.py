"""Search filters: what a shopper narrows results by, evaluated on records (never on SQL rows)."""

from __future__ import annotations

from dataclasses import dataclass

from catalens.records import ProductRecord


@dataclass(frozen=True)
class Filters:
    category: tuple[str, ...] = ()
    brand: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    availability: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.category or self.brand or self.price_min is not None or self.price_max is not None
                    or self.availability)

    def matches(self, record: ProductRecord) -> bool:
        """Whether one product passes (a product without a price never passes a price bound)."""
        if self.category and record.category not in self.category:
            return False
        if self.brand and record.brand not in self.brand:
            return False
        if self.availability and record.availability not in self.availability:
            return False
        if self.price_min is not None and (record.price is None or record.price < self.price_min):
            return False
        return self.price_max is None or (record.price is not None and record.price <= self.price_max)
