"""What the index stores for each key, and how a conversation becomes those records.

A conversation is indexed in two steps so that the tokenizer can run in other processes:
``prepare`` frames its canonical messages and lists what needs tokenizing; ``encode_answers``
turns the tokenizer's results into the stored ``Answer`` blobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import msgspec

from mockgpt.index import canonical, tokens

__all__ = ["Answer", "Prepared", "Record", "StoredCall", "cut_at", "encode_answers", "prepare"]


class StoredCall(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One tool call of a recorded answer."""

    id: str
    name: str
    # As recorded: a string, JSON or not.
    arguments: str
    # One byte per token of the arguments, as ``Answer.token_lengths``.
    token_lengths: bytes
    name_tokens: int


class Answer(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One recorded assistant turn: text, tool calls, or both."""

    conversation_id: str
    # The turn's position in its conversation's list of messages.
    turn: int
    prompt_tokens: int
    # The text's tokens and the tool calls' (their names' and arguments').
    completion_tokens: int
    # The text as a JSON string, quotes included: what a response splices in as it is; ``null`` for an
    # answer of tool calls alone.
    content: bytes
    # One byte per token of the text: its UTF-8 length minus one (see tokens.py).
    token_lengths: bytes
    tool_calls: list[StoredCall] = []

    @property
    def text(self) -> str:
        return "" if self.content == b"null" else _decode_text(self.content)

    def pieces(self) -> list[bytes]:
        """The answer's UTF-8 bytes cut at its token boundaries: one piece per token of its text."""
        return cut_at(self.text.encode(), self.token_lengths)


def cut_at(data: bytes, token_lengths: bytes) -> list[bytes]:
    """``data`` cut at the boundaries of its tokens."""
    pieces = []
    start = 0
    for length in token_lengths:
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
    # The tokenizer's jobs, (text, is it an answer's): one per message up to the last answer, then the
    # name and the arguments of each tool call in ``calls``.
    texts: list[tuple[str, bool]]
    # The messages with tool calls, (turn, calls), in order.
    calls: list[tuple[int, tuple[canonical.Call, ...]]] = []


Message = tuple[str, str] | tuple[str, str, tuple[canonical.Call, ...]]


def prepare(id: str, messages: Sequence[Message]) -> Prepared | None:
    """Frame (canonical role, raw text[, tool calls]) messages; None if no assistant turn has a message before it."""
    framed = []
    keys = []
    texts = []
    calls = []
    length = 0
    for turn, (role, text, *rest) in enumerate(messages):
        is_answer = role == "assistant" and turn > 0
        if is_answer:
            keys.append((length, turn))
        texts.append((tokens.sanitize(text) if is_answer else text, is_answer))
        if rest and rest[0]:
            calls.append((turn, rest[0]))
        message = canonical.frame_message(role, canonical.normalize(text), rest[0] if rest else ())
        framed.append(message)
        length += len(message)
    if not keys:
        return None
    last = keys[-1][1]
    calls = [(turn, made) for turn, made in calls if turn <= last]
    jobs = texts[: last + 1]
    for turn, made in calls:
        for call in made:
            jobs += [(call.name, False), (tokens.sanitize(call.arguments), texts[turn][1])]
    return Prepared(id, b"".join(framed[:last]), keys, jobs, calls)


_encoder = msgspec.msgpack.Encoder()
_encode_text = msgspec.json.Encoder().encode
_decode_text = msgspec.json.Decoder(str).decode


def encode_answers(prepared: Prepared, measured: Sequence[int | bytes]) -> list[bytes]:
    """The msgpack ``Answer`` of each of ``prepared``'s keys, given the tokenizer's results."""
    counts = [len(result) if isinstance(result, bytes) else result for result in measured]
    messages = prepared.keys[-1][1] + 1
    per_message = counts[:messages]
    stored: dict[int, list[StoredCall]] = {}
    position = messages
    for turn, calls in prepared.calls:
        for call in calls:
            lengths = measured[position + 1]
            per_message[turn] += counts[position] + counts[position + 1]
            if isinstance(lengths, bytes):
                arguments = prepared.texts[position + 1][0]
                stored.setdefault(turn, []).append(StoredCall(call.id, call.name, arguments, lengths, counts[position]))
            position += 2
    return [_encoder.encode(_answer(prepared, turn, measured[turn], per_message, stored.get(turn, []))) for _, turn in prepared.keys]


def _answer(prepared: Prepared, turn: int, lengths: int | bytes, per_message: list[int], calls: list[StoredCall]) -> Answer:
    assert isinstance(lengths, bytes)
    text = prepared.texts[turn][0]
    return Answer(
        content=_encode_text(text) if text or not calls else b"null",
        conversation_id=prepared.id,
        turn=turn,
        prompt_tokens=tokens.prompt_tokens(per_message[:turn]),
        completion_tokens=len(lengths) + sum(call.name_tokens + len(call.token_lengths) for call in calls),
        token_lengths=lengths,
        tool_calls=calls,
    )
