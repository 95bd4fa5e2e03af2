"""Conversations streamed from dataset files, in constant memory.

Three formats, told apart by their first bytes unless forced:

- ``sharegpt``: a JSON array of ``{"id", "conversations": [{"from", "value"}]}`` (ShareGPT_V3);
- ``sharegpt-jsonl``: one such object per line;
- ``openai-jsonl``: one ``{"messages": [{"role", "content"}]}`` per line, as in OpenAI fine-tuning
  files; a conversation's id is its line number.

Each yields ``Conversation`` for a well-formed conversation and ``Skip`` (with a reason) for the rest.
Invalid JSON raises ``DatasetError`` naming the file and byte offset, after every complete conversation
before it was yielded: a caller that accepts a partial file catches it there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

import ijson
import msgspec

from mockgpt import canonical
from mockgpt.errors import DatasetError

__all__ = ["FORMATS", "Conversation", "Skip", "detect_format", "read"]

FORMATS = ("sharegpt", "sharegpt-jsonl", "openai-jsonl")


class Conversation(NamedTuple):
    """A well-formed conversation: its id and its (canonical role, raw text) messages."""

    id: str
    messages: list[tuple[str, str]]


class Skip(NamedTuple):
    """A conversation left out of the index, and why."""

    id: str
    reason: str


class _OpenAIConversation(msgspec.Struct):
    messages: list[canonical.Message]


_openai_line = msgspec.json.Decoder(_OpenAIConversation)


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a dataset file, from its first bytes."""
    with open(path, "rb") as file:
        head = file.read(1 << 16)
    start = head.lstrip()[:1]
    if start == b"[":
        return "sharegpt"
    if start == b"{":
        first_line = head.lstrip().split(b"\n", 1)[0]
        return "openai-jsonl" if b'"messages"' in first_line else "sharegpt-jsonl"
    if not start:
        raise DatasetError(f"{os.fsdecode(path)}: empty file", offset=0)
    raise DatasetError(f"{os.fsdecode(path)}: not a JSON array or JSON lines (starts with {head[:16]!r})", offset=0)


def read(
    path: str | os.PathLike[str],
    format: str | None = None,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[Conversation | Skip]:
    """Stream the conversations of ``path``; ``on_progress`` is called with bytes read so far."""
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    with open(path, "rb") as file:
        if format == "sharegpt":
            yield from _read_array(file, os.fsdecode(path), on_progress)
        else:
            parse = _openai_conversation if format == "openai-jsonl" else _sharegpt_line
            yield from _read_lines(file, os.fsdecode(path), parse, on_progress)


def _read_array(
    file: IO[bytes], name: str, on_progress: Callable[[int], None] | None
) -> Iterator[Conversation | Skip]:
    items = ijson.items(file, "item", use_float=True)
    number = 0
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except ijson.JSONError as error:
            reason = str(error).splitlines()[0].removeprefix("parse error: ").rstrip(".")
            raise DatasetError(f"{name}: invalid JSON before byte {file.tell()}: {reason}", offset=file.tell())
        number += 1
        yield _sharegpt(item, number)
        if on_progress is not None and number % 256 == 0:
            on_progress(file.tell())


def _read_lines(
    file: IO[bytes],
    name: str,
    parse: Callable[[bytes, int], Conversation | Skip],
    on_progress: Callable[[int], None] | None,
) -> Iterator[Conversation | Skip]:
    offset = 0
    for number, line in enumerate(file, 1):
        if line.strip():
            try:
                yield parse(line, number)
            except msgspec.DecodeError as error:
                raise DatasetError(f"{name}: invalid JSON on line {number} (byte {offset}): {error}", offset=offset)
        offset += len(line)
        if on_progress is not None and number % 256 == 0:
            on_progress(offset)


def _sharegpt_line(line: bytes, number: int) -> Conversation | Skip:
    return _sharegpt(msgspec.json.decode(line), number)


def _sharegpt(item: Any, number: int) -> Conversation | Skip:
    if not isinstance(item, dict):
        return Skip(f"#{number}", "not an object")
    id = item.get("id")
    id = str(id) if isinstance(id, (str, int)) else f"#{number}"
    turns = item.get("conversations")
    if not isinstance(turns, list):
        return Skip(id, "no conversations list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return Skip(id, "turn without from/value")
        role, value = turn["from"], turn["value"]
        if not isinstance(value, str) or not isinstance(role, str):
            return Skip(id, "non-string from/value")
        if role not in canonical.ROLES:
            return Skip(id, "unknown role")
        messages.append((canonical.ROLES[role], value))
    return Conversation(id, messages)


def _openai_conversation(line: bytes, number: int) -> Conversation | Skip:
    id = str(number)
    try:
        conversation = _openai_line.decode(line)
    except msgspec.ValidationError:
        return Skip(id, "not an OpenAI messages object")
    messages = []
    for message in conversation.messages:
        if message.role not in canonical.ROLES:
            return Skip(id, "unknown role")
        messages.append((canonical.ROLES[message.role], canonical.text_of(message.content)))
    return Conversation(id, messages)
