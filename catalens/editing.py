"""The seam between the query service and the indexer: how admin routes change the catalog.

The service (retrieval/) never imports the indexer; the composition root (`catalens serve`)
hands it an editor that implements this protocol (indexer.maintenance.IndexEditor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from catalens.encoder import ClipEncoder


@dataclass(frozen=True)
class UpsertSummary:
    """What one upsert changed; `errors` are the images that could not be read."""

    version_id: str
    upserted: int
    images_ok: int
    images_failed: int
    images_embedded: int
    images_cached: int
    texts_embedded: int
    texts_cached: int
    vectors: int
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeleteSummary:
    version_id: str
    deleted: int
    missing: int


class CatalogEditor(Protocol):
    """Changes to the catalog outside a catalog build, published as a new index version."""

    def upsert(self, records: list[dict[str, Any]], *, encoder: ClipEncoder | None = None) -> UpsertSummary:
        """Add or update catalog-format records; only new or changed images and texts are embedded."""
        ...

    def delete(self, product_ids: list[str]) -> DeleteSummary:
        """Remove products from every endpoint."""
        ...
