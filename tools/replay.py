"""Replay every assistant turn of a dataset against a running mockgpt and check each answer byte-exact.

    python tools/replay.py DATASET... [--url http://127.0.0.1:8000/v1] [--concurrency 16] [--api-key KEY]
                                      [--limit N] [--stream]

Answers recorded for the same messages are served in dataset order, so the k-th of them is asked for
with ``seed: k``. Prints throughput and latency percentiles, and every mismatch; exits 1 on any
mismatch or error. A dataset cut off mid-way is replayed up to the break; ``--limit N`` replays its
first N turns. ``--stream`` also asks for each turn as a stream, and checks that the pieces make the
recorded answer and that the stream's usage is the plain response's. On a terminal, a progress line
on stderr counts the requests done.

The client is made for this one job: ``--concurrency`` keep-alive HTTP/1.1 connections on one event
loop, each sending its next request when the answer to the last one is in, with responses parsed by
httptools (the parser uvicorn uses) and bodies decoded by msgspec into only the fields checked.
Requests are built as they are sent, from a dataset read as a stream.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httptools
import msgspec

from mockgpt.index import canonical
from mockgpt.testing.export import Turn, turns

# Seconds to wait for a whole response.
TIMEOUT = 60.0


class Request(NamedTuple):
    """A turn to ask for, its place in the dataset, and the seed that picks its answer."""

    number: int
    turn: Turn
    seed: int

    @property
    def where(self) -> str:
        return f"conversation {self.turn.conversation_id}, turn {self.turn.turn}"


def requests(sources: list[Path]) -> Iterator[Request]:
    """Every turn with the seed that asks for its answer."""
    seen: Counter[bytes] = Counter()
    number = itertools.count()
    for conversation in turns(sources):
        for turn in conversation:
            key = canonical.digest(canonical.frame_request(msgspec.convert(turn.messages, list[canonical.Message])))
            yield Request(next(number), turn, seen[key])
            seen[key] += 1


# The fields checked, and nothing else.


class Function(msgspec.Struct):
    name: str | None = None
    arguments: str = ""


class ToolCall(msgspec.Struct):
    function: Function
    index: int = 0
    id: str | None = None


class Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct):
    message: Message


class Completion(msgspec.Struct):
    choices: list[Choice]
    usage: dict[str, Any] | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChunkChoice(msgspec.Struct):
    delta: Delta


class Chunk(msgspec.Struct):
    choices: list[ChunkChoice]
    usage: dict[str, Any] | None = None


_encode = msgspec.json.Encoder().encode
_decode_completion = msgspec.json.Decoder(Completion).decode
_decode_chunks = msgspec.json.Decoder(list[Chunk]).decode
# Spliced over a plain request body's closing brace.
_STREAM = b',"stream":true,"stream_options":{"include_usage":true}}'
_DONE = b"data: [DONE]\n\n"


def chunks(body: bytes) -> list[Chunk]:
    """The chunks of a server-sent event stream of ``data:`` events ending in ``data: [DONE]``.

    JSON escapes every newline inside a string, so a blank line only ever ends an event: the events
    are joined into one JSON array and decoded in one call.
    """
    if not body.startswith(b"data: ") or not body.endswith(_DONE):
        raise ValueError("not data: events ending in data: [DONE]")
    events = body[len(b"data: ") : -len(_DONE)].removesuffix(b"\n\n")
    return _decode_chunks(b"[" + events.replace(b"\n\ndata: ", b",") + b"]") if events else []


def streamed_calls(received: list[Chunk]) -> list[tuple[str | None, str | None, str]]:
    """The tool calls a stream's deltas add up to: the first piece of each names it, the rest extend its arguments."""
    calls: dict[int, list[Any]] = {}
    for chunk in received:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(piece.index, [piece.id, piece.function.name, ""])
            call[2] += piece.function.arguments
    return [tuple(calls[index]) for index in sorted(calls)]


def differs(got: str, recorded: str) -> str:
    """Where ``got`` first differs from ``recorded``, and both from there."""
    at = next((i for i, (a, b) in enumerate(zip(got, recorded)) if a != b), min(len(got), len(recorded)))
    return f"differs at character {at}: got {got[at:at + 40]!r}, recorded {recorded[at:at + 40]!r}"


class Report:
    """Latencies, and failures kept with their request's number to be listed in dataset order."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.stream_latencies: list[float] = []
        self.failures: list[tuple[int, str]] = []
        self.started = 0

    def fail(self, request: Request, problem: str) -> None:
        self.failures.append((request.number, f"{request.where}: {problem}"))

    def check(self, request: Request, status: int, body: bytes, seconds: float) -> Completion | None:
        """Checks a plain response; returns it if it is a chat completion."""
        self.latencies.append(seconds)
        if status != 200:
            self.fail(request, f"HTTP {status}: {body.decode(errors='replace')[:200]}")
            return None
        try:
            completion = _decode_completion(body)
            content = completion.choices[0].message.content or ""
        except (msgspec.DecodeError, IndexError) as error:
            self.fail(request, f"the response is not a chat completion: {error}")
            return None
        if content != request.turn.answer:
            self.fail(request, f"answer {differs(content, request.turn.answer)}")
        calls = [(call.id, call.function.name, call.function.arguments) for call in completion.choices[0].message.tool_calls or []]
        if calls != [tuple(call) for call in request.turn.calls]:
            self.fail(request, f"tool calls differ: got {calls}, recorded {[tuple(call) for call in request.turn.calls]}")
        return completion

    def check_stream(self, request: Request, plain: Completion | None, status: int, body: bytes, seconds: float) -> None:
        """Checks a streamed response against the recorded answer and the plain response's usage."""
        self.stream_latencies.append(seconds)
        if status != 200:
            self.fail(request, f"stream: HTTP {status}: {body.decode(errors='replace')[:200]}")
            return
        try:
            received = chunks(body)
        except (msgspec.DecodeError, ValueError) as error:
            self.fail(request, f"the stream is not well-formed: {error}")
            return
        content = "".join([chunk.choices[0].delta.content or "" for chunk in received if chunk.choices])
        if content != request.turn.answer:
            self.fail(request, f"streamed answer {differs(content, request.turn.answer)}")
        calls = streamed_calls(received)
        if calls != [tuple(call) for call in request.turn.calls]:
            self.fail(request, f"streamed tool calls differ: got {calls}, recorded {[tuple(call) for call in request.turn.calls]}")
        usage = received[-1].usage if received else None
        if plain is not None and usage != plain.usage:
            self.fail(request, f"streamed usage differs: got {usage}, plain response {plain.usage}")

    def lines(self) -> list[str]:
        # Stable: a turn's own failures stay in the order they were found.
        return [f"MISMATCH {failure}" for _, failure in sorted(self.failures, key=lambda failure: failure[0])]


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.close()
            self._settle(ConnectionError(f"bad HTTP response: {error}"))

    def connection_lost(self, error: Exception | None) -> None:
        self.transport = None
        self._settle(error or ConnectionError("the server closed the connection"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.close()
        self._settle((self.parser.get_status_code(), b"".join(self.body)))

    def _settle(self, outcome: tuple[int, bytes] | Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    async def send(self, message: bytes) -> tuple[int, bytes, float]:
        """Sends one request; returns the response's status and body, and the seconds it took."""
        assert self.transport is not None
        self.body = []
        self.waiter = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        async with asyncio.timeout(TIMEOUT):
            self.transport.write(message)
            status, body = await self.waiter
        return status, body, time.perf_counter() - started


class Client:
    """Opens connections to ``url`` and frames chat completion requests for it."""

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        self.ssl = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (443 if self.ssl else 80)
        self.head = (
            f"POST {parts.path.rstrip('/')}/chat/completions HTTP/1.1\r\nhost: {parts.netloc}\r\n"
            f"authorization: Bearer {api_key}\r\ncontent-type: application/json\r\ncontent-length: "
        ).encode()

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(Connection, self.host, self.port, ssl=self.ssl or None)
        return connection

    def request(self, body: bytes) -> bytes:
        return self.head + b"%d\r\n\r\n" % len(body) + body


async def ask(connection: Connection, client: Client, request: Request, report: Report, stream: bool) -> None:
    """Asks for one turn's answer, and with ``stream`` for its stream too, and checks them."""
    body = _encode({"model": "gpt-4o", "messages": request.turn.messages, "seed": request.seed})
    plain = report.check(request, *await connection.send(client.request(body)))
    if stream:
        report.check_stream(request, plain, *await connection.send(client.request(body[:-1] + _STREAM)))


async def worker(client: Client, work: Iterator[Request], report: Report, stream: bool) -> None:
    """Takes the next request from ``work`` as soon as the last one is checked, on one connection."""
    connection: Connection | None = None
    try:
        for request in work:
            report.started = request.number + 1
            try:
                if connection is None or not connection.open:
                    connection = await client.connect()
                await ask(connection, client, request, report, stream)
            except (OSError, TimeoutError) as error:
                report.fail(request, repr(error))
                if connection is not None:
                    connection.close()
    finally:
        if connection is not None:
            connection.close()


def show(report: Report, started: float) -> None:
    done = len(report.latencies)
    rate = done / (time.perf_counter() - started)
    # Back to the line's start, and erase what a longer line before left.
    print(f"\r{done:,} / {report.started:,} requests, {rate:,.0f} per second\x1b[K", end="", file=sys.stderr, flush=True)


async def progress(report: Report) -> None:
    """Requests done out of those started so far, and the rate, on one line redrawn twice a second."""
    started = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.5)
            show(report, started)
    finally:
        show(report, started)
        print(file=sys.stderr)


async def replay(
    url: str, sources: list[Path], concurrency: int, api_key: str, limit: int | None = None, stream: bool = False
) -> Report:
    report = Report()
    client = Client(url, api_key)
    # One generator shared by the workers: the dataset is read only as fast as requests are sent.
    work = itertools.islice(requests(sources), limit)
    shown = asyncio.create_task(progress(report)) if sys.stderr.isatty() else None
    try:
        await asyncio.gather(*(worker(client, work, report, stream) for _ in range(concurrency)))
    finally:
        if shown is not None:
            shown.cancel()
            await asyncio.wait([shown])
    return report


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    p50, p90, p99 = (cuts[i - 1] * 1000 for i in (50, 90, 99))
    return f"p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}, max {max(latencies) * 1000:.1f}"


def summary(report: Report, seconds: float, concurrency: int) -> list[str]:
    lines = report.lines()
    if count := len(report.latencies):
        lines.append(f"{count:,} requests in {seconds:.1f} s: {count / seconds:,.0f} per second, concurrency {concurrency}")
        lines.append(f"latency ms: {percentiles(report.latencies)}")
    if streams := report.stream_latencies:
        lines.append(f"{len(streams):,} streams beside them, latency ms to the last chunk: {percentiles(streams)}")
    lines.append(f"{len(report.failures)} mismatches or errors" if report.failures else "every answer byte-exact")
    return lines


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's base URL")
    parser.add_argument("--concurrency", type=count, default=16, help="requests in flight at once (connections)")
    parser.add_argument("--api-key", default="mockgpt")
    parser.add_argument("--limit", type=count, help="replay only the first LIMIT turns")
    parser.add_argument("--stream", action="store_true", help="also ask for each answer as a stream, and check it")
    args = parser.parse_args()
    started = time.perf_counter()
    run = replay(args.url, args.datasets, args.concurrency, args.api_key, args.limit, args.stream)
    try:
        import uvloop
    except ImportError:  # Windows, where mockgpt does without it too
        report = asyncio.run(run)
    else:
        report = uvloop.run(run)
    print("\n".join(summary(report, time.perf_counter() - started, args.concurrency)))
    sys.exit(1 if report.failures or not report.latencies else 0)


if __name__ == "__main__":
    main()
