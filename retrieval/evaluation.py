"""Retrieval quality metrics over labelled queries (the COCO / Flickr30k conventions)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRIC_KS = (1, 5, 10)


def score_rankings(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> dict[str, float]:
    """Recall@K (share of queries with a relevant item in the top K), MRR and nDCG@10."""
    n = len(ranked)
    if n == 0:
        return {"n": 0, **{f"recall@{k}": 0.0 for k in METRIC_KS}, "mrr": 0.0, "ndcg@10": 0.0}
    hits = {k: 0 for k in METRIC_KS}
    mrr = ndcg = 0.0
    for ids, rel in zip(ranked, relevant):
        first = next((i for i, pid in enumerate(ids) if pid in rel), None)
        for k in METRIC_KS:
            hits[k] += first is not None and first < k
        mrr += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(ids[:10]) if pid in rel)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), 10)))
        ndcg += dcg / ideal if ideal else 0.0
    return {"n": n, **{f"recall@{k}": round(hits[k] / n, 4) for k in METRIC_KS},
            "mrr": round(mrr / n, 4), "ndcg@10": round(ndcg / n, 4)}


def load_queries(path: Path) -> list[dict[str, Any]]:
    """queries.jsonl as written by `catalens sample`; image paths are relative to its folder."""
    from catalens.errors import InvalidInputError

    if not path.is_file():
        raise InvalidInputError(f"{path}: queries file not found")
    queries = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            _ = q["query_id"], q["set"], q["relevant"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InvalidInputError(f"{path}: line {line_no}: not a query object ({exc})") from exc
        queries.append(q)
    return queries


RERANK_SUFFIX = "+rerank"


def evaluate_queries(searcher: Any, path: Path, *, k: int = 10, rerank: bool = False,
                     progress: bool = False) -> dict[str, dict[str, float]]:
    """Run every labelled query through the searcher; metrics per query set (and `<set>+rerank`)."""
    from tqdm import tqdm

    from catalens.filters import Filters
    from catalens.images import decode_image

    ranked: dict[str, list[list[str]]] = {}
    relevant: dict[str, list[set[str]]] = {}
    modes = (False, True) if rerank else (False,)
    for q in tqdm(load_queries(path), desc="queries", unit="q", disable=not progress):
        image = None
        if "image" in q:
            image = decode_image((path.parent / q["image"]).read_bytes(), max_pixels=searcher.settings.max_image_pixels)
        for mode in modes:
            if image is not None:
                outcome = searcher.search_image(image, k, Filters(), rerank=mode)
            else:
                outcome = searcher.search_text(q["text"], k, Filters(), rerank=mode)
            name = q["set"] + (RERANK_SUFFIX if mode else "")
            ranked.setdefault(name, []).append([h.product.product_id for h in outcome.hits])
            relevant.setdefault(name, []).append(set(q["relevant"]))
    return {name: score_rankings(ranked[name], relevant[name]) for name in ranked}
