"""Every request costs time linear in its size: the same hostile request at N and at 4N, through a real
server, takes at most twice 4x as long at 4N (a cost that grows with the square would take 16x), and
the server answers at once afterwards. Bounds on what the server keeps of a request's headers."""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mockgpt.serve.upstream import Stream
from mockgpt.testing import MockServer

from .conftest import sharegpt

CONVERSATIONS = [
    sharegpt("hello", ("human", "Hello!"), ("gpt", "Hi! How can I help?"), ("human", "Thanks."), ("gpt", "Any time.")),
    sharegpt("sys", ("system", "Be terse."), ("human", "2+2?"), ("gpt", "4.")),
]
# Twice the growth of a linear cost: a quadratic one shows 16x.
MOST = 2 * 4


@pytest.fixture(scope="module")
def ignoring_system(index: Path) -> Iterator[MockServer]:
    with MockServer(index, ignore_system=True) as server:
        yield server


def seconds(post: Callable[[], httpx.Response], status: int) -> float:
    """The median time of three requests, each answered with ``status``."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = post()
        times.append(time.perf_counter() - started)
        assert response.status_code == status, response.text[:300]
    return statistics.median(times)


def assert_linear(server: MockServer, path: str, body: Callable[[int], dict[str, Any]], n: int, status: int = 404) -> None:
    """The request ``body(n)`` on ``path`` takes at most ``MOST`` times as long at 4n as at n."""
    # Encoded once, so that only the server's time grows with the body.
    small, large = json.dumps(body(n)).encode(), json.dumps(body(4 * n)).encode()
    with httpx.Client(base_url=server.base_url, timeout=120, headers={"content-type": "application/json"}) as http:
        # A worker may still be starting when the first request comes.
        http.post(path, content=small)
        at_n = seconds(lambda: http.post(path, content=small), status)
        at_4n = seconds(lambda: http.post(path, content=large), status)
        assert at_4n <= MOST * at_n, f"{at_n:.3f} s at {n}, {at_4n:.3f} s at {4 * n}"
        started = time.perf_counter()
        assert http.get(f"{server.url}/health", timeout=2).status_code == 200
        assert time.perf_counter() - started < 1


def chat(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": messages}


def one_character_messages(n: int) -> dict[str, Any]:
    return chat([{"role": ("user", "assistant")[i % 2], "content": "x"} for i in range(n)])


def test_a_miss_of_many_messages(server: MockServer) -> None:
    assert_linear(server, "/chat/completions", one_character_messages, 100_000)


def test_a_synthesized_miss_of_many_messages(index: Path) -> None:
    with MockServer(index, misses="synthesize") as synthesizing:
        assert_linear(synthesizing, "/chat/completions", one_character_messages, 100_000, status=200)


def test_a_prompt_of_many_messages_through_the_prompt_cache(index: Path) -> None:
    # Two workers: the prefixes cross the coordinator's socket, a bounded number of them.
    with MockServer(index, misses="synthesize", prompt_cache=True, workers=2) as caching:
        assert_linear(caching, "/chat/completions", one_character_messages, 100_000, status=200)


def test_a_miss_that_follows_a_recorded_conversation(server: MockServer) -> None:
    recorded = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi! How can I help?"}]
    assert_linear(server, "/chat/completions", lambda n: chat(recorded + one_character_messages(n)["messages"]), 100_000)


def test_a_miss_with_ignore_system(ignoring_system: MockServer) -> None:
    def body(n: int) -> dict[str, Any]:
        messages = one_character_messages(n)["messages"]
        return chat([{"role": "system", "content": "Be terse."}, *messages, {"role": "system", "content": "x"}])

    assert_linear(ignoring_system, "/chat/completions", body, 100_000)


def test_a_responses_miss_of_many_items(server: MockServer) -> None:
    def body(n: int) -> dict[str, Any]:
        return {"model": "gpt-4o", "input": [{"role": ("user", "assistant")[i % 2], "content": "x"} for i in range(n)]}

    assert_linear(server, "/responses", body, 100_000)


def test_a_responses_input_of_many_function_calls(server: MockServer) -> None:
    def body(n: int) -> dict[str, Any]:
        calls = [{"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"} for i in range(n)]
        return {"model": "gpt-4o", "input": [{"role": "user", "content": "Hello!"}, *calls]}

    assert_linear(server, "/responses", body, 20_000)


def test_combining_marks_out_of_canonical_order(server: MockServer) -> None:
    # Python's own NFC reorders such marks in time that grows with the square of their number.
    assert_linear(server, "/chat/completions", lambda n: chat([{"role": "user", "content": "a" + "\u0301\u0316" * n}]), 16_000)


def test_wide_tool_call_arguments(server: MockServer) -> None:
    def body(n: int) -> dict[str, Any]:
        arguments = "[" + ",".join(["[1,2,{}]"] * n) + "]"
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
        return chat([{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": None, "tool_calls": [call]}])

    assert_linear(server, "/chat/completions", body, 20_000)


@pytest.mark.parametrize("depth", [129, 1_000, 100_000])
def test_arguments_nested_too_deeply_are_a_400(server: MockServer, depth: int) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * depth + "]" * depth}}
    messages = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": None, "tool_calls": [call]}]
    response = httpx.post(f"{server.base_url}/chat/completions", json=chat(messages))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    assert "nested more than 128 levels deep" in error["message"]
    nested = "[" * 128 + "]" * 128
    call["function"]["arguments"] = nested  # type: ignore[index]
    assert httpx.post(f"{server.base_url}/chat/completions", json=chat(messages)).status_code == 404


def test_a_legacy_completion_of_many_prompts(server: MockServer) -> None:
    assert_linear(server, "/completions", lambda n: {"model": "m", "prompt": ["Hello!"] * n + ["x"]}, 5_000)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_embeddings_of_many_inputs(server: MockServer) -> None:
    # Every input its own words, none seen before: each costs the same.
    def body(n: int) -> dict[str, Any]:
        return {"model": "text-embedding-3-small", "input": [f"topic {i} word{i} and z{i * 7919}" for i in range(n)]}

    assert_linear(server, "/embeddings", body, 500, status=200)


@pytest.mark.parametrize("text", ["?!", "a", "word ", "\u00e9\u0301"])
def test_an_embeddings_input_over_the_token_limit(server: MockServer, text: str) -> None:
    assert_linear(server, "/embeddings", lambda n: {"model": "text-embedding-3-small", "input": text * n}, 100_000, status=400)


def test_fault_keys_cost_the_server_no_more_than_their_digests(server: MockServer) -> None:
    assert server.pid is not None
    key = "k" * 60_000
    with httpx.Client(base_url=server.base_url) as http:
        for warm in range(20):
            http.post("/chat/completions", json=chat([{"role": "user", "content": "Hello!"}]),
                      headers={"x-mockgpt-fault": "500,ok", "x-mockgpt-fault-key": f"{warm}{key}"})
        before = rss_kb(server.pid)
        for number in range(500):
            headers = {"x-mockgpt-fault": "500,ok", "x-mockgpt-fault-key": f"{uuid.uuid4().hex}{key}"}
            assert http.post("/chat/completions", json=chat([{"role": "user", "content": "Hello!"}]), headers=headers).status_code == 500
        grown = rss_kb(server.pid) - before
    # The keys themselves come to 30 MB.
    assert grown < 10_000, f"grew by {grown} kB"


@pytest.mark.parametrize(("path", "asking"), [("/chat/completions", True), ("/models", True), ("/responses", True), ("/chat/completions", False)])
def test_request_headers_are_bounded(server: MockServer, path: str, asking: bool) -> None:
    # Asking for a fault, or as a plain miss: either way they are read.
    headers = {"x-mockgpt-fault-key": "k" * (70 << 10), "x-mockgpt-fault": "500"} if asking else {"x-padding": "k" * (70 << 10)}
    with httpx.Client(base_url=server.base_url) as http:
        if path == "/models":
            response = http.get(path, headers=headers)
        else:
            response = http.post(path, json=chat([{"role": "user", "content": "Hello?" if asking else "Nobody said this."}]), headers=headers)
        assert response.status_code == 431
        assert response.json()["error"]["code"] == "request_headers_too_large"
        assert http.get(path.replace("/chat/completions", "/models").replace("/responses", "/models")).status_code == 200


def test_a_recorded_stream_line_that_comes_in_pieces() -> None:
    def feed(n: int) -> float:
        stream = Stream()
        piece = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * 64
        started = time.perf_counter()
        for _ in range(n):
            stream.feed(piece)
        stream.feed(b'"}}]}\n\n')
        return time.perf_counter() - started

    at_n = statistics.median(feed(20_000) for _ in range(3))
    at_4n = statistics.median(feed(80_000) for _ in range(3))
    assert at_4n <= MOST * at_n
