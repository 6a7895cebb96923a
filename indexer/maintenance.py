"""Catalog upkeep outside a build: validating admin records, finding duplicate products."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from catalens import artifacts
from catalens.config import Settings
from catalens.db import open_database
from catalens.errors import ImageSourceRefusedError, InvalidInputError
from catalens.images import confine_path, is_url
from catalens.schema import Product, ProductImage
from indexer.catalog import CatalogRow, RowError, parse_record

MAX_UPSERT_RECORDS = 1000


def validate_records(records: list[dict[str, Any]], *, images_root: Path | None = None,
                     roots: Sequence[Path] = ()) -> list[CatalogRow]:
    """Catalog-format records -> rows; any bad record rejects the whole batch (422).

    Image paths must resolve inside `roots` (relative ones against images_root, the active
    catalog's folder); a refusal never says whether the path exists.
    """
    if not records:
        raise InvalidInputError("no products given")
    if len(records) > MAX_UPSERT_RECORDS:
        raise InvalidInputError(f"{len(records)} products in one request; at most {MAX_UPSERT_RECORDS}")
    rows: list[CatalogRow] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, record in enumerate(records, start=1):
        result = parse_record(record, row=i, source="request")
        if isinstance(result, RowError):
            problems.append(f"products[{i - 1}]" + (f" field {result.field!r}" if result.field else "")
                            + f": {result.message}")
            continue
        if result.product_id in seen:
            problems.append(f"products[{i - 1}]: duplicate product_id {result.product_id!r}")
        seen.add(result.product_id)
        for n, source in enumerate(result.images, start=1):
            problem = _image_path_problem(source, images_root, roots)
            if problem:
                problems.append(f"products[{i - 1}] field 'image' (image {n}): {problem}")
        rows.append(result)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InvalidInputError("; ".join(problems[:5]) + more)
    return rows


def _image_path_problem(source: str, images_root: Path | None, roots: Sequence[Path]) -> str | None:
    """Why an image path may not be upserted, or None; URLs are vetted when fetched (per item)."""
    if is_url(source):
        return None
    path = Path(source)
    if not path.is_absolute():
        if images_root is None:
            return "a relative path needs an active index to resolve against; give an http(s) URL"
        path = images_root / path
    try:
        confine_path(path, roots)
    except ImageSourceRefusedError:
        # The same words whether or not the path exists: the API must not probe the disk.
        return "the path is outside the allowed image folders (the active catalog's folder and CATALENS_IMAGE_ROOTS)"
    return None


# --- duplicates ----------------------------------------------------------------------------


@dataclass
class DuplicateGroup:
    """Products whose images are identical (same bytes) or near-identical (cosine >= threshold)."""

    product_ids: list[str]
    match: str  # "identical" if every link is the same file content, else "near-identical"
    min_score: float
    links: list[dict[str, Any]] = field(default_factory=list)  # {"products": [a, b], "score", "identical"}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(settings: Settings, *, threshold: float = 0.98, k: int = 32) -> list[DuplicateGroup]:
    """Group live products by identical image content hash or near-identical image vectors.

    Vectors come from the active version (range search over it, or a kNN search of k
    neighbours where the index type has no range search); ids are checked against the DB,
    so deleted products never appear.
    """
    if not -1.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    _, index, _ = artifacts.load_version(artifacts.active_version_path(settings.index_dir))
    engine, sessions = open_database(settings.db_url)
    try:
        with sessions() as session:
            rows = session.execute(
                select(ProductImage.id, ProductImage.content_hash, Product.id, Product.product_id)
                .join(Product).where(Product.deleted.is_(False), ProductImage.status == "ok")
                .order_by(ProductImage.id)).all()
    finally:
        engine.dispose()
    owner = {int(img_id): int(pk) for img_id, _, pk, _ in rows}
    names = {int(pk): pid for _, _, pk, pid in rows}
    edges: dict[tuple[int, int], tuple[float, bool]] = {}  # (pk, pk) -> (score, identical)

    def link(a: int, b: int, score: float, identical: bool) -> None:
        if a == b:
            return
        key = (min(a, b), max(a, b))
        old = edges.get(key)
        if old is None or (identical and not old[1]) or (identical == old[1] and score > old[0]):
            edges[key] = (score, identical)

    by_hash: dict[str, list[int]] = {}
    for _, digest, pk, _ in rows:
        if digest:
            by_hash.setdefault(digest, []).append(int(pk))
    for pks in by_hash.values():
        for other in pks[1:]:
            link(pks[0], other, 1.0, True)

    present = set(index.ids().tolist())
    ids = np.array([i for i in owner if i in present], np.int64)
    if len(ids) > 1:
        vectors = index.reconstruct(ids)
        for a, b, score in _near_pairs(index, vectors, ids, threshold=threshold, k=k):
            if a in owner and b in owner:
                link(owner[a], owner[b], score, False)

    groups = _UnionFind()
    for a, b in edges:
        groups.union(a, b)
    members: dict[int, list[int]] = {}
    for pk in {pk for edge in edges for pk in edge}:
        members.setdefault(groups.find(pk), []).append(pk)
    out = []
    for root, pks in members.items():
        edges_here = [(a, b, score, ident) for (a, b), (score, ident) in sorted(edges.items())
                      if groups.find(a) == root]
        links: list[dict[str, Any]] = [{"products": sorted((names[a], names[b])), "score": round(score, 4),
                                        "identical": ident} for a, b, score, ident in edges_here]
        out.append(DuplicateGroup(product_ids=sorted(names[pk] for pk in pks),
                                  match="identical" if all(e[3] for e in edges_here) else "near-identical",
                                  min_score=min(round(e[2], 4) for e in edges_here), links=links))
    out.sort(key=lambda g: (-len(g.product_ids), g.product_ids))
    return out


def _near_pairs(index: artifacts.FaissIndex, vectors: np.ndarray, ids: np.ndarray, *, threshold: float,
                k: int) -> list[tuple[int, int, float]]:
    """(id, id, score) for every pair of vectors with inner product >= threshold."""
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    pairs: list[tuple[int, int, float]] = []
    try:
        lims, scores, found = index.index.range_search(queries, float(threshold))
    except RuntimeError:  # e.g. an index type without range search: kNN, then the threshold
        scores_knn, found_knn = index.search(queries, min(k, index.ntotal))
        for qid, row_scores, row_ids in zip(ids.tolist(), scores_knn, found_knn):
            pairs += [(qid, int(f), float(s)) for s, f in zip(row_scores, row_ids) if f >= 0 and s >= threshold]
        return pairs
    for q, qid in enumerate(ids.tolist()):
        for j in range(lims[q], lims[q + 1]):
            pairs.append((qid, int(found[j]), float(scores[j])))
    return pairs
