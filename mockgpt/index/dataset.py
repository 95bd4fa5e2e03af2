"""Conversations streamed from dataset files, in constant memory.

Three formats, told apart by their first bytes unless forced:

- ``sharegpt``: a JSON array of ``{"id", "conversations": [{"from", "value"}]}`` (ShareGPT_V3); tool
  calls as the public tool-calling datasets in this form write them: ``from: "function_call"`` with
  ``{"name", "arguments"}`` (or a list of them) as its value, and ``from: "observation"`` for a result;
- ``sharegpt-jsonl``: one such object per line;
- ``openai-jsonl``: one ``{"messages": [...]}`` per line, as in OpenAI fine-tuning files: ``role`` and
  ``content``, an assistant's ``tool_calls`` (or legacy ``function_call``) and ``tool`` messages; a
  conversation's id is its ``id`` if the line has one, else its line number.

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
from xxhash import xxh3_128_hexdigest

from mockgpt.errors import DatasetError
from mockgpt.index import canonical

__all__ = ["FORMATS", "Conversation", "Skip", "detect_format", "read"]

FORMATS = ("sharegpt", "sharegpt-jsonl", "openai-jsonl")
_TOO_DEEP = "JSON nested too deeply to read"


class Conversation(NamedTuple):
    """A well-formed conversation: its id and its (canonical role, raw text, tool calls) messages."""

    id: str
    messages: list[tuple[str, str, tuple[canonical.Call, ...]]]


class Skip(NamedTuple):
    """A conversation left out of the index, and why."""

    id: str
    reason: str


class _OpenAIConversation(msgspec.Struct):
    messages: list[canonical.Message]
    id: str | int | None = None


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
        try:
            conversation = _sharegpt(item, number)
        except RecursionError:
            conversation = Skip(f"#{number}", _TOO_DEEP)
        yield conversation
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
                conversation = parse(line, number)
            except msgspec.DecodeError as error:
                raise DatasetError(f"{name}: invalid JSON on line {number} (byte {offset}): {error}", offset=offset)
            except RecursionError:
                conversation = Skip(str(number), _TOO_DEEP)
            yield conversation
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
    messages: list[tuple[str, str, tuple[canonical.Call, ...]]] = []
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return Skip(id, "turn without from/value")
        role, value = turn["from"], turn["value"]
        if role == "function_call":
            calls = _sharegpt_calls(value, f"{id}/{len(messages)}")
            if calls is None:
                return Skip(id, "function_call that is not a call")
            # Calls after an assistant's text, or after other calls, are that same answer's.
            if messages and messages[-1][0] == "assistant":
                role, text, earlier = messages.pop()
                calls = earlier + calls
            else:
                text = ""
            messages.append(("assistant", text, calls))
            continue
        if not isinstance(value, str) or not isinstance(role, str):
            return Skip(id, "non-string from/value")
        if role not in canonical.ROLES:
            return Skip(id, "unknown role")
        messages.append((canonical.ROLES[role], value, ()))
    return Conversation(id, messages)


_encode = msgspec.json.Encoder().encode


def _sharegpt_calls(value: Any, where: str) -> tuple[canonical.Call, ...] | None:
    """The calls of a ``function_call`` turn (its value, or the JSON in it); None if it holds none.

    Such datasets record no call ids: each call gets one derived from where it is, so it is the same
    in every build.
    """
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError):
            return None
    items = value if isinstance(value, list) else [value]
    calls = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = _encode(arguments).decode()
        calls.append(canonical.Call(f"call_{xxh3_128_hexdigest(f'{where}/{number}'.encode())[:24]}", item["name"], arguments))
    return tuple(calls) or None


def _openai_conversation(line: bytes, number: int) -> Conversation | Skip:
    try:
        conversation = _openai_line.decode(line)
    except msgspec.ValidationError:
        return Skip(str(number), "not an OpenAI messages object")
    id = str(number) if conversation.id is None else str(conversation.id)
    messages = []
    for message in conversation.messages:
        if message.role not in canonical.ROLES:
            return Skip(id, "unknown role")
        messages.append((canonical.ROLES[message.role], canonical.text_of(message.content), canonical.calls_of(message)))
    return Conversation(id, messages)
