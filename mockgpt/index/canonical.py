"""What makes two requests "the same": the one definition of a key.

The indexer and the server both reduce a list of chat messages to a key here, and nothing else
in mockgpt decides what a key is.

A message counts by its role, its text and its tool calls:

- roles: ``human``/``user`` -> user; ``gpt``/``chatgpt``/``bing``/``bard``/``assistant``/``model``
  -> assistant; ``system``/``developer`` -> system; ``tool``/``function``/``observation`` -> tool.
- text: a string, or the concatenated ``text`` of a list of content parts' text parts; ``None`` is "".
  Unicode NFC, CRLF -> LF, outer whitespace stripped. A text that is not in NFC already is first put in
  the Stream-Safe Text Format of UAX #15 (U+034F COMBINING GRAPHEME JOINER after every 30 characters of
  a run of non-starters), so that normalizing it takes time linear in its length: no real text has
  such runs.
- tool calls (an assistant's): each call's function name, and its arguments: JSON arguments as canonical
  JSON (keys sorted, no spaces), other arguments as normalized text; JSON nested more than ``MAX_DEPTH``
  levels deep has no canonical form (``TooDeep``). Call ids and a tool message's ``tool_call_id`` do not
  count: apps send back whatever ids they got. Names and every other field are ignored.

Each message is framed as one role letter (u, a, s, t), the length of its text in code points in
decimal, a colon, and the text; then each of its tool calls as ``f``, the name's length, a colon, the
name, the arguments' length, a colon, and the arguments. The framed messages are encoded as UTF-8 (lone
surrogates passed through). No two different message lists frame to the same bytes, a message without
tool calls frames as it did before they counted, and the framing of a conversation's first k messages
is a prefix of the framing of the whole conversation. The key is the xxh3_128 digest of the framed
bytes. ``VERSION`` changes whenever any of this does; the index header records it.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec
from xxhash import xxh3_128, xxh3_128_digest

__all__ = [
    "MAX_DEPTH",
    "ROLES",
    "VERSION",
    "Call",
    "FunctionCall",
    "Message",
    "TextPart",
    "TooDeep",
    "ToolCall",
    "arguments",
    "calls_of",
    "digest",
    "digests",
    "frame",
    "frame_message",
    "frame_parts",
    "frame_request",
    "framed_messages",
    "normalize",
    "text_of",
]

VERSION = 4
MAX_DEPTH = 128

ROLES: Mapping[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
}

_ROLE_CHAR = {"user": "u", "assistant": "a", "system": "s", "tool": "t"}


class TextPart(msgspec.Struct, gc=False):
    """One element of a list-valued ``content``; only text parts carry text that counts."""

    type: str
    text: str | None = None


class FunctionCall(msgspec.Struct, gc=False):
    name: str
    arguments: str = ""


class ToolCall(msgspec.Struct, gc=False):
    """One of an assistant message's ``tool_calls``."""

    function: FunctionCall
    id: str = ""
    type: str = "function"


class Message(msgspec.Struct, gc=False):
    """A chat message as the OpenAI API receives it, reduced to the fields a key depends on."""

    role: str
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    # The legacy form of one tool call.
    function_call: FunctionCall | None = None


class Call(NamedTuple):
    """A tool call as recorded: its id, function name and arguments (a string, as the API sends it)."""

    id: str
    name: str
    arguments: str


def calls_of(message: Message) -> tuple[Call, ...]:
    """The tool calls of a request message, the legacy ``function_call`` as one."""
    calls = tuple(Call(call.id, call.function.name, call.function.arguments) for call in message.tool_calls or ())
    if message.function_call is not None:
        calls += (Call("", message.function_call.name, message.function_call.arguments),)
    return calls


def text_of(content: str | Sequence[TextPart] | None) -> str:
    """The text of a message's ``content``: a string, its text parts joined, or "" for ``None``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")


class TooDeep(ValueError):
    """Tool call arguments of JSON nested more than ``MAX_DEPTH`` levels deep."""


def normalize(text: str) -> str:
    """NFC (of the stream-safe form, for a text not in NFC), CRLF -> LF, outer whitespace stripped."""
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", _stream_safe(text))
    # str.replace searches for two characters far slower than `in` finds one.
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.strip()


# UAX #15's Stream-Safe Text Format, which bounds the work of normalizing any one character sequence.
_SAFE_RUN = 30
_JOINER = "\u034f"


def _stream_safe(text: str) -> str:
    """``text`` with a combining grapheme joiner after every 30 non-starters in a row."""
    return _runs()[0].sub(_joined, text)


def _joined(run: re.Match[str]) -> str:
    non_starters = _runs()[1]
    pieces = []
    count = 0
    for char in run[0]:
        count = count + 1 if char in non_starters else 0
        if count > _SAFE_RUN:
            pieces.append(_JOINER)
            count = 1
        pieces.append(char)
    return "".join(pieces)


@functools.cache
def _runs() -> tuple[re.Pattern[str], frozenset[str]]:
    """The non-starters: characters of a combining class other than 0, or whose canonical decomposition
    starts with one; and a pattern for the runs of more than 30 characters that may hold that many of them
    in a row (every character outside the Basic Multilingual Plane may: a class that names only BMP
    characters is matched much faster). Made on first use: it takes a look at every character that can be
    a non-starter."""
    non_starters = frozenset(chr(code) for code in range(0x300, 0x20000) if _non_starter(chr(code)))
    ranges: list[list[int]] = []
    for code in sorted(ord(char) for char in non_starters if char < "\U00010000"):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    members = "".join(f"\\u{low:04x}-\\u{high:04x}" for low, high in ranges)
    return re.compile(f"[{members}\\U00010000-\\U0010ffff]{{{_SAFE_RUN + 1},}}"), non_starters


def _non_starter(char: str) -> bool:
    if unicodedata.combining(char):
        return True
    decomposition = unicodedata.decomposition(char)
    return bool(decomposition) and not decomposition.startswith("<") and bool(
        unicodedata.combining(chr(int(decomposition.split()[0], 16)))
    )


_sorted = msgspec.json.Encoder(order="sorted").encode


def arguments(raw: str) -> str:
    """Tool call arguments as they count: canonical JSON if they are JSON, else normalized text.

    Raises ``TooDeep`` for JSON nested more than ``MAX_DEPTH`` levels deep.
    """
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return normalize(raw)
    except RecursionError:
        raise TooDeep(f"JSON nested more than {MAX_DEPTH} levels deep") from None
    # Only so many brackets can nest only so deep: most arguments need no look at their depth.
    if raw.count("[") + raw.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise TooDeep(f"JSON nested more than {MAX_DEPTH} levels deep")
    return _sorted(value).decode()


def _depth(value: object) -> int:
    """How deep JSON ``value`` nests, level by level: each container is looked at once, without recursion."""
    depth = 0
    level = [value] if isinstance(value, (list, dict)) else []
    while level:
        depth += 1
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (list, dict))
        ]
    return depth


def _frame_calls(calls: Iterable[Call]) -> str:
    parts = []
    for call in calls:
        counted = arguments(call.arguments)
        parts.append(f"f{len(call.name)}:{call.name}{len(counted)}:{counted}")
    return "".join(parts)


def frame_message(role: str, text: str, calls: Sequence[Call] = ()) -> bytes:
    """The framing of one message; ``role`` is canonical, ``text`` already normalized."""
    framed = f"{_ROLE_CHAR[role]}{len(text)}:{text}{_frame_calls(calls) if calls else ''}"
    return framed.encode("utf-8", "surrogatepass")


def frame(messages: Iterable[tuple[str, str] | tuple[str, str, Sequence[Call]]]) -> bytes:
    """The framing of (canonical role, raw text) pairs, or (role, text, tool calls) triples."""
    parts = []
    for role, text, *calls in messages:
        text = normalize(text)
        parts.append(f"{_ROLE_CHAR[role]}{len(text)}:")
        parts.append(text)
        if calls and calls[0]:
            parts.append(_frame_calls(calls[0]))
    return "".join(parts).encode("utf-8", "surrogatepass")


def frame_parts(messages: Iterable[Message], roles: Mapping[str, str] = ROLES, skip: str | None = None) -> list[str]:
    """The framing of request messages, their roles named as in ``roles``, leaving out role ``skip``, as
    text in two pieces a message: its head (role letter, length, colon), then its text and tool calls.
    ``frame_request`` joins and encodes them; the pieces keep the messages apart for a miss's explanation.

    Raises ``KeyError`` for a role ``roles`` does not name, ``TooDeep`` as ``arguments``.
    """
    parts = []
    for message in messages:
        role = roles[message.role]
        if role == skip:
            continue
        content = message.content
        text = content if isinstance(content, str) else text_of(content)
        # normalize(), inlined: a call per message is a measurable share of a request.
        if not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", _stream_safe(text))
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        text = text.strip()
        parts.append(f"{_ROLE_CHAR[role]}{len(text)}:")
        parts.append(text + _frame_calls(calls_of(message)) if message.tool_calls or message.function_call else text)
    return parts


def frame_request(messages: Iterable[Message], roles: Mapping[str, str] = ROLES, skip: str | None = None) -> bytes:
    """The framing of request messages, their roles named as in ``roles``, leaving out role ``skip``.

    The same as ``frame`` of their (role, text) pairs, in one pass: this is the server's hot path.
    Raises ``KeyError`` for a role ``roles`` does not name, ``TooDeep`` as ``arguments``.
    """
    return "".join(frame_parts(messages, roles, skip)).encode("utf-8", "surrogatepass")


def framed_messages(parts: Sequence[str]) -> list[bytes]:
    """The framed messages of ``frame_parts``'s pieces, one bytes a message."""
    return [(parts[head] + parts[head + 1]).encode("utf-8", "surrogatepass") for head in range(0, len(parts), 2)]


def digest(framed: bytes | memoryview) -> bytes:
    """The 16-byte key of framed messages."""
    return xxh3_128_digest(framed)


def digests(head: bytes, parts: Iterable[bytes]) -> list[bytes]:
    """The keys of ``head`` and of ``head`` followed by each prefix of ``parts`` (framed messages), in one
    pass over them: ``[digest(head), digest(head + parts[0]), ...]``."""
    state = xxh3_128(head)
    keys = [state.digest()]
    for part in parts:
        state.update(part)
        keys.append(state.digest())
    return keys
