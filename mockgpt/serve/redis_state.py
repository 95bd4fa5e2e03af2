"""Rate-limit budgets and fault counters kept in Redis, so that replicas naming the same Redis act as one API.

``Shared`` is a ``State`` (state.py) whose ``charge`` and ``fault_step`` each run one Lua script in Redis,
atomically, on Redis's own clock, so that replicas on machines whose clocks differ agree; its answer slots
are the replica's own (``Local``, or the coordinator's ``Remote`` with several workers), as each replica
stands for one model server. Each worker process has one connection pool, made in its event loop on first
use.

What Redis holds, under the prefix ``mockgpt:``:

- ``mockgpt:budget:<digest of an API key>``: a hash, the level and time of its requests bucket (``r``,
  ``rt``) and of its tokens bucket (``t``, ``tt``), as ``Budgets`` keeps them; it expires when its buckets
  would be full again, which is the same as having no key.
- ``mockgpt:fault:<digest of a fault key>``: the requests that carried it; it expires after an hour
  without one (``FAULT_TTL``), when the key's plan starts again from its first step.

Redis 5 or later (scripts that read its clock and then write). A Redis that cannot be reached fails the
request with ``SharedStateUnreachable`` within a few seconds; every call tries again, so the server
recovers by itself once it is back.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mockgpt.serve.state import UNLIMITED, Bucket, Limits, SharedStateError, State, Verdict, judge

__all__ = ["FAULT_TTL", "Shared", "SharedStateUnreachable", "check"]

# Seconds a fault key is remembered after the last request that carried it.
FAULT_TTL = 3600
# Seconds to connect, and to wait for an answer: a Redis gone away costs a request no more than this, twice.
_CONNECT_TIMEOUT = 1.0
_READ_TIMEOUT = 2.0

# KEYS[1]: an API key's budgets. ARGV: requests and tokens per minute (0 for no limit), the request's tokens.
# As Budgets.charge: refill both buckets to now, the seconds each would make the request wait, and only if
# neither would, take 1 request and the tokens. Returns the levels left and the waits, as text ("" for a
# budget without a limit), since Redis would cut numbers to integers.
_CHARGE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stored = redis.call('HMGET', KEYS[1], 'r', 'rt', 't', 'tt')
local limits, amounts, names = {tonumber(ARGV[1]), tonumber(ARGV[2])}, {1, tonumber(ARGV[3])}, {'r', 't'}
local levels, waits = {}, {0, 0}
for i = 1, 2 do
  local capacity = limits[i]
  if capacity > 0 then
    local rate, level = capacity / 60, tonumber(stored[2 * i - 1])
    if level then level = math.min(capacity, level + (now - tonumber(stored[2 * i])) * rate) else level = capacity end
    if amounts[i] > capacity then waits[i] = math.huge else waits[i] = math.max(0, (amounts[i] - level) / rate) end
    levels[i] = level
  end
end
local allowed, full, fields, answer = waits[1] == 0 and waits[2] == 0, 0, {}, {'', '', '', ''}
for i = 1, 2 do
  if levels[i] then
    if allowed then levels[i] = levels[i] - amounts[i] end
    full = math.max(full, (limits[i] - levels[i]) / (limits[i] / 60))
    local level = string.format('%.17g', levels[i])
    fields[#fields + 1], fields[#fields + 2], fields[#fields + 3], fields[#fields + 4] = names[i], level, names[i] .. 't', string.format('%.17g', now)
    answer[i], answer[i + 2] = level, string.format('%.17g', waits[i])
  end
end
if full > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('PEXPIRE', KEYS[1], math.ceil(full * 1000))
else
  redis.call('DEL', KEYS[1])
end
return answer
"""

# KEYS[1]: a fault key's count. ARGV[1]: seconds to keep it. Returns the requests that carried it before.
_FAULT = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return count - 1
"""


class SharedStateUnreachable(SharedStateError):
    """The Redis holding the state shared by the replicas cannot be reached, or failed: the request is told
    to try again later."""

    status = 503


class Shared:
    """Budgets and fault counters in the Redis at ``url``; answer slots in ``slots``."""

    def __init__(self, url: str, limits: Limits, slots: State) -> None:
        self.url = url
        self.where = _where(url)
        self._rpm = limits.rpm
        self._tpm = limits.tpm
        self._slots = slots
        self._client: redis.asyncio.Redis | None = None
        self._scripts: tuple[redis.commands.core.AsyncScript, redis.commands.core.AsyncScript] | None = None

    async def acquire(self) -> bool:
        """As ``State.acquire``: this replica's slots."""
        return await self._slots.acquire()

    async def release(self) -> None:
        """As ``State.release``."""
        await self._slots.release()

    async def charge(self, key: str, tokens: int) -> Verdict:
        """As ``State.charge``, for every replica sharing the Redis."""
        if self._rpm is None and self._tpm is None:
            return UNLIMITED
        charge = self._script(0)
        args = [self._rpm or 0, self._tpm or 0, max(tokens, 0)]
        levels = await self._run(charge(keys=[f"mockgpt:budget:{key}"], args=args))
        requests, tokens_left, wait_requests, wait_tokens = (float(value) if value else None for value in levels)
        return judge(
            _bucket(self._rpm, requests), _bucket(self._tpm, tokens_left), wait_requests or 0.0, wait_tokens or 0.0
        )

    async def fault_step(self, key: str) -> int:
        """As ``State.fault_step``, for every replica sharing the Redis; a key is forgotten after ``FAULT_TTL``
        seconds without a request."""
        count = await self._run(self._script(1)(keys=[f"mockgpt:fault:{key}"], args=[FAULT_TTL]))
        return int(count)

    async def close(self) -> None:
        """Close the connections to Redis, and the slots."""
        if self._client is not None:
            await self._client.aclose()
        await self._slots.close()

    def _script(self, number: int) -> redis.commands.core.AsyncScript:
        if self._scripts is None:
            # Here, in the worker's event loop, which the pool's connections then belong to.
            self._client = _connect(self.url)
            self._scripts = self._client.register_script(_CHARGE), self._client.register_script(_FAULT)
        return self._scripts[number]

    async def _run(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise SharedStateUnreachable(f"The shared state at {self.where} is unreachable: {error}") from None
        except redis.RedisError as error:
            raise SharedStateUnreachable(f"The shared state at {self.where} failed: {error}") from None


def _bucket(limit: int | None, level: float | None) -> Bucket | None:
    """A budget as a charge left it, for ``judge`` to report."""
    return None if limit is None or level is None else Bucket(limit, 0.0, level)


def check(url: str) -> None:
    """Raise ``SharedStateError``, in one line, unless the Redis at ``url`` answers."""
    where = _where(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_READ_TIMEOUT)
    except ValueError as error:
        raise SharedStateError(f"--state {where}: {error}") from None
    try:
        client.ping()
    except redis.RedisError as error:
        raise SharedStateError(f"cannot reach the shared state at {where}: {error}") from None
    finally:
        client.close()


def _connect(url: str) -> redis.asyncio.Redis:
    """A client of ``url`` with a pool of its own that gives up on Redis within the timeouts, and tries a
    broken connection once more on a new one (as every connection breaks when Redis restarts)."""
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_READ_TIMEOUT,
        retry=Retry(NoBackoff(), 1), retry_on_error=[redis.ConnectionError],
    )


def _where(url: str) -> str:
    """``url`` without its user and password, to be shown."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
