"""Recording what the index lacks: chat completions and Anthropic messages it cannot answer, asked of a real
endpoint.

``create_app`` puts ``Recorder`` in front of the Litestar app when ``--upstream`` is set, so that the
layers before it (``FastPath``, ``Traffic``) hand it the requests they do not answer, as they would hand
them to Litestar. A ``POST /v1/chat/completions`` that the index misses is sent to
``{upstream}/chat/completions`` with the client's body unchanged and the upstream's key; the answer goes
back to the client as it arrives (a stream frame by frame), with the upstream's status. A successful
answer is appended to the record file before its response ends, so that a client holding its answer
finds it there; one OpenAI chat JSONL line per choice::

    {"messages": [<the request's messages>, {"role": "assistant", "content": ..., "tool_calls": [...]}]}

``tool_calls`` only when the answer has some; a stream's answer is put together from its deltas. An
upstream error (a non-2xx status, or 502/504 in the API's shape when it cannot be reached) goes to the
client and nothing is recorded. Hits, invalid requests and every other route go on to the app.

A ``POST /v1/messages`` (the Anthropic Messages API) that the index misses goes to ``{upstream}/messages``
likewise, with the key of an Anthropic-compatible upstream as ``x-api-key`` and the client's
``anthropic-version``; its line holds the request's messages as the chat messages they are keyed as
(``system`` a system message, ``tool_use`` blocks tool calls with their input as JSON arguments,
``tool_result`` blocks tool messages), and the answer's text and ``tool_use`` blocks as one assistant
message, so that the next start replays it through either API.

Each append is one ``os.write`` of whole lines to an ``O_APPEND`` descriptor under ``flock``, so that
several workers never interleave their lines. The server reads the file only when it starts.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import httpx
import msgspec

from mockgpt.api.chat import ChatCompletionRequest
from mockgpt.api.messages import CreateMessage, prompt
from mockgpt.errors import ConversationNotFound
from mockgpt.index import canonical, replay
from mockgpt.serve.apis import ANTHROPIC, OPENAI, Wire
from mockgpt.serve.asgi import JSON_TYPE, ASGIApp, Receive, Scope, Send, admissible, read_body, replayed, send_whole
from mockgpt.serve.service import Service

__all__ = ["Answer", "MessageStream", "RecordFile", "Recorder", "Stream", "answers_of", "message_answers"]

logger = logging.getLogger("mockgpt")

# Long generations stream for minutes: only a silent or unreachable upstream times out.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# What the client gets of the upstream's headers: what the OpenAI SDKs read, none that HTTP itself sets.
_PASSED = frozenset({b"content-type", b"cache-control", b"x-request-id", b"request-id", b"retry-after", b"retry-after-ms"})
_RATE_LIMIT = (b"x-ratelimit-", b"anthropic-ratelimit-")
# The Anthropic API's headers a client's request passes upstream; the version it names if the client names none.
_ANTHROPIC_HEADERS = (b"anthropic-version", b"anthropic-beta")
_ANTHROPIC_VERSION = "2023-06-01"


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

    # The line that ends the stream.
    done = b"data: [DONE]"

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


class _Block(msgspec.Struct):
    """A content block, or a delta of one (a message's delta has no type)."""

    type: str = ""
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None
    partial_json: str = ""


class _MessageEvent(msgspec.Struct):
    type: str
    index: int = 0
    content_block: _Block | None = None
    delta: _Block | None = None


class _AnthropicMessage(msgspec.Struct):
    content: list[_Block]


_decode_message_event = msgspec.json.Decoder(_MessageEvent).decode
_decode_message = msgspec.json.Decoder(_AnthropicMessage).decode


class MessageStream(Stream):
    """The answer of an Anthropic Messages API stream, fed its bytes as they come."""

    done = b"event: message_stop"

    def _event(self, data: bytes) -> None:
        try:
            event = _decode_message_event(data)
        except msgspec.DecodeError:
            self.failed = True
            return
        self.failed = self.failed or event.type == "error"
        draft = self._drafts.setdefault(0, _Draft())
        if event.type == "content_block_start" and event.content_block is not None:
            draft.add(_block_delta(event.index, event.content_block, event.content_block.text))
        elif event.type == "content_block_delta" and event.delta is not None:
            draft.add(_block_delta(event.index, event.delta, event.delta.text or event.delta.partial_json))

    def answers(self) -> list[Answer]:
        return [_finished(answer) for answer in super().answers()]


def _block_delta(index: int, block: _Block, text: str) -> _Delta:
    """A content block's start or delta as the chat delta of the same: text, or a tool call's name or input."""
    if block.type == "tool_use":
        return _Delta(tool_calls=[_CallDelta(index, block.id, _FunctionDelta(block.name, ""))])
    if block.type == "input_json_delta":
        return _Delta(tool_calls=[_CallDelta(index, None, _FunctionDelta(None, text))])
    return _Delta(content=text if block.type in ("text", "text_delta") else None)


def _finished(answer: Answer) -> Answer:
    """``answer`` with an input that no delta gave as ``{}``, as the API sends it."""
    for call in answer.tool_calls or ():
        call.function.arguments = call.function.arguments or "{}"
    return answer


def message_answers(body: bytes) -> list[Answer]:
    """The answer of an Anthropic message body, as the chat answer it stands for; ``DecodeError`` if it is not one."""
    blocks = _decode_message(body).content
    text = "".join(block.text for block in blocks if block.type == "text")
    calls = [
        ToolCall(block.id, "function", Function(block.name, _encode(block.input).decode())) for block in blocks if block.type == "tool_use"
    ]
    return [Answer("assistant", text if text or not calls else None, calls or None)]


class _ChatMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[ToolCall] | None = None


def _chat_messages(messages: list[canonical.Message]) -> list[_ChatMessage]:
    """Canonical messages (their content a string) as chat messages."""
    chat = []
    for message in messages:
        calls = [ToolCall(call.id, "function", Function(call.function.name, call.function.arguments)) for call in message.tool_calls or ()]
        text = message.content if isinstance(message.content, str) else canonical.text_of(message.content)
        chat.append(_ChatMessage(message.role, None if calls and not text else text, calls or None))
    return chat


class _Route(NamedTuple):
    """How misses of one API go upstream and are recorded: where to, with which key header, the request's
    canonical messages (raising for a request that is not valid) and the chat messages a line records of
    it, its answers from a whole body and from a stream, and the API's wording."""

    path: str
    key_header: Callable[[str], tuple[str, str]]
    messages: Callable[[bytes], list[canonical.Message]]
    recorded: Callable[[bytes, list[canonical.Message]], list[Any]]
    answers: Callable[[bytes], list[Answer]]
    stream: Callable[[], Stream]
    wire: Wire


_decode_chat = msgspec.json.Decoder(ChatCompletionRequest).decode
_decode_create = msgspec.json.Decoder(CreateMessage).decode


_CHAT = _Route(
    "/chat/completions", lambda key: ("authorization", f"Bearer {key}"), lambda body: _decode_chat(body).messages,
    lambda body, _: _decode_sent(body).messages, answers_of, Stream, OPENAI,
)
_MESSAGES = _Route(
    "/messages", lambda key: ("x-api-key", key), lambda body: prompt(_decode_create(body)).messages,
    lambda _, messages: _chat_messages(messages), message_answers, MessageStream, ANTHROPIC,
)
_ROUTES = {"/v1/chat/completions": _CHAT, "/chat/completions": _CHAT, "/v1/messages": _MESSAGES, "/messages": _MESSAGES}


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
    """Answers chat completions and Anthropic messages the index misses from ``settings.upstream`` and
    records them; passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service
        settings = service.settings
        assert settings.upstream and settings.record, "a Recorder needs an upstream and a record file"
        self.upstream = settings.upstream.rstrip("/")
        self.file = RecordFile(settings.record)
        self._keys = {_CHAT: settings.upstream_api_key, _MESSAGES: settings.upstream_anthropic_api_key}
        self._authorization = None if settings.api_key is None else f"Bearer {settings.api_key}".encode()
        self._client: httpx.AsyncClient | None = None
        # httpx logs every request at INFO: no louder than the server's own log level.
        logging.getLogger("httpx").setLevel(logging.getLogger("uvicorn.error").getEffectiveLevel())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or not admissible(scope, self._authorization, self.service.settings.max_body)[0]:
            await self.app(scope, receive, send)
            return
        limit = self.service.settings.max_body
        body, more = await read_body(receive, limit)
        messages = self._missed(route, body) if len(body) <= limit else None
        if messages is not None:
            await self._forward(route, scope, body, route.recorded(body, messages), send)
        else:
            await self.app(scope, replayed(body, receive, more), send)

    def _missed(self, route: _Route, body: bytes) -> list[canonical.Message] | None:
        """The canonical messages of ``body``, if it is a valid request the index has no answer to; None for
        the others, which the app answers."""
        try:
            messages = route.messages(body)
            self.service.replayer.find(messages)
        except (ConversationNotFound, replay.Unrecorded):
            # A miss, explained or (with --misses synthesize) not: the upstream answers it.
            return messages
        except Exception:
            return None
        return None

    def _headers(self, route: _Route, scope: Scope) -> dict[str, str]:
        """The headers sent upstream: the upstream's key, and for the Anthropic API the client's version."""
        headers = {"content-type": "application/json"}
        key = self._keys[route]
        if key:
            name, value = route.key_header(key)
            headers[name] = value
        if route is _MESSAGES:
            sent = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"] if name in _ANTHROPIC_HEADERS}
            headers.update({"anthropic-version": _ANTHROPIC_VERSION, **sent})
        return headers

    async def _forward(self, route: _Route, scope: Scope, body: bytes, messages: list[Any], send: Send) -> None:
        """Send ``body`` upstream and its answer to the client, recorded before the response ends: a client
        that has its whole answer finds it in the file."""
        if self._client is None:
            # Here, in the worker's event loop: a client is bound to the loop it first runs in.
            self._client = httpx.AsyncClient(timeout=_TIMEOUT)
        url = self.upstream + route.path
        request = self._client.build_request("POST", url, content=body, headers=self._headers(route, scope))
        try:
            response = await self._client.send(request, stream=True)
            streamed = response.is_success and response.headers.get("content-type", "").startswith("text/event-stream")
            if not streamed:
                await response.aread()
        except httpx.TransportError as error:
            status, message = (504, "timed out") if isinstance(error, httpx.TimeoutException) else (502, "could not be reached")
            logger.warning("upstream %s %s: %s", url, message, type(error).__name__)
            words = f"The upstream endpoint {message} ({type(error).__name__})."
            await send_whole(send, status, [JSON_TYPE], route.wire.error(status, words, "server_error", None, "upstream_error"))
            return
        if streamed:
            await self._relay(route, messages, response, send)
            return
        self._record(messages, _recorded(route, response))
        await send_whole(send, response.status_code, _passed(response), response.content)

    async def _relay(self, route: _Route, messages: list[Any], response: httpx.Response, send: Send) -> None:
        """Pass a stream on frame by frame as it arrives; record its answers once it is whole."""
        stream = route.stream()
        await send({"type": "http.response.start", "status": response.status_code, "headers": _passed(response)})
        # The end-of-stream marker waits for the record: a client that has its whole answer finds it there.
        pending = b""
        try:
            async for data in response.aiter_bytes():
                stream.feed(data)
                pending += data
                ready = _before_done(pending, stream.done)
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
        self._record(messages, stream.answers())
        await send({"type": "http.response.body", "body": pending})

    def _record(self, messages: list[Any], answers: list[Answer]) -> None:
        if answers:
            self.file.append(messages, answers)


def _before_done(pending: bytes, done: bytes) -> int:
    """How much of ``pending`` may go on before the stream's answers are recorded: all that comes before
    the end-of-stream marker ``done``, or before what may be its first bytes."""
    at = pending.find(done)
    if at >= 0:
        return at
    for size in range(min(len(done) - 1, len(pending)), 0, -1):
        if pending.endswith(done[:size]):
            return len(pending) - size
    return len(pending)


def _recorded(route: _Route, response: httpx.Response) -> list[Answer]:
    if not response.is_success:
        return []
    try:
        return route.answers(response.content)
    except msgspec.DecodeError:
        logger.warning("upstream answered %d with a body that is not an answer of its API: not recorded", response.status_code)
        return []


def _passed(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    names = ((name.lower(), value) for name, value in response.headers.raw)
    return [(name, value) for name, value in names if name in _PASSED or name.startswith(_RATE_LIMIT)]
