"""A catalog's describable facets and their text prototypes: what `describe` predicts against.

A facet is the category or an attribute column with a few short text values (colours,
patterns, materials), whatever the catalog calls them. Each value's prototype is the mean
of the CLIP text vectors of the catalog's own product texts that have it, so a photo is
described zero-shot, in the catalog's vocabulary, with any CLIP, and without a model call
beyond encoding the photo. Products without a value for a facet make its `None` prototype
(a solid product has no secondary colour).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from catalens.records import ProductRecord

MAX_VALUES = 64  # a column with more distinct values is not a facet (ids, free text)
MAX_VALUE_CHARS = 40
MIN_COVERAGE = 0.5  # a facet column is filled for at least this share of products
SKIP = frozenset({"sku", "SKU", "Sku"})
SOFTMAX_SCALE = 50.0  # cosine differences of a few hundredths separate values (CLIP's own scale is 100)


def value_of(record: ProductRecord, column: str) -> str | None:
    value = record.category if column == "category" else record.attributes.get(column)
    return value if isinstance(value, str) and value else None


def describable_columns(records: Sequence[ProductRecord]) -> dict[str, list[str]]:
    """Category and the attribute columns with 2..MAX_VALUES short, repeating text values, in catalog order."""
    values: dict[str, set[str]] = {"category": set()}
    filled: dict[str, int] = {}
    for record in records:
        for column in ("category", *record.attributes):
            if column in SKIP:
                continue
            value = value_of(record, column)
            filled[column] = filled.get(column, 0) + 1  # a column present, even empty, belongs to the catalog
            if value is not None and len(value) <= MAX_VALUE_CHARS:
                values.setdefault(column, set()).add(value)
    n = max(1, len(records))
    # Values must repeat (at most one per two products): a column of distinct values is free text.
    return {k: sorted(v) for k, v in values.items()
            if 2 <= len(v) <= min(MAX_VALUES, max(2, filled.get(k, 0) // 2)) and filled.get(k, 0) / n >= MIN_COVERAGE}


@dataclass(frozen=True)
class Guess:
    value: str | None
    p: float


@dataclass(frozen=True)
class FacetPrototypes:
    """Per facet: its values (None: products without one) and their unit prototype vectors."""

    values: dict[str, list[str | None]]
    vectors: dict[str, np.ndarray]

    @classmethod
    def build(cls, records: Iterable[ProductRecord],
              text_vectors: Callable[[np.ndarray], np.ndarray]) -> FacetPrototypes:
        """From the records and a lookup of their text vectors by pk."""
        rows = list(records)
        columns = describable_columns(rows)
        pks = np.array([r.pk for r in rows], np.int64)
        vecs = text_vectors(pks) if len(pks) else np.zeros((0, 0), np.float32)
        values: dict[str, list[str | None]] = {}
        vectors: dict[str, np.ndarray] = {}
        for column in columns:
            groups: dict[str | None, list[int]] = {}
            for i, record in enumerate(rows):
                groups.setdefault(value_of(record, column), []).append(i)
            names = sorted(groups, key=lambda v: (v is None, v or ""))
            means = np.stack([vecs[groups[v]].mean(axis=0) for v in names])
            values[column] = names
            vectors[column] = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return cls(values, vectors)

    def guess(self, image_vector: np.ndarray) -> dict[str, Guess]:
        """Each facet's most likely value for the image, with its softmax probability."""
        out = {}
        for column, names in self.values.items():
            logits = SOFTMAX_SCALE * (self.vectors[column] @ image_vector)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            best = int(p.argmax())
            out[column] = Guess(names[best], round(float(p[best]), 4))
        return out


def vote(records: Sequence[ProductRecord], similarities: np.ndarray, columns: Iterable[str]) -> dict[str, Guess]:
    """Each column's value among a photo's nearest products, weighted by their similarity (softmax at
    SOFTMAX_SCALE), with its share of the vote: the catalog's own labels read off its closest pictures."""
    if not len(records):
        return {}
    w = np.exp(SOFTMAX_SCALE * (similarities - similarities.max()))
    w /= w.sum()
    out = {}
    for column in columns:
        tally: dict[str | None, float] = {}
        for record, weight in zip(records, w):
            value = value_of(record, column)
            tally[value] = tally.get(value, 0.0) + float(weight)
        value = max(tally, key=lambda v: tally[v])
        out[column] = Guess(value, round(tally[value], 4))
    return out
