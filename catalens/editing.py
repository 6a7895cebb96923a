"""The seam between the query service and the indexer: how admin routes change the catalog.

The service (retrieval/) never imports the indexer; the composition root (`catalens serve`)
hands it an editor that implements this protocol (indexer.live.IndexEditor). Edits are live:
each returns the sequence number of its last logged change, which queries see once the
service has applied it (catalens.changes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class UpsertSummary:
    """What one upsert changed; `errors` are the rows and images that could not be read."""

    seq: int
    upserted: int
    images_ok: int
    images_failed: int
    images_embedded: int
    images_cached: int
    texts_embedded: int
    texts_cached: int
    vectors: int
    errors: list[str] = field(default_factory=list)

    def plus(self, other: UpsertSummary) -> UpsertSummary:
        """Two consecutive parts of one batch, added up."""
        return UpsertSummary(
            seq=max(self.seq, other.seq), upserted=self.upserted + other.upserted,
            images_ok=self.images_ok + other.images_ok, images_failed=self.images_failed + other.images_failed,
            images_embedded=self.images_embedded + other.images_embedded,
            images_cached=self.images_cached + other.images_cached,
            texts_embedded=self.texts_embedded + other.texts_embedded, texts_cached=self.texts_cached + other.texts_cached,
            vectors=self.vectors + other.vectors, errors=(self.errors + other.errors)[:100])


@dataclass(frozen=True)
class DeleteSummary:
    seq: int
    deleted: int
    missing: int


@dataclass(frozen=True)
class PatchSummary:
    seq: int
    product_id: str
    changed: list[str]  # the fields whose value differed


@dataclass(frozen=True)
class CompactSummary:
    version_id: str
    folded: int  # live changes the new snapshot took in
    vectors: int
    seconds: float


class CatalogEditor(Protocol):
    """Live changes to the catalog, and their compaction into a new snapshot."""

    def upsert(self, records: list[dict[str, Any]], *,
               on_progress: Callable[[int], None] | None = None) -> UpsertSummary:
        """Add or update catalog-format records; only new or changed images and texts are embedded."""
        ...

    def check_upsert(self, records: list[dict[str, Any]]) -> None:
        """Refuse a batch before it is queued (InvalidInputError), as upsert would."""
        ...

    def patch(self, product_id: str, fields: dict[str, Any]) -> PatchSummary:
        """Change some fields of one product (NotFoundError, InvalidInputError naming the field)."""
        ...

    def delete(self, product_ids: list[str]) -> DeleteSummary:
        """Remove products from every endpoint."""
        ...

    def compact(self) -> CompactSummary:
        """Fold the live changes into a new snapshot."""
        ...

    def compact_due(self) -> bool:
        """Whether enough live changes are pending for an automatic compaction."""
        ...

    def prepare(self) -> None:
        """Open what edits need (database, embedding caches) ahead of the first one."""
        ...
