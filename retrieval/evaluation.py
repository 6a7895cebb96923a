"""Retrieval quality metrics over labelled queries (the COCO / Flickr30k conventions)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRIC_KS = (1, 5, 10)


def score_rankings(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]],
                   grades: Sequence[dict[str, float] | None] | None = None,
                   flagged: Sequence[bool] | None = None) -> dict[str, float]:
    """Recall@K (share of queries with a relevant item in the top K), MRR, nDCG@10 (graded when a
    query has grades: linear gains) and `flagged`, the share answered with no_good_match.

    Ranking metrics average over the queries that have relevant items (an off-catalog query
    has none: it counts only in `flagged`); `n` counts every query.
    """
    n = len(ranked)
    flagged_share = round(sum(flagged) / n, 4) if flagged and n else 0.0
    judged = [i for i, rel in enumerate(relevant) if rel]
    if not judged:
        return {"n": n, **{f"recall@{k}": 0.0 for k in METRIC_KS}, "mrr": 0.0, "ndcg@10": 0.0,
                "flagged": flagged_share}
    hits = {k: 0 for k in METRIC_KS}
    mrr = ndcg = 0.0
    for i in judged:
        ids, rel = ranked[i], relevant[i]
        gain = (grades[i] if grades and grades[i] else None) or dict.fromkeys(rel, 1.0)
        first = next((r for r, pid in enumerate(ids) if pid in rel), None)
        for k in METRIC_KS:
            hits[k] += first is not None and first < k
        mrr += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(gain.get(pid, 0.0) / math.log2(r + 2) for r, pid in enumerate(ids[:10]))
        best = sorted(gain.values(), reverse=True)[:10]
        ideal = sum(g / math.log2(r + 2) for r, g in enumerate(best))
        ndcg += dcg / ideal if ideal else 0.0
    m = len(judged)
    return {"n": n, **{f"recall@{k}": round(hits[k] / m, 4) for k in METRIC_KS},
            "mrr": round(mrr / m, 4), "ndcg@10": round(ndcg / m, 4), "flagged": flagged_share}


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
                     progress: bool = False, mode: str | None = None) -> dict[str, dict[str, float]]:
    """Run every labelled query through the searcher; metrics per query set (and `<set>+rerank`).

    Text queries run in `mode` (default: the server's).
    """
    from tqdm import tqdm

    from catalens.filters import Filters
    from catalens.images import decode_image
    from retrieval.searcher import MixPart

    def image_at(rel: str) -> Any:
        return decode_image((path.parent / rel).read_bytes(), max_pixels=searcher.settings.max_image_pixels)

    ranked: dict[str, list[list[str]]] = {}
    relevant: dict[str, list[set[str]]] = {}
    grades: dict[str, list[dict[str, float] | None]] = {}
    flagged: dict[str, list[bool]] = {}
    for q in tqdm(load_queries(path), desc="queries", unit="q", disable=not progress):
        image = image_at(q["image"]) if "image" in q else None
        for reranked in ((False, True) if rerank else (False,)):
            if "parts" in q:
                parts = [MixPart(text=p.get("text"), image=image_at(p["image"]) if "image" in p else None,
                                 product_id=p.get("product_id"), weight=float(p.get("weight", 1.0)))
                         for p in q["parts"]]
                outcome = searcher.search_mix(parts, k, Filters(), rerank=reranked)
            elif image is not None:
                outcome = searcher.search_image(image, k, Filters(), rerank=reranked)
            else:
                outcome = searcher.search_text(q["text"], k, Filters(), rerank=reranked, mode=mode)
            name = q["set"] + (RERANK_SUFFIX if reranked else "")
            ranked.setdefault(name, []).append([h.product.product_id for h in outcome.hits])
            relevant.setdefault(name, []).append(set(q["relevant"]))
            grades.setdefault(name, []).append(q.get("grades"))
            flagged.setdefault(name, []).append(bool(outcome.no_good_match))
    return {name: score_rankings(ranked[name], relevant[name], grades[name], flagged[name]) for name in ranked}


def evaluate_describe(searcher: Any, path: Path, *, progress: bool = False) -> dict[str, dict[str, float]]:
    """`describe` on the image queries: per facet, the share of photos whose guessed value is the
    value of the product they show (its first relevant product), and the share with every facet right."""
    from tqdm import tqdm

    from catalens.facets import value_of
    from catalens.images import decode_image

    right: dict[str, int] = {}
    every = n = 0
    for q in tqdm([q for q in load_queries(path) if q["set"] == "image"], desc="describe", unit="photo",
                  disable=not progress):
        image = decode_image((path.parent / q["image"]).read_bytes(), max_pixels=searcher.settings.max_image_pixels)
        product = searcher.product(q["relevant"][0])
        guesses = searcher.describe(image, 1).attributes
        hits = {name: g.value == value_of(product, name) for name, g in guesses.items()}
        for name, ok in hits.items():
            right[name] = right.get(name, 0) + ok
        every += all(hits.values())
        n += 1
    return {"describe": {"n": n, **{name: round(c / max(1, n), 4) for name, c in right.items()},
                         "all": round(every / max(1, n), 4)}}
