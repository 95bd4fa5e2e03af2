"""What makes two requests "the same": the one definition of a key.

The indexer and the server both reduce a list of chat messages to a key here, and nothing else
in mockgpt decides what a key is.

A message counts only by its role and its text:

- roles: ``human``/``user`` -> user; ``gpt``/``chatgpt``/``bing``/``bard``/``assistant``/``model``
  -> assistant; ``system``/``developer`` -> system; ``tool``/``function`` -> tool.
- text: a string, or the concatenated ``text`` of a list of content parts' text parts; ``None`` is "".
  Unicode NFC, CRLF -> LF, outer whitespace stripped. Names, tool calls and every other field are ignored.

Each message is framed as one role letter (u, a, s, t), the length of its text in code points in
decimal, a colon, and the text; the framed messages are encoded as UTF-8 (lone surrogates passed
through). No two different message lists frame to the same bytes, and the framing of a
conversation's first k messages is a prefix of the framing of the whole conversation. The key is
the xxh3_128 digest of the framed bytes. ``VERSION`` changes whenever any of this does; the index header records it.
"""

from __future__ import annotations

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
    "frame_request",
    "normalize",
    "text_of",
]

VERSION = 2

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

_ROLE_CHAR = {"user": "u", "assistant": "a", "system": "s", "tool": "t"}


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
    return f"{_ROLE_CHAR[role]}{len(text)}:{text}".encode("utf-8", "surrogatepass")


def frame(messages: Iterable[tuple[str, str]]) -> bytes:
    """The framing of (canonical role, raw text) pairs."""
    parts = []
    for role, text in messages:
        text = normalize(text)
        parts.append(f"{_ROLE_CHAR[role]}{len(text)}:")
        parts.append(text)
    return "".join(parts).encode("utf-8", "surrogatepass")


def frame_request(messages: Iterable[Message], roles: Mapping[str, str] = ROLES, skip: str | None = None) -> bytes:
    """The framing of request messages, their roles named as in ``roles``, leaving out role ``skip``.

    The same as ``frame`` of their (role, text) pairs, in one pass: this is the server's hot path.
    Raises ``KeyError`` for a role ``roles`` does not name.
    """
    parts = []
    for message in messages:
        role = roles[message.role]
        if role == skip:
            continue
        content = message.content
        text = content if isinstance(content, str) else text_of(content)
        # normalize(), inlined: a call per message is a measurable share of a request.
        if not text.isascii():
            text = unicodedata.normalize("NFC", text)
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        text = text.strip()
        parts.append(f"{_ROLE_CHAR[role]}{len(text)}:")
        parts.append(text)
    return "".join(parts).encode("utf-8", "surrogatepass")


def digest(framed: bytes | memoryview) -> bytes:
    """The 16-byte key of framed messages."""
    return xxh3_128_digest(framed)
