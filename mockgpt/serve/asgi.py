"""ASGI, as mockgpt's layers in front of the app speak it: the callable types and the request body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "IN_A_ROW", "JSON_TYPE", "MAX_HEADERS", "ASGIApp", "Receive", "Scope", "Send", "admissible", "answering_head",
    "header_bytes", "read_body", "replayed", "send_whole", "without_body",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")

# The most bytes of request headers, names and values, that a request may carry where mockgpt reads more
# of them than a hit needs (a 431 past it).
MAX_HEADERS = 64 << 10

# The most frames a stream sends in a row before the other requests get their turn (writing rarely waits).
IN_A_ROW = 64


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body, or as much of it as goes past ``limit`` bytes; and whether more is left unread."""
    message = await receive()
    body: bytes = message.get("body", b"")
    more = message.get("more_body", False)
    if not more:
        return body, False
    chunks = [body]
    size = len(body)
    while more and size <= limit:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks), more


def replayed(body: bytes, receive: Receive, more: bool = False) -> Receive:
    """``receive`` that gives ``body`` again, read already (``more``: not all of it), then what ``receive`` gives."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replay


def admissible(scope: Scope, authorization: bytes | None, max_body: int) -> tuple[bool, bool]:
    """Whether a request can be answered without the app's checks (``authorization`` matches, or
    ``x-api-key`` is its key, if required,
    and a declared body length is within ``max_body``: a body of unknown length is checked as it is read);
    and whether it asks for faults or timing of its own with an ``x-mockgpt-`` header.

    The size of the headers is not looked at here, on the path of every hit: the layers that keep or
    report something of them check it with ``header_bytes``.
    """
    length = 0
    authorized = authorization is None
    # The key as the Anthropic SDK sends it.
    key = None if authorization is None else authorization.removeprefix(b"Bearer ")
    asked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            # More digits than any length has would only cost int() its time.
            length = int(value) if value.isdigit() and len(value) < 19 else max_body + 1
        elif name == b"authorization":
            authorized = authorized or value == authorization
        elif name == b"x-api-key":
            authorized = authorized or value == key
        elif name.startswith(b"x-mockgpt-"):
            asked = True
    return authorized and length <= max_body, asked


def header_bytes(scope: Scope) -> int:
    """The size of a request's headers, names and values."""
    return sum(len(name) + len(value) for name, value in scope["headers"])


def answering_head(app: ASGIApp) -> ASGIApp:
    """``app`` answering ``HEAD`` wherever it answers ``GET``: the same status and headers, and no body."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            await app({**scope, "method": "GET"}, receive, without_body(send))
        else:
            await app(scope, receive, send)

    return answer


def without_body(send: Send) -> Send:
    """``send`` that sends a response's start as it is, and no body."""

    async def headers_only(message: MutableMapping[str, Any]) -> None:
        if message["type"] != "http.response.body":
            await send(message)
        elif not message.get("more_body", False):
            await send({"type": "http.response.body", "body": b""})

    return headers_only


async def send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    """A whole response: ``headers`` and its length, then ``body``."""
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
