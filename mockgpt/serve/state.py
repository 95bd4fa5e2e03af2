"""The state that holds for the server as a whole: answer slots, rate-limit budgets, fault counters and
the prompts seen lately.

``State`` is what the request path sees of it, whichever keeps it. ``Local`` keeps it in the process: one
worker uses it directly, and with several workers the coordinator (coordinator.py) keeps its one copy in
one and serves it to the workers, each of which reaches it through a ``Remote`` of its own. With
``--state``, replicas share the budgets and fault counters through Redis (redis_state.py).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import msgspec

from mockgpt.errors import MockGPTError

__all__ = [
    "UNLIMITED", "Bucket", "Budgets", "Faults", "Gate", "Limits", "Local", "Prefixes", "SharedStateError", "State", "Verdict", "judge",
]


class SharedStateError(MockGPTError):
    """The coordinator holding the server's shared state cannot be reached, or the connection to it broke."""

    # The status of a request that meets it.
    status = 500


class Limits(msgspec.Struct, frozen=True):
    """What the server allows as a whole; None means unlimited."""

    max_concurrency: int | None = None
    # Waiting requests allowed beyond the running ones; None: as many as come.
    max_queue: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    # Fault keys remembered; the least recently used is forgotten first.
    fault_keys: int = 10_000
    # Prompt prefixes remembered, for prompt caching (prompt_cache.py); None: no caching.
    prompt_prefixes: int | None = None

    def __post_init__(self) -> None:
        for name, least in [
            ("max_concurrency", 1), ("max_queue", 0), ("rpm", 1), ("tpm", 1), ("fault_keys", 1), ("prompt_prefixes", 1),
        ]:
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

        Only the ``fault_keys`` keys used last are remembered (in Redis, those used in the last hour): one
        forgotten starts again from 0.
        """

    async def cached_prefix(self, keys: list[bytes]) -> int:
        """How many of ``keys``, the keys of a prompt's prefixes from the shortest, the longest prefix that
        ``cache_prefixes`` was given lately holds: its place in them plus one, 0 for none. That one counts
        as used now.

        Only the ``prompt_prefixes`` keys used last are remembered.
        """

    async def cache_prefixes(self, keys: list[bytes]) -> None:
        """Remember ``keys``, a prompt's prefixes that a model has read, as used now."""

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


class Bucket:
    """A token bucket holding up to ``capacity`` (``level`` now, full if not given), refilled at ``capacity``
    a minute."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: int, now: float, level: float | None = None) -> None:
        self.capacity = capacity
        self.rate = capacity / 60
        self.level = float(capacity) if level is None else level
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

    def __init__(self, requests: Bucket | None, tokens: Bucket | None) -> None:
        self.requests = requests
        self.tokens = tokens

    def full(self, now: float) -> bool:
        return all(bucket is None or bucket.level + (now - bucket.stamp) * bucket.rate >= bucket.capacity
                   for bucket in (self.requests, self.tokens))


UNLIMITED = Verdict(True, None, None, None, None, None, None, None, 0.0)
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
            return UNLIMITED
        now = self._clock()
        account = self._account(key, now)
        tokens = max(tokens, 0)
        wait_requests = _wait(account.requests, 1, now)
        wait_tokens = _wait(account.tokens, tokens, now)
        if not (wait_requests or wait_tokens):
            _take(account.requests, 1)
            _take(account.tokens, tokens)
        return judge(account.requests, account.tokens, wait_requests, wait_tokens)

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


def _bucket(limit: int | None, now: float) -> Bucket | None:
    return None if limit is None else Bucket(limit, now)


def _wait(bucket: Bucket | None, amount: int, now: float) -> float:
    """Seconds until ``bucket`` holds ``amount``, as refilled ``now``; 0 without a bucket."""
    if bucket is None:
        return 0.0
    bucket.refill(now)
    return bucket.wait(amount)


def _take(bucket: Bucket | None, amount: int) -> None:
    if bucket is not None:
        bucket.level -= amount


def judge(requests: Bucket | None, tokens: Bucket | None, wait_requests: float, wait_tokens: float) -> Verdict:
    """The verdict of a charge that found it must wait these seconds for each budget, with the budgets as it
    left them: allowed if it need not wait for either, and then taken from both."""
    allowed = not (wait_requests or wait_tokens)
    reason = None if allowed else "requests" if wait_requests else "tokens"
    return Verdict(allowed, reason, *_report(requests), *_report(tokens), retry_after=max(wait_requests, wait_tokens))


def _report(bucket: Bucket | None) -> tuple[int | None, int | None, float | None]:
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


class Prefixes:
    """The keys of the prompt prefixes seen lately: at most ``size``, the least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        """Keys remembered."""
        return len(self._seen)

    def longest(self, keys: list[bytes]) -> int:
        """As ``State.cached_prefix``."""
        seen = self._seen
        for place in range(len(keys) - 1, -1, -1):
            if keys[place] in seen:
                seen.move_to_end(keys[place])
                return place + 1
        return 0

    def add(self, keys: list[bytes]) -> None:
        """As ``State.cache_prefixes``."""
        seen = self._seen
        for key in keys:
            seen[key] = None
            seen.move_to_end(key)
        while len(seen) > self._size:
            seen.popitem(last=False)


class Local:
    """The shared state in this process: for a server with one worker, and inside the coordinator."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.gate = Gate(limits.max_concurrency, limits.max_queue)
        self.budgets = Budgets(limits.rpm, limits.tpm, clock)
        self.faults = Faults(limits.fault_keys)
        self.prefixes = Prefixes(limits.prompt_prefixes or 1)

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

    async def cached_prefix(self, keys: list[bytes]) -> int:
        """As ``State.cached_prefix``."""
        return self.prefixes.longest(keys)

    async def cache_prefixes(self, keys: list[bytes]) -> None:
        """As ``State.cache_prefixes``."""
        self.prefixes.add(keys)

    async def close(self) -> None:
        """Nothing to let go of."""


def _wake(future: asyncio.Future[None]) -> None:
    # The waiter may have been cancelled since; ``abandon`` then passes the slot on.
    if not future.done():
        future.set_result(None)
