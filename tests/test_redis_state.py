"""Replicas that name the same Redis (``--state``) act as one API for rate limits and fault plans: two
real servers, a real ``redis-server`` of the tests' own on a free port, the official client."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import redis

from mockgpt.serve.redis_state import FAULT_TTL, Shared, SharedStateUnreachable
from mockgpt.serve.state import Budgets, Limits, Local
from mockgpt.testing import MockServer
from tests.conftest import sharegpt
from tests.test_prompt_cache import LONG, MESSAGES, assert_cached_steps, chat_usage

pytestmark = [pytest.mark.sdk, pytest.mark.redis]

# CI installs redis-server (.ci/run): there, missing it is a failure, not a reason to skip.
if shutil.which("redis-server") is None and not os.environ.get("CI"):
    pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)", allow_module_level=True)

CONVERSATIONS = [sharegpt("hello", ("human", "Hello!"), ("gpt", "Hi! How can I help you today?")), sharegpt("long", *LONG)]
HELLO = [{"role": "user", "content": "Hello!"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` on a port of its own, with no persistence; stopped and started again on that port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            process.wait(10)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def running(store: RedisServer) -> RedisServer:
    """The tests' Redis, started again if a test stopped it."""
    if store.process is None:
        store.start()
    return store


@contextmanager
def replicas(index: Path, store: RedisServer, workers: int = 1, **options: Any) -> Iterator[tuple[MockServer, MockServer]]:
    """Two servers sharing ``store``, with ``options``; the second with ``workers`` workers."""
    with (
        MockServer(index, state=store.url, **options) as first,
        MockServer(index, state=store.url, workers=workers, **options) as second,
    ):
        yield first, second


def alternating(servers: tuple[MockServer, ...], seen: list[tuple[int, int]] | None = None, **options: Any) -> openai.OpenAI:
    """An official client whose requests, retries too, go to each of ``servers`` in turn, as through a load
    balancer, noting the port and status of each answer in ``seen``; under an API key of its own, so that
    no other test's budget is its."""
    ports = itertools.cycle([port(server) for server in servers])
    answers = [] if seen is None else seen

    def route(request: Any) -> None:
        request.url = request.url.copy_with(port=next(ports))

    def note(response: Any) -> None:
        answers.append((response.request.url.port, response.status_code))

    http = openai.DefaultHttpxClient(event_hooks={"request": [route], "response": [note]})
    return openai.OpenAI(base_url=servers[0].base_url, api_key=uuid.uuid4().hex, http_client=http, **{"max_retries": 0, **options})


def said(error: openai.APIStatusError) -> str:
    """The message of an error's body, as the server wrote it."""
    assert isinstance(error.body, dict)
    return str(error.body["message"])


def port(server: MockServer) -> int:
    return int(server.url.rpartition(":")[2])


# Rate limits


def test_rpm_holds_across_replicas(index: Path, running: RedisServer) -> None:
    seen: list[tuple[int, int]] = []
    # The second with workers of its own, whose answer slots the coordinator keeps.
    with replicas(index, running, workers=2, rpm=5, max_concurrency=4) as servers, alternating(servers, seen) as client:
        answered = [client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO) for _ in range(5)]  # type: ignore[arg-type]
        assert [response.headers["x-ratelimit-remaining-requests"] for response in answered] == ["4", "3", "2", "1", "0"]
        for _ in range(2):
            # The sixth, and the seventh on the other replica.
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
            limited = caught.value.response
            assert limited.status_code == 429 and caught.value.code == "rate_limit_exceeded"
            assert said(caught.value).startswith(
                "Rate limit reached for gpt-4o on requests per min (RPM): Limit 5, Used 5, Requested 1. Please try again in 1"
            )
            # One request comes back every 12 s, the first since the first request, a moment ago.
            wait = int(limited.headers["retry-after-ms"])
            assert 6_000 <= wait <= 12_000 and limited.headers["retry-after"] == str(math.ceil(wait / 1000))
            assert limited.headers["x-ratelimit-limit-requests"] == "5" and limited.headers["x-ratelimit-remaining-requests"] == "0"
    first, second = map(port, servers)
    assert seen == [(first, 200), (second, 200)] * 2 + [(first, 200), (second, 429), (first, 429)]


def test_tpm_holds_across_replicas(index: Path, running: RedisServer) -> None:
    seen: list[tuple[int, int]] = []
    with replicas(index, running, tpm=100) as servers, alternating(servers, seen) as client:
        # The prompt of "Hello!" is 9 tokens; max_tokens 40 counts whole: 49 a request.
        first = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=40)  # type: ignore[arg-type]
        second = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, max_tokens=40)  # type: ignore[arg-type]
        assert [first.headers["x-ratelimit-remaining-tokens"], second.headers["x-ratelimit-remaining-tokens"]] == ["51", "2"]
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=40)  # type: ignore[arg-type]
    assert caught.value.body["type"] == "tokens"  # type: ignore[index]
    assert said(caught.value).startswith("Rate limit reached for gpt-4o on tokens per min (TPM): Limit 100, Used 98, Requested 49.")
    # Until 47 more tokens are back, at 100 a minute: 28.2 s from the second request.
    assert 26_000 <= int(caught.value.response.headers["retry-after-ms"]) <= 28_200
    assert "x-ratelimit-limit-requests" not in caught.value.response.headers
    assert seen == [(port(servers[0]), 200), (port(servers[1]), 200), (port(servers[0]), 429)]


# Fault plans


def test_a_fault_plan_holds_across_replicas(index: Path, running: RedisServer) -> None:
    seen: list[tuple[int, int]] = []
    with replicas(index, running) as servers, alternating(servers, seen, max_retries=2) as client:
        plan = {"x-mockgpt-fault": "500,500,ok", "x-mockgpt-fault-key": uuid.uuid4().hex, "x-mockgpt-retry-after-ms": "10"}
        response = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, extra_headers=plan)  # type: ignore[arg-type]
        assert response.parse().choices[0].message.content == "Hi! How can I help you today?"
        assert response.retries_taken == 2
        # The plan is used up for its key, on both replicas.
        for _ in range(2):
            assert client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers=plan).choices  # type: ignore[arg-type]
    first, second = map(port, servers)
    assert seen == [(first, 500), (second, 500), (first, 200), (second, 200), (first, 200)]


# Redis going away


def test_a_redis_gone_is_a_503_and_back_is_served(index: Path, running: RedisServer) -> None:
    with replicas(index, running, rpm=1000) as servers, alternating(servers, timeout=10) as client:
        assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices  # type: ignore[arg-type]
        running.stop()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
            assert time.monotonic() - started < 10
            assert caught.value.status_code == 503
            body = caught.value.body
            assert isinstance(body, dict) and (body["type"], body["param"], body["code"]) == ("server_error", None, None)
            assert body["message"].startswith(f"The shared state at {running.url} is unreachable: Error ")
        running.start()
        for _ in range(2):
            assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices  # type: ignore[arg-type]
        # A Redis that hangs, and then goes on.
        assert running.process is not None
        running.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
            assert time.monotonic() - started < 10
            assert caught.value.status_code == 503 and said(caught.value).startswith(f"The shared state at {running.url} is unreachable: ")
        finally:
            running.process.send_signal(signal.SIGCONT)
        for _ in range(2):
            assert client.chat.completions.create(model="gpt-4o", messages=HELLO).choices  # type: ignore[arg-type]


def test_without_limits_only_fault_plans_go_to_redis(index: Path, running: RedisServer) -> None:
    with replicas(index, running) as servers, alternating(servers) as client:
        running.stop()
        assert [client.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content for _ in range(2)] == [  # type: ignore[arg-type]
            "Hi! How can I help you today?"
        ] * 2
        # A fault without a key needs no count either.
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-mockgpt-fault": "502"})  # type: ignore[arg-type]
        assert caught.value.status_code == 502
        keyed = {"x-mockgpt-fault": "500,ok", "x-mockgpt-fault-key": uuid.uuid4().hex}
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers=keyed)  # type: ignore[arg-type]
        assert caught.value.status_code == 503 and "shared state" in said(caught.value)


# Starting


def serve(*options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mockgpt", "serve", "--port", "0", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_an_unreachable_redis_fails_the_start_in_one_line() -> None:
    closed = free_port()
    result = serve("--state", f"redis://user:secret@127.0.0.1:{closed}/0")
    assert result.returncode == 1 and result.stdout == ""
    # One line, without the password.
    assert result.stderr.startswith(f"Error: cannot reach the shared state at redis://127.0.0.1:{closed}/0: Error ")
    assert result.stderr.count("\n") == 1 and "secret" not in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "mockgpt", "serve", "--port", "0"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, env={**os.environ, "MOCKGPT_STATE": "http://127.0.0.1:1/0"},
    )
    assert result.returncode == 1 and result.stderr.startswith("Error: --state http://127.0.0.1:1/0: ") and result.stderr.count("\n") == 1


def test_without_the_redis_client_the_start_says_what_to_install() -> None:
    # As if redis were not installed: its import fails.
    code = "import sys; sys.modules['redis'] = None; from mockgpt.cli import main; main()"
    command = [sys.executable, "-c", code, "serve", "--port", "0", "--state", "redis://127.0.0.1:1/0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stderr) == (1, "Error: --state needs the redis client: pip install 'mockgpt[redis]'\n")


# The state itself, in the process


def test_the_budgets_in_redis_are_the_budgets_in_the_process(running: RedisServer) -> None:
    limits = Limits(rpm=3, tpm=100)
    key = uuid.uuid4().hex

    async def charges() -> list[Any]:
        shared = Shared(running.url, limits, Local(limits))
        try:
            return [await shared.charge(key, tokens) for tokens in [30, 200, 60, 20, 5]]
        finally:
            await shared.close()

    budgets = Budgets(3, 100, time.monotonic)
    here = [budgets.charge(key, tokens) for tokens in [30, 200, 60, 20, 5]]
    there = asyncio.run(charges())
    # All but the seconds, which moved on a little between the charges.
    exact = [(v.allowed, v.reason, v.limit_requests, v.remaining_requests, v.limit_tokens, v.remaining_tokens) for v in here]
    assert [(v.allowed, v.reason, v.limit_requests, v.remaining_requests, v.limit_tokens, v.remaining_tokens) for v in there] == exact
    assert [v.allowed for v in there] == [True, False, True, False, True] and there[1].retry_after == math.inf
    assert [v.reason for v in there] == [None, "tokens", None, "tokens", None]
    for mine, theirs in zip(here, there):
        for field in ["reset_requests", "reset_tokens", "retry_after"]:
            assert getattr(theirs, field) == pytest.approx(getattr(mine, field), abs=0.5)


def test_redis_holds_only_what_is_live(running: RedisServer) -> None:
    limits = Limits(rpm=6_000)
    key, fault = uuid.uuid4().hex, uuid.uuid4().hex

    async def use() -> tuple[int, int]:
        shared = Shared(running.url, limits, Local(limits))
        try:
            await shared.charge(key, 0)
            return await shared.fault_step(fault), await shared.fault_step(fault)
        finally:
            await shared.close()

    assert asyncio.run(use()) == (0, 1)
    with redis.Redis.from_url(running.url) as client:
        # One request of 6,000 a minute comes back in 10 ms: then the bucket is full, as if new.
        assert 0 < client.pttl(f"mockgpt:budget:{key}") <= 10
        assert FAULT_TTL - 5 < client.ttl(f"mockgpt:fault:{fault}") <= FAULT_TTL
        time.sleep(0.05)
        assert not client.exists(f"mockgpt:budget:{key}")


def test_an_unreachable_redis_is_an_error_of_its_own() -> None:
    limits = Limits(rpm=1)

    async def charge() -> None:
        shared = Shared(f"redis://127.0.0.1:{free_port()}/0", limits, Local(limits))
        try:
            await shared.charge("", 0)
        finally:
            await shared.close()

    with pytest.raises(SharedStateUnreachable, match="is unreachable") as raised:
        asyncio.run(charge())
    assert raised.value.status == 503


def test_requests_at_once_are_counted_one_by_one(running: RedisServer) -> None:
    limits = Limits(rpm=20)
    key, fault = uuid.uuid4().hex, uuid.uuid4().hex

    async def at_once() -> tuple[list[Any], list[int]]:
        shared = Shared(running.url, limits, Local(limits))
        try:
            # Sent in batches, as many as wait while one is on its way, yet each charged after the one before.
            verdicts = await asyncio.gather(*[shared.charge(key, 0) for _ in range(50)])
            steps = await asyncio.gather(*[shared.fault_step(fault) for _ in range(50)])
            return list(verdicts), list(steps)
        finally:
            await shared.close()

    verdicts, steps = asyncio.run(at_once())
    assert [verdict.allowed for verdict in verdicts] == [True] * 20 + [False] * 30
    assert [verdict.remaining_requests for verdict in verdicts] == [*range(19, -1, -1)] + [0] * 30
    assert steps == list(range(50))


# Prompt caching


def test_the_prompt_cache_holds_across_replicas(index: Path, running: RedisServer) -> None:
    with replicas(index, running, workers=2, prompt_cache=True) as servers, alternating(servers) as client:
        assert_cached_steps([chat_usage(client, MESSAGES[: 2 * turn + 1]) for turn in range(4)])


def test_the_prompt_prefixes_in_redis_are_those_in_the_process(running: RedisServer) -> None:
    limits = Limits(prompt_prefixes=5)
    keys = [uuid.uuid4().bytes for _ in range(7)]
    asked = [keys[:3], keys[3:6], [keys[0]], [keys[1], keys[5]], keys[:7], [keys[6], keys[3]]]

    async def use(state: Any) -> list[int]:
        found = []
        try:
            for some in asked:
                found.append(await state.cached_prefix(some))
                await state.cache_prefixes(some[:3])
        finally:
            await state.close()
        return found

    with redis.Redis.from_url(running.url) as client:
        client.delete("mockgpt:prefixes")
        there = asyncio.run(use(Shared(running.url, limits, Local(limits))))
        assert client.zcard("mockgpt:prefixes") == 5
    assert there == asyncio.run(use(Local(limits))) == [0, 0, 0, 2, 6, 0]
