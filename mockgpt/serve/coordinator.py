"""The shared state of several workers: one ``Coordinator`` keeps it, every worker reaches it through a
``Remote``.

The supervising process runs the coordinator, a daemon thread with its own event loop serving a Unix
domain socket, which keeps the state in a ``Local``; each worker's ``Remote`` is one persistent
connection, shared by all the worker's coroutines.

The wire, both ways, is a stream of frames: a 4-byte big-endian length, then that many bytes of msgpack.

    worker -> coordinator   [id, op, key, tokens, keys]   op: 0 acquire, 1 release, 2 charge, 3 fault,
                                                          4 cancel, 5 cached prefix, 6 cache prefixes
    coordinator -> worker   [id, value]                   value: bool (acquire), Verdict (charge),
                                                          int (fault, cached prefix)

Trailing fields at their defaults ("", 0, []) are left out. Every acquire, charge, fault and cached prefix
gets exactly one answer, carrying its id; answers may come back in any order. The others get none. Cancel names an acquire still waiting: the coordinator drops it and
answers it ``false``; if the slot was granted before the cancel arrived, the worker gives it back with a
release when the ``true`` reaches it. When a connection closes, the coordinator drops its waiters and
frees every slot it held, so a worker that dies leaks nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import struct
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Generic, TypeVar, cast

import msgspec

from mockgpt.serve.state import Limits, Local, SharedStateError, Verdict

__all__ = ["Coordinator", "Remote"]

T = TypeVar("T")


# The wire


_ACQUIRE, _RELEASE, _CHARGE, _FAULT, _CANCEL, _CACHED, _CACHE = range(7)
_LENGTH = struct.Struct(">I")
# Far more than any frame: a longer one means the peer speaks something else.
_MAX_FRAME = 1 << 20


class _Request(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    id: int
    op: int
    key: str = ""
    tokens: int = 0
    # The keys of a prompt's prefixes (cached prefix, cache prefixes).
    keys: list[bytes] = []


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
        elif op == _CACHED:
            self._answer(request.id, self._local.prefixes.longest(request.keys))
        elif op == _CACHE:
            self._local.prefixes.add(request.keys)
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

    def call(
        self, op: int, key: str = "", tokens: int = 0, keys: list[bytes] = []
    ) -> tuple[int, asyncio.Future[bool | int | Verdict | None]]:
        """Send a request; its id, and the future its answer will complete."""
        if self.closed:
            raise SharedStateError(f"lost the connection to the mockgpt coordinator at {self.path}")
        id = next(self._ids)
        future = self._loop.create_future()
        self._pending[id] = future
        self._outbox.put(_Request(id, op, key, tokens, keys))
        return id, future

    def send(self, op: int, id: int = 0, keys: list[bytes] = []) -> None:
        """Send a request that gets no answer; nothing if the connection is gone."""
        if not self.closed:
            self._outbox.put(_Request(id, op, keys=keys))

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

    async def cached_prefix(self, keys: list[bytes]) -> int:
        """As ``State.cached_prefix``."""
        link = await self._connected()
        return _expect(int, await link.call(_CACHED, keys=keys)[1])

    async def cache_prefixes(self, keys: list[bytes]) -> None:
        """As ``State.cache_prefixes``."""
        link = await self._connected()
        link.send(_CACHE, keys=keys)

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
