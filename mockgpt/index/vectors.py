"""Lexical embedding vectors: deterministic, unit length, and close for texts that share words.

No model and no download: a text's vector is a signed feature hash (the "hashing trick") of the
``cl100k_base`` tokens it is made of, the tokens the embeddings API counts, so texts that share words and
phrases lie closer than texts that share none. It knows words, not meaning: "car" and "automobile" are as
far apart as any two words, and word order counts only through neighbouring pairs.

Tokens are taken as words: case and the spaces around them folded away, so that "The", " the" and
"THE" are one word. A token of punctuation or space, or one of ``STOP_WORDS`` (common English words that
every text has), is left out, unless the text has nothing else. The features of each token left:

- the word itself, weight 1, at one of the first ``COARSE`` coordinates and at one of the rest;
- its character trigrams, its ends marked, so that "cooking" lies near "cook": ``TRIGRAMS / sqrt(n)``
  each of its n trigrams (at most ``WIDTH - 2`` of them), each at one coordinate;
- its pair with the next token left, weight ``PAIRS``, at one coordinate.

A feature's coordinates and sign come from the xxh3 digest of its text, the same on every run, machine
and process. A word that comes twice counts twice. The sum is scaled to unit length and rounded to
32-bit floats, as the API sends them. A shortened vector (``dimensions``) is the first coordinates of the
sum, scaled to unit length, as OpenAI's v3 models shorten theirs; one of ``COARSE`` coordinates or more
still holds every word.

The features of every token are worked out once, when the first vector is asked for (a fraction of a
second); a vector then costs a few array operations over its tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from xxhash import xxh3_64_intdigest

__all__ = ["COARSE", "PAIRS", "STOP_WORDS", "TRIGRAMS", "WIDTH", "Embedder", "Ids", "Vector"]

Vector = npt.NDArray[np.float32]
# Token ids: as the tokenizer gives them, or as a request spells them.
Ids = npt.NDArray[np.uint32] | Sequence[int]

COARSE = 256
TRIGRAMS = 1.5
PAIRS = 0.5
# The features a token has room for: its word twice, and its trigrams.
WIDTH = 12

STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t d ll m o re ve y""".split()
)

_SIGN = 1 << 63
# Odd: a pair's digest from its words' loses no bit of the first.
_PAIR = np.uint64(0x9E3779B97F4A7C15)


class Embedder:
    """Vectors of texts given as token ids, from the vocabulary ``pieces`` (each token's bytes, by id)."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        words: dict[str, int] = {}
        self._word_of = np.array([words.setdefault(_word(piece), len(words)) for piece in pieces], np.intp)
        self._words = list(words)
        kept = np.array([word not in STOP_WORDS and any(map(str.isalnum, word)) for word in self._words])
        self._kept = kept[self._word_of]
        self._digests = np.array([_digest(word) for word in self._words], np.uint64)[self._word_of]
        # By vector size: each token's coordinates and signed weights, a row of WIDTH each.
        self._features: dict[int, tuple[npt.NDArray[np.int16], npt.NDArray[np.float32]]] = {}

    def embed(self, tokens: Ids, size: int, dimensions: int | None = None) -> Vector:
        """The unit vector of the token ids ``tokens`` among vectors of ``size`` coordinates, or its first
        ``dimensions`` coordinates scaled to unit length."""
        ids = np.asarray(tokens, np.intp)
        kept = ids.compress(self._kept.take(ids))
        if not len(kept):
            kept = ids
        digests = self._digests.take(kept)
        pairs: npt.NDArray[np.uint64] = digests[:-1] * _PAIR ^ digests[1:]
        coordinates, weights = self._placed(kept, pairs, size)
        summed: npt.NDArray[np.float64] = np.bincount(coordinates, weights, minlength=size)  # type: ignore[assignment]
        return _unit(summed[: dimensions or size])

    def _placed(
        self, kept: npt.NDArray[np.intp], pairs: npt.NDArray[np.uint64], size: int
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """Every feature's coordinate and signed weight: the tokens' rows, then their pairs. Each part is
        written in place into one array of each, a few calls over whole arrays (numpy's cost is per call)."""
        rows, row_weights = self._rows(size)
        words = len(kept) * WIDTH
        coordinates, weights = np.empty(words + len(pairs), np.intp), np.empty(words + len(pairs))
        coordinates[:words] = rows.take(kept, 0).ravel()
        weights[:words] = row_weights.take(kept, 0).ravel()
        coordinates[words:] = pairs % np.uint64(size)
        # A pair's sign is its digest's top bit: the sign of the same 64 bits read as a signed integer.
        np.copysign(PAIRS, pairs.view(np.int64), out=weights[words:])
        return coordinates, weights

    def _rows(self, size: int) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.float32]]:
        rows = self._features.get(size)
        if rows is None:
            features = [_features(word, size) for word in self._words]
            coordinates = np.array([row for row, _ in features], np.int16)[self._word_of]
            weights = np.array([row for _, row in features], np.float32)[self._word_of]
            rows = self._features[size] = coordinates, weights
        return rows


def _word(piece: bytes) -> str:
    """A token's word: its text, spaces and case folded away; bytes that are not UTF-8 as code points."""
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        # A piece of a character: its bytes, kept apart from any text.
        text = piece.decode("latin-1")
    return text.strip().casefold()


def _digest(text: str) -> int:
    return xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


def _features(word: str, size: int) -> tuple[list[int], list[float]]:
    """A word's row: its coordinates and signed weights, padded with zero weights to ``WIDTH``."""
    digest = _digest(word)
    signed = -1.0 if digest & _SIGN else 1.0
    coordinates, weights = [digest % COARSE, COARSE + (digest >> 8) % (size - COARSE)], [signed, signed]
    marked = f"<{word}>"
    trigrams = [marked[i : i + 3] for i in range(len(marked) - 2)][: WIDTH - 2]
    for trigram in trigrams:
        digest = _digest(trigram)
        coordinates.append(digest % size)
        weights.append(math.copysign(TRIGRAMS / math.sqrt(len(trigrams)), -1.0 if digest & _SIGN else 1.0))
    padding = WIDTH - len(coordinates)
    return coordinates + [0] * padding, weights + [0.0] * padding


def _unit(vector: npt.NDArray[np.float64]) -> Vector:
    norm = math.sqrt(float(np.dot(vector, vector)))
    if not norm:
        # Every feature fell past a short vector's end: any unit vector is as good as another.
        vector = np.zeros(len(vector))
        vector[0], norm = 1.0, 1.0
    return (vector / norm).astype(np.float32)
