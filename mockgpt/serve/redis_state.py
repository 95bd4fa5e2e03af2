"""Rate-limit budgets, fault counters and the prompts seen lately kept in Redis, so that replicas naming the
same Redis act as one API.

``Shared`` is a ``State`` (state.py) whose ``charge``, ``fault_step`` and prompt-prefix operations each run
one Lua script in Redis,
atomically, on Redis's own clock, so that replicas on machines whose clocks differ agree; its answer slots
are the replica's own (``Local``, or the coordinator's ``Remote`` with several workers), as each replica
stands for one model server. Each worker process has one connection pool, made in its event loop on first
use, and sends the operations its requests ask in batches: one call on its way at a time per script, the
operations asked meanwhile gathered into the next, each still run on its own, in order.

What Redis holds, under the prefix ``mockgpt:``:

- ``mockgpt:budget:<digest of an API key>``: a hash, the level and time of its requests bucket (``r``,
  ``rt``) and of its tokens bucket (``t``, ``tt``), as ``Budgets`` keeps them; it expires when its buckets
  would be full again, which is the same as having no key.
- ``mockgpt:fault:<digest of a fault key>``: the requests that carried it; it expires after an hour
  without one (``FAULT_TTL``), when the key's plan starts again from its first step.
- ``mockgpt:prefixes``: a sorted set of the keys of the prompt prefixes seen lately (16 bytes each), scored
  by when they were last used, counted in ``mockgpt:prefixes:used``; the least recently used go first when
  there are more than ``--prompt-cache-size``.

Redis 5 or later (scripts that read its clock and then write). A Redis that cannot be reached fails the
request with ``SharedStateUnreachable`` within a few seconds; every call tries again, so the server
recovers by itself once it is back.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from mockgpt.serve.state import UNLIMITED, Bucket, Limits, SharedStateError, State, Verdict, judge

__all__ = ["FAULT_TTL", "Shared", "SharedStateUnreachable", "check"]

# Seconds a fault key is remembered after the last request that carried it.
FAULT_TTL = 3600
# Seconds to connect, and to wait for an answer: a Redis gone away costs a request no more than this, twice.
_CONNECT_TIMEOUT = 1.0
_READ_TIMEOUT = 2.0

# Each script runs a batch of operations, in order, each on its own key: what the worker's requests asked
# while the batch before was on its way, sent in one call.

# KEYS: an API key's budgets for each charge. ARGV: requests and tokens per minute (0 for no limit), then the
# tokens of each charge. As Budgets.charge: refill both buckets to now, the seconds each would make the
# charge wait, and only if neither would, take 1 request and the tokens. Returns, for each charge, the levels
# left and the waits, as text ("" for a budget without a limit), since Redis would cut numbers to integers.
_CHARGE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local limits, names, answer = {tonumber(ARGV[1]), tonumber(ARGV[2])}, {'r', 't'}, {}
local function text(number) return string.format('%.17g', number) end
for k, key in ipairs(KEYS) do
  local stored = redis.call('HMGET', key, 'r', 'rt', 't', 'tt')
  local amounts, levels, waits = {1, tonumber(ARGV[2 + k])}, {}, {0, 0}
  for i = 1, 2 do
    local capacity = limits[i]
    if capacity > 0 then
      local rate, level = capacity / 60, tonumber(stored[2 * i - 1])
      if level then level = math.min(capacity, level + (now - tonumber(stored[2 * i])) * rate) else level = capacity end
      if amounts[i] > capacity then waits[i] = math.huge else waits[i] = math.max(0, (amounts[i] - level) / rate) end
      levels[i] = level
    end
  end
  local allowed, full, fields, base = waits[1] == 0 and waits[2] == 0, 0, {}, 4 * (k - 1)
  for i = 1, 2 do
    answer[base + i], answer[base + i + 2] = '', ''
    if levels[i] then
      if allowed then levels[i] = levels[i] - amounts[i] end
      full = math.max(full, (limits[i] - levels[i]) / (limits[i] / 60))
      for _, value in ipairs({names[i], text(levels[i]), names[i] .. 't', text(now)}) do fields[#fields + 1] = value end
      answer[base + i], answer[base + i + 2] = text(levels[i]), text(waits[i])
    end
  end
  -- Kept until the buckets are full again: a full bucket is a new one.
  if full > 0 then
    redis.call('HSET', key, unpack(fields))
    redis.call('PEXPIRE', key, math.ceil(full * 1000))
  else
    redis.call('DEL', key)
  end
end
return answer
"""

# KEYS: a fault key's count for each step. ARGV[1]: seconds to keep it. Returns, for each, the requests
# that carried its key before.
_FAULT = """
local answer = {}
for k, key in ipairs(KEYS) do
  answer[k] = redis.call('INCR', key) - 1
  redis.call('EXPIRE', key, ARGV[1])
end
return answer
"""


# KEYS: the prefixes' set, for each lookup. ARGV: for each, the number of its keys, then its keys from the
# shortest prefix. Returns, for each, the place of the longest key found plus one (0 for none), as
# Prefixes.longest; that key is used now.
_CACHED = """
local answer, at = {}, 1
for k, set in ipairs(KEYS) do
  local count = tonumber(ARGV[at])
  answer[k] = 0
  for place = count, 1, -1 do
    if redis.call('ZSCORE', set, ARGV[at + place]) then
      redis.call('ZADD', set, redis.call('INCR', set .. ':used'), ARGV[at + place])
      answer[k] = place
      break
    end
  end
  at = at + count + 1
end
return answer
"""

# KEYS: the prefixes' set, for each batch of keys to add. ARGV[1]: the most the set keeps; then, for each,
# the number of its keys and its keys. As Prefixes.add.
_CACHE = """
local size, at = tonumber(ARGV[1]), 2
for _, set in ipairs(KEYS) do
  local count = tonumber(ARGV[at])
  local used = redis.call('INCRBY', set .. ':used', count) - count
  for place = 1, count do redis.call('ZADD', set, used + place, ARGV[at + place]) end
  at = at + count + 1
  local over = redis.call('ZCARD', set) - size
  if over > 0 then redis.call('ZPOPMIN', set, over) end
end
return {}
"""
_PREFIXES = "mockgpt:prefixes"


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
        self._prompt_prefixes = limits.prompt_prefixes or 1
        self._slots = slots
        self._client: redis.asyncio.Redis | None = None
        self._charges: _Batches | None = None
        self._faults: _Batches | None = None
        self._lookups: _Batches | None = None
        self._additions: _Batches | None = None

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
        if self._charges is None:
            self._charges = _Batches(self._script(_CHARGE), [self._rpm or 0, self._tpm or 0], 4, self.where)
        answer = await self._charges.ask(f"mockgpt:budget:{key}", max(tokens, 0))
        requests, tokens_left, wait_requests, wait_tokens = (float(value) if value else None for value in answer)
        return judge(
            _bucket(self._rpm, requests), _bucket(self._tpm, tokens_left), wait_requests or 0.0, wait_tokens or 0.0
        )

    async def fault_step(self, key: str) -> int:
        """As ``State.fault_step``, for every replica sharing the Redis; a key is forgotten after ``FAULT_TTL``
        seconds without a request."""
        if self._faults is None:
            self._faults = _Batches(self._script(_FAULT), [FAULT_TTL], 1, self.where)
        return int((await self._faults.ask(f"mockgpt:fault:{key}"))[0])

    async def cached_prefix(self, keys: list[bytes]) -> int:
        """As ``State.cached_prefix``, for every replica sharing the Redis."""
        if self._lookups is None:
            self._lookups = _Batches(self._script(_CACHED), [], 1, self.where)
        return int((await self._lookups.ask(_PREFIXES, len(keys), *keys))[0])

    async def cache_prefixes(self, keys: list[bytes]) -> None:
        """As ``State.cache_prefixes``, for every replica sharing the Redis."""
        if self._additions is None:
            self._additions = _Batches(self._script(_CACHE), [self._prompt_prefixes], 0, self.where)
        await self._additions.ask(_PREFIXES, len(keys), *keys)

    async def close(self) -> None:
        """Close the connections to Redis, and the slots."""
        if self._client is not None:
            await self._client.aclose()
        await self._slots.close()

    def _script(self, source: str) -> AsyncScript:
        if self._client is None:
            # Here, in the worker's event loop, which the pool's connections then belong to.
            self._client = _connect(self.url)
        return self._client.register_script(source)


class _Batches:
    """The operations of one script, a batch at a time: while one call to Redis is on its way, those asked
    meanwhile wait for the next, so that a busy worker makes one call for many requests.

    Each operation names its key and adds its own arguments to the script's ``fixed`` ones; its answer is
    ``width`` items of the script's.
    """

    def __init__(self, script: AsyncScript, fixed: list[int], width: int, where: str) -> None:
        self._script = script
        self._fixed = fixed
        self._width = width
        self._where = where
        self._waiting: list[tuple[str, tuple[int | bytes, ...], asyncio.Future[list[Any]]]] = []
        self._sending: asyncio.Task[None] | None = None

    def ask(self, key: str, *args: int | bytes) -> asyncio.Future[list[Any]]:
        """The answer to an operation on ``key`` with ``args``, once its batch is back."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((key, args, future))
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._send())
        return future

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._answer(batch)
        finally:
            self._sending = None

    async def _answer(self, batch: list[tuple[str, tuple[int | bytes, ...], asyncio.Future[list[Any]]]]) -> None:
        keys, args = [key for key, _, _ in batch], [*self._fixed, *(arg for _, more, _ in batch for arg in more)]
        try:
            answers = await self._script(keys=keys, args=args)
        except Exception as error:
            # Every operation of the batch fails with it: none waits for an answer that will not come.
            for *_, future in batch:
                if not future.done():
                    future.set_exception(_failure(self._where, error))
            return
        width = self._width
        for number, (*_, future) in enumerate(batch):
            if not future.done():
                future.set_result(answers[number * width : (number + 1) * width])


def _failure(where: str, error: Exception) -> Exception:
    """What an operation whose batch met ``error`` raises: ``SharedStateUnreachable`` for Redis's errors."""
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return SharedStateUnreachable(f"The shared state at {where} is unreachable: {error}")
    if isinstance(error, redis.RedisError):
        return SharedStateUnreachable(f"The shared state at {where} failed: {error}")
    return error


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
