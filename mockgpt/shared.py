"""The state that holds for the server as a whole: answer slots, rate-limit budgets and fault counters.

``Local`` keeps it in the process: one worker uses it directly, and the coordinator keeps its one copy in
one. With several workers, the supervising process runs a ``Coordinator``, a daemon thread with its own
event loop serving a Unix domain socket, and each worker reaches it through a ``Remote``: one persistent
connection, shared by all the worker's coroutines.

The wire, both ways, is a stream of frames: a 4-byte big-endian length, then that many bytes of msgpack.

    worker -> coordinator   [id, op, key, tokens]   op: 0 acquire, 1 release, 2 charge, 3 fault, 4 cancel
    coordinator -> worker   [id, value]             value: bool (acquire), Verdict (charge), int (fault)

Every acquire, charge and fault gets exactly one answer, carrying its id; answers may come back in any
order. Release and cancel get none. Cancel names an acquire still waiting: the coordinator drops it and
answers it ``false``; if the slot was granted before the cancel arrived, the worker gives it back with a
release when the ``true`` reaches it. When a connection closes, the coordinator drops its waiters and
frees every slot it held, so a worker that dies leaks nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import os
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import suppress
from typing import Generic, Protocol, TypeVar, cast

import msgspec

from mockgpt.errors import MockGPTError

__all__ = ["Budgets", "Coordinator", "Faults", "Gate", "Limits", "Local", "Remote", "SharedStateError", "State", "Verdict"]

T = TypeVar("T")


class SharedStateError(MockGPTError):
    """The coordinator holding the server's shared state cannot be reached, or the connection to it broke."""


class Limits(msgspec.Struct, frozen=True):
    """What the server allows as a whole; None means unlimited."""

    max_concurrency: int | None = None
    # Waiting requests allowed beyond the running ones; None: as many as come.
    max_queue: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    # Fault keys remembered; the least recently used is forgotten first.
    fault_keys: int = 10_000

    def __post_init__(self) -> None:
        for name, least in [("max_concurrency", 1), ("max_queue", 0), ("rpm", 1), ("tpm", 1), ("fault_keys", 1)]:
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, not {value}")


# Array-like: it crosses the socket for every request.
class Verdict(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The outcome of a rate-limit charge, with what the ``x-ratelimit-*`` headers report.

    ``reason`` is "requests" or "tokens" when not allowed (requests first, when both fall short). The
    ``reset_*`` fields are seconds until that budget is full again. ``retry_after`` is seconds until this
    request would be allowed: 0 if it was, ``math.inf`` if it asks more tokens than the per-minute limit.
    A dimension without a limit has its fields None.
    """

    allowed: bool
    reason: str | None
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float | None
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float | None
    retry_after: float


class State(Protocol):
    """The server's shared state, as ``Local`` keeps it in the process and ``Remote`` reaches it."""

    async def acquire(self) -> bool:
        """Wait for an answer slot, FIFO across the whole server; False at once if the queue is full.

        Cancelling the waiting task takes it out of the queue, and gives back a slot granted meanwhile.
        """

    async def release(self) -> None:
        """Give back a slot that ``acquire`` granted."""

    async def charge(self, key: str, tokens: int) -> Verdict:
        """Take one request and ``tokens`` tokens from the budgets of API key ``key`` ("" for none).

        Each budget is a bucket holding the per-minute limit, refilled continuously at limit/60 a second.
        A request is allowed only if 1 request and ``tokens`` tokens are there; one denied takes nothing.
        """

    async def fault_step(self, key: str) -> int:
        """How many requests carrying fault key ``key`` came before this one (0 for the first); counts this one.

        Only the ``fault_keys`` keys used last are remembered: one forgotten starts again from 0.
        """

    async def close(self) -> None:
        """Let go of what the state holds open."""


# The parts, synchronous: Local wraps them for one event loop, the coordinator serves them to many.


class Gate:
    """At most ``limit`` holders at once; the others wait in FIFO order, at most ``max_queue`` of them."""

    def __init__(self, limit: int | None, max_queue: int | None) -> None:
        self._limit = sys.maxsize if limit is None else limit
        self._free = self._limit
        self._max_queue = max_queue
        # Ticket -> the call that tells its waiter the slot is theirs; a dict, so that leaving is O(1).
        self._queue: OrderedDict[int, Callable[[], None]] = OrderedDict()
        self._tickets = itertools.count()

    @property
    def busy(self) -> int:
        """Slots held."""
        return self._limit - self._free

    @property
    def waiting(self) -> int:
        """Waiters in the queue."""
        return len(self._queue)

    def take(self) -> bool:
        """Take a slot if one is free. No slot stays free while anybody waits, so this keeps FIFO order."""
        if self._free:
            self._free -= 1
            return True
        return False

    def wait(self, grant: Callable[[], None]) -> int | None:
        """Queue for a slot: a ticket, and ``grant`` called when the slot is the waiter's; None if the queue is full."""
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            return None
        ticket = next(self._tickets)
        self._queue[ticket] = grant
        return ticket

    def leave(self) -> None:
        """Give a slot back; the first waiter gets it."""
        if self._queue:
            self._queue.popitem(last=False)[1]()
        elif self._free < self._limit:
            self._free += 1

    def abandon(self, ticket: int) -> None:
        """Take a waiter out of the queue; if its turn came already, give the slot back."""
        if self._queue.pop(ticket, None) is None:
            self.leave()


class _Bucket:
    """A token bucket holding up to ``capacity``, refilled at ``capacity`` a minute."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / 60
        self.level = float(capacity)
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, amount: int) -> float:
        """Seconds until ``amount`` is there."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def reset(self) -> float:
        """Seconds until full."""
        return (self.capacity - self.level) / self.rate


class _Account:
    __slots__ = ("requests", "tokens")

    def __init__(self, requests: _Bucket | None, tokens: _Bucket | None) -> None:
        self.requests = requests
        self.tokens = tokens

    def full(self, now: float) -> bool:
        return all(bucket is None or bucket.level + (now - bucket.stamp) * bucket.rate >= bucket.capacity
                   for bucket in (self.requests, self.tokens))


_UNLIMITED = Verdict(True, None, None, None, None, None, None, None, 0.0)
# Accounts are swept when there are this many, or twice as many as after the last sweep.
_SWEEP_AT = 4096


class Budgets:
    """Requests and tokens per minute for each API key, as token buckets."""

    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> None:
        self._rpm = rpm
        self._tpm = tpm
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._sweep_at = _SWEEP_AT

    def __len__(self) -> int:
        """Keys remembered: those whose budgets are not full, and some that became full lately."""
        return len(self._accounts)

    def charge(self, key: str, tokens: int) -> Verdict:
        """As ``State.charge``."""
        if self._rpm is None and self._tpm is None:
            return _UNLIMITED
        now = self._clock()
        account = self._account(key, now)
        tokens = max(tokens, 0)
        wait_requests = _wait(account.requests, 1, now)
        wait_tokens = _wait(account.tokens, tokens, now)
        allowed = not (wait_requests or wait_tokens)
        if allowed:
            _take(account.requests, 1)
            _take(account.tokens, tokens)
        reason = None if allowed else "requests" if wait_requests else "tokens"
        return _verdict(allowed, reason, account.requests, account.tokens, max(wait_requests, wait_tokens))

    def _account(self, key: str, now: float) -> _Account:
        account = self._accounts.get(key)
        if account is None:
            if len(self._accounts) >= self._sweep_at:
                self._sweep(now)
            account = _Account(_bucket(self._rpm, now), _bucket(self._tpm, now))
            self._accounts[key] = account
        return account

    def _sweep(self, now: float) -> None:
        # A full account is the same as a new one: forgetting it loses nothing and bounds the memory.
        self._accounts = {key: account for key, account in self._accounts.items() if not account.full(now)}
        self._sweep_at = max(_SWEEP_AT, 2 * len(self._accounts))


def _bucket(limit: int | None, now: float) -> _Bucket | None:
    return None if limit is None else _Bucket(limit, now)


def _wait(bucket: _Bucket | None, amount: int, now: float) -> float:
    """Seconds until ``bucket`` holds ``amount``, as refilled ``now``; 0 without a bucket."""
    if bucket is None:
        return 0.0
    bucket.refill(now)
    return bucket.wait(amount)


def _take(bucket: _Bucket | None, amount: int) -> None:
    if bucket is not None:
        bucket.level -= amount


def _verdict(allowed: bool, reason: str | None, requests: _Bucket | None, tokens: _Bucket | None, wait: float) -> Verdict:
    return Verdict(allowed, reason, *_report(requests), *_report(tokens), retry_after=wait)


def _report(bucket: _Bucket | None) -> tuple[int | None, int | None, float | None]:
    """Limit, remaining and reset of one budget, as a verdict carries them."""
    if bucket is None:
        return None, None, None
    return bucket.capacity, math.floor(bucket.level), bucket.reset()


class Faults:
    """How many requests each fault key has seen, for the ``fault_keys`` keys used last."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._counts: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        """Keys remembered."""
        return len(self._counts)

    def step(self, key: str) -> int:
        """As ``State.fault_step``."""
        count = self._counts.pop(key, 0)
        self._counts[key] = count + 1
        if len(self._counts) > self._size:
            self._counts.popitem(last=False)
        return count


class Local:
    """The shared state in this process: for a server with one worker, and inside the coordinator."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.gate = Gate(limits.max_concurrency, limits.max_queue)
        self.budgets = Budgets(limits.rpm, limits.tpm, clock)
        self.faults = Faults(limits.fault_keys)

    async def acquire(self) -> bool:
        """As ``State.acquire``."""
        if self.gate.take():
            return True
        granted = asyncio.get_running_loop().create_future()
        ticket = self.gate.wait(lambda: _wake(granted))
        if ticket is None:
            return False
        try:
            await granted
        except asyncio.CancelledError:
            self.gate.abandon(ticket)
            raise
        return True

    async def release(self) -> None:
        """As ``State.release``."""
        self.gate.leave()

    async def charge(self, key: str, tokens: int) -> Verdict:
        """As ``State.charge``."""
        return self.budgets.charge(key, tokens)

    async def fault_step(self, key: str) -> int:
        """As ``State.fault_step``."""
        return self.faults.step(key)

    async def close(self) -> None:
        """Nothing to let go of."""


def _wake(future: asyncio.Future[None]) -> None:
    # The waiter may have been cancelled since; ``abandon`` then passes the slot on.
    if not future.done():
        future.set_result(None)


# The wire


_ACQUIRE, _RELEASE, _CHARGE, _FAULT, _CANCEL = range(5)
_LENGTH = struct.Struct(">I")
# Far more than any frame: a longer one means the peer speaks something else.
_MAX_FRAME = 1 << 20


class _Request(msgspec.Struct, array_like=True, gc=False):
    id: int
    op: int
    key: str = ""
    tokens: int = 0


class _Answer(msgspec.Struct, array_like=True, gc=False):
    id: int
    value: bool | int | Verdict | None


_encoder = msgspec.msgpack.Encoder()
_decode_request = msgspec.msgpack.Decoder(_Request).decode
_decode_answer = msgspec.msgpack.Decoder(_Answer).decode


class _ProtocolError(Exception):
    pass


class _Outbox:
    """Frames to send, written together once per loop iteration: one system call for many messages."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's do not derive from asyncio's classes.
        self._transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()

    def put(self, message: _Request | _Answer) -> None:
        buffer = self._buffer
        if not buffer:
            self._loop.call_soon(self.flush)
        start = len(buffer)
        buffer += b"\0\0\0\0"
        _encoder.encode_into(message, buffer, start + 4)
        _LENGTH.pack_into(buffer, start, len(buffer) - start - 4)

    def flush(self) -> None:
        # A new buffer rather than clearing this one: the transport may keep a view of it.
        buffer, self._buffer = self._buffer, bytearray()
        if buffer and not self._transport.is_closing():
            self._transport.write(buffer)


class _Frames(Generic[T]):
    """The messages in a stream of frames, as its bytes arrive."""

    def __init__(self, decode: Callable[[bytearray], T]) -> None:
        self._decode = decode
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[T]:
        """The messages completed by ``data``; raises ``_ProtocolError`` or ``msgspec.DecodeError``."""
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if size > _MAX_FRAME:
                raise _ProtocolError(f"frame of {size} bytes")
            end = start + 4 + size
            if end > len(buffer):
                break
            messages.append(self._decode(buffer[start + 4 : end]))
            start = end
        del buffer[:start]
        return messages


# The coordinator's side


class _Session(asyncio.Protocol):
    """One worker's connection to the coordinator: the slots it holds and its waiters."""

    def __init__(self, local: Local, sessions: set[_Session]) -> None:
        self._local = local
        self._sessions = sessions
        self._frames = _Frames(_decode_request)
        self._held = 0
        # Request id -> gate ticket, for the acquires still waiting.
        self._waiting: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._outbox = _Outbox(transport)
        self._sessions.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            requests = self._frames.feed(data)
        except (_ProtocolError, msgspec.DecodeError):
            self.transport.close()
            return
        for request in requests:
            self._handle(request)
        # Now rather than on the next turn of the loop: the answers to this read are all there.
        self._outbox.flush()

    def _handle(self, request: _Request) -> None:
        op = request.op
        if op == _CHARGE:
            self._answer(request.id, self._local.budgets.charge(request.key, request.tokens))
        elif op == _FAULT:
            self._answer(request.id, self._local.faults.step(request.key))
        elif op == _ACQUIRE:
            self._acquire(request.id)
        elif op == _RELEASE:
            self._release()
        elif op == _CANCEL:
            self._cancel(request.id)
        else:
            # An operation this version does not know: the peer speaks something else.
            self.transport.close()

    def _acquire(self, id: int) -> None:
        if self._local.gate.take():
            self._granted(id)
            return
        ticket = self._local.gate.wait(lambda: self._granted(id))
        if ticket is None:
            self._answer(id, False)
        else:
            self._waiting[id] = ticket

    def _granted(self, id: int) -> None:
        self._waiting.pop(id, None)
        self._held += 1
        self._answer(id, True)

    def _release(self) -> None:
        # Only slots this connection holds: a confused worker cannot free another's.
        if self._held:
            self._held -= 1
            self._local.gate.leave()

    def _cancel(self, id: int) -> None:
        ticket = self._waiting.pop(id, None)
        if ticket is not None:
            self._local.gate.abandon(ticket)
            self._answer(id, False)

    def _answer(self, id: int, value: bool | int | Verdict) -> None:
        self._outbox.put(_Answer(id, value))

    def connection_lost(self, exc: Exception | None) -> None:
        gate = self._local.gate
        # Waiters first, so that the slots freed next do not go to them.
        for ticket in self._waiting.values():
            gate.abandon(ticket)
        self._waiting.clear()
        for _ in range(self._held):
            gate.leave()
        self._held = 0
        self._sessions.discard(self)


class Coordinator:
    """The one owner of the shared state when several workers serve: a daemon thread serving ``path``.

    Also a context manager that starts and stops it.
    """

    def __init__(self, limits: Limits, path: str) -> None:
        self.path = path
        self.local = Local(limits)
        self._sessions: set[_Session] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start serving; returns once the socket listens. Raises ``SharedStateError`` if it cannot."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(started,), name="mockgpt-coordinator", daemon=True)
        self._thread.start()
        started.result()

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(loop.create_unix_server(self._session, self.path))
        except Exception as error:
            loop.close()
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            started.set_exception(SharedStateError(f"cannot serve the shared state at {self.path}: {reason}"))
            return
        self._loop = loop
        started.set_result(None)
        loop.run_forever()
        server.close()
        for session in list(self._sessions):
            session.transport.close()
        # One more turn, for the transports to close.
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    def _session(self) -> _Session:
        return _Session(self.local, self._sessions)

    def stop(self) -> None:
        """Stop serving: close every connection and remove the socket file."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = None
            with suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# The worker's side


class _Link(asyncio.Protocol):
    """The worker's end of the connection: requests out, each answer to the future waiting for its id."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False
        self._frames = _Frames(_decode_answer)
        self._pending: dict[int, asyncio.Future[bool | int | Verdict | None]] = {}
        self._ids = itertools.count()
        self._loop = asyncio.get_running_loop()
        self._lost = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._outbox = _Outbox(transport)

    def call(self, op: int, key: str = "", tokens: int = 0) -> tuple[int, asyncio.Future[bool | int | Verdict | None]]:
        """Send a request; its id, and the future its answer will complete."""
        if self.closed:
            raise SharedStateError(f"lost the connection to the mockgpt coordinator at {self.path}")
        id = next(self._ids)
        future = self._loop.create_future()
        self._pending[id] = future
        self._outbox.put(_Request(id, op, key, tokens))
        return id, future

    def send(self, op: int, id: int = 0) -> None:
        """Send a request that gets no answer; nothing if the connection is gone."""
        if not self.closed:
            self._outbox.put(_Request(id, op))

    def data_received(self, data: bytes) -> None:
        try:
            answers = self._frames.feed(data)
        except (_ProtocolError, msgspec.DecodeError):
            self._transport.close()
            return
        for answer in answers:
            future = self._pending.pop(answer.id, None)
            if future is None:
                continue
            if not future.cancelled():
                future.set_result(answer.value)
            elif answer.value is True:
                # An acquire given up while its grant was on the way: the slot is nobody's, give it back.
                self.send(_RELEASE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = SharedStateError(f"lost the connection to the mockgpt coordinator at {self.path}")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._lost.set_result(None)

    async def close(self) -> None:
        """Send what is pending, close, and wait until closed."""
        if not self.closed:
            self._outbox.flush()
            self._transport.close()
        await self._lost


class Remote:
    """A worker's connection to the ``Coordinator`` at ``path``, shared by all the worker's coroutines.

    It connects on first use, in the running event loop, and belongs to that loop from then on. Calls raise
    ``SharedStateError`` if the coordinator cannot be reached; once a connection is lost, every call does:
    the coordinator lives as long as the server, and slots granted on it are freed with it.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._link: _Link | None = None
        self._lock = asyncio.Lock()

    async def acquire(self) -> bool:
        """As ``State.acquire``."""
        link = await self._connected()
        id, future = link.call(_ACQUIRE)
        try:
            return _expect(bool, await future)
        except asyncio.CancelledError:
            if future.cancelled():
                # Still waiting at the coordinator, or granted on the way: either way it sorts it out.
                link.send(_CANCEL, id)
            elif future.exception() is None and future.result() is True:
                link.send(_RELEASE)
            raise

    async def release(self) -> None:
        """As ``State.release``; never raises: a lost connection's slots are already free."""
        if self._link is not None:
            self._link.send(_RELEASE)

    async def charge(self, key: str, tokens: int) -> Verdict:
        """As ``State.charge``."""
        link = await self._connected()
        return _expect(Verdict, await link.call(_CHARGE, key, tokens)[1])

    async def fault_step(self, key: str) -> int:
        """As ``State.fault_step``."""
        link = await self._connected()
        return _expect(int, await link.call(_FAULT, key)[1])

    async def close(self) -> None:
        """Close the connection; the coordinator frees the slots it still held."""
        if self._link is not None:
            await self._link.close()

    async def _connected(self) -> _Link:
        link = self._link
        if link is None:
            # Many coroutines may arrive before the connection is made: the first one makes it.
            async with self._lock:
                if self._link is None:
                    self._link = await self._connect()
                link = self._link
        return link

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_unix_connection(lambda: _Link(self.path), self.path)
        except OSError as error:
            raise SharedStateError(f"cannot reach the mockgpt coordinator at {self.path}: {error.strerror or error}") from None
        return link


def _expect(kind: type[T], value: object) -> T:
    if not isinstance(value, kind):
        raise SharedStateError(f"the mockgpt coordinator answered {value!r} where a {kind.__name__} was due")
    return value
