"""What makes two requests "the same": the one definition of a key.

The indexer and the server both reduce a list of chat messages to a key here, and nothing else
in mockgpt decides what a key is.

A message counts only by its role and its text:

- roles: ``human``/``user`` -> user; ``gpt``/``chatgpt``/``bing``/``bard``/``assistant``/``model``
  -> assistant; ``system``/``developer`` -> system; ``tool``/``function`` -> tool.
- text: a string, or the concatenated ``text`` of a list of content parts' text parts; ``None`` is "".
  Unicode NFC, CRLF -> LF, outer whitespace stripped. Names, tool calls and every other field are ignored.

Each message is framed as one role byte, the UTF-8 length of its text as a little-endian u32, and the
text, so no two different message lists frame to the same bytes, and the framing of a conversation's
first k messages is a prefix of the framing of the whole conversation. The key is the xxh3_128 digest
of the framed bytes. ``VERSION`` changes whenever any of this does; the index header records it.
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import msgspec
from xxhash import xxh3_128_digest

__all__ = [
    "ROLES",
    "VERSION",
    "Message",
    "TextPart",
    "digest",
    "frame",
    "frame_message",
    "normalize",
    "text_of",
]

VERSION = 1

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
}

_ROLE_BYTE = {"user": b"u", "assistant": b"a", "system": b"s", "tool": b"t"}
_LENGTH = struct.Struct("<I")


class TextPart(msgspec.Struct, gc=False):
    """One element of a list-valued ``content``; only text parts carry text that counts."""

    type: str
    text: str | None = None


class Message(msgspec.Struct, gc=False):
    """A chat message as the OpenAI API receives it, reduced to the fields a key depends on."""

    role: str
    content: str | list[TextPart] | None = None


def text_of(content: str | Sequence[TextPart] | None) -> str:
    """The text of a message's ``content``: a string, its text parts joined, or "" for ``None``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")


def normalize(text: str) -> str:
    """NFC, CRLF -> LF, outer whitespace stripped."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    # str.replace searches for two characters far slower than `in` finds one.
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text.strip()


def frame_message(role: str, text: str) -> bytes:
    """The framing of one message; ``role`` is canonical, ``text`` already normalized."""
    data = text.encode("utf-8", "surrogatepass")
    return _ROLE_BYTE[role] + _LENGTH.pack(len(data)) + data


def frame(messages: Iterable[tuple[str, str]]) -> bytes:
    """The framing of (canonical role, raw text) pairs."""
    return b"".join(frame_message(role, normalize(text)) for role, text in messages)


def digest(framed: bytes | memoryview) -> bytes:
    """The 16-byte key of framed messages."""
    return xxh3_128_digest(framed)
