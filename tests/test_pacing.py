"""Paced streams: frames leave at their pace from the shared clock, and a slow or vanishing client is
handled as the stream's own task would. Each test runs a real event loop and times what it was sent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mockgpt.serve.pacing import Pace, Pacer, Timing

FRAMES = [b"frame %d" % number for number in range(10)]


class Receiver:
    """An ASGI send that keeps the bodies it is sent, with the loop's time of each; ``slow`` maps a frame's
    number to what its send awaits before it is taken, as a server waits for a client that reads slowly."""

    def __init__(self, slow: dict[int, Callable[[], Coroutine[Any, Any, None]]] | None = None) -> None:
        self.slow = slow or {}
        self.bodies: list[bytes] = []
        self.times: list[float] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        assert message["type"] == "http.response.body" and message["more_body"]
        wait = self.slow.get(len(self.bodies))
        if wait is not None:
            await wait()
        self.bodies.append(message["body"])
        self.times.append(asyncio.get_running_loop().time())


async def stream(receiver: Receiver, pace: Pace, frames: list[bytes] = FRAMES) -> float:
    """Stream ``frames`` to ``receiver`` at ``pace``; the loop's time it started."""
    started = asyncio.get_running_loop().time()
    await Pacer(Timing()).stream(iter(frames), receiver, pace)
    return started


def test_frames_leave_at_their_pace() -> None:
    receiver = Receiver()
    started = asyncio.run(stream(receiver, Pace(first=0.02, gap=0.005)))
    assert receiver.bodies == FRAMES
    for number, sent in enumerate(receiver.times):
        assert sent >= started + 0.02 + 0.005 * number


def test_a_gap_shorter_than_a_tick_sends_several_frames_a_tick() -> None:
    receiver = Receiver()
    frames = [b"%d" % number for number in range(200)]
    started = asyncio.run(stream(receiver, Pace(first=0.0, gap=0.0001), frames))
    assert receiver.bodies == frames
    assert all(sent >= started + 0.0001 * number - 0.001 for number, sent in enumerate(receiver.times))
    # 200 frames 0.1 ms apart take 20 ms of 1 ms ticks, not a tick each.
    assert len({round(sent, 3) for sent in receiver.times}) < 50


def test_a_late_stream_goes_on_at_its_pace_rather_than_catch_up() -> None:
    async def block() -> None:
        time.sleep(0.03)  # the whole server is busy: no timer fires meanwhile

    receiver = Receiver(slow={2: block})
    asyncio.run(stream(receiver, Pace(first=0.0, gap=0.005)))
    assert receiver.bodies == FRAMES
    # Six frames fell due while the server was busy: the first goes, and the rest follow a gap apart.
    gaps = [later - earlier for earlier, later in zip(receiver.times[3:], receiver.times[4:])]
    assert all(gap >= 0.0035 for gap in gaps), gaps


def test_a_send_that_waits_is_finished_by_the_stream_then_the_pace_goes_on() -> None:
    async def slowly() -> None:
        await asyncio.sleep(0.03)

    receiver = Receiver(slow={3: slowly, 7: slowly})
    started = asyncio.run(stream(receiver, Pace(first=0.0, gap=0.002)))
    assert receiver.bodies == FRAMES
    assert receiver.times[3] - receiver.times[2] >= 0.03 and receiver.times[7] - receiver.times[6] >= 0.03
    assert all(later > earlier for earlier, later in zip(receiver.times, receiver.times[1:]))
    assert receiver.times[-1] >= started + 0.06


@pytest.mark.parametrize("waiting", ["for its pace", "for a send just begun", "for a send"])
def test_a_cancelled_stream_sends_nothing_more(waiting: str) -> None:
    ended: list[str] = []
    entered = asyncio.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("send")

    receiver = Receiver(slow={} if waiting == "for its pace" else {3: forever})

    async def main() -> None:
        task = asyncio.ensure_future(stream(receiver, Pace(first=0.0, gap=0.005)))
        if waiting != "for its pace":
            await entered.wait()
        if waiting == "for a send":
            # The stream's task has taken the waiting send over.
            await asyncio.sleep(0.01)
        while len(receiver.bodies) < 3:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Long enough for several more frames, had the stream gone on.
        await asyncio.sleep(0.04)

    asyncio.run(main())
    assert receiver.bodies == FRAMES[:3]
    # A send that waits for its client is ended with the stream.
    assert ended == ([] if waiting == "for its pace" else ["send"])


@pytest.mark.parametrize("when", [0, 4])
def test_a_failing_send_fails_the_stream(when: int) -> None:
    async def broken() -> None:
        raise RuntimeError("the connection broke")

    receiver = Receiver(slow={when: broken})
    with pytest.raises(RuntimeError, match="the connection broke"):
        asyncio.run(stream(receiver, Pace(first=0.0, gap=0.002)))
    assert receiver.bodies == FRAMES[:when]
