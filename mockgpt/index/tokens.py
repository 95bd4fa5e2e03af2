"""Real token counts and boundaries, computed once at index time with OpenAI's ``o200k_base``.

A replayed request is never tokenized: the index stores every answer's token boundaries and the prompt's
count. The server tokenizes only what no index holds: the prompts of synthesized misses and the system
messages ``--ignore-system`` leaves out of the key (``Tokenizer``), Messages API ``count_tokens``, and
embeddings inputs, in their models' ``cl100k_base`` (``EmbeddingTokenizer``).

Prompt tokens follow OpenAI's published way of counting chat input: every message costs
``TOKENS_PER_MESSAGE`` (3) tokens of framing plus its role name (one token for each of "user",
"assistant", "system" and "tool") plus its content, and the reply is primed with ``REPLY_PRIMING`` (3)
more. A request of one user message "hi" is thus 3 + 1 + 1 + 3 = 8 tokens. The legacy completions
API counts the prompt's text alone: 1 token.

An answer's boundaries are stored as one byte per token: the token's UTF-8 length minus one
(``o200k_base`` tokens are 1 to 128 bytes long). A token can end inside a multi-byte character, so
the pieces are bytes that join back to the answer's UTF-8 encoding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "EMBEDDING_ENCODING",
    "ENCODING",
    "EmbeddingTokenizer",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "Tokenizer",
    "measure",
    "prompt_tokens",
    "sanitize",
    "text_prompt_tokens",
]

ENCODING = "o200k_base"
# The tokenizer of OpenAI's embedding models, which the embeddings API counts with.
EMBEDDING_ENCODING = "cl100k_base"
TOKENS_PER_MESSAGE = 3
ROLE_TOKENS = 1
REPLY_PRIMING = 3


class _Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def count(self, text: str) -> int: ...
    def count_till_limit(self, text: str, limit: int) -> int | None: ...


class Tokenizer:
    """``o200k_base`` through bpe-openai's Rust backend, which embeds its vocabulary (no download)."""

    def __init__(self) -> None:
        self._backend = _backend(ENCODING)
        ranks = _ranks(ENCODING)
        # Indexed by token id; special tokens never come out of an ordinary encode.
        self._length_byte = bytearray(max(ranks.values()) + 1)
        for token, rank in ranks.items():
            self._length_byte[rank] = len(token) - 1

    def count(self, text: str) -> int:
        return self._backend.count(text)

    def lengths(self, text: str) -> bytes:
        """One byte per token of ``text``: that token's UTF-8 length minus one."""
        return bytes(map(self._length_byte.__getitem__, self._backend.encode(text)))


class EmbeddingTokenizer:
    """``cl100k_base``: texts as token ids, and each token's bytes.

    Texts are encoded by quicktok, whose exact ``cl100k_base`` takes half the time of bpe-openai's (a
    vector's tokens are half the work of an embeddings request), into an array: as many Python ints as
    tokens would cost more than the tokenizing. bpe-openai counts a text of more characters than the
    limit up to it, and is loaded by the first such text."""

    def __init__(self) -> None:
        # Imported here: a server loads it with the first embeddings request. Its vocabulary is bundled.
        import quicktok

        self._encoding: Any = quicktok.get_encoding(EMBEDDING_ENCODING)
        self._counter: _Backend | None = None
        self._pieces: list[bytes] | None = None

    def encode(self, text: str, limit: int) -> npt.NDArray[np.uint32] | None:
        """The token ids of ``text``; None if they are more than ``limit``. A text of more characters than
        that is counted first, up to the limit, so that a long one is not tokenized whole to be refused."""
        text = sanitize(text)
        if len(text) > limit and self._count_till_limit(text, limit) is None:
            return None
        # A batch of one on one thread, this one: the only call that answers with an array.
        ids: npt.NDArray[np.uint32] = self._encoding.encode_batch([text], 1)[0]
        return ids if len(ids) <= limit else None

    def _count_till_limit(self, text: str, limit: int) -> int | None:
        if self._counter is None:
            self._counter = _backend(EMBEDDING_ENCODING)
        return self._counter.count_till_limit(text, limit)

    @property
    def pieces(self) -> list[bytes]:
        """Each token's bytes, by id."""
        if self._pieces is None:
            ranks = _ranks(EMBEDDING_ENCODING)
            pieces = [b""] * len(ranks)
            for piece, rank in ranks.items():
                pieces[rank] = piece
            self._pieces = pieces
        return self._pieces


def _backend(encoding: str) -> _Backend:
    """bpe-openai's Rust tokenizer of ``encoding``."""
    with warnings.catch_warnings():
        # bpe-openai reads its vocabularies with a deprecated importlib.resources call.
        warnings.simplefilter("ignore", DeprecationWarning)
        from bpe_openai import _bindings

        backend: _Backend = _bindings.tokenizer_for_encoding(encoding)
    return backend


def _ranks(encoding: str) -> dict[bytes, int]:
    """Each ordinary token of ``encoding`` (its bytes) with its id."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from bpe_openai import registry

        ranks: dict[bytes, int] = getattr(registry, encoding)()["mergeable_ranks"]
    return ranks


def sanitize(text: str) -> str:
    """``text`` with lone surrogates (which JSON allows and UTF-8 does not) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def prompt_tokens(content_tokens: Sequence[int]) -> int:
    """Prompt tokens of messages whose contents have ``content_tokens`` tokens each."""
    return sum(content_tokens) + len(content_tokens) * (TOKENS_PER_MESSAGE + ROLE_TOKENS) + REPLY_PRIMING


def text_prompt_tokens(chat_prompt_tokens: int) -> int:
    """The tokens of a one-message chat prompt's text alone: what the legacy completions API counts."""
    return chat_prompt_tokens - prompt_tokens([0])


_tokenizer: Tokenizer | None = None


def measure(jobs: Sequence[tuple[str, bool]]) -> list[int | bytes]:
    """For each (text, is_answer): the answer's token lengths, or the other message's token count.

    A module-level function so that a process pool can run it; the tokenizer is loaded once per process.
    """
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = Tokenizer()
    tokenizer = _tokenizer
    return [tokenizer.lengths(text) if is_answer else tokenizer.count(text) for text, is_answer in jobs]
