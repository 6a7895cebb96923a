"""Mixed queries ("like this photo, but blue"): what the words change about the photo.

A positive text part that names a facet value (a colour, a pattern, a material: whatever the
catalog's describable columns hold; read by the version's lexicon, or zero-shot against
describe's prototypes without one) is read as an edit of the photo. The photo's other facets
are read off its nearest catalog products (or guessed zero-shot), and, with a captioner, its
caption is rewritten with the named value. The searcher then ranks candidates by how far they
are from the named values, then by the parts, the rewritten caption and how many of the wanted
facet values each has; the reranker, when asked for, reads the rewritten caption against the top.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from catalens.facets import FacetPrototypes, Guess, value_of
from catalens.lexicon import Lexicon
from catalens.records import ProductRecord

CAPTION_WEIGHT = 1.0  # the rewritten caption, as a part, like a given one (tuning catalog, seed 7: 1-3 within noise)
FACET_WEIGHT = 1.0  # standardised-score units per wanted facet value a candidate has (times its confidence)
MIX_RERANK_TOP = 30  # candidates the reranker reads against the rewritten caption


class Part(Protocol):
    @property
    def text(self) -> str | None: ...

    @property
    def weight(self) -> float: ...


@dataclass
class Refinement:
    """The parts' vectors with the photos moved to the named values, the facet values wanted
    ({facet: (value, confidence)}: named ones 1, the photo's guessed ones their probability),
    and the photo's caption with the named values written in (None without one)."""

    vectors: list[np.ndarray]
    wanted: dict[str, tuple[str | None, float]]
    caption: str | None
    facets: dict[str, list[str]] | None = None  # what the words name, as the lexicon reads them (by domain)


def refine(prototypes: FacetPrototypes, parts: Sequence[Part], vectors: list[np.ndarray],
           caption: Callable[[np.ndarray], str | None], lexicon: Lexicon | None = None,
           neighbours: Callable[[np.ndarray], dict[str, Guess]] | None = None) -> Refinement:
    """Read the positive text parts as edits of the photo (or product) parts; unchanged when none names a facet.
    `neighbours` reads a photo's facets off its nearest products (zero-shot against the prototypes without)."""
    texts = [part.text for part in parts if part.text is not None and part.weight > 0]
    facets = _lexicon_facets(lexicon, texts) if lexicon is not None else {}
    named = _indices(prototypes, lexicon, facets) if lexicon is not None and facets \
        else _zero_shot(prototypes, parts, vectors)
    looks = [vec for part, vec in zip(parts, vectors) if part.text is None and part.weight > 0]
    if not named or not looks:
        return Refinement(vectors, {}, None)
    guesses = neighbours(looks[0]) if neighbours is not None else prototypes.guess(looks[0])
    wanted: dict[str, tuple[str | None, float]] = {c: (prototypes.values[c][i], 1.0) for c, i in named.items()}
    for column, guess in guesses.items():
        wanted.setdefault(column, (guess.value, guess.p))
    moved = [vec if part.text is not None else _moved(prototypes, vec, named) for part, vec in zip(parts, vectors)]
    text = caption(looks[0])
    written = rewrite(text, prototypes, {c: v for c, (v, _) in wanted.items() if c in named},
                      {c: g.value for c, g in guesses.items()}) if text else None
    return Refinement(moved, wanted, written, facets or None)


def _lexicon_facets(lexicon: Lexicon, texts: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for text in texts:
        for domain, values in lexicon.named(text).items():
            out.setdefault(domain, []).extend(v for v in values if v not in out.get(domain, []))
    return out


def _indices(prototypes: FacetPrototypes, lexicon: Lexicon, facets: dict[str, list[str]]) -> dict[str, int]:
    """Column -> the named value's index among the prototypes' values (a domain's values go to its columns in order)."""
    out = {}
    for domain, values in facets.items():
        for column, value in zip(lexicon.domains[domain], values):
            if value in prototypes.values.get(column, []):
                out[column] = prototypes.values[column].index(value)
    return out


def _zero_shot(prototypes: FacetPrototypes, parts: Sequence[Part], vectors: list[np.ndarray]) -> dict[str, int]:
    """Column -> value index of each positive text part, by its closest prototype (a version without a lexicon)."""
    named: dict[str, int] = {}
    for part, vec in zip(parts, vectors):
        if part.text is not None and part.weight > 0 and prototypes.values:
            column = max(prototypes.vectors, key=lambda c: float((prototypes.vectors[c] @ vec).max()))
            named[column] = int((prototypes.vectors[column] @ vec).argmax())
    return named


def _moved(prototypes: FacetPrototypes, vec: np.ndarray, named: dict[str, int]) -> np.ndarray:
    """The photo described in the catalog's facets, the named ones changed, summed as prototypes: moving
    the photo's vector alone keeps its colour and loses its pattern (a CLIP image space binds the two)."""
    out = vec.copy()
    for column, table in prototypes.vectors.items():
        out = out + table[named.get(column, int((table @ vec).argmax()))]
    return out / max(float(np.linalg.norm(out)), 1e-12)


def rewrite(caption: str, prototypes: FacetPrototypes, named: dict[str, str | None],
            guessed: dict[str, str | None]) -> str | None:
    """The caption with each named facet's old value replaced by the named one, or None when no old value
    can be found in it: the column's values that the caption contains, the photo's guessed one first."""
    out = caption
    for column, value in named.items():
        if value is None:
            continue
        present = [v for v in prototypes.values[column] if v and _word(v).search(out)]
        old = guessed.get(column) if guessed.get(column) in present else present[0] if len(present) == 1 else None
        if old is None or old == value:
            continue
        out = _word(old).sub(value, out, count=1)
    return out if out != caption else None


def _word(value: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)


def agreement(records: Sequence[ProductRecord], wanted: dict[str, tuple[str | None, float]]) -> np.ndarray:
    """Per record: the summed confidence of the wanted facet values it has."""
    return np.array([sum(p for column, (value, p) in wanted.items() if value_of(record, column) == value)
                     for record in records], np.float64)


def mismatch(record: ProductRecord, refined: Refinement, lexicon: Lexicon, visible: Collection[str]) -> dict[str, float]:
    """Per column, how far a candidate is from the refined query: the values the words name (as in a
    text search), and each visible facet guessed off the photo that it lacks, by the guess's confidence."""
    out = lexicon.mismatch(record, refined.facets or {})
    for column, (value, p) in refined.wanted.items():
        if column not in out and column in visible:
            out[column] = 0.0 if value_of(record, column) == value else p
    return out
