"""The embeddings API's response as bytes: each vector as a JSON array of floats, or as the base64 of its
little-endian float32 bytes, which is what the official SDKs ask for and decode (encoded by pybase64,
in a tenth of the standard library's time)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pybase64

from mockgpt.api.embeddings import Embedding, EmbeddingList, EmbeddingUsage
from mockgpt.index.vectors import Vector

__all__ = ["embeddings_body"]

_encode = msgspec.json.Encoder().encode
_D, _S = msgspec.Raw(b"%d"), msgspec.Raw(b"%s")
_ITEM = _encode(Embedding(index=_D, embedding=_S))  # type: ignore[arg-type]
# Base64 needs no escaping in JSON: it goes between the template's quotes as it is.
_BASE64_ITEM = _encode(Embedding(index=_D, embedding="%s"))  # type: ignore[arg-type]
_LIST = _encode(EmbeddingList(data=[_S], model=_S, usage=EmbeddingUsage(prompt_tokens=_D, total_tokens=_D)))  # type: ignore[arg-type, list-item]


def embeddings_body(vectors: Sequence[Vector], model: str, tokens: int, base64_encoded: bool) -> bytes:
    """The embedding list of ``vectors``, in order, for ``tokens`` of input."""
    item, render = (_BASE64_ITEM, _base64) if base64_encoded else (_ITEM, _floats)
    data = b",".join([item % (index, render(vector)) for index, vector in enumerate(vectors)])
    return _LIST % (data, _encode(model), tokens, tokens)


def _floats(vector: Vector) -> bytes:
    # Each float32 as the double it is exactly: what the base64 form decodes to, digit for digit.
    return _encode(vector.tolist())


def _base64(vector: Vector) -> bytes:
    # The vector's own bytes, where they are little-endian already.
    return pybase64.b64encode(vector.astype("<f4", copy=False).data)
