"""Fit a version's match probabilities on searches generated from its own catalog.

A query is a product's own title (without its brand and model codes: those are keyword
matches), or that title after one attribute value it names (a colour, a pattern, its
category...) was swapped for another value of that catalog column, which may describe no
product at all. Each query is searched over the catalog's vectors, and each of its top hits
is labelled by whether it has every attribute value the query names (as its words, or as the
version's lexicon reads them: "couch" names a sofa). So the map is fitted on what a search
returns, right and one attribute wrong: exactly when a shopper must be told "no good match".
Some queries are two common English words the catalog never uses ("harbor violin"): whatever
they find is wrong, as for "laptop charger" in a furniture shop.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence

import numpy as np

from catalens.calibration import Calibration, fit_platt, logit
from catalens.clip_tokenizer import common_words
from catalens.encoder import ClipEncoder
from catalens.facets import FacetPrototypes, describable_columns, value_of
from catalens.lexicon import Lexicon, words
from catalens.onnx_encoder import OnnxClipEncoder
from catalens.records import ProductRecord
from catalens.reranker import Reranker
from indexer.embedding_cache import EmbeddingCache

LOG = logging.getLogger(__name__)
# Products drawn for pairs: ~1,000 labelled hits, plenty for two or three coefficients; the fit is a
# fixed cost per build, 3-4 s of the write stage with ViT-B-32 (its generated queries' text encodes).
MAX_PRODUCTS = 300
MIN_QUERIES = 40
TOP_HITS = 3  # hits per generated search that are labelled
OFF_CATALOG_SHARE = 0.15  # of the generated queries, made of words the catalog never uses


def looks(record: ProductRecord) -> str:
    """The title without what no picture shows: the brand and code-like words (model names, SKUs).
    Those are keyword matches; the probability is about the look the words describe."""
    words = [w for w in record.title.split() if not any(ch.isdigit() for ch in w)]
    text = " ".join(words)
    if record.brand:
        text = re.sub(rf"\b{re.escape(record.brand)}\b", " ", text, flags=re.IGNORECASE)
    return " ".join(text.split())


def swapped(text: str, record: ProductRecord, columns: dict[str, list[str]],
            rng: random.Random) -> tuple[str, str, str] | None:
    """(the text with one attribute value it names swapped for another of that column, the column,
    the new value), or None when it names none."""
    options = [(c, v) for c, v in named_values(text, record, columns).items()]
    if not options:
        return None
    column, value = rng.choice(options)
    other = rng.choice([v for v in columns[column] if v.casefold() != value.casefold()])
    return re.sub(rf"\b{re.escape(value)}\b", other, text, count=1, flags=re.IGNORECASE), column, other


def named_values(text: str, record: ProductRecord, columns: dict[str, list[str]]) -> dict[str, str]:
    """The record's attribute values that the text names as words, by column."""
    out = {}
    for column in columns:
        value = value_of(record, column)
        if value and re.search(rf"\b{re.escape(value)}\b", text, re.IGNORECASE):
            out[column] = value
    return out


def visible_columns(products: Sequence[ProductRecord], columns: dict[str, list[str]], cache: EmbeddingCache,
                    rng: random.Random, sample: int = 1000) -> dict[str, list[str]]:
    """The columns a picture shows: the CLIP tells a product's value from the others of its category
    (zero-shot, against describe's prototypes) at least twice as often as chance. A material is
    named in titles but no picture shows it: labelling hits by it would call right answers wrong."""
    picked = rng.sample(list(products), min(sample, len(products)))
    texts: dict[int, np.ndarray] = {}
    for r in picked:
        vec = cache.get(f"txt:{r.text_hash}")
        if vec is not None:
            texts[r.pk] = np.asarray(vec, np.float32)
    known = [r for r in picked if r.pk in texts]
    if not known:
        return columns
    prototypes = FacetPrototypes.build(known, lambda pks: np.stack([texts[int(pk)] for pk in pks]))
    within: dict[tuple[str, str | None], set[int]] = {}
    for column, names in prototypes.values.items():
        for r in known:
            within.setdefault((column, r.category), set()).add(names.index(value_of(r, column)))
    out = {}
    for column, values in columns.items():
        if column == "category" or column not in prototypes.values:
            out[column] = values
            continue
        table, names = prototypes.vectors[column], prototypes.values[column]
        right = chance = 0.0
        for r in known:
            allowed = sorted(within[(column, r.category)])
            image = _image_vectors(r, cache).mean(axis=0)
            guess = allowed[int(np.argmax(table[allowed] @ image))]
            right += guess == names.index(value_of(r, column))
            chance += 1 / len(allowed)
        if right >= 2 * chance:
            out[column] = values
        else:
            LOG.info("calibration: %s is not visible in the pictures (%.0f%% right, chance %.0f%%)", column,
                     100 * right / len(known), 100 * chance / len(known))
    return out


def fit_calibration(records: Sequence[ProductRecord], encoder: ClipEncoder | OnnxClipEncoder, reranker: Reranker | None,
                    cache: EmbeddingCache, features: EmbeddingCache | None, lexicon: Lexicon, *,
                    seed: int = 0) -> Calibration | None:
    """The version's Platt maps, or None when the catalog gives too few queries (logged)."""
    rng = random.Random(seed)
    products = [r for r in records if len(_image_vectors(r, cache))]
    if not products:  # nothing with a picture: the write stage refuses an empty index, or serves text only
        return None
    columns = visible_columns(products, describable_columns(records), cache, rng)
    queries: list[tuple[str, dict[str, str]]] = []
    for record in rng.sample(products, min(MAX_PRODUCTS, len(products))):
        text = looks(record)
        named = named_values(text, record, columns)
        if not named:
            continue
        queries.append((text, named))
        swap = swapped(text, record, columns, rng)
        if swap is not None:
            queries.append((swap[0], {**named, swap[1]: swap[2]}))
    queries += [(text, {}) for text in off_catalog(records, int(OFF_CATALOG_SHARE * len(queries)), rng)]
    if len(queries) < MIN_QUERIES:
        LOG.warning("calibration skipped: only %d queries from this catalog (titles naming attribute values "
                    "are needed); results will carry no match probability", len(queries))
        return None
    vectors = [_image_vectors(r, cache) for r in products]
    matrix = np.concatenate(vectors)
    starts = np.concatenate([[0], np.cumsum([len(v) for v in vectors])[:-1]])
    query = encoder.encode_texts([t for t, _ in queries])
    visible = frozenset(columns)
    samples: list[tuple[str, ProductRecord, float, float, int]] = []
    for (text, named), q in zip(queries, query):
        best = np.maximum.reduceat(matrix @ q, starts)  # each product's best image (each has one or more)
        read = lexicon.named(text)
        for i in np.argsort(-best)[:TOP_HITS]:
            hit = products[int(i)]
            mismatch = sum(lexicon.mismatch(hit, read, visible).values())
            has_all = all((value_of(hit, c) or "").casefold() == v.casefold() for c, v in named.items())
            right = bool(named) and mismatch == 0 and has_all  # an off-catalog query names nothing
            samples.append((text, hit, float(best[i]), mismatch, int(right)))
    cosine = np.array([s[2] for s in samples])
    mismatches = np.array([s[3] for s in samples])
    y = np.array([s[4] for s in samples])
    if y.min() == y.max():
        LOG.warning("calibration skipped: every generated search was %s", "right" if y[0] else "wrong")
        return None
    fit: dict[str, float] = {}
    x_first = np.stack([cosine, mismatches], axis=1)
    first = fit_platt(x_first, y)
    fit["first_stage_accuracy"] = _accuracy(first(x_first), y)
    reranked = None
    if reranker is not None and features is not None:
        scores = _rerank_scores(reranker, [s[0] for s in samples], [s[1] for s in samples], features)
        if scores is not None:
            x = np.stack([np.array([logit(s) for s in scores]), cosine, mismatches], axis=1)
            reranked = fit_platt(x, y)
            fit["reranked_accuracy"] = _accuracy(reranked(x), y)
    return Calibration(first, reranked, pairs=len(y), positives=int(y.sum()), fit=fit, columns=tuple(sorted(visible)))


def off_catalog(records: Sequence[ProductRecord], n: int, rng: random.Random) -> list[str]:
    """n queries of two common English words that no title, description or attribute uses."""
    known = {w for r in records for w in words(" ".join([r.title, r.description or "", r.category or "",
                                                          *map(str, r.attributes.values())]))}
    pool = [w for w in common_words() if w not in known]
    return [" ".join(rng.sample(pool, 2)) for _ in range(n)] if len(pool) >= 2 else []


def _image_vectors(record: ProductRecord, cache: EmbeddingCache) -> np.ndarray:
    vecs = [cache.get(f"img:{img.content_hash}") for img in record.images if img.status == "ok"]
    present = [v for v in vecs if v is not None]
    return np.stack(present).astype(np.float32) if present else np.zeros((0, 0), np.float32)


def _rerank_scores(reranker: Reranker, texts: list[str], owners: list[ProductRecord],
                   features: EmbeddingCache) -> list[float] | None:
    """The reranker's score of each text against its product's first image's stored features."""
    feats = []
    for record in owners:
        feat = next((features.get(f"rr:{img.content_hash}") for img in record.images if img.status == "ok"), None)
        if feat is None:
            return None
        feats.append(np.asarray(feat, np.float32))
    return [float(s) for s in reranker.score_pairs(texts, np.stack(feats))] if feats else []


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return round(float(((p >= 0.5) == (y == 1)).mean()), 4)
