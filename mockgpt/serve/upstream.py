"""Recording what the index lacks: chat completions it cannot answer, asked of a real endpoint.

``create_app`` puts ``Recorder`` in front of the Litestar app when ``--upstream`` is set, so that the
layers before it (``FastPath``, ``Traffic``) hand it the requests they do not answer, as they would hand
them to Litestar. A ``POST /v1/chat/completions`` that the index misses is sent to
``{upstream}/chat/completions`` with the client's body unchanged and the upstream's key; the answer goes
back to the client as it arrives (a stream frame by frame), with the upstream's status. A successful
answer is appended to the record file before its response ends, so that a client holding its answer
finds it there; one OpenAI chat JSONL line per choice::

    {"messages": [<the request's messages>, {"role": "assistant", "content": ..., "tool_calls": [...]}]}

``tool_calls`` only when the answer has some; a stream's answer is put together from its deltas. An
upstream error (a non-2xx status, or 502/504 in the OpenAI shape when it cannot be reached) goes to the
client and nothing is recorded. Hits, invalid requests and every other route go on to the app.

Each append is one ``os.write`` of whole lines to an ``O_APPEND`` descriptor under ``flock``, so that
several workers never interleave their lines. The server reads the file only when it starts.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable
from typing import Any

import httpx
import msgspec

from mockgpt.api import chat_render
from mockgpt.api.chat import ChatCompletionRequest
from mockgpt.errors import ConversationNotFound
from mockgpt.serve.asgi import JSON_TYPE, ASGIApp, Receive, Scope, Send, admissible, read_body, replayed, send_whole
from mockgpt.serve.service import Service

__all__ = ["Answer", "RecordFile", "Recorder", "Stream", "answers_of"]

logger = logging.getLogger("mockgpt")

_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
# Long generations stream for minutes: only a silent or unreachable upstream times out.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# What the client gets of the upstream's headers: what the OpenAI SDKs read, none that HTTP itself sets.
_PASSED = frozenset({b"content-type", b"cache-control", b"x-request-id", b"retry-after", b"retry-after-ms"})
_RATE_LIMIT = b"x-ratelimit-"


class Function(msgspec.Struct):
    """The function a tool call calls, its arguments a JSON string as the model wrote them."""

    name: str = ""
    arguments: str = ""


class ToolCall(msgspec.Struct):
    """A tool call of an answer, as the chat completions API writes it."""

    id: str = ""
    type: str = "function"
    function: Function = msgspec.field(default_factory=Function)


class Answer(msgspec.Struct, omit_defaults=True):
    """The assistant message a line ends with."""

    role: str
    content: str | None
    tool_calls: list[ToolCall] | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message = msgspec.field(default_factory=_Message)


class _Completion(msgspec.Struct):
    choices: list[_Choice]


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _CallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_CallDelta] | None = None


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] = []
    error: Any = None


class _Sent(msgspec.Struct):
    messages: list[Any]


class _Line(msgspec.Struct):
    messages: list[Any]


_decode_completion = msgspec.json.Decoder(_Completion).decode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_sent = msgspec.json.Decoder(_Sent).decode
_encode = msgspec.json.Encoder().encode


def answers_of(body: bytes) -> list[Answer]:
    """The answer of each choice of a chat completion body, in choice order; ``DecodeError`` if it is not one."""
    choices = sorted(_decode_completion(body).choices, key=lambda choice: choice.index)
    return [Answer("assistant", choice.message.content, choice.message.tool_calls or None) for choice in choices]


class _Draft:
    """One choice of a streamed answer, put together from its deltas."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.calls: dict[int, ToolCall] = {}

    def add(self, delta: _Delta) -> None:
        if delta.content is not None:
            self.texts.append(delta.content)
        for part in delta.tool_calls or ():
            call = self.calls.setdefault(part.index, ToolCall())
            # Ids and names come once, in a call's first delta; some servers repeat them in every delta.
            call.id = call.id or part.id or ""
            if part.function is not None:
                call.function.name = call.function.name or part.function.name or ""
                call.function.arguments += part.function.arguments or ""

    def answer(self) -> Answer:
        calls = [self.calls[index] for index in sorted(self.calls)]
        content = "".join(self.texts) if self.texts else None
        # As a whole answer has it: the text of an answer that only calls tools is null.
        return Answer("assistant", content if content or not calls else None, calls or None)


class Stream:
    """The answers of a chat completion stream, fed its bytes as they come (server-sent events)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[bytes | bytearray] = []
        self._drafts: dict[int, _Draft] = {}
        self.failed = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        # Split only when a line ends, so that a line that comes in many pieces is not split again and again.
        if b"\n" not in data:
            return
        *lines, rest = self._buffer.split(b"\n")
        self._buffer = bytearray(rest)
        for line in lines:
            line = line.removesuffix(b"\r")
            if line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            elif not line and self._data:
                self._event(b"\n".join(self._data))
                self._data = []

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError:
            self.failed = True
            return
        # An error sent mid-stream leaves the answer unfinished: it is not recorded.
        self.failed = self.failed or chunk.error is not None
        for choice in chunk.choices:
            self._drafts.setdefault(choice.index, _Draft()).add(choice.delta)

    def answers(self) -> list[Answer]:
        """The answer of each choice, in choice order; none if the stream carried an error."""
        return [] if self.failed else [self._drafts[index].answer() for index in sorted(self._drafts)]


class RecordFile:
    """A JSONL file that several processes append whole lines to."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        # Read too, for its last byte: O_APPEND places writes only.
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def append(self, messages: list[Any], answers: Iterable[Answer]) -> None:
        """One line per answer: ``{"messages": [*messages, answer]}``, all in one write."""
        data = b"".join(_encode(_Line([*messages, answer])) + b"\n" for answer in answers)
        # Held for one write to the page cache: short enough to take in the event loop.
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            # A file edited by hand may end without a newline: the line must not run on from it.
            size = os.fstat(self._fd).st_size
            if size and os.pread(self._fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


class Recorder:
    """Answers chat completions the index misses from ``settings.upstream`` and records them; passes
    everything else to ``app``."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        settings = service.settings
        assert settings.upstream and settings.record, "a Recorder needs an upstream and a record file"
        self.url = settings.upstream.rstrip("/") + "/chat/completions"
        self.file = RecordFile(settings.record)
        self._headers = {"content-type": "application/json"}
        if settings.upstream_api_key:
            self._headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        self._authorization = None if settings.api_key is None else f"Bearer {settings.api_key}".encode()
        self._decode = msgspec.json.Decoder(ChatCompletionRequest).decode
        self._client: httpx.AsyncClient | None = None
        # httpx logs every request at INFO: no louder than the server's own log level.
        logging.getLogger("httpx").setLevel(logging.getLogger("uvicorn.error").getEffectiveLevel())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _PATHS
            or not admissible(scope, self._authorization, self.service.settings.max_body)[0]
        ):
            await self.app(scope, receive, send)
            return
        limit = self.service.settings.max_body
        body, more = await read_body(receive, limit)
        if len(body) <= limit and self._missed(body):
            await self._forward(body, send)
        else:
            await self.app(scope, replayed(body, receive, more), send)

    def _missed(self, body: bytes) -> bool:
        """Whether ``body`` is a valid request the index has no answer to; the app answers the others."""
        try:
            self.service.replayer.find(self._decode(body).messages)
        except ConversationNotFound:
            return True
        except Exception:
            return False
        return False

    async def _forward(self, body: bytes, send: Send) -> None:
        """Send ``body`` upstream and its answer to the client, recorded before the response ends: a client
        that has its whole answer finds it in the file."""
        if self._client is None:
            # Here, in the worker's event loop: a client is bound to the loop it first runs in.
            self._client = httpx.AsyncClient(timeout=_TIMEOUT)
        request = self._client.build_request("POST", self.url, content=body, headers=self._headers)
        try:
            response = await self._client.send(request, stream=True)
            streamed = response.is_success and response.headers.get("content-type", "").startswith("text/event-stream")
            if not streamed:
                await response.aread()
        except httpx.TransportError as error:
            status, message = (504, "timed out") if isinstance(error, httpx.TimeoutException) else (502, "could not be reached")
            logger.warning("upstream %s %s: %s", self.url, message, type(error).__name__)
            body = chat_render.error_body(f"The upstream endpoint {message} ({type(error).__name__}).", "server_error", None, "upstream_error")
            await send_whole(send, status, [JSON_TYPE], body)
            return
        if streamed:
            await self._relay(body, response, send)
            return
        self._record(body, _recorded(response))
        await send_whole(send, response.status_code, _passed(response), response.content)

    async def _relay(self, body: bytes, response: httpx.Response, send: Send) -> None:
        """Pass a stream on frame by frame as it arrives; record its answers once it is whole."""
        stream = Stream()
        await send({"type": "http.response.start", "status": response.status_code, "headers": _passed(response)})
        # The end-of-stream marker waits for the record: a client that has its whole answer finds it there.
        pending = b""
        try:
            async for data in response.aiter_bytes():
                stream.feed(data)
                pending += data
                ready = _before_done(pending)
                if ready:
                    await send({"type": "http.response.body", "body": pending[:ready], "more_body": True})
                    pending = pending[ready:]
        except httpx.TransportError as error:
            # Returning without ending the body makes the server drop the connection: the client sees the
            # stream cut short, as it was.
            logger.warning("upstream stream broke off: %s", type(error).__name__)
            return
        finally:
            await response.aclose()
        self._record(body, stream.answers())
        await send({"type": "http.response.body", "body": pending})

    def _record(self, body: bytes, answers: list[Answer]) -> None:
        if answers:
            self.file.append(_decode_sent(body).messages, answers)


_DONE = b"data: [DONE]"


def _before_done(pending: bytes) -> int:
    """How much of ``pending`` may go on before the stream's answers are recorded: all that comes before
    the end-of-stream marker, or before what may be its first bytes."""
    at = pending.find(_DONE)
    if at >= 0:
        return at
    for size in range(min(len(_DONE) - 1, len(pending)), 0, -1):
        if pending.endswith(_DONE[:size]):
            return len(pending) - size
    return len(pending)


def _recorded(response: httpx.Response) -> list[Answer]:
    if not response.is_success:
        return []
    try:
        return answers_of(response.content)
    except msgspec.DecodeError:
        logger.warning("upstream answered %d with a body that is not a chat completion: not recorded", response.status_code)
        return []


def _passed(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    names = ((name.lower(), value) for name, value in response.headers.raw)
    return [(name, value) for name, value in names if name in _PASSED or name.startswith(_RATE_LIMIT)]
