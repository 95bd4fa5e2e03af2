"""What the index stores for each key, and how a conversation becomes those records.

A conversation is indexed in two steps so that the tokenizer can run in other processes:
``prepare`` frames its canonical messages and lists what needs tokenizing; ``encode_answers``
turns the tokenizer's results into the stored ``Answer`` blobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from mockgpt import canonical, tokens

__all__ = ["Answer", "Prepared", "Record", "encode_answers", "prepare"]


class Answer(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One recorded assistant turn."""

    conversation_id: str
    # The turn's position in its conversation's list of messages.
    turn: int
    prompt_tokens: int
    completion_tokens: int
    # The answer as a JSON string, quotes included: what a response splices in as it is.
    content: bytes
    # One byte per token: its UTF-8 length minus one (see tokens.py).
    token_lengths: bytes

    @property
    def text(self) -> str:
        return _decode_text(self.content)

    def pieces(self) -> list[bytes]:
        """The answer's UTF-8 bytes cut at its token boundaries: ``completion_tokens`` pieces."""
        data = self.text.encode()
        pieces = []
        start = 0
        for length in self.token_lengths:
            end = start + length + 1
            pieces.append(data[start:end])
            start = end
        return pieces


class Record(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A key: where its framed messages lie in the data section, and its answers' offsets."""

    key_offset: int
    key_length: int
    answers: list[int]


class Prepared(NamedTuple):
    """A conversation framed for the index, waiting for its token counts."""

    id: str
    # The framed canonical messages up to the last answer's key.
    framed: bytes
    # Per answer: the length of its key within ``framed`` and its turn.
    keys: list[tuple[int, int]]
    # Per message up to the last answer: (text, is it an answer), the tokenizer's jobs.
    texts: list[tuple[str, bool]]


def prepare(id: str, messages: Sequence[tuple[str, str]]) -> Prepared | None:
    """Frame (canonical role, raw text) messages; None if no assistant turn has a message before it."""
    framed = []
    keys = []
    texts = []
    length = 0
    for turn, (role, text) in enumerate(messages):
        is_answer = role == "assistant" and turn > 0
        if is_answer:
            keys.append((length, turn))
        texts.append((tokens.sanitize(text) if is_answer else text, is_answer))
        message = canonical.frame_message(role, canonical.normalize(text))
        framed.append(message)
        length += len(message)
    if not keys:
        return None
    last = keys[-1][1]
    return Prepared(id, b"".join(framed[:last]), keys, texts[: last + 1])


_encoder = msgspec.msgpack.Encoder()
_encode_text = msgspec.json.Encoder().encode
_decode_text = msgspec.json.Decoder(str).decode


def encode_answers(prepared: Prepared, measured: Sequence[int | bytes]) -> list[bytes]:
    """The msgpack ``Answer`` of each of ``prepared``'s keys, given the tokenizer's results."""
    counts = [len(result) if isinstance(result, bytes) else result for result in measured]
    answers = []
    for _, turn in prepared.keys:
        lengths = measured[turn]
        assert isinstance(lengths, bytes)
        answer = Answer(
            content=_encode_text(prepared.texts[turn][0]),
            conversation_id=prepared.id,
            turn=turn,
            prompt_tokens=tokens.prompt_tokens(counts[:turn]),
            completion_tokens=len(lengths),
            token_lengths=lengths,
        )
        answers.append(_encoder.encode(answer))
    return answers
