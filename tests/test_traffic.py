"""A busy real endpoint: faults, rate limits, capacity, pacing and metrics, through real servers and the
official client. Delays are small, and every timing is measured, never assumed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mockgpt.index.build import build
from mockgpt.testing import MockServer

from .conftest import BROKEN_OFF, TIMED_OUT, sharegpt, write_sharegpt

# The official client's behaviour: CI runs these against the oldest supported openai release too.
pytestmark = pytest.mark.sdk

LONG = " ".join(f"word{n}" for n in range(40))
CONVERSATIONS = [
    sharegpt("hello", ("human", "Hello!"), ("gpt", "Hi! How can I help you today?")),
    sharegpt("long", ("human", "Count."), ("gpt", LONG)),
]
HELLO = [{"role": "user", "content": "Hello!"}]
COUNT = [{"role": "user", "content": "Count."}]


OPENED: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def client(server: MockServer, **options: Any) -> openai.OpenAI:
    """An official client of ``server``, closed when the test ends."""
    OPENED.append(openai.OpenAI(base_url=server.base_url, **{"api_key": "test", "max_retries": 0, **options}))
    return OPENED[-1]


def faulty(plan: str, **headers: str) -> dict[str, str]:
    """Headers of a fault plan under a key of its own."""
    return {"x-mockgpt-fault": plan, "x-mockgpt-fault-key": uuid.uuid4().hex, **headers}


def healthy(server: MockServer) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert client(server).chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content  # type: ignore[arg-type]


# Faults


@pytest.mark.parametrize("workers", [1, 2])
def test_the_client_retries_through_planned_faults(index: Path, workers: int) -> None:
    with MockServer(index, workers=workers) as server:
        retrying = client(server, max_retries=2)
        quick = {"x-mockgpt-retry-after-ms": "10"}
        answer = retrying.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers=faulty("500,500,ok", **quick))  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "Hi! How can I help you today?"
        with pytest.raises(openai.InternalServerError) as caught:
            retrying.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers=faulty("500,500,500", **quick))  # type: ignore[arg-type]
        assert caught.value.body == {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error", "param": None, "code": None,
        }
        # The plan is used up: the key answers from now on.
        headers = faulty("503,ok")
        assert httpx.post(f"{server.base_url}/completions", json={"model": "m", "prompt": "Hello!"}, headers=headers).status_code == 503
        assert httpx.post(f"{server.base_url}/completions", json={"model": "m", "prompt": "Hello!"}, headers=headers).status_code == 200
        assert httpx.post(f"{server.base_url}/completions", json={"model": "m", "prompt": "Hello!"}, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "status, error, code",
    [
        (400, openai.BadRequestError, None),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (403, openai.PermissionDeniedError, "unsupported_country_region_territory"),
        (404, openai.NotFoundError, "model_not_found"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (500, openai.InternalServerError, None),
        # The real API's Cloudflare edge sends its own, with the status as an integer code.
        (502, openai.InternalServerError, 502),
        (503, openai.InternalServerError, None),
        (504, openai.InternalServerError, None),
        (524, openai.InternalServerError, 524),
        (418, openai.APIStatusError, None),
        # Statuses Python's http module does not know.
        (499, openai.APIStatusError, None),
        (599, openai.InternalServerError, None),
    ],
)
def test_every_fault_status_carries_the_error_body(server: MockServer, status: int, error: type[openai.APIStatusError], code: str | int | None) -> None:
    with pytest.raises(error) as caught:
        client(server).chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-mockgpt-fault": str(status)})  # type: ignore[arg-type]
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["code"] == code and body["message"]
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    assert caught.value.response.headers["x-mockgpt-fault"] == str(status)
    if status == 404:
        assert body["message"] == "The model `gpt-4o` does not exist or you do not have access to it."


def test_random_faults_of_any_status(index: Path) -> None:
    with MockServer(index, fault_rate=1.0, fault_status="524,499") as server:
        statuses = {httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}).status_code for _ in range(12)}
        assert statuses == {524, 499}
        assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_429_with_retry_after_ms_is_honoured(server: MockServer) -> None:
    seen: list[tuple[float, int, str | None]] = []
    hooks = {"response": [lambda response: seen.append((time.perf_counter(), response.status_code, response.headers.get("retry-after-ms")))]}
    with openai.DefaultHttpxClient(event_hooks=hooks) as http:
        retrying = client(server, max_retries=1, http_client=http)
        headers = faulty("429,ok", **{"x-mockgpt-retry-after-ms": "300"})
        answer = retrying.chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers=headers)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    (failed, status, wait), (answered, ok, _) = seen
    assert (status, wait, ok) == (429, "300", 200)
    assert answered - failed >= 0.3


def test_a_faults_429_says_when_to_retry(index: Path) -> None:
    hello = {"model": "m", "messages": HELLO}
    with MockServer(index, fault_rate=1.0, fault_status="429") as server:
        response = httpx.post(f"{server.base_url}/chat/completions", json=hello)
    assert response.status_code == 429 and response.headers["x-mockgpt-fault"] == "429"
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("1", "1000")
    assert (response.headers["x-ratelimit-remaining-requests"], response.headers["x-ratelimit-reset-requests"]) == ("0", "1s")
    # No limit was set, so none is reported.
    assert "x-ratelimit-limit-requests" not in response.headers
    with MockServer(index, rpm=50, tpm=1000) as server:
        asked = faulty("429", **{"x-mockgpt-retry-after-ms": "300"})
        response = httpx.post(f"{server.base_url}/chat/completions", json=hello, headers=asked)
    assert response.status_code == 429 and (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("1", "300")
    names = [name for name in response.headers if name.startswith("x-ratelimit-")]
    assert names[:3] == ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"]
    assert [response.headers[name] for name in names[:3]] == ["50", "0", "300ms"]
    assert response.headers["x-ratelimit-limit-tokens"] == "1000"


def test_bad_fault_headers_are_a_400(server: MockServer) -> None:
    for name, value in [
        ("x-mockgpt-fault", "500,explode"), ("x-mockgpt-delay-ms", "soon"), ("x-mockgpt-ttft-ms", "-5"),
        ("x-mockgpt-retry-after-ms", "abc"), ("x-mockgpt-fault", b"5\xb20"), ("x-mockgpt-fault", b"stall-after:\xb2"),
    ]:
        headers = {name: value, "x-mockgpt-fault": "500"} if name == "x-mockgpt-retry-after-ms" else {name: value}
        response = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == name and name in response.json()["error"]["message"]


def content_chunks(stream: Any) -> list[str]:
    return [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]


def test_disconnect_after_n_chunks(server: MockServer) -> None:
    got: list[str] = []
    stream = client(server).chat.completions.create(
        model="gpt-4o", messages=COUNT, stream=True, extra_headers={"x-mockgpt-fault": "disconnect-after:5"}  # type: ignore[arg-type]
    )
    with pytest.raises(BROKEN_OFF):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert len(got) == 5 and LONG.startswith("".join(got))
    # A whole answer: its headers, then the connection closes.
    with pytest.raises(openai.APIConnectionError):
        client(server).chat.completions.create(model="gpt-4o", messages=COUNT, extra_headers={"x-mockgpt-fault": "disconnect-after:0"})  # type: ignore[arg-type]
    healthy(server)
    assert "Exception" not in server.output and "without completing" not in server.output


def test_stall_after_n_chunks_times_the_client_out(server: MockServer) -> None:
    got: list[str] = []
    started = time.perf_counter()
    stream = client(server, timeout=openai.Timeout(1.0)).chat.completions.create(
        model="gpt-4o", messages=COUNT, stream=True, extra_headers={"x-mockgpt-fault": "stall-after:5"}  # type: ignore[arg-type]
    )
    with pytest.raises(TIMED_OUT):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert len(got) == 5 and time.perf_counter() - started >= 1.0
    healthy(server)


def test_delay_times_a_client_out(server: MockServer) -> None:
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client(server, timeout=0.3).chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-mockgpt-delay-ms": "3000"})  # type: ignore[arg-type]
    assert time.perf_counter() - started < 2
    started = time.perf_counter()
    client(server).chat.completions.create(model="gpt-4o", messages=HELLO, extra_headers={"x-mockgpt-delay-ms": "200"})  # type: ignore[arg-type]
    assert time.perf_counter() - started >= 0.2
    healthy(server)


def test_random_faults(index: Path) -> None:
    with MockServer(index, fault_rate=1, fault_status="503") as server:
        with pytest.raises(openai.InternalServerError) as caught:
            client(server).chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
        assert caught.value.status_code == 503 and caught.value.body["message"] == "The server is overloaded or not ready yet."  # type: ignore[index]
    statuses = []
    for _ in range(2):
        with MockServer(index, fault_rate=0.5, fault_status="429,500", seed=7) as server:
            statuses.append([
                httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}).status_code for _ in range(30)
            ])
    # Seeded: the same run twice.
    assert statuses[0] == statuses[1] and {429, 500, 200} == set(statuses[0])


def chunked(body: dict[str, Any]) -> Iterator[bytes]:
    """``body`` as a request body of unknown length, which httpx sends chunked."""
    yield json.dumps(body).encode()


def test_a_chunked_body_gets_its_fault(server: MockServer) -> None:
    headers = {"x-mockgpt-fault": "503", "content-type": "application/json"}
    response = httpx.post(f"{server.base_url}/chat/completions", content=chunked({"model": "m", "messages": HELLO}), headers=headers)
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"


# Rate limits


def test_rpm_holds_across_workers(index: Path) -> None:
    with MockServer(index, rpm=5, workers=2) as server:
        responses = []
        for _ in range(6):
            # A connection each, so that either worker may answer any of them.
            with httpx.Client() as http:
                responses.append(http.post(f"{server.base_url}/chat/completions", json={"model": "gpt-4o", "messages": HELLO}))
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]
    limited = responses[-1]
    assert limited.json()["error"]["code"] == "rate_limit_exceeded" and limited.json()["error"]["type"] == "requests"
    assert limited.json()["error"]["message"].startswith(
        "Rate limit reached for gpt-4o on requests per min (RPM): Limit 5, Used 5, Requested 1. Please try again in 1"
    )
    assert 11_000 <= int(limited.headers["retry-after-ms"]) <= 12_000 and limited.headers["retry-after"] == "12"
    assert limited.headers["x-ratelimit-limit-requests"] == "5" and limited.headers["x-ratelimit-reset-requests"].endswith("s")


def test_tpm_counts_prompt_and_max_tokens(index: Path) -> None:
    with MockServer(index, tpm=100) as server:
        # The prompt of "Hello!" is 3 + 1 + 2 + 3 = 9 tokens; max_tokens 60 counts whole.
        first = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 60})
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == str(100 - 9 - 60)
        second = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 60})
        assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"
        # Without max_tokens, the answer's own tokens count.
        third = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO})
        used = third.json()["usage"]["total_tokens"]
        assert third.status_code == 200 and third.headers["x-ratelimit-remaining-tokens"] == str(31 - used)
        assert "x-ratelimit-limit-requests" not in third.headers


def test_every_response_carries_the_rate_limit_headers(index: Path) -> None:
    with MockServer(index, rpm=50, tpm=1000) as server:
        url, hello = f"{server.base_url}/chat/completions", {"model": "m", "messages": HELLO}
        responses = {
            "hit": httpx.post(url, json=hello),
            "miss": httpx.post(url, json={"model": "m", "messages": COUNT[:0] + [{"role": "user", "content": "?"}]}),
            "fault": httpx.post(url, json=hello, headers={"x-mockgpt-fault": "500"}),
            "bad header": httpx.post(url, json=hello, headers={"x-mockgpt-ttft-ms": "soon"}),
            "chunked": httpx.post(url, content=chunked(hello), headers={"content-type": "application/json"}),
        }
    assert {name: response.status_code for name, response in responses.items()} == {
        "hit": 200, "miss": 404, "fault": 500, "bad header": 400, "chunked": 200
    }
    # Every request takes one from the budget, in the order sent.
    remaining = [int(response.headers["x-ratelimit-remaining-requests"]) for response in responses.values()]
    assert remaining == [49, 48, 47, 46, 45]
    for response in responses.values():
        assert response.headers["x-ratelimit-limit-tokens"] == "1000" and response.headers["x-ratelimit-reset-requests"]


def test_a_request_over_the_token_limit_is_too_large(index: Path) -> None:
    with MockServer(index, tpm=50) as server:
        response = httpx.post(f"{server.base_url}/chat/completions", json={"model": "gpt-4o", "messages": HELLO, "max_tokens": 60})
    assert response.status_code == 429 and "retry-after" not in response.headers
    assert response.json()["error"] == {
        "message": "Request too large for gpt-4o on tokens per min (TPM): Limit 50, Requested 69. The input or output"
        " tokens must be reduced in order to run successfully.",
        "type": "tokens", "param": None, "code": "rate_limit_exceeded",
    }


def test_rate_limits_are_per_api_key(index: Path) -> None:
    with MockServer(index, rpm=1) as server:
        for key in ["alice", "bob"]:
            assert client(server, api_key=key).chat.completions.create(model="m", messages=HELLO).choices  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):
            client(server, api_key="alice").chat.completions.create(model="m", messages=HELLO)  # type: ignore[arg-type]


# Capacity and pacing


async def timed_stream(server: MockServer, messages: list[dict[str, str]], **headers: str) -> tuple[float, float, list[float]]:
    """When the first and last content chunk of a stream arrived, and the gaps between chunks."""
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(model="m", messages=messages, stream=True, extra_headers=headers)  # type: ignore[arg-type]
        times = [time.perf_counter() async for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    return times[0], times[-1], [b - a for a, b in zip(times, times[1:])]


def test_a_full_server_queues_in_order(index: Path) -> None:
    with MockServer(index, max_concurrency=1, itl_ms=10) as server:
        async def three() -> list[tuple[float, float, list[float]]]:
            return await asyncio.gather(*(timed_stream(server, COUNT) for _ in range(3)))

        streams = sorted(asyncio.run(three()))
    for before, after in zip(streams, streams[1:]):
        assert after[0] >= before[1]


def test_beyond_the_queue_the_server_is_overloaded(index: Path) -> None:
    for status in [429, 503]:
        with MockServer(index, max_concurrency=1, max_queue=0, ttft_ms=400, overload_status=status) as server:
            results: list[httpx.Response] = []

            def ask() -> None:
                results.append(httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}, timeout=10))

            threads = [threading.Thread(target=ask) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(r.status_code for r in results) == [200, status]
            refused = next(r for r in results if r.status_code == status)
            assert refused.json()["error"]["type"] == "server_error" and "overloaded" in refused.json()["error"]["message"]


def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``condition()`` holds; fail if it does not within ``seconds``."""
    deadline = time.perf_counter() + seconds
    while not condition():
        assert time.perf_counter() < deadline, "not within the time allowed"
        time.sleep(0.01)


def test_a_client_that_leaves_the_queue_gives_its_place_up(index: Path) -> None:
    with MockServer(index, max_concurrency=1, max_queue=1, ttft_ms=2000, metrics=True) as server:
        url, hello = f"{server.base_url}/chat/completions", {"model": "m", "messages": HELLO}
        holder = threading.Thread(target=lambda: asyncio.run(timed_stream(server, HELLO)))
        holder.start()
        eventually(lambda: metrics(server)[("mockgpt_streams_in_flight", ())] == 1)
        # The slot is held: the next request waits, then its client gives up.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=hello, timeout=httpx.Timeout(10, read=0.2))
        # At once, not when the slot comes free, a second later.
        eventually(lambda: metrics(server)[("mockgpt_queue_depth", ())] == 0, seconds=1.0)
        # Its place is free: the next one waits in it rather than being turned away.
        assert httpx.post(url, json=hello, timeout=10).status_code == 200
        holder.join()
        seen = metrics(server)
    assert seen[("mockgpt_requests_total", (("outcome", "gone"), ("route", "/chat/completions"), ("status", "499")))] == 1
    assert seen[("mockgpt_rejected_total", (("reason", "overload"),))] == 0


def test_timing_headers_pace_any_server(server: MockServer) -> None:
    started = time.perf_counter()
    first, _, _ = asyncio.run(timed_stream(server, COUNT, **{"x-mockgpt-ttft-ms": "150", "x-mockgpt-itl-ms": "1"}))
    assert first - started >= 0.15
    started = time.perf_counter()
    client(server).chat.completions.create(model="m", messages=HELLO, extra_headers={"x-mockgpt-ttft-ms": "150"})  # type: ignore[arg-type]
    assert time.perf_counter() - started >= 0.15


def test_a_whole_answer_of_several_choices_takes_its_longest_choice(index: Path) -> None:
    with MockServer(index, itl_ms=2) as server:
        asking = client(server)
        asking.models.list()  # the client's first request sets it up
        started = time.perf_counter()
        answer = asking.chat.completions.create(model="m", messages=COUNT, n=3)  # type: ignore[arg-type]
        took = time.perf_counter() - started
    assert answer.usage is not None and len(answer.choices) == 3
    tokens = answer.usage.completion_tokens // 3
    # The three are written side by side: the time of one, not of all three.
    assert 0.002 * (tokens - 1) <= took < 0.002 * 2 * tokens


def test_streams_are_paced(index: Path) -> None:
    with MockServer(index, ttft_ms=150, itl_ms=8) as server:
        started = time.perf_counter()
        first, last, gaps = asyncio.run(timed_stream(server, COUNT))
        assert first - started >= 0.15
        assert sorted(gaps)[len(gaps) // 2] >= 0.007 and last - first >= 0.008 * len(gaps) * 0.9
        # A whole answer leaves when its last token would have.
        started = time.perf_counter()
        answer = client(server).chat.completions.create(model="m", messages=COUNT)  # type: ignore[arg-type]
        assert answer.usage is not None
        assert time.perf_counter() - started >= 0.15 + 0.008 * (answer.usage.completion_tokens - 1)
        # Headers override the server's timing for one request.
        started = time.perf_counter()
        first, last, _ = asyncio.run(timed_stream(server, COUNT, **{"x-mockgpt-ttft-ms": "0", "x-mockgpt-itl-ms": "0"}))
        assert last - started < 0.15


def test_prefill_grows_with_the_prompt(index: Path) -> None:
    with MockServer(index, prefill_ms_per_1k=20_000, tokens_per_second=1000) as server:
        # "Count." is 3 + 1 + 2 + 3 = 9 prompt tokens: 180 ms of prefill.
        started = time.perf_counter()
        first, _, gaps = asyncio.run(timed_stream(server, COUNT))
        assert first - started >= 0.18 and sorted(gaps)[len(gaps) // 2] >= 0.0009


def test_jitter_is_seeded(index: Path) -> None:
    runs = []
    for _ in range(2):
        with MockServer(index, ttft_ms=50, jitter=0.5, seed=3) as server:
            started = time.perf_counter()
            first, _, _ = asyncio.run(timed_stream(server, HELLO))
            runs.append(first - started)
    assert all(0.025 <= run for run in runs)


# Metrics


def metrics(server: MockServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_every_request(index: Path, workers: int) -> None:
    with MockServer(index, metrics=True, workers=workers) as server:
        for _ in range(7):
            with httpx.Client() as http:
                assert http.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": HELLO}).status_code == 200
        for _ in range(3):
            with httpx.Client() as http:
                assert http.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "?"}]}).status_code == 404
        for _ in range(2):
            asyncio.run(timed_stream(server, COUNT))
        httpx.post(f"{server.base_url}/completions", json={"model": "m", "prompt": "Hello!"}, headers={"x-mockgpt-fault": "429"})
        refused = httpx.post(f"{server.url}/metrics")
        assert (refused.status_code, refused.headers["allow"], refused.json()["error"]["type"]) == (405, "GET, HEAD", "invalid_request_error")
        head = httpx.head(f"{server.url}/metrics")
        assert (head.status_code, head.content, head.headers["content-type"]) == (200, b"", "text/plain; version=0.0.4; charset=utf-8")
        assert int(head.headers["content-length"]) > 1000
        seen = metrics(server)
    chat = "/chat/completions"
    assert seen[("mockgpt_requests_total", (("outcome", "hit"), ("route", chat), ("status", "200")))] == 9
    assert seen[("mockgpt_requests_total", (("outcome", "miss"), ("route", chat), ("status", "404")))] == 3
    assert seen[("mockgpt_requests_total", (("outcome", "fault"), ("route", "/completions"), ("status", "429")))] == 1
    assert seen[("mockgpt_request_duration_seconds_count", (("route", chat),))] == 12
    assert seen[("mockgpt_time_to_first_token_seconds_count", (("route", chat),))] == 2
    assert seen[("mockgpt_rejected_total", (("reason", "fault"),))] == 1
    assert seen[("mockgpt_streams_in_flight", ())] == 0 and seen[("mockgpt_queue_depth", ())] == 0
    assert seen[("mockgpt_tokens_total", (("kind", "prompt"),))] == 7 * 9 + 2 * 9


def test_a_client_that_goes_away_stops_its_paced_stream(index: Path) -> None:
    with MockServer(index, itl_ms=50, metrics=True) as server:
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json={"model": "m", "messages": COUNT, "stream": True}) as response:
            lines = response.iter_lines()
            assert [next(lines) for _ in range(4)]
            assert metrics(server)[("mockgpt_streams_in_flight", ())] == 1
        # The whole stream would take its 80 tokens' worth of 50 ms; once the client is gone it ends at once.
        left = time.perf_counter()
        while metrics(server)[("mockgpt_streams_in_flight", ())] != 0:
            assert time.perf_counter() - left < 1.0
            time.sleep(0.02)
        healthy(server)


def test_a_client_that_reads_slowly_gets_its_whole_paced_stream(tmp_path: Path) -> None:
    """A stream far larger than the sockets' buffers, to a client that reads nothing for a second: the
    server's sends wait for the client, then the rest follows, every chunk in order."""
    answer = " ".join(f"w{n}" for n in range(20_000))
    index = tmp_path / "long.mgpt"
    build([write_sharegpt(tmp_path / "long.json", [sharegpt("long", ("human", "Go."), ("gpt", answer))])], index)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Go."}], "stream": True}).encode()
    with MockServer(index, deterministic=True) as server:
        expected = httpx.post(f"{server.base_url}/chat/completions", content=body).content
    with MockServer(index, deterministic=True, itl_ms=0.01) as server:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
            sock.sendall(head % len(body) + body)
            time.sleep(1)
            response = b"".join(iter(lambda: sock.recv(1 << 16), b""))
        assert httpx.get(f"{server.url}/health").status_code == 200
    assert len(expected) > 10_000_000
    assert dechunked(response) == expected


def dechunked(response: bytes) -> bytes:
    """The body of a whole HTTP/1.1 response with a chunked body."""
    head, _, rest = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head
    parts, position = [], 0
    while True:
        end = rest.index(b"\r\n", position)
        size = int(rest[position:end], 16)
        if not size:
            return b"".join(parts)
        parts.append(rest[end + 2 : end + 2 + size])
        position = end + 4 + size


def test_the_gauges_of_a_dead_worker_are_forgotten(index: Path) -> None:
    with MockServer(index, workers=2, itl_ms=100, metrics=True) as server:
        assert server.pid is not None
        with httpx.stream("POST", f"{server.base_url}/chat/completions", json={"model": "m", "messages": COUNT, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines)
            children = [int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
            workers = [pid for pid in children if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
            assert len(workers) == 2
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        # uvicorn starts new workers; the stream their predecessor left counts no more.
        deadline = time.perf_counter() + 20
        while True:
            try:
                assert metrics(server)[("mockgpt_streams_in_flight", ())] == 0
                break
            except httpx.HTTPError:
                assert time.perf_counter() < deadline
                time.sleep(0.1)
