"""The shared state: Local's semantics, and the same through a real coordinator, from coroutines and processes."""

from __future__ import annotations

import asyncio
import functools
import math
import random
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from mockgpt.errors import MockGPTError
from mockgpt.serve.coordinator import Coordinator, Remote
from mockgpt.serve.state import Limits, Local, SharedStateError, State, Verdict

ROOT = Path(__file__).parent.parent


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A plain test function whose body is a coroutine, run in a new event loop."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


async def queued(state: State, order: list[int], number: int) -> None:
    assert await state.acquire()
    order.append(number)


# Local: answer slots


@run
async def test_waiters_are_granted_in_arrival_order() -> None:
    local = Local(Limits(max_concurrency=1))
    assert await local.acquire()
    order: list[int] = []
    tasks = []
    for number in range(5):
        tasks.append(asyncio.create_task(queued(local, order, number)))
        await asyncio.sleep(0)
    assert local.gate.waiting == 5
    for number in range(5):
        await local.release()
        await asyncio.sleep(0)
        assert order == list(range(number + 1))
    await asyncio.gather(*tasks)
    await local.release()
    assert (local.gate.busy, local.gate.waiting) == (0, 0)


@pytest.mark.parametrize("max_queue", [0, 2])
@run
async def test_a_full_queue_refuses_at_once(max_queue: int) -> None:
    local = Local(Limits(max_concurrency=1, max_queue=max_queue))
    assert await local.acquire()
    waiters = [asyncio.create_task(local.acquire()) for _ in range(max_queue)]
    await asyncio.sleep(0)
    assert await local.acquire() is False
    for _ in waiters:
        await local.release()
    assert all(await asyncio.gather(*waiters))


@run
async def test_a_waiter_cancelled_leaves_the_queue() -> None:
    local = Local(Limits(max_concurrency=1, max_queue=1))
    assert await local.acquire()
    waiter = asyncio.create_task(local.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert local.gate.waiting == 0
    await local.release()
    assert local.gate.busy == 0
    assert await local.acquire()


@run
async def test_a_slot_granted_as_its_waiter_is_cancelled_is_given_back() -> None:
    local = Local(Limits(max_concurrency=1, max_queue=1))
    assert await local.acquire()
    waiter = asyncio.create_task(local.acquire())
    await asyncio.sleep(0)
    # The slot passes to the waiter, and the waiter is cancelled before it runs again.
    await local.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (local.gate.busy, local.gate.waiting) == (0, 0)


@run
async def test_without_a_limit_every_acquire_is_granted() -> None:
    local = Local(Limits())
    assert all([await local.acquire() for _ in range(1000)])
    for _ in range(1001):
        await local.release()
    assert local.gate.busy == 0


# Local: rate limits


@run
async def test_rpm_allows_the_limit_then_denies_until_refilled() -> None:
    clock = Clock()
    local = Local(Limits(rpm=5), clock=clock)
    verdicts = [await local.charge("key", 100) for _ in range(5)]
    assert all(verdict.allowed for verdict in verdicts)
    assert [verdict.remaining_requests for verdict in verdicts] == [4, 3, 2, 1, 0]
    assert [verdict.reset_requests for verdict in verdicts] == pytest.approx([12, 24, 36, 48, 60])
    assert verdicts[0].limit_requests == 5 and verdicts[0].retry_after == 0
    assert verdicts[0].limit_tokens is verdicts[0].remaining_tokens is verdicts[0].reset_tokens is None
    denied = await local.charge("key", 100)
    assert (denied.allowed, denied.reason, denied.remaining_requests) == (False, "requests", 0)
    assert denied.retry_after == pytest.approx(12)
    clock.now += 6
    assert (await local.charge("key", 100)).retry_after == pytest.approx(6)
    clock.now += 6
    allowed = await local.charge("key", 100)
    assert allowed.allowed and allowed.remaining_requests == 0
    assert allowed.reset_requests == pytest.approx(60)


@run
async def test_tpm_charges_tokens_and_a_denied_request_takes_nothing() -> None:
    clock = Clock()
    local = Local(Limits(rpm=100, tpm=100), clock=clock)
    first = await local.charge("key", 60)
    assert (first.allowed, first.remaining_tokens, first.limit_tokens) == (True, 40, 100)
    assert first.reset_tokens == pytest.approx(36)
    denied = await local.charge("key", 50)
    assert (denied.allowed, denied.reason, denied.remaining_tokens, denied.remaining_requests) == (False, "tokens", 40, 99)
    assert denied.retry_after == pytest.approx(6)
    assert (await local.charge("key", 40)).remaining_tokens == 0
    clock.now += 30
    assert (await local.charge("key", 50)).allowed


@run
async def test_more_tokens_than_the_minute_allows_are_never_allowed() -> None:
    local = Local(Limits(tpm=100), clock=Clock())
    verdict = await local.charge("key", 101)
    assert (verdict.allowed, verdict.reason, verdict.retry_after) == (False, "tokens", math.inf)
    assert verdict.remaining_tokens == 100
    assert verdict.limit_requests is None
    assert (await local.charge("key", 100)).allowed


@run
async def test_the_budget_refills_continuously_up_to_the_limit() -> None:
    clock = Clock()
    local = Local(Limits(rpm=60, tpm=600), clock=clock)
    for _ in range(60):
        await local.charge("key", 10)
    clock.now += 2.5
    verdict = await local.charge("key", 10)
    assert (verdict.allowed, verdict.remaining_requests, verdict.remaining_tokens) == (True, 1, 15)
    clock.now += 3600
    verdict = await local.charge("key", 0)
    assert (verdict.remaining_requests, verdict.remaining_tokens, verdict.reset_tokens) == (59, 600, 0)


@run
async def test_each_key_has_its_own_budget() -> None:
    local = Local(Limits(rpm=1), clock=Clock())
    assert (await local.charge("a", 1)).allowed
    assert not (await local.charge("a", 1)).allowed
    assert (await local.charge("b", 1)).allowed
    assert (await local.charge("", 1)).allowed


@run
async def test_without_limits_everything_is_allowed() -> None:
    verdict = await Local(Limits()).charge("key", 10**9)
    assert verdict == Verdict(True, None, None, None, None, None, None, None, 0.0)


def test_keys_with_full_budgets_are_forgotten() -> None:
    clock = Clock()
    local = Local(Limits(rpm=10), clock=clock)
    for number in range(10_000):
        local.budgets.charge(f"key-{number}", 1)
    clock.now += 60
    for number in range(10_000):
        local.budgets.charge(f"other-{number}", 1)
    assert len(local.budgets) < 15_000
    # Only full budgets go: a key whose budget is spent is still spent.
    for _ in range(9):
        local.budgets.charge("other-0", 1)
    assert not local.budgets.charge("other-0", 1).allowed


@pytest.mark.parametrize("limits", [{"max_concurrency": 0}, {"max_queue": -1}, {"rpm": 0}, {"tpm": 0}, {"fault_keys": 0}])
def test_limits_reject_impossible_values(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        Limits(**limits)


# Local: fault sequences


@run
async def test_fault_step_counts_each_key() -> None:
    local = Local(Limits())
    assert [await local.fault_step("a") for _ in range(3)] == [0, 1, 2]
    assert await local.fault_step("b") == 0
    assert await local.fault_step("a") == 3


@run
async def test_fault_keys_least_recently_used_are_forgotten() -> None:
    local = Local(Limits(fault_keys=2))
    assert [await local.fault_step(key) for key in "abac"] == [0, 0, 1, 0]
    assert len(local.faults) == 2
    assert await local.fault_step("a") == 2
    assert await local.fault_step("b") == 0
    assert await local.fault_step("c") == 0


# Remote, in this process, to a real coordinator


def coordinator(tmp_path: Path, **limits: int) -> Coordinator:
    return Coordinator(Limits(**limits), str(tmp_path / "c.sock"))


@run
async def test_remote_answers_as_local(tmp_path: Path) -> None:
    with coordinator(tmp_path, rpm=2, tpm=1000) as served:
        remote = Remote(served.path)
        try:
            verdicts = [await remote.charge("key", 10) for _ in range(3)]
            assert [verdict.allowed for verdict in verdicts] == [True, True, False]
            assert (verdicts[1].remaining_tokens, verdicts[2].reason) == (980, "requests")
            assert verdicts[2].retry_after == pytest.approx(30, abs=1)
            assert [await remote.fault_step("f") for _ in range(3)] == [0, 1, 2]
        finally:
            await remote.close()


@run
async def test_many_coroutines_share_one_connection(tmp_path: Path) -> None:
    with coordinator(tmp_path, rpm=50) as served:
        remote = Remote(served.path)
        try:
            verdicts = await asyncio.gather(*(remote.charge("key", 1) for _ in range(200)))
            assert sum(verdict.allowed for verdict in verdicts) == 50
            steps = await asyncio.gather(*(remote.fault_step("f") for _ in range(100)))
            assert sorted(steps) == list(range(100))
        finally:
            await remote.close()


@run
async def test_grants_follow_arrival_order_across_connections(tmp_path: Path) -> None:
    with coordinator(tmp_path, max_concurrency=1) as served:
        gate = served.local.gate
        remotes = [Remote(served.path) for _ in range(6)]
        try:
            assert await remotes[0].acquire()
            order: list[int] = []
            tasks = []
            for number, remote in enumerate(remotes[1:]):
                tasks.append(asyncio.create_task(queued(remote, order, number)))
                await until(lambda: gate.waiting == number + 1)
            for number, remote in enumerate(remotes[:-1]):
                await remote.release()
                await until(lambda: len(order) == number + 1)
            await asyncio.gather(*tasks)
            assert order == list(range(5))
        finally:
            for remote in remotes:
                await remote.close()
        await until(lambda: gate.busy == 0)


def test_remote_works_on_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario(path: str) -> None:
        remote = Remote(path)
        try:
            assert await remote.acquire()
            assert (await remote.charge("key", 1)).allowed
            await remote.release()
        finally:
            await remote.close()

    # uvicorn's workers run on uvloop when it is installed.
    with coordinator(tmp_path, max_concurrency=1, rpm=1) as served:
        uvloop.run(scenario(served.path))
        wait_until(lambda: served.local.gate.busy == 0)


@run
async def test_a_full_queue_refuses_remotely(tmp_path: Path) -> None:
    with coordinator(tmp_path, max_concurrency=1, max_queue=1) as served:
        remote = Remote(served.path)
        try:
            assert await remote.acquire()
            waiter = asyncio.create_task(remote.acquire())
            await until(lambda: served.local.gate.waiting == 1)
            assert await remote.acquire() is False
            await remote.release()
            assert await waiter
        finally:
            await remote.close()


@run
async def test_a_remote_waiter_cancelled_leaves_the_queue(tmp_path: Path) -> None:
    with coordinator(tmp_path, max_concurrency=1) as served:
        gate = served.local.gate
        remote = Remote(served.path)
        try:
            assert await remote.acquire()
            waiter = asyncio.create_task(remote.acquire())
            await until(lambda: gate.waiting == 1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await until(lambda: gate.waiting == 0)
            assert gate.busy == 1
            await remote.release()
            await until(lambda: gate.busy == 0)
        finally:
            await remote.close()


@pytest.mark.parametrize("connections", [1, 2])
@run
async def test_a_slot_granted_as_its_remote_waiter_is_cancelled_is_given_back(tmp_path: Path, connections: int) -> None:
    with coordinator(tmp_path, max_concurrency=1) as served:
        gate = served.local.gate
        holder, waiting = (Remote(served.path), Remote(served.path)) if connections == 2 else (Remote(served.path),) * 2
        try:
            assert await holder.acquire()
            waiter = asyncio.create_task(waiting.acquire())
            await until(lambda: gate.waiting == 1)
            # The grant reaches the worker after the cancel has left it.
            await holder.release()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await until(lambda: (gate.busy, gate.waiting) == (0, 0))
        finally:
            await holder.close()
            await waiting.close()


@run
async def test_cancellations_at_any_moment_leak_no_slot(tmp_path: Path) -> None:
    with coordinator(tmp_path, max_concurrency=3) as served:
        gate = served.local.gate
        remotes = [Remote(served.path) for _ in range(3)]
        holding = 0
        most = 0

        async def work(remote: Remote) -> None:
            nonlocal holding, most
            if await remote.acquire():
                holding += 1
                most = max(most, holding)
                try:
                    await asyncio.sleep(0)
                finally:
                    holding -= 1
                    await remote.release()

        chance = random.Random(7)
        try:
            tasks = [asyncio.create_task(work(remotes[number % 3])) for number in range(300)]
            for task in chance.sample(tasks, 100):
                await asyncio.sleep(chance.choice([0, 0, 0.0001, 0.001]))
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await until(lambda: (gate.busy, gate.waiting) == (0, 0))
            assert most <= 3
        finally:
            for remote in remotes:
                await remote.close()


@run
async def test_closing_a_remote_frees_its_slots_and_waiters(tmp_path: Path) -> None:
    with coordinator(tmp_path, max_concurrency=2) as served:
        gate = served.local.gate
        leaving, staying = Remote(served.path), Remote(served.path)
        try:
            assert await leaving.acquire() and await leaving.acquire()
            dropped = asyncio.create_task(leaving.acquire())
            await until(lambda: gate.waiting == 1)
            granted = asyncio.create_task(staying.acquire())
            await until(lambda: gate.waiting == 2)
            await leaving.close()
            assert await granted
            with pytest.raises(SharedStateError):
                await dropped
            assert (gate.busy, gate.waiting) == (1, 0)
        finally:
            await staying.close()


@run
async def test_an_unreachable_coordinator_is_a_clear_error(tmp_path: Path) -> None:
    remote = Remote(str(tmp_path / "nobody.sock"))
    with pytest.raises(SharedStateError, match="cannot reach the mockgpt coordinator at .*nobody.sock") as raised:
        await remote.charge("key", 1)
    assert isinstance(raised.value, MockGPTError) and "\n" not in str(raised.value)
    await remote.release()


@run
async def test_a_coordinator_gone_fails_what_waits_and_what_follows(tmp_path: Path) -> None:
    served = coordinator(tmp_path, max_concurrency=1)
    served.start()
    remote = Remote(served.path)
    try:
        assert await remote.acquire()
        waiter = asyncio.create_task(remote.acquire())
        await until(lambda: served.local.gate.waiting == 1)
        await asyncio.to_thread(served.stop)
        with pytest.raises(SharedStateError, match="lost the connection"):
            await waiter
        with pytest.raises(SharedStateError, match="lost the connection"):
            await remote.fault_step("f")
        await remote.release()
        assert not Path(served.path).exists()
    finally:
        await remote.close()


def test_a_coordinator_that_cannot_listen_says_why(tmp_path: Path) -> None:
    with pytest.raises(SharedStateError, match="cannot serve the shared state at .*missing"):
        Coordinator(Limits(), str(tmp_path / "missing" / "c.sock")).start()


@run
async def test_garbage_closes_that_connection_only(tmp_path: Path) -> None:
    with coordinator(tmp_path, rpm=10) as served:
        remote = Remote(served.path)
        try:
            with socket.socket(socket.AF_UNIX) as stranger:
                stranger.connect(served.path)
                stranger.sendall(b"\xff\xff\xff\xff not a frame")
                assert stranger.recv(16) == b""
            assert (await remote.charge("key", 1)).allowed
        finally:
            await remote.close()


# Remote, from real processes


CHILD = """
import asyncio, os, sys
from mockgpt.serve.coordinator import Remote

async def main(path, action):
    remote = Remote(path)
    await remote.fault_step("connect")
    if action == "charge":
        print("ready", flush=True)
        sys.stdin.readline()
        verdicts = await asyncio.gather(*(remote.charge("key", 1) for _ in range(5)))
        print(sum(verdict.allowed for verdict in verdicts), flush=True)
    else:
        print(await remote.acquire(), flush=True)
        sys.stdin.readline()
        if action == "exit":
            os._exit(0)
        await remote.release()
    await remote.close()

asyncio.run(main(*sys.argv[1:]))
"""


class Child:
    """A worker process with a Remote to ``path``, driven line by line."""

    def __init__(self, path: str, action: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, action], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def line(self, timeout: float = 20) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, "the child said nothing"
        return self.process.stdout.readline().strip()

    def tell(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> int:
        self.process.communicate(timeout=20)
        return self.process.returncode


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.process.kill()
        child.process.communicate()


def test_rpm_holds_across_processes(tmp_path: Path, children: list[Child]) -> None:
    with coordinator(tmp_path, rpm=5) as served:
        children += [Child(served.path, "charge"), Child(served.path, "charge")]
        assert [child.line() for child in children] == ["ready", "ready"]
        for child in children:
            child.tell()
        assert sum(int(child.line()) for child in children) == 5
        assert [child.finish() for child in children] == [0, 0]


def test_one_slot_is_held_by_one_process_at_a_time(tmp_path: Path, children: list[Child]) -> None:
    with coordinator(tmp_path, max_concurrency=1) as served:
        gate = served.local.gate
        first = Child(served.path, "hold")
        children.append(first)
        assert first.line() == "True"
        second = Child(served.path, "hold")
        children.append(second)
        wait_until(lambda: gate.waiting == 1)
        assert gate.busy == 1
        first.tell()
        assert second.line() == "True"
        assert first.finish() == 0
        second.tell()
        assert second.finish() == 0
        wait_until(lambda: (gate.busy, gate.waiting) == (0, 0))


def test_a_process_that_dies_gives_back_its_slots(tmp_path: Path, children: list[Child]) -> None:
    with coordinator(tmp_path, max_concurrency=1) as served:
        gate = served.local.gate
        exiting = Child(served.path, "exit")
        children.append(exiting)
        assert exiting.line() == "True"
        killed = Child(served.path, "hold")
        children.append(killed)
        wait_until(lambda: gate.waiting == 1)
        exiting.tell()
        assert exiting.finish() == 0
        assert killed.line() == "True"
        waiting = Child(served.path, "hold")
        children.append(waiting)
        wait_until(lambda: gate.waiting == 1)
        killed.process.kill()
        assert waiting.line() == "True"
        waiting.process.kill()
        wait_until(lambda: (gate.busy, gate.waiting) == (0, 0))


def test_a_waiting_process_that_dies_leaves_the_queue(tmp_path: Path, children: list[Child]) -> None:
    with coordinator(tmp_path, max_concurrency=1) as served:
        gate = served.local.gate
        holder = Child(served.path, "hold")
        children.append(holder)
        assert holder.line() == "True"
        waiter = Child(served.path, "hold")
        children.append(waiter)
        wait_until(lambda: gate.waiting == 1)
        waiter.process.kill()
        wait_until(lambda: gate.waiting == 0)
        holder.tell()
        assert holder.finish() == 0
        wait_until(lambda: gate.busy == 0)


def test_both_kinds_of_state_are_states() -> None:
    states: list[State] = [Local(Limits()), Remote("unused.sock")]
    assert all(callable(getattr(state, name)) for state in states for name in ("acquire", "release", "charge", "fault_step", "close"))
