"""How the two stages' scores combine into one ranking."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fused_score(rerank_score: float, first_stage_score: float, weight: float) -> float:
    """Logit of the reranker's match probability plus the weighted first-stage cosine.

    Summing in logit space lets the two stages vote as independent evidence (a product of
    experts); on the held-out catalog this beat the reranker alone and a probability blend.
    """
    p = min(max(rerank_score, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p)) + weight * first_stage_score


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], weights: Sequence[float], k: float) -> dict[int, float]:
    """RRF: each ranking gives an item weight / (k + its rank, from 1); rank-only, so BM25 and cosine
    need no common scale. k = 60 is what Elasticsearch, OpenSearch and Marqo default to."""
    fused: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + weight / (k + rank)
    return fused


def relative_score_fusion(scored: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float]) -> dict[int, float]:
    """Relative score fusion (Weaviate's): each ranking's scores min-max scaled to [0, 1], weighted and summed."""
    fused: dict[int, float] = {}
    for items, weight in zip(scored, weights):
        if not items:
            continue
        values = [s for _, s in items]
        low, span = min(values), max(values) - min(values)
        for key, score in items:
            scaled = (score - low) / span if span > 0 else 1.0
            fused[key] = fused.get(key, 0.0) + weight * scaled
    return fused
