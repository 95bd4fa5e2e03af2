"""A busy server: faults, rate limits, capacity and pacing, with metrics, in front of the app.

``create_app`` puts ``Traffic`` in front of the Litestar app in place of ``FastPath`` when one of these
options is set. It answers every hit of the APIs in ``apis.APIS`` (chat, legacy completions, the
Responses API, the Anthropic Messages API, embeddings) itself, each API's errors and limits in its own
words, in this order:

1. the request is looked up, then charged to its API key's rate limits, as the real API does first (every
   request counts; a miss, or a request whose ``x-mockgpt-`` headers are invalid, charges no tokens);
2. a fault (by header or at random) answers at once with its error;
3. it waits for an answer slot, in FIFO order, or is turned away when the queue is full;
4. the answer is sent at the pace of a real model, and the slot given back when it is done (embeddings
   after the time to a first token, prefill included).

Misses and invalid requests go on to the app, which words their errors. With ``--metrics``, every
request is counted and timed, and ``GET /metrics`` serves the counts of all workers.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, NamedTuple

import msgspec
from xxhash import xxh3_128_hexdigest

from mockgpt.errors import APIError, BadRequest
from mockgpt.serve import faults
from mockgpt.serve.apis import APIS, OPENAI, Api, duration, rate_headers, requests_spent
from mockgpt.serve.asgi import (
    IN_A_ROW,
    JSON_TYPE,
    MAX_HEADERS,
    ASGIApp,
    Receive,
    Scope,
    Send,
    admissible,
    header_bytes,
    read_body,
    replayed,
    send_whole,
    without_body,
)
from mockgpt.serve.faults import Fault
from mockgpt.serve.metrics import Metrics
from mockgpt.serve.pacing import Pace, Pacer, slowdown
from mockgpt.serve.prompt_cache import Answering, PromptCache
from mockgpt.serve.service import Reply, Service, Settings, send_error
from mockgpt.serve.state import SharedStateError, State, Verdict
from mockgpt.serve.vllm_metrics import Finished

__all__ = ["Traffic"]

_ANSWERED = frozenset(api.route for api in APIS.values())
# The routes that answer from the index, where a 404 is a miss: an embeddings request is never one.
_REPLAYED = _ANSWERED - {"/embeddings"}
_KNOWN = {"/models", "/health", "/metrics", "/docs", "/messages/count_tokens"}
_STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
TTFT, ITL = "x-mockgpt-ttft-ms", "x-mockgpt-itl-ms"

logger = logging.getLogger("mockgpt")

# Set in a request that was answered: its reply, and the seconds it waited for an answer slot.
_served: contextvars.ContextVar[tuple[Reply, float] | None] = contextvars.ContextVar("mockgpt_served", default=None)

# Set in a request that drops its connection on purpose, so that uvicorn's complaint about it is not logged.
_dropped: contextvars.ContextVar[bool] = contextvars.ContextVar("mockgpt_dropped", default=False)


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _dropped.get()


class Traffic:
    """Answers completion hits as a busy server would; passes everything else to ``app``."""

    def __init__(self, app: ASGIApp, service: Service, state: State, metrics: Metrics | None = None) -> None:
        self.app = app
        self.service = service
        self.state = state
        self.metrics = metrics
        settings = service.settings
        timing = settings.timing
        # Answers being sent by this worker: with --slowdown, what stretches their pace.
        self.running = 0
        # Always there, for requests that ask for timing of their own by header; used for all when set.
        self.pacer = Pacer(timing, _slowdown(settings, lambda: self.running))
        self.paced = bool(timing)
        self.faults = faults.Faults(settings.fault_rate, settings.fault_status, settings.seed)
        self.rate_limited = bool(settings.rpm or settings.tpm)
        self.capacity = settings.max_concurrency is not None
        self.overload_status = settings.overload_status
        self.prompt_cache = PromptCache(service, state) if settings.prompt_cache else None
        api_key = settings.api_key
        self._authorization = None if api_key is None else f"Bearer {api_key}".encode()
        # Per route: how its body is read, and what answers it.
        self._answers: dict[str, Answering] = {api.route: (api.decoder(), getattr(service, api.answer)) for api in APIS.values()}
        logging.getLogger("uvicorn.error").addFilter(_Quiet())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = APIS.get(scope["path"]) if scope["method"] == "POST" else None
        if self.metrics is None:
            await self._route(api, scope, receive, send)
            return
        watch = _Watch(send, time.perf_counter())
        try:
            await self._route(api, scope, receive, watch.send)
        finally:
            self._observe(api.route if api else _label(scope["path"]), watch)

    async def _route(self, api: Api | None, scope: Scope, receive: Receive, send: Send) -> None:
        # Headers past the bound go to the app, which refuses them, before any of them is kept or counted.
        if (
            api is not None and admissible(scope, self._authorization, self.service.settings.max_body)[0]
            and header_bytes(scope) <= MAX_HEADERS
        ):
            try:
                await self._answer(api, scope, receive, send)
            except SharedStateError as error:
                # Before any response: the coordinator went away, as it does when the server stops, or
                # the Redis of --state did.
                logger.error("%s", error)
                wire = api.wire
                await send_error(send, error.status, wire.error(error.status, str(error), "server_error", None, None), [], wire.request_id)
        elif self.metrics is not None and scope["path"] == "/metrics":
            await self._metrics(scope["method"], send)
        else:
            await self.app(scope, receive, send)

    async def _metrics(self, method: str, send: Send) -> None:
        assert self.metrics is not None
        if method not in ("GET", "HEAD"):
            message = f"Invalid method for URL ({method} /metrics)"
            await send_error(send, 405, OPENAI.error(405, message, "invalid_request_error", None, None), [(b"allow", b"GET, HEAD")])
            return
        body, content_type = self.metrics.render()
        await send_whole(send if method == "GET" else without_body(send), 200, [(b"content-type", content_type.encode())], body)

    async def _answer(self, api: Api, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        limit = self.service.settings.max_body
        body, more = await read_body(receive, limit)
        if len(body) > limit:
            await self.app(scope, replayed(body, receive, more), send)
            return
        try:
            asked: _Asked | APIError = _asked(headers)
        except APIError as error:
            asked = error
        if self.prompt_cache is None:
            reply = self._reply(api, body)
        else:
            reply = await self.prompt_cache.reply(api, body, _api_key(headers), self._answers[api.route])
        extra: list[tuple[bytes, bytes]] = []
        wire = api.wire
        if self.rate_limited:
            # As the real API: the limits come first, and every request counts, answered or not.
            tokens = _charged(reply) if isinstance(asked, _Asked) else 0
            verdict = await self.state.charge(_api_key(headers), tokens)
            extra = rate_headers(wire, verdict)
            if not verdict.allowed:
                await self._limited(api, send, verdict, tokens, extra, body)
                return
        if isinstance(asked, APIError):
            await send_error(send, asked.status_code, wire.api_error(asked), extra, wire.request_id)
            return
        fault = await self.faults.choose(asked.plan, headers.get(faults.KEY), self.state)
        if fault.kind == "status":
            await self._fail(api, send, fault.value, asked.retry_after, extra, body)
            return
        if asked.delay:
            await asyncio.sleep(asked.delay / 1000)
        if reply is None:
            await self.app(scope, replayed(body, receive), _adding(send, extra))
            return
        await self._serve(api, reply, fault, asked, extra, receive, send)

    def _reply(self, api: Api, body: bytes) -> Reply | None:
        """The reply to a hit; None for anything else, which the app then answers."""
        decode, answer = self._answers[api.route]
        try:
            reply: Reply = answer(decode(body))
        except Exception:
            return None
        return reply

    async def _serve(
        self, api: Api, reply: Reply, fault: Fault, asked: _Asked, extra: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        waited = 0.0
        if self.capacity:
            if self.metrics:
                self.metrics.queued(reply.prompt_tokens)
            started = time.perf_counter()
            try:
                # A client that leaves while it waits gives its place in the queue up.
                admitted = await _until_gone(self.state.acquire(), receive)
            finally:
                waited = time.perf_counter() - started
                if self.metrics:
                    self.metrics.dequeued(reply.prompt_tokens)
            if admitted is _GONE:
                return
            if not admitted:
                await self._overloaded(api, send, extra)
                return
        if reply.prefixes:
            # Let in: the model reads the prompt now.
            await self.state.cache_prefixes(reply.prefixes)
        held = reply.prompt_tokens + reply.completion_tokens
        self.running += 1
        if self.metrics:
            self.metrics.vllm.running(1, held)
        try:
            paced = self.paced or asked.ttft is not None or asked.itl is not None
            timing = self.pacer.pace(reply.prompt_tokens - reply.cached_tokens, asked.ttft, asked.itl) if paced else None
            await self._deliver(reply, fault, timing, extra, receive, send)
        finally:
            self.running -= 1
            if self.capacity:
                await self.state.release()
            if self.metrics:
                self.metrics.vllm.running(-1, held)
                _served.set((reply, waited))

    async def _deliver(
        self, reply: Reply, fault: Fault, pace: Pace | None, extra: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        if self.metrics:
            self.metrics.tokens(reply.prompt_tokens, reply.completion_tokens)
        if reply.frames is None:
            await self._whole(reply, fault, pace, extra, receive, send)
            return
        if self.metrics:
            self.metrics.stream_started()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [*_STREAM_HEADERS, *reply.headers, *extra]})
            if await _until_gone(self._stream(reply.frames, fault, pace, send), receive) == "dropped":
                _dropped.set(True)
        finally:
            if self.metrics:
                self.metrics.stream_ended()

    async def _whole(
        self, reply: Reply, fault: Fault, pace: Pace | None, extra: list[tuple[bytes, bytes]], receive: Receive, send: Send
    ) -> None:
        if pace is not None:
            ready = asyncio.get_running_loop().time() + self.pacer.whole(pace, reply.steps)
            if await _until_gone(self.pacer.clock.until(ready), receive) is _GONE:
                return
        headers = [JSON_TYPE, (b"content-length", b"%d" % len(reply.body)), *reply.headers, *extra]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if fault.kind == "disconnect":
            _dropped.set(True)
        elif fault.kind == "stall":
            await receive()
        else:
            await send({"type": "http.response.body", "body": reply.body})

    async def _stream(self, frames: Iterator[bytes], fault: Fault, pace: Pace | None, send: Send) -> str:
        """Send ``frames``, one generation step at a time, at ``pace``; ``fault`` may cut the stream short.

        Returns "dropped" if the connection is to be dropped, "sent" if the stream was sent whole.
        """
        cut = fault.kind in ("disconnect", "stall")
        sent = itertools.islice(frames, fault.value) if cut else frames
        if pace is not None:
            await self.pacer.stream(sent, send, pace)
        else:
            await _unpaced(sent, send)
        if not cut or next(frames, None) is None:
            await send({"type": "http.response.body", "body": b""})
            return "sent"
        if fault.kind == "stall":
            # Until the client goes away, which ends this task.
            await asyncio.Event().wait()
        return "dropped"

    async def _fail(
        self, api: Api, send: Send, status: int, wait: float | None, extra: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        wire = api.wire
        if status == 429:
            if self.metrics:
                self.metrics.rejected("fault")
            # As the rate limiter's 429 says it: when to retry, and no requests left until then.
            wait = _FAULT_WAIT_MS if wait is None else wait
            extra = requests_spent(wire, extra, self.service.settings.rpm, wait)
        # Named, so that a log or a metric can tell a fault on purpose from a real error.
        extra = [*extra, (b"x-mockgpt-fault", b"%d" % status)]
        if wait is not None:
            extra += [(b"retry-after-ms", b"%d" % math.ceil(wait)), (b"retry-after", b"%d" % math.ceil(wait / 1000))]
        await send_error(send, status, wire.fault(status, _model(body)), extra, wire.request_id)

    async def _limited(
        self, api: Api, send: Send, verdict: Verdict, tokens: int, extra: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        if self.metrics:
            self.metrics.rejected(verdict.reason or "requests")
        wait = verdict.retry_after
        if math.isfinite(wait):
            extra = [*extra, (b"retry-after-ms", b"%d" % math.ceil(wait * 1000)), (b"retry-after", b"%d" % math.ceil(wait))]
        message = _rate_limit_message(verdict, tokens, _model(body))
        wire = api.wire
        body = wire.error(429, message, verdict.reason or "requests", None, "rate_limit_exceeded")
        await send_error(send, 429, body, extra, wire.request_id)

    async def _overloaded(self, api: Api, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        if self.metrics:
            self.metrics.rejected("overload")
        wire = api.wire
        status = wire.overload_status or self.overload_status
        message = "The server is overloaded: too many requests are waiting. Please try again later."
        await send_error(send, status, wire.error(status, message, "server_error", None, None), extra, wire.request_id)

    def _observe(self, route: str, watch: _Watch) -> None:
        assert self.metrics is not None
        now = time.perf_counter()
        status, answers = watch.status, route in _ANSWERED
        if not status:
            # Nothing sent: the client left first. 499, as nginx logs it.
            status, outcome = 499, "gone"
        elif watch.fault:
            outcome = "fault"
        elif status < 400:
            outcome = ("synthesized" if watch.synthesized else "hit") if answers else "none"
        else:
            outcome = "miss" if status == 404 and route in _REPLAYED else "error"
        self.metrics.request(route, status, outcome, now - watch.started)
        if watch.first is not None and watch.streamed:
            self.metrics.first_token(route, watch.first - watch.started)
        served = _served.get()
        if served is not None:
            self.metrics.vllm.finished(_finished(served, outcome, watch, now))


def _slowdown(settings: Settings, running: Callable[[], int]) -> Callable[[], float] | None:
    """The stretch of a worker's intervals with ``--slowdown``: ``--max-concurrency`` shared out evenly
    among the workers, each at its full factor with its share running."""
    if settings.slowdown == 1 or settings.max_concurrency is None:
        return None
    return slowdown(settings.slowdown, running, max(round(settings.max_concurrency / settings.workers), 1))


def _finished(served: tuple[Reply, float], outcome: str, watch: _Watch, now: float) -> Finished:
    """An answered request as vLLM's metrics count it."""
    reply, waited = served
    cut = reply.max_tokens is not None and reply.completion_tokens >= reply.max_tokens
    reason = "abort" if outcome == "gone" else "length" if cut else "stop"
    first = watch.first - watch.started if watch.first is not None and watch.streamed else None
    return Finished(
        reply.prompt_tokens, reply.completion_tokens, reply.max_tokens, reason, waited, first, now - watch.started, reply.cached_tokens
    )


class _Watch:
    """What a request sent: its status, when its first byte of body left, whether it streamed, whether it
    was a fault asked for, whether its answer was drawn for a request the index does not hold."""

    def __init__(self, send: Send, started: float) -> None:
        self._send = send
        self.started = started
        self.status = 0
        self.first: float | None = None
        self.streamed = False
        self.fault = False
        self.synthesized = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message["headers"]:
                if name == b"content-type":
                    self.streamed = value == b"text/event-stream"
                elif name == b"x-mockgpt-fault":
                    self.fault = True
                elif name == b"x-mockgpt-synthesized":
                    self.synthesized = True
        elif self.first is None and message.get("body"):
            self.first = time.perf_counter()
        await self._send(message)


async def _unpaced(frames: Iterator[bytes], send: Send) -> None:
    """Send ``frames`` as fast as the client takes them, letting other requests in now and then."""
    for number, frame in enumerate(frames, 1):
        if not number % IN_A_ROW:
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": frame, "more_body": True})


_GONE = object()


async def _until_gone(work: Awaitable[Any], receive: Receive) -> Any:
    """The result of ``work``, or ``_GONE`` if the client goes away first, which stops ``work`` at once."""
    task = asyncio.current_task()
    assert task is not None
    gone = asyncio.ensure_future(receive())
    watching = True

    def leave(_: object) -> None:
        if watching:
            task.cancel()

    gone.add_done_callback(leave)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone.done() or gone.cancelled():
            raise  # cancelled for another reason: the server stops
        task.uncancel()
        return _GONE
    finally:
        watching = False
        gone.cancel()


class _Asked(NamedTuple):
    """What a request asks for by header: its fault plan, its delay, timing and retry-after, in ms."""

    plan: list[Fault] | None
    delay: float | None
    ttft: float | None
    itl: float | None
    retry_after: float | None


def _asked(headers: Mapping[str, str]) -> _Asked:
    """What ``headers`` ask for; ``BadRequest`` naming the first header that is not valid."""
    plan = headers.get(faults.FAULT)
    return _Asked(
        None if plan is None else faults.parse(plan),
        _milliseconds(headers, faults.DELAY),
        _milliseconds(headers, TTFT),
        _milliseconds(headers, ITL),
        _milliseconds(headers, faults.RETRY_AFTER),
    )


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers mockgpt reads here: its own and the API key."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name.startswith(b"x-mockgpt-") or name in (b"authorization", b"x-api-key")
    }


def _milliseconds(headers: Mapping[str, str], name: str) -> float | None:
    """Header ``name``, a number of milliseconds; ``BadRequest`` if it is not one."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < 86_400_000:
        raise BadRequest(f"Invalid {name}: {value!r} is not a number of milliseconds.", param=name)
    return number


def _api_key(headers: Mapping[str, str]) -> str:
    """Whose budget a request is charged to: a digest of its API key, so that the state holds no key, and
    32 bytes a key however long the keys clients send."""
    key = headers.get("authorization", "").removeprefix("Bearer ").strip() or headers.get("x-api-key", "")
    return xxh3_128_hexdigest(key.encode("latin-1"))


def _charged(reply: Reply | None) -> int:
    """The tokens a request counts against the limit, as the real API counts them: its prompt, and its
    ``max_tokens`` or else its answer's tokens. A request that is not answered counts none."""
    if reply is None:
        return 0
    return reply.prompt_tokens + (reply.completion_tokens if reply.max_tokens is None else reply.max_tokens)


# When a fault's 429 says to retry, unless its request says with x-mockgpt-retry-after-ms.
_FAULT_WAIT_MS = 1000.0


def _rate_limit_message(verdict: Verdict, tokens: int, model: str | None) -> str:
    """The real API's words: what the limit is, what was used and requested, and when to try again."""
    if verdict.reason == "tokens":
        limit, remaining, unit, requested = verdict.limit_tokens, verdict.remaining_tokens, "tokens per min (TPM)", tokens
    else:
        limit, remaining, unit, requested = verdict.limit_requests, verdict.remaining_requests, "requests per min (RPM)", 1
    model = model or "the model"
    if math.isfinite(verdict.retry_after):
        used = (limit or 0) - (remaining or 0)
        message = (
            f"Rate limit reached for {model} on {unit}: Limit {limit}, Used {used}, Requested {requested}."
            f" Please try again in {duration(verdict.retry_after)}."
        )
    else:
        message = (
            f"Request too large for {model} on {unit}: Limit {limit}, Requested {requested}."
            " The input or output tokens must be reduced in order to run successfully."
        )
    return message


class _Model(msgspec.Struct):
    model: str | None = None


def _model(body: bytes) -> str | None:
    """The model a request body names, if it is one that does."""
    try:
        return msgspec.json.decode(body, type=_Model).model
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _adding(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` that adds ``extra`` headers to the response."""
    if not extra:
        return send

    async def adding(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message["headers"], *extra]}
        await send(message)

    return adding


def _label(path: str) -> str:
    """The route of a path other than the completions', for metrics: one of a few, so that the series stay few."""
    path = path.removeprefix("/v1") or "/"
    if path.startswith("/models/"):
        return "/models/{model}"
    if path.startswith("/responses/"):
        return "/responses/{id}"
    return path if path in _KNOWN else "other"
