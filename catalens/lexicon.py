"""What a query's words say about a catalog's facets, in the catalog's own words.

A word or two ("stripy", "navy blue", "couch") names a facet value when nearly every product
whose title or description contains it has that value. The lexicon is mined from each
version's catalog at index time, so it speaks that catalog's language with no model and no
word list: a value's own name always names it, and synonyms come from how the catalog writes.
Columns sharing their values (a main and a secondary colour) form one domain; when the
catalog's titles name such values in column order ("navy with red stripes"), a query's first
colour is read as the main one and its second as the secondary one.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catalens.errors import IndexArtifactError
from catalens.facets import describable_columns, value_of
from catalens.records import ProductRecord

LEXICON = "lexicon.json"
MIN_COUNT = 3  # products a mined phrase must appear in
PRECISION = 0.95  # of the products containing a phrase, the share that have its value
MAX_MINED = 50_000  # products whose texts are counted (evenly spread): the shares settle long before
ORDER_AGREEMENT = 0.9  # titles naming a domain's values in column order, for the order to mean roles
PARTIAL = 0.5  # a value named in one role (a main colour) that the product has in another (secondary)
LATER_ROLE = 0.5  # a domain's later columns (a secondary colour) weigh this much of its first one
_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words, hyphenated ones whole ("t-shirt"); tokens with digits (model codes) are left out."""
    return _WORD.findall(text.casefold())


@dataclass(frozen=True)
class Lexicon:
    """Phrases naming facet values, and the domains (groups of columns sharing values) they name."""

    phrases: dict[str, tuple[str, str]]  # phrase -> (domain, value)
    domains: dict[str, list[str]]  # domain -> its columns
    ordered: dict[str, bool] = field(default_factory=dict)  # domain -> a query names its values in column order

    @classmethod
    def mine(cls, records: Sequence[ProductRecord]) -> Lexicon:
        """The lexicon of a catalog: its describable columns' values, and the phrases its texts use for them."""
        columns = describable_columns(records)
        domains = _domains(columns)
        phrases: dict[str, tuple[str, str]] = {}
        for domain, cols in domains.items():
            for value in sorted({v for c in cols for v in columns[c]}):
                if words(value):  # a value of digits only ("42") is a keyword match, not a facet word
                    phrases.setdefault(" ".join(words(value)), (domain, value))
        sample = records[::max(1, len(records) // MAX_MINED)]
        docs = [(words(f"{r.title} {r.description or ''}"), _domain_values(r, domains)) for r in sample]
        lexicon = cls(phrases, domains)
        for size in (1, 2):
            lexicon = cls({**_mined(docs, size, lexicon), **lexicon.phrases}, domains)
        ordered = {d: len(cols) > 1 and _in_column_order(sample, lexicon, d) for d, cols in domains.items()}
        return cls(lexicon.phrases, domains, ordered)

    def mentions(self, text: str) -> list[tuple[str, str]]:
        """(domain, value) of each phrase in the text, left to right, longest phrase first."""
        tokens = words(text)
        longest = self._longest
        out: list[tuple[str, str]] = []
        i = 0
        while i < len(tokens):
            for size in range(min(longest, len(tokens) - i), 0, -1):
                hit = self.phrases.get(" ".join(tokens[i:i + size]))
                if hit is not None:
                    if not out or out[-1] != hit:  # "jet black" after "black": one mention
                        out.append(hit)
                    i += size
                    break
            else:
                i += 1
        return out

    def named(self, text: str) -> dict[str, list[str]]:
        """Per domain, the distinct values the text names, in the order it names them."""
        out: dict[str, list[str]] = {}
        for domain, value in self.mentions(text):
            if value not in out.setdefault(domain, []):
                out[domain].append(value)
        return out

    def mismatch(self, record: ProductRecord, named: dict[str, list[str]],
                 columns: frozenset[str] | None = None) -> dict[str, float]:
        """Per column, how far the record is from the value the query names there: 0 has it, 1 does not,
        PARTIAL has it in another role of the domain (a main colour named, found as the secondary)."""
        out: dict[str, float] = {}
        for domain, values in named.items():
            cols = self.domains.get(domain, [])
            have = [value_of(record, c) for c in cols]
            if self.ordered.get(domain):
                for col, value, got in zip(cols, values, have):
                    if columns is None or col in columns:
                        out[col] = 0.0 if got == value else PARTIAL if value in have else 1.0
            else:
                for value in values:
                    if columns is None or cols[0] in columns:
                        out[cols[0]] = out.get(cols[0], 0.0) + (0.0 if value in have else 1.0)
        return out

    def mismatch_rows(self, codes: FacetCodes, rows: np.ndarray, named: dict[str, list[str]]) -> dict[str, np.ndarray]:
        """`mismatch` for many snapshot rows at once, from the version's facet codes (no records read)."""
        out: dict[str, np.ndarray] = {}
        for domain, values in named.items():
            cols = self.domains.get(domain, [])
            if self.ordered.get(domain):
                for col, value in zip(cols, values):
                    anywhere = np.logical_or.reduce([codes.has(c, value, rows) for c in cols])
                    out[col] = np.where(codes.has(col, value, rows), 0.0, np.where(anywhere, PARTIAL, 1.0))
            else:
                total = np.zeros(len(rows))
                for value in values:
                    total += ~np.logical_or.reduce([codes.has(c, value, rows) for c in cols])
                out[cols[0]] = out.get(cols[0], 0.0) + total
        return out

    def distance(self, mismatch: dict[str, float], weights: Mapping[str, float]) -> float:
        """How far a hit is from what the query names, one number: each column's mismatch times its
        weight (default 1, LATER_ROLE for a domain's later columns)."""
        return sum(value * self.weight(column, weights) for column, value in mismatch.items())

    def weight(self, column: str, weights: Mapping[str, float]) -> float:
        """A column's weight: as configured, else 1 (LATER_ROLE for a domain's later columns)."""
        return weights.get(column, LATER_ROLE if column in self._later_roles else 1.0)

    @functools.cached_property
    def _longest(self) -> int:
        return max((p.count(" ") + 1 for p in self.phrases), default=1)

    @functools.cached_property
    def _later_roles(self) -> frozenset[str]:
        return frozenset(c for cols in self.domains.values() for c in cols[1:])

    def to_json(self) -> str:
        return json.dumps({"phrases": {p: list(v) for p, v in sorted(self.phrases.items())},
                           "domains": self.domains, "ordered": self.ordered}, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Lexicon:
        data = json.loads(text)
        return cls({p: (str(v[0]), str(v[1])) for p, v in data["phrases"].items()},
                   {d: list(c) for d, c in data["domains"].items()}, dict(data.get("ordered") or {}))


@dataclass(frozen=True)
class FacetCodes:
    """A version's facet values as an integer code per row and column (-1: none), so that candidates
    are measured against a query's named values without reading their records."""

    codes: dict[str, np.ndarray]
    index: dict[str, dict[str, int]]

    @classmethod
    def build(cls, values: dict[str, list[str | None]]) -> FacetCodes:
        codes, index = {}, {}
        for column, column_values in values.items():
            names = sorted({v for v in column_values if v is not None})
            index[column] = {v: i for i, v in enumerate(names)}
            codes[column] = np.array([index[column].get(v, -1) if v is not None else -1 for v in column_values],
                                     np.int32)
        return cls(codes, index)

    def has(self, column: str, value: str, rows: np.ndarray) -> np.ndarray:
        """Which rows have this value in this column."""
        code = self.index.get(column, {}).get(value)
        if code is None:
            return np.zeros(len(rows), bool)
        return self.codes[column][rows] == code


def _domains(columns: dict[str, list[str]]) -> dict[str, list[str]]:
    """Columns grouped when they share most of their values (main and secondary colour), in catalog order."""
    out: dict[str, list[str]] = {}
    for column, values in columns.items():
        for cols in out.values():
            first = set(columns[cols[0]])
            if len(first & set(values)) >= 0.5 * min(len(first), len(values)):
                cols.append(column)
                break
        else:
            out[column] = [column]
    return out


def _domain_values(record: ProductRecord, domains: dict[str, list[str]]) -> dict[str, set[str]]:
    return {d: {v for c in cols if (v := value_of(record, c))} for d, cols in domains.items()}


def _mined(docs: list[tuple[list[str], dict[str, set[str]]]], size: int,
           known: Lexicon) -> dict[str, tuple[str, str]]:
    """Phrases of `size` words that nearly always come with one value of one domain. Two-word
    phrases only where their words read alone disagree ("navy blue": navy, then blue)."""
    count: Counter[str] = Counter()
    joint: Counter[tuple[str, str, str]] = Counter()
    for tokens, values in docs:
        for phrase in {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}:
            count[phrase] += 1
            for domain, vals in values.items():
                for value in vals:
                    joint[(phrase, domain, value)] += 1
    found: dict[str, list[tuple[str, str]]] = {}
    for (phrase, domain, value), n in joint.items():
        if count[phrase] >= MIN_COUNT and n >= PRECISION * count[phrase]:
            found.setdefault(phrase, []).append((domain, value))
    out = {}
    for phrase, hits in found.items():
        if size > 1:
            read = known.named(phrase)
            hits = [(d, v) for d, v in hits if len(read.get(d, [])) > 1]
        elif len(hits) > 1:  # "porcelain": a material, and only mugs have it; the value it spells wins
            hits = [(d, v) for d, v in hits if phrase in words(v)]
        if len(hits) == 1:
            out[phrase] = hits[0]
    return out


def _in_column_order(records: Sequence[ProductRecord], lexicon: Lexicon, domain: str) -> bool:
    """Whether the catalog's titles name this domain's values in column order (main before secondary)."""
    cols = lexicon.domains[domain]
    agree = total = 0
    for record in records:
        have = [value_of(record, c) for c in cols]
        named = lexicon.named(record.title).get(domain, [])
        if len(named) >= 2 and len(set(have) - {None}) >= 2 and set(named) <= set(have):
            total += 1
            agree += named == [v for v in have if v in named]
    return total >= 10 and agree >= ORDER_AGREEMENT * total


def save_lexicon(path: Path, lexicon: Lexicon) -> None:
    path.write_text(lexicon.to_json())


def load_lexicon(path: Path) -> Lexicon | None:
    """The version's lexicon, or None for a version written without one."""
    try:
        return Lexicon.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise IndexArtifactError(f"{path}: unreadable lexicon ({exc})") from exc

