"""The embeddings API: what mockgpt reads of a request, checked as the API checks it, and what it sends.

``read`` turns a request into the texts to embed and the tokens they cost, or raises the error the API
gives: an empty input, more than ``MAX_INPUTS`` inputs, one over the model's ``MAX_INPUT_TOKENS`` or all
of them over ``MAX_REQUEST_TOKENS``, an unknown model, ``dimensions`` out of the model's range or given
to a model that cannot shorten its vectors. Texts become ``cl100k_base`` token ids, the tokens the API
counts; a token array is taken as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, NamedTuple

from msgspec import Struct

from mockgpt.errors import BadRequest, NotFound, TooManyTokens
from mockgpt.index.tokens import EmbeddingTokenizer
from mockgpt.index.vectors import Ids

__all__ = [
    "MAX_INPUTS",
    "MAX_INPUT_TOKENS",
    "MAX_REQUEST_TOKENS",
    "MODELS",
    "Embedding",
    "EmbeddingList",
    "EmbeddingRequest",
    "EmbeddingUsage",
    "Inputs",
    "read",
]

# Each model's vector size, and whether ``dimensions`` may shorten it.
MODELS = {"text-embedding-3-small": (1536, True), "text-embedding-3-large": (3072, True), "text-embedding-ada-002": (1536, False)}
# The model a response names, where the API names another than the request's.
_ANSWERED_AS = {"text-embedding-ada-002": "text-embedding-ada-002-v2"}
MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000
_INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


class EmbeddingRequest(Struct):
    """``POST /v1/embeddings``: ``input`` is a string, or an array of strings, of token ids, or of arrays
    of token ids."""

    input: str | list[Any]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    # Never streamed: the layers that answer streams and whole answers alike ask.
    stream: ClassVar[bool] = False


class Embedding(Struct, kw_only=True, gc=False):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or with ``encoding_format: base64`` their little-endian float32 bytes in base64.
    embedding: list[float] | str


class EmbeddingUsage(Struct, gc=False):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct, kw_only=True, gc=False):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Inputs(NamedTuple):
    """A request's inputs as token ids, the tokens they cost, the model's vector size, the size asked
    for, and the model the response names."""

    inputs: list[Ids]
    tokens: int
    size: int
    dimensions: int | None
    model: str


def read(request: EmbeddingRequest, tokenizer: EmbeddingTokenizer) -> Inputs:
    """The inputs of ``request`` as token ids, its cost and its vectors' sizes; the API's error if it is
    not valid."""
    items = _items(request.input)
    size, shortens = _model(request.model)
    dimensions = _dimensions(request.dimensions, size, shortens)
    inputs: list[Ids] = []
    for number, item in enumerate(items):
        ids = tokenizer.encode(item, MAX_INPUT_TOKENS) if isinstance(item, str) else _checked(item, number, tokenizer)
        if ids is None or len(ids) > MAX_INPUT_TOKENS:
            raise BadRequest(f"Invalid 'input': maximum context length is {MAX_INPUT_TOKENS} tokens.")
        inputs.append(ids)
    tokens = sum(map(len, inputs))
    if tokens > MAX_REQUEST_TOKENS:
        raise TooManyTokens(f"Requested {tokens} tokens, max {MAX_REQUEST_TOKENS} tokens per request")
    return Inputs(inputs, tokens, size, dimensions, _ANSWERED_AS.get(request.model, request.model))


def _items(input: str | list[Any]) -> Sequence[str | list[int]]:
    """The inputs, one string or token array each; a lone token array is one input."""
    if isinstance(input, str):
        items: Sequence[Any] = [input]
    elif input and all(type(item) is int for item in input):
        items = [input]
    else:
        items = input
    kinds = {type(item) for item in items}
    if not 0 < len(items) <= MAX_INPUTS or len(kinds) != 1 or not all(_one_input(item) for item in items):
        raise BadRequest(_INVALID_INPUT)
    return items


def _one_input(item: object) -> bool:
    if isinstance(item, str):
        return bool(item)
    return isinstance(item, list) and 0 < len(item) and all(type(token) is int for token in item)


def _model(model: str) -> tuple[int, bool]:
    if model not in MODELS:
        raise NotFound(f"The model `{model}` does not exist or you do not have access to it.", code="model_not_found")
    return MODELS[model]


def _dimensions(dimensions: int | None, size: int, shortens: bool) -> int | None:
    if dimensions is None:
        return None
    if not shortens:
        raise BadRequest("This model does not support specifying dimensions.")
    if dimensions < 1:
        message = f"Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {dimensions} instead."
        raise BadRequest(message, param="dimensions", code="integer_below_min_value")
    if dimensions > size:
        message = f"Invalid 'dimensions': integer above maximum value. Expected a value <= {size}, but got {dimensions} instead."
        raise BadRequest(message, param="dimensions", code="integer_above_max_value")
    return None if dimensions == size else dimensions


def _checked(ids: list[int], number: int, tokenizer: EmbeddingTokenizer) -> list[int]:
    vocabulary = len(tokenizer.pieces)
    if not all(0 <= id < vocabulary for id in ids):
        raise BadRequest(f"Invalid 'input[{number}]': it holds a token id that is not one of the model's.", param="input")
    return ids
