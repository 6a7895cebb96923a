"""Fit a version's match probabilities on pairs generated from its own catalog.

A positive is a product with its own title (without its brand and model codes: those are
keyword matches). A negative is the product with that text after one word naming an
attribute value (a colour, a pattern, its category...) was swapped for another value of
that catalog column: the product is then one attribute away from what the text asks for,
which is exactly the closest wrong answer a shopper must not be told matches.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence

import numpy as np

from catalens.calibration import Calibration, fit_platt, logit
from catalens.encoder import ClipEncoder
from catalens.facets import describable_columns, value_of
from catalens.records import ProductRecord
from catalens.reranker import Reranker
from indexer.embedding_cache import EmbeddingCache

LOG = logging.getLogger(__name__)
MAX_PRODUCTS = 600  # products drawn for pairs: enough for two or three coefficients
MIN_PAIRS = 40


def looks(record: ProductRecord) -> str:
    """The title without what no picture shows: the brand and code-like words (model names, SKUs).
    Those are keyword matches; the probability is about the look the words describe."""
    words = [w for w in record.title.split() if not any(ch.isdigit() for ch in w)]
    text = " ".join(words)
    if record.brand:
        text = re.sub(rf"\b{re.escape(record.brand)}\b", " ", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def swapped(text: str, record: ProductRecord, columns: dict[str, list[str]], rng: random.Random) -> str | None:
    """The text with one attribute value it names swapped for another of the same column, or None."""
    options = []
    for column in columns:
        value = value_of(record, column)
        if value and re.search(rf"\b{re.escape(value)}\b", text, re.IGNORECASE):
            options.append((column, value))
    if not options:
        return None
    column, value = rng.choice(options)
    other = rng.choice([v for v in columns[column] if v.casefold() != value.casefold()])
    return re.sub(rf"\b{re.escape(value)}\b", other, text, count=1, flags=re.IGNORECASE)


def fit_calibration(records: Sequence[ProductRecord], encoder: ClipEncoder, reranker: Reranker | None,
                    cache: EmbeddingCache, features: EmbeddingCache | None, *, seed: int = 0) -> Calibration | None:
    """The version's Platt maps, or None when the catalog gives too few pairs (logged)."""
    rng = random.Random(seed)
    columns = describable_columns(records)
    picked = rng.sample(list(records), min(MAX_PRODUCTS, len(records)))
    texts: list[str] = []
    owners: list[ProductRecord] = []
    labels: list[int] = []
    for record in picked:
        vectors = _image_vectors(record, cache)
        positive = looks(record)
        negative = swapped(positive, record, columns, rng) if positive else None
        if not len(vectors) or negative is None:
            continue
        texts += [positive, negative]
        owners += [record, record]
        labels += [1, 0]
    if len(texts) < MIN_PAIRS:
        LOG.warning("calibration skipped: only %d pairs from this catalog (titles naming attribute values "
                    "are needed); results will carry no match probability", len(texts))
        return None
    query = encoder.encode_texts(texts)
    cosine = np.array([float((_image_vectors(r, cache) @ q).max()) for r, q in zip(owners, query)])
    y = np.array(labels)
    fit: dict[str, float] = {}
    first = fit_platt(cosine[:, None], y)
    fit["first_stage_accuracy"] = _accuracy(first(cosine[:, None]), y)
    reranked = None
    if reranker is not None and features is not None:
        scores = _rerank_scores(reranker, texts, owners, features)
        if scores is not None:
            x = np.stack([np.array([logit(s) for s in scores]), cosine], axis=1)
            reranked = fit_platt(x, y)
            fit["reranked_accuracy"] = _accuracy(reranked(x), y)
    return Calibration(first, reranked, pairs=len(y), positives=int(y.sum()), fit=fit)


def _image_vectors(record: ProductRecord, cache: EmbeddingCache) -> np.ndarray:
    vecs = [cache.get(f"img:{img.content_hash}") for img in record.images if img.status == "ok"]
    present = [v for v in vecs if v is not None]
    return np.stack(present).astype(np.float32) if present else np.zeros((0, 0), np.float32)


def _rerank_scores(reranker: Reranker, texts: list[str], owners: list[ProductRecord],
                   features: EmbeddingCache) -> list[float] | None:
    """The reranker's score of each text against its product's first image's stored features."""
    out = []
    for text, record in zip(texts, owners):
        feat = next((features.get(f"rr:{img.content_hash}") for img in record.images if img.status == "ok"), None)
        if feat is None:
            return None
        out.append(float(reranker.score(text, np.asarray(feat)[None].astype(np.float32))[0]))
    return out


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return round(float(((p >= 0.5) == (y == 1)).mean()), 4)
