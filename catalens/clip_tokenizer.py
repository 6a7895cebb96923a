"""The CLIP BPE tokenizer without torch: open_clip's SimpleTokenizer (MIT, from OpenAI CLIP) with
its default 'lower' cleaning, returning int64 token arrays cut to the longest text.

open_clip's own tokenizer module imports torch (seconds of start-up and ~600 MB) for its
output tensor; a query served by ONNX Runtime needs none of it. The BPE vocabulary is read
from the installed open_clip package, found without importing it. Tests prove the tokens
equal open_clip's (tests/core/test_onnx_runtime.py).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from pathlib import Path

import numpy as np

SOT, EOT = 49406, 49407
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def vocab_path() -> Path:
    """open_clip's BPE vocabulary file (the package is located, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("open_clip is not installed: its BPE vocabulary is needed")
    return Path(spec.origin).parent / VOCAB_FILE


@functools.lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@functools.lru_cache
def common_words(first: int = 3000, last: int = 20000) -> tuple[str, ...]:
    """Whole English words from CLIP's BPE merges ranked first..last (frequent, past the function
    words): things a shopper could ask for, to draw queries about what a catalog does not hold."""
    with gzip.open(vocab_path()) as fh:
        lines = fh.read().decode("utf-8").split("\n")[1 + first:1 + last]
    out = []
    for line in lines:
        merged = "".join(line.split())
        if merged.endswith("</w>") and merged[:-4].isascii() and merged[:-4].isalpha() and len(merged) >= 8:
            out.append(merged[:-4])
    return tuple(out)


def _clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    """texts -> (N, L) int64, L = the longest text with its start and end tokens (<= context_length)."""

    def __init__(self, context_length: int = 77, bpe_path: Path | None = None) -> None:
        import regex

        self.byte_encoder = _bytes_to_unicode()
        with gzip.open(bpe_path or vocab_path()) as fh:
            lines = fh.read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self._decoder = dict(enumerate(vocab))
        self._byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache: dict[str, str] = {"<start_of_text>": "<start_of_text>", "<end_of_text>": "<end_of_text>"}
        self.pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE)
        self.context_length = context_length

    def _bpe(self, token: str) -> str:
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(token).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        """The text of BPE ids (start and end tokens dropped), as open_clip's tokenizer decodes."""
        words = "".join(self._decoder[i] for i in ids if i not in (SOT, EOT)).split("</w>")
        raw = [bytearray(self._byte_decoder[c] for c in word).decode("utf-8", errors="replace") for word in words]
        return " ".join(w for w in raw if w)

    def __call__(self, texts: list[str], *, pad_to_context: bool = False) -> np.ndarray:
        seqs = []
        for text in texts:
            ids = [SOT, *self.encode(text), EOT]
            if len(ids) > self.context_length:  # cut, with the end token kept last (as open_clip does)
                ids = ids[:self.context_length]
                ids[-1] = EOT
            seqs.append(ids)
        length = self.context_length if pad_to_context else max(len(s) for s in seqs)
        out = np.zeros((len(seqs), length), dtype=np.int64)
        for i, seq in enumerate(seqs):
            out[i, :len(seq)] = seq
        return out
