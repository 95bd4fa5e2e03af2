"""Pacing: answers take the time a real model takes to write them.

A model first reads the prompt (the time to first token: a fixed part, and a part that grows with the
prompt's tokens), then writes one token per step (the inter-token latency). A streamed answer sends
each step's chunks when the step is done; a whole answer leaves when its last step would have. Jitter
spreads every interval by up to ``jitter`` of itself, from a seeded generator, so a run can be repeated.

Timers are shared: everything due in the same millisecond is done from one timer, so that thousands of
streams cost a thousand timers a second rather than one per chunk per stream, and a streamed chunk is
sent from that timer's callback rather than from a task woken for it.
"""

from __future__ import annotations

import asyncio
import math
import random
import types
from collections.abc import Callable, Coroutine, Generator, Iterator
from functools import partial
from typing import Any, NamedTuple, cast

import msgspec

from mockgpt.serve.asgi import IN_A_ROW, Send

__all__ = ["Clock", "Pace", "Pacer", "Timing", "slowdown"]


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
    """Calls back at times of the event loop's clock, to the next whole ``tick`` (seconds): everything due
    in the same tick is called from one timer, with the loop's time as it fired."""

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self._due: dict[int, list[Callable[[float], object]]] = {}

    async def until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if when > now:
            # A future of its own, so that cancelling one waiter (its client left) leaves the others waiting.
            future = loop.create_future()
            self.later(when, partial(_release, future), now)
            await future

    def later(self, when: float, callback: Callable[[float], object], now: float | None = None) -> None:
        """Call ``callback`` at ``when``, to the next whole tick: never before the next tick, however soon.
        ``now`` is the loop's time, if the caller has it."""
        if now is None:
            now = asyncio.get_running_loop().time()
        # A time to come is in a later tick than now's already; only a time past needs moving on.
        slot = math.ceil(when / self.tick) if when > now else math.floor(now / self.tick) + 1
        callbacks = self._due.get(slot)
        if callbacks is None:
            # The running loop is looked up once a tick, not once a call: the lookup is slow on Python 3.11.
            callbacks = self._due[slot] = []
            asyncio.get_running_loop().call_at(slot * self.tick, self._fire, slot)
        callbacks.append(callback)

    def _fire(self, slot: int) -> None:
        now = asyncio.get_running_loop().time()
        for callback in self._due.pop(slot):
            callback(now)


def _release(future: asyncio.Future[None], now: float) -> None:
    if not future.done():
        future.set_result(None)


class _Beat:
    """Sends a stream's frames at its pace, each from the clock's tick when it is due: a chunk costs no
    timer and no task switch of its own. ``send`` is stepped by hand, which finishes at once unless the
    client reads more slowly than the stream is written; then the stream's task finishes that send, and
    the beat goes on from the next frame's time.
    """

    def __init__(
        self, clock: Clock, frames: Iterator[bytes], send: Send, gap: float, spread: Callable[[float], float] | None
    ) -> None:
        self._clock = clock
        self._frames = frames
        # An ASGI server's send is a coroutine function, and a coroutine can be stepped by hand.
        self._send = cast(Callable[[dict[str, Any]], Coroutine[Any, Any, None]], send)
        self._gap = gap
        self._spread = spread
        self._due = 0.0
        # Done when the stream's task is to go on: the frames are all sent, or one failed, or a send waits.
        self._step_done: asyncio.Future[None] | None = None
        # A send stepped by hand that waits for what it yielded, for the task to finish.
        self._waiting: tuple[Coroutine[Any, Any, None], Any] | None = None

    async def run(self, first: float) -> None:
        """Send the frames, the first at the loop's time ``first``, each further one a gap later."""
        loop = asyncio.get_running_loop()
        self._due = first
        while True:
            self._step_done = loop.create_future()
            now = loop.time()
            if self._due > now:
                self._clock.later(self._due, self._step, now)
            else:
                self._step(now)
            try:
                await self._step_done
            except asyncio.CancelledError:
                if self._waiting is not None:
                    # Cancelled just as a send began to wait: the send goes with the stream.
                    self._waiting[0].close()
                raise
            if self._waiting is None:
                return
            waiting, self._waiting = self._waiting, None
            await _finish(*waiting)

    def _step(self, now: float) -> None:
        done = self._step_done
        assert done is not None
        if done.done():
            # The stream's task was cancelled: its client went away.
            return
        try:
            # Whatever is due by now goes now: more than one frame when the gap is shorter than a tick.
            due, gap, spread, late = self._due, self._gap, self._spread, now - self._clock.tick
            # However short the gap, the other streams' turn comes after a few frames.
            for _ in range(IN_A_ROW):
                frame = next(self._frames, None)
                if frame is None:
                    done.set_result(None)
                    return
                # The next frame's time: a gap after this one's. One sent more than a tick late moves the
                # beat, as a busy model writes more slowly: a late stream does not catch up in a burst.
                due = max(due, late) + (gap if spread is None else spread(gap))
                sending = self._send({"type": "http.response.body", "body": frame, "more_body": True})
                try:
                    waiting = sending.send(None)
                except StopIteration:
                    if due > now:
                        break
                else:
                    self._due = due
                    self._waiting = sending, waiting
                    done.set_result(None)
                    return
            self._due = due
            self._clock.later(due, self._step, now)
        except Exception as error:
            done.set_exception(error)


@types.coroutine
def _finish(coroutine: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """Finish ``coroutine``, stepped by hand until it waited for ``waiting``, in the running task."""
    while True:
        try:
            value = yield waiting
        except BaseException as error:  # the task was cancelled: so is what it waited for
            step = partial(coroutine.throw, error)
        else:
            step = partial(coroutine.send, value)
        try:
            waiting = step()
        except StopIteration:
            return


class Pacer:
    """Paces answers as ``timing`` says; headers can override the time to first token and between tokens.

    ``load``, if given, is the factor every interval is stretched by now (``slowdown``), asked again for
    each: as more answers run at once, each of them comes more slowly, as from a batching engine.
    """

    def __init__(self, timing: Timing, load: Callable[[], float] | None = None) -> None:
        self.timing = timing
        self.clock = Clock()
        self._random = random.Random(timing.seed)
        self._load = load

    def pace(self, prompt_tokens: int, ttft_ms: float | None = None, itl_ms: float | None = None) -> Pace:
        timing = self.timing
        first = timing.ttft_ms if ttft_ms is None else ttft_ms
        first += timing.prefill_ms_per_1k * prompt_tokens / 1000
        if self._load is not None:
            first *= self._load()
        return Pace(self.spread(first / 1000), (timing.itl_ms if itl_ms is None else itl_ms) / 1000)

    def spread(self, seconds: float) -> float:
        """``seconds``, moved by up to ``jitter`` of itself either way."""
        jitter = self.timing.jitter
        return seconds * (1 + jitter * (2 * self._random.random() - 1)) if jitter else seconds

    def stream(self, frames: Iterator[bytes], send: Send, pace: Pace) -> Coroutine[Any, Any, None]:
        """Send ``frames`` as ASGI body messages: the first once ``pace.first`` has passed, each further one
        ``pace.gap`` after the one before."""
        first = asyncio.get_running_loop().time() + pace.first
        return _Beat(self.clock, frames, send, pace.gap, self._stretched()).run(first)

    def _stretched(self) -> Callable[[float], float] | None:
        """What a gap becomes as it is taken: stretched by the load now, then moved by the jitter."""
        spread, load = (self.spread if self.timing.jitter else None), self._load
        if load is None:
            return spread
        if spread is None:
            return lambda gap: gap * load()
        return lambda gap: spread(gap * load())

    def whole(self, pace: Pace, tokens: int) -> float:
        """Seconds until the last of ``tokens`` is written."""
        gap = pace.gap if self._load is None else pace.gap * self._load()
        return pace.first + self.spread(gap * max(tokens - 1, 0))


def slowdown(factor: float, running: Callable[[], int], capacity: int) -> Callable[[], float]:
    """The stretch of every interval with ``running()`` answers running out of ``capacity``: 1 with one,
    ``factor`` with ``capacity`` or more, and linear in between, ``1 + (factor - 1) * (r - 1) / (capacity - 1)``."""

    def load() -> float:
        share = (running() - 1) / (capacity - 1) if capacity > 1 else 1.0
        return 1 + (factor - 1) * min(max(share, 0.0), 1.0)

    return load
