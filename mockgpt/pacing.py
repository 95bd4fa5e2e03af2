"""Pacing: answers take the time a real model takes to write them.

A model first reads the prompt (the time to first token: a fixed part, and a part that grows with the
prompt's tokens), then writes one token per step (the inter-token latency). A streamed answer sends
each step's chunks when the step is done; a whole answer leaves when its last step would have. Jitter
spreads every interval by up to ``jitter`` of itself, from a seeded generator, so a run can be repeated.

Timers are shared: every wait due in the same millisecond is woken by one timer, so that thousands of
streams cost a thousand timers a second rather than one per chunk per stream.
"""

from __future__ import annotations

import asyncio
import math
import random
from typing import NamedTuple

import msgspec

__all__ = ["Clock", "Pace", "Pacer", "Timing"]


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """How long answers take; all zero: at once."""

    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    prefill_ms_per_1k: float = 0.0
    jitter: float = 0.0
    seed: int | None = None

    def __bool__(self) -> bool:
        return bool(self.ttft_ms or self.itl_ms or self.prefill_ms_per_1k)


class Pace(NamedTuple):
    """One answer's timing, in seconds."""

    first: float
    gap: float


class Clock:
    """Waits until a time of the event loop's clock, to the next whole ``tick`` (seconds)."""

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self._due: dict[int, list[asyncio.Future[None]]] = {}

    async def until(self, when: float) -> None:
        wait = self.due(when)
        if wait is not None:
            await wait

    def due(self, when: float) -> asyncio.Future[None] | None:
        """A future done at ``when``, to the next whole tick; None if that time has come. A stream awaits
        it for each of its chunks: a plain call, no coroutine made each time."""
        loop = asyncio.get_running_loop()
        slot = math.ceil(when / self.tick)
        if slot * self.tick <= loop.time():
            return None
        waiters = self._due.get(slot)
        if waiters is None:
            waiters = self._due[slot] = []
            loop.call_at(slot * self.tick, self._fire, slot)
        # A future of its own, so that cancelling one waiter (its client left) leaves the others waiting.
        future = loop.create_future()
        waiters.append(future)
        return future

    def _fire(self, slot: int) -> None:
        for future in self._due.pop(slot):
            if not future.done():
                future.set_result(None)


class Pacer:
    """Paces answers as ``timing`` says; headers can override the time to first token and between tokens."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.clock = Clock()
        self._random = random.Random(timing.seed)

    def pace(self, prompt_tokens: int, ttft_ms: float | None = None, itl_ms: float | None = None) -> Pace:
        timing = self.timing
        first = timing.ttft_ms if ttft_ms is None else ttft_ms
        first += timing.prefill_ms_per_1k * prompt_tokens / 1000
        return Pace(self.spread(first / 1000), (timing.itl_ms if itl_ms is None else itl_ms) / 1000)

    def spread(self, seconds: float) -> float:
        """``seconds``, moved by up to ``jitter`` of itself either way."""
        jitter = self.timing.jitter
        return seconds * (1 + jitter * (2 * self._random.random() - 1)) if jitter else seconds

    def whole(self, pace: Pace, tokens: int) -> float:
        """Seconds until the last of ``tokens`` is written."""
        return pace.first + self.spread(pace.gap * max(tokens - 1, 0))
