"""How the two stages' scores combine into one ranking."""

from __future__ import annotations

import math


def fused_score(rerank_score: float, first_stage_score: float, weight: float) -> float:
    """Logit of the reranker's match probability plus the weighted first-stage cosine.

    Summing in logit space lets the two stages vote as independent evidence (a product of
    experts); on the held-out catalog this beat the reranker alone and a probability blend.
    """
    p = min(max(rerank_score, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p)) + weight * first_stage_score
