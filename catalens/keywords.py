"""The keyword side of hybrid search: an SQLite FTS5 index (BM25) per version, and the same
BM25 for the live layer's records, so both rank on one scale.

Part of a version like its vectors: written once beside them, opened read-only by every
replica, whatever database holds the catalog of record. A shopper's text becomes a query of
quoted phrases joined by OR, so no input can reach FTS5's query syntax.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalens.errors import IndexArtifactError, InvalidInputError
from catalens.records import ProductRecord

KEYWORDS = "keywords.sqlite"
FIELDS = ("title", "description", "brand", "sku", "attributes", "captions")
# BM25 column weights: a word in the SKU or title says more than one in a description.
WEIGHTS = (4.0, 1.0, 2.0, 8.0, 1.0, 1.0)
K1, B = 1.2, 0.75  # FTS5's bm25() constants, used by the live scorer too
OPERATORS = frozenset({"and", "or", "not", "near"})  # FTS5 operators: never searched as words
SKU_KEYS = ("sku", "SKU", "Sku")
_WORD = re.compile(r"[^\W_]+")

Phrase = tuple[str, ...]


def terms(text: str) -> list[str]:
    """Lower-cased words without diacritics, split as FTS5's unicode61 tokenizer splits them."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WORD.findall(plain.casefold())


def parse_query(text: str) -> list[Phrase]:
    """The query's phrases: each space-separated chunk's words ("LM-2048" is the phrase "lm 2048").

    Raises InvalidInputError when nothing searchable is left (only punctuation or operators).
    """
    phrases: list[Phrase] = []
    for chunk in text.split():
        words = tuple(w for w in terms(chunk) if w not in OPERATORS)
        if words and words not in phrases:
            phrases.append(words)
    if not phrases:
        raise InvalidInputError(f"the keyword query {text[:80]!r} has no words to match "
                                "(only punctuation or the operators AND, OR, NOT, NEAR)")
    return phrases


def match_expression(phrases: Sequence[Phrase]) -> str:
    """An FTS5 MATCH string: every phrase quoted (its words are letters and digits only), OR-ed."""
    return " OR ".join('"' + " ".join(p) + '"' for p in phrases)


def sku_of(record: ProductRecord) -> str | None:
    """The product's SKU: the catalog's `sku` column (kept in its attributes)."""
    for key in SKU_KEYS:
        value = record.attributes.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def normalize_sku(text: str) -> str:
    return " ".join(text.split()).casefold()


def document(record: ProductRecord) -> tuple[str, ...]:
    """The record's text per FIELDS: what keyword search reads (its category is an attribute)."""
    attributes = " ".join([record.category or "", *(str(v) for k, v in record.attributes.items()
                                                     if k not in SKU_KEYS and v not in (None, ""))])
    captions = " ".join(img.caption for img in record.images if img.caption)
    return (record.title, record.description, record.brand or "", sku_of(record) or "", attributes, captions)


def write_keyword_index(path: Path, records: Iterable[ProductRecord]) -> None:
    """The FTS5 index of the records, rowid = their row in the version (records in pk order); fsynced."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        _fill(conn, records)
        conn.commit()
        conn.execute("INSERT INTO docs(docs) VALUES ('optimize')")
        conn.commit()
    finally:
        conn.close()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fill(conn: sqlite3.Connection, records: Iterable[ProductRecord]) -> None:
    columns = ", ".join(FIELDS)
    conn.execute(f"CREATE VIRTUAL TABLE docs USING fts5({columns}, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE vocab USING fts5vocab(docs, 'row')")
    conn.execute("CREATE TABLE skus (sku TEXT NOT NULL, row INTEGER NOT NULL)")
    conn.execute("CREATE TABLE stats (rows INTEGER NOT NULL, tokens INTEGER NOT NULL)")
    n = tokens = 0
    batch: list[tuple[Any, ...]] = []
    skus: list[tuple[str, int]] = []
    for row, record in enumerate(sorted(records, key=lambda r: r.pk)):
        doc = document(record)
        batch.append((row, *doc))
        tokens += sum(len(terms(field)) for field in doc)
        sku = sku_of(record)
        if sku:
            skus.append((normalize_sku(sku), row))
        n += 1
        if len(batch) >= 5000:
            conn.executemany(f"INSERT INTO docs(rowid, {columns}) VALUES (?{', ?' * len(FIELDS)})", batch)
            batch.clear()
    conn.executemany(f"INSERT INTO docs(rowid, {columns}) VALUES (?{', ?' * len(FIELDS)})", batch)
    conn.executemany("INSERT INTO skus VALUES (?, ?)", skus)
    conn.execute("CREATE INDEX skus_by_sku ON skus(sku)")
    conn.execute("INSERT INTO stats VALUES (?, ?)", (n, tokens))


@dataclass(frozen=True)
class CorpusStats:
    """What BM25 needs of the version's corpus to score a live record on the version's scale."""

    rows: int
    avg_tokens: float
    document_frequency: dict[Phrase, int]

    def idf(self, phrase: Phrase) -> float:
        df = self.document_frequency.get(phrase, 0)
        idf = math.log((self.rows - df + 0.5) / (df + 0.5))
        return idf if idf > 0 else 1e-6  # as FTS5: a word in most rows still counts a little


class KeywordIndex:
    """One version's keyword index, read-only; a connection per thread (SQLite's rule)."""

    def __init__(self, path: Path | None, records: Iterable[ProductRecord] = ()) -> None:
        self.path = path
        self._local = threading.local()
        self._memory: sqlite3.Connection | None = None
        self._memory_lock = threading.Lock()
        self._name_terms: set[str] | None = None
        self._common_terms: frozenset[str] | None = None
        if path is None:  # a version written before keyword indexes: built in memory at load
            self._memory = sqlite3.connect(":memory:", check_same_thread=False)
            _fill(self._memory, records)
            self._memory.commit()
        conn = self._connection_unlocked() if path is not None else self._memory
        assert conn is not None
        try:
            self.rows, tokens = conn.execute("SELECT rows, tokens FROM stats").fetchone()
        except sqlite3.DatabaseError as exc:
            raise IndexArtifactError(f"keyword index {path} is unreadable: {exc}") from exc
        self.avg_tokens = tokens / max(1, self.rows)

    def _connection_unlocked(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # immutable: the file never changes, so SQLite takes no locks and reads it directly.
            conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self._memory is not None:
            with self._memory_lock:
                return self._memory.execute(sql, params).fetchall()
        return self._connection_unlocked().execute(sql, params).fetchall()

    def search(self, phrases: Sequence[Phrase], limit: int) -> list[tuple[int, float]]:
        """(row, BM25 score, higher is better) of the best `limit` rows matching any phrase."""
        weights = ", ".join(str(w) for w in WEIGHTS)
        rows = self._query(f"SELECT rowid, bm25(docs, {weights}) AS s FROM docs WHERE docs MATCH ? "
                           "ORDER BY s LIMIT ?", (match_expression(phrases), int(limit)))
        return [(int(row), -float(score)) for row, score in rows]

    def informative(self, phrases: Sequence[Phrase]) -> list[Phrase]:
        """The phrases without single words in over half the rows ("in", "with"): BM25 gives such a word
        no weight (FTS5 floors its IDF at 1e-6), yet FTS5 scores every row it matches (all 10,000 for
        "in": 7.8 of an 8.1 ms query). All of them when every phrase is that common."""
        if self._common_terms is None:  # once per version
            self._query("CREATE VIRTUAL TABLE IF NOT EXISTS temp.vocab USING fts5vocab(main, docs, 'row')", ())
            self._common_terms = frozenset(
                t for (t,) in self._query("SELECT term FROM temp.vocab WHERE doc * 2 > ?", (self.rows,)))
        kept = [p for p in phrases if not (len(p) == 1 and p[0] in self._common_terms)]
        return kept or list(phrases)

    def can_name(self, phrase: Phrase) -> bool:
        """Whether the phrase could name a product: a code (it has a digit) or words of a brand or SKU."""
        if any(ch.isdigit() for w in phrase for ch in w):
            return True
        if self._name_terms is None:  # once per version: a few words per brand and SKU
            brands = self._query("SELECT DISTINCT brand FROM docs", ())
            skus = self._query("SELECT sku FROM skus", ())
            self._name_terms = {w for (text,) in (*brands, *skus) for w in terms(text or "")}
        return all(w in self._name_terms for w in phrase)

    def sku_rows(self, text: str) -> list[int]:
        """Rows whose SKU is exactly the text (case and spacing aside)."""
        return [int(r) for (r,) in self._query("SELECT row FROM skus WHERE sku = ?", (normalize_sku(text),))]

    def stats(self, phrases: Sequence[Phrase]) -> CorpusStats:
        """The corpus statistics of these phrases (one count per phrase: only when live records are scored)."""
        df = {p: int(self._query("SELECT count(*) FROM docs WHERE docs MATCH ?", (match_expression([p]),))[0][0])
              for p in phrases}
        return CorpusStats(self.rows, self.avg_tokens, df)


def document_terms(record: ProductRecord) -> tuple[list[str], ...]:
    """The record's words per FIELDS, as the index tokenizes them."""
    return tuple(terms(text) for text in document(record))


def bm25(phrases: Sequence[Phrase], fields: Sequence[list[str]], stats: CorpusStats) -> float:
    """FTS5's bm25() of one tokenized record (document_terms) against the version's corpus
    statistics, higher is better (0.0: no phrase occurs)."""
    length = sum(len(f) for f in fields)
    score = 0.0
    for phrase in phrases:
        freq = sum(w * _occurrences(phrase, f) for w, f in zip(WEIGHTS, fields))
        if freq:
            norm = K1 * (1 - B + B * length / max(stats.avg_tokens, 1e-9))
            score += stats.idf(phrase) * freq * (K1 + 1) / (freq + norm)
    return score


def contains_all(phrases: Sequence[Phrase], fields: Sequence[list[str]]) -> bool:
    """Whether every phrase occurs in one of the tokenized fields (document_terms)."""
    return all(any(_occurrences(p, f) for f in fields) for p in phrases)


def names(phrases: Sequence[Phrase], fields: Sequence[list[str]], *, every: bool = True) -> bool:
    """KeywordIndex.names for one tokenized record."""
    brand, sku = fields[FIELDS.index("brand")], fields[FIELDS.index("sku")]
    found = ((any(_occurrences(p, f) for f in fields) if any(ch.isdigit() for w in p for ch in w)
              else bool(_occurrences(p, brand) or _occurrences(p, sku))) for p in phrases)
    return all(found) if every else any(found)


def flags(phrases: Sequence[Phrase], fields: dict[int, Sequence[list[str]]]) -> tuple[set[int], set[int]]:
    """Of tokenized records by pk: (those containing every phrase, one of which names them; those
    the query names whole)."""
    full = {pk for pk, f in fields.items() if contains_all(phrases, f) and names(phrases, f, every=False)}
    return full, {pk for pk, f in fields.items() if names(phrases, f)}


def _occurrences(phrase: Phrase, words: list[str]) -> int:
    n = len(phrase)
    return sum(1 for i in range(len(words) - n + 1) if tuple(words[i:i + n]) == phrase)
