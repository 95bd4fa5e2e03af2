"""Recording misses from an upstream, then replaying them: real servers only.

The upstream is a second ``mockgpt serve`` on an index of its own, whose key is checked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mockgpt.cli import main
from mockgpt.index.build import build
from mockgpt.serve.upstream import Stream
from mockgpt.testing import MockServer

from .conftest import sharegpt, write_sharegpt

# The official client's behaviour: CI runs these against the oldest supported openai release too.
pytestmark = pytest.mark.sdk

SECRET = "sk-upstream-secret-5d41402abc4b2a76"
CODE = "```c\n#include <stdio.h>\nint main(void) { puts(\"hello, world\"); }\n```\nÇa compile — 日本語も。"
COUNT = ", ".join(["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"] * 2) + "."
CONCURRENT = 48
LONG = "lorem ipsum dolor sit amet " * 600
UPSTREAM = [
    sharegpt("capital", ("human", "What is the capital of France?"), ("gpt", "Paris. 🇫🇷")),
    sharegpt("count", ("human", "Count to ten twice."), ("gpt", COUNT)),
    sharegpt(
        "code", ("system", "Be terse."), ("human", "Hello world in C?"), ("gpt", CODE), ("human", "Thanks!"), ("gpt", "Welcome.")
    ),
    sharegpt("red", ("human", "Pick a color."), ("gpt", "Red.")),
    sharegpt("blue", ("human", "Pick a color."), ("gpt", "Blue.")),
    *(sharegpt(f"q{n}", ("human", f"Question {n}?"), ("gpt", f"Answer {n}: {LONG}")) for n in range(CONCURRENT)),
]
WEATHER = {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TWO_CALLS = [
    {"id": "call_p", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_r", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "°C"}'}},
]
TOOLS = [
    [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [WEATHER]}],
    [{"role": "user", "content": "Paris and Rome?"}, {"role": "assistant", "content": "Checking both.", "tool_calls": TWO_CALLS}],
]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


CAPITAL = user("What is the capital of France?")
HISTORY = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Hello world in C?"},
    {"role": "assistant", "content": CODE},
    {"role": "user", "content": "Thanks!"},
]
COLOR = user("Pick a color.")


@pytest.fixture(scope="module")
def upstream_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("upstream")
    tools = directory / "tools.jsonl"
    tools.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in TOOLS))
    build([write_sharegpt(directory / "chats.json", UPSTREAM), tools], directory / "upstream.mgpt")
    return directory / "upstream.mgpt"


Start = Callable[..., MockServer]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a server (``MockServer`` arguments); every one is stopped when the test ends."""
    servers: list[MockServer] = []

    def started(index: Path | None = None, **options: Any) -> MockServer:
        server = MockServer(index, **options)
        servers.append(server)
        return server.start()

    try:
        yield started
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def upstream(start: Start, upstream_index: Path) -> MockServer:
    return start(upstream_index, api_key=SECRET, metrics=True)


def recording(start: Start, record: Path, upstream: MockServer | str, **options: Any) -> MockServer:
    """A server of ``record`` that records its misses into it."""
    url = upstream if isinstance(upstream, str) else upstream.base_url
    return start(record, upstream=url, record=record, upstream_api_key=options.pop("key", SECRET), **options)


def client(server: MockServer, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0, **options)


def ask(server: MockServer, messages: list[dict[str, Any]], **options: Any) -> list[str | None]:
    with client(server) as openai_client:
        completion = openai_client.chat.completions.create(model="gpt-4o", messages=messages, **options)  # type: ignore[call-overload]
    return [choice.message.content for choice in completion.choices]


def lines(record: Path) -> list[Any]:
    return [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]


def line(messages: list[dict[str, Any]], content: str | None, **answer: Any) -> dict[str, Any]:
    return {"messages": [*messages, {"role": "assistant", "content": content, **answer}]}


def chat_requests(server: MockServer) -> float:
    """How many chat completion requests ``server`` (started with ``metrics=True``) was asked."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mockgpt_requests_total" and sample.labels["route"] == "/chat/completions"
    )


def assert_secret_kept(directory: Path, *servers: MockServer) -> None:
    """The upstream key is in no file under ``directory``, nor in what the servers printed."""
    for path in directory.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    for server in servers:
        assert SECRET not in server.output


# Record, then replay


def test_misses_are_answered_upstream_recorded_and_replayed(tmp_path: Path, start: Start, upstream: MockServer) -> None:
    record = tmp_path / "fixtures.jsonl"
    recorder = recording(start, record, upstream)
    assert SECRET not in Path(f"/proc/{recorder.pid}/cmdline").read_text()
    assert httpx.get(f"{recorder.url}/health").json()["answers"] == 0
    assert ask(recorder, CAPITAL) == ["Paris. 🇫🇷"]
    assert ask(recorder, HISTORY) == ["Welcome."]
    assert ask(recorder, COLOR, n=2) == ["Red.", "Blue."]
    assert lines(record) == [
        line(CAPITAL, "Paris. 🇫🇷"), line(HISTORY, "Welcome."), line(COLOR, "Red."), line(COLOR, "Blue.")
    ]
    recorder.stop()
    upstream.stop()
    replay = start(record)
    assert ask(replay, CAPITAL) == ["Paris. 🇫🇷"]
    assert ask(replay, HISTORY) == ["Welcome."]
    assert ask(replay, COLOR, n=2) == ["Red.", "Blue."]
    # The recorded history is replayed too: the answer before "Thanks!" is the one the client sent.
    assert ask(replay, HISTORY[:2]) == [CODE]
    replay.stop()
    assert_secret_kept(tmp_path, recorder, replay, upstream)


def test_a_stream_is_relayed_as_it_comes_and_recorded_whole(tmp_path: Path, start: Start, upstream_index: Path) -> None:
    upstream = start(upstream_index, api_key=SECRET, itl_ms=25)
    record = tmp_path / "fixtures.jsonl"
    recorder = recording(start, record, upstream)
    arrivals: list[float] = []
    texts: list[str] = []
    with httpx.stream(
        "POST", f"{recorder.base_url}/chat/completions", json={"model": "m", "messages": user("Count to ten twice."), "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for data in response.iter_lines():
            if data.startswith("data: {"):
                arrivals.append(time.perf_counter())
                texts += [choice["delta"].get("content") or "" for choice in json.loads(data[6:])["choices"]]
    assert "".join(texts) == COUNT
    # Paced at 25 ms a token upstream: passed on as they came, the chunks arrive over about a second, not at once.
    assert len(arrivals) > 30 and arrivals[-1] - arrivals[0] > 0.5
    with client(recorder) as openai_client:
        stream = openai_client.chat.completions.create(
            model="m", messages=COLOR, n=2, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        )
        assert sum(1 for chunk in stream if chunk.usage) == 1
    assert lines(record) == [line(user("Count to ten twice."), COUNT), line(COLOR, "Red."), line(COLOR, "Blue.")]
    recorder.stop()
    upstream.stop()
    assert_secret_kept(tmp_path, recorder, upstream)


def test_tool_calls_are_recorded_and_replayed(tmp_path: Path, start: Start, upstream: MockServer) -> None:
    record = tmp_path / "fixtures.jsonl"
    recorder = recording(start, record, upstream)
    with client(recorder) as openai_client:
        whole = openai_client.chat.completions.create(model="m", messages=TOOLS[0][:1])  # type: ignore[arg-type]
        assert [call.model_dump() for call in whole.choices[0].message.tool_calls or []] == [WEATHER]
        stream = openai_client.chat.completions.create(model="m", messages=TOOLS[1][:1], stream=True)  # type: ignore[arg-type]
        assert sum(len(chunk.choices[0].delta.tool_calls or []) for chunk in stream if chunk.choices) > 2
    assert lines(record) == [{"messages": messages} for messages in TOOLS]
    recorder.stop()
    upstream.stop()
    with client(start(record)) as openai_client:
        for messages in TOOLS:
            message = openai_client.chat.completions.create(model="m", messages=messages[:1]).choices[0].message  # type: ignore[arg-type]
            assert message.content == messages[1]["content"]
            assert [call.model_dump() for call in message.tool_calls or []] == messages[1]["tool_calls"]


def test_hits_and_invalid_requests_never_reach_the_upstream(tmp_path: Path, start: Start, upstream: MockServer) -> None:
    record = tmp_path / "fixtures.jsonl"
    record.write_text(json.dumps(line(user("Hi"), "Hello from the file.")) + "\n")
    recorder = recording(start, record, upstream, api_key="local")
    hit = {"model": "m", "messages": user("Hi")}
    headers = {"authorization": "Bearer local"}
    for path in ["/v1/chat/completions", "/chat/completions"]:
        for body in [hit, {**hit, "stream": True}, {**hit, "n": 2, "max_tokens": 1}]:
            response = httpx.post(recorder.url + path, json=body, headers=headers)
            assert response.status_code == 200 and "Hello" in response.text
    assert httpx.post(recorder.base_url + "/chat/completions", json=hit, headers={**headers, "x-mockgpt-ttft-ms": "1"}).status_code == 200
    invalid: list[tuple[dict[str, Any], dict[str, str], int]] = [
        ({"model": "m"}, headers, 400),
        ({"model": "m", "messages": [{"role": "robot", "content": "Hi"}]}, headers, 400),
        ({"model": "m", "messages": CAPITAL, "n": 0}, headers, 400),
        ({"model": "m", "messages": CAPITAL}, {"authorization": "Bearer wrong"}, 401),
        ({"model": "m", "messages": CAPITAL}, {}, 401),
        ({"model": "m", "messages": CAPITAL}, {**headers, "x-mockgpt-fault": "503"}, 503),
    ]
    for body, sent, status in invalid:
        assert httpx.post(recorder.base_url + "/chat/completions", json=body, headers=sent).status_code == status
    assert httpx.post(recorder.base_url + "/completions", json={"model": "m", "prompt": "Unknown"}, headers=headers).status_code == 404
    assert chat_requests(upstream) == 0
    # A miss through the busy-server layer goes upstream too, without mockgpt's own headers: a 60 s wait
    # asked of the upstream would time this client out.
    with client(recorder, timeout=10) as openai_client:
        reply = openai_client.chat.completions.create(model="m", messages=CAPITAL, extra_headers={"x-mockgpt-ttft-ms": "60000"})  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Paris. 🇫🇷"
    assert chat_requests(upstream) == 1
    assert lines(record) == [line(user("Hi"), "Hello from the file."), line(CAPITAL, "Paris. 🇫🇷")]


# Upstream errors


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.mark.parametrize(
    "case, status, code",
    [
        ("wrong key", 401, "invalid_api_key"),
        ("upstream fault", 503, None),
        ("upstream miss", 404, "conversation_not_found"),
        ("unreachable", 502, "upstream_error"),
    ],
)
def test_upstream_errors_reach_the_client_and_record_nothing(
    tmp_path: Path, start: Start, upstream_index: Path, case: str, status: int, code: str | None
) -> None:
    upstream: MockServer | str = _closed_port()
    if case != "unreachable":
        upstream = start(upstream_index, api_key=SECRET, **({"fault_rate": 1, "fault_status": "503"} if case == "upstream fault" else {}))
    record = tmp_path / "fixtures.jsonl"
    recorder = recording(start, record, upstream, key="sk-wrong-key-0000" if case == "wrong key" else SECRET)
    messages = user("Is this in any index?") if case == "upstream miss" else CAPITAL
    for stream in [False, True]:
        response = httpx.post(recorder.base_url + "/chat/completions", json={"model": "m", "messages": messages, "stream": stream})
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
        assert SECRET not in response.text
    assert record.read_bytes() == b""
    recorder.stop()
    assert_secret_kept(tmp_path, recorder)


# Several workers


def test_two_workers_append_whole_lines(tmp_path: Path, start: Start, upstream: MockServer) -> None:
    record = tmp_path / "fixtures.jsonl"
    record.touch()
    recorder = recording(start, record, upstream, workers=2)

    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=recorder.base_url, api_key="local", max_retries=0) as openai_client:
            replies = await asyncio.gather(*(
                openai_client.chat.completions.create(model="m", messages=user(f"Question {n}?"))  # type: ignore[arg-type]
                for n in range(CONCURRENT)
            ))
        return [reply.choices[0].message.content or "" for reply in replies]

    assert asyncio.run(ask_all()) == [f"Answer {n}: {LONG}" for n in range(CONCURRENT)]
    recorded = lines(record)
    assert len(recorded) == CONCURRENT
    assert sorted(recorded, key=lambda item: int(item["messages"][0]["content"].split()[1].rstrip("?"))) == [
        line(user(f"Question {n}?"), f"Answer {n}: {LONG}") for n in range(CONCURRENT)
    ]


def test_a_record_file_without_a_final_newline_gets_one(tmp_path: Path, start: Start, upstream: MockServer) -> None:
    record = tmp_path / "fixtures.jsonl"
    record.write_text(json.dumps(line(user("Hi"), "Hello.")))
    recorder = recording(start, record, upstream)
    assert ask(recorder, CAPITAL) == ["Paris. 🇫🇷"]
    assert lines(record) == [line(user("Hi"), "Hello."), line(CAPITAL, "Paris. 🇫🇷")]


# The command line


@pytest.mark.parametrize("given", [["--record", "fixtures.jsonl"], ["--upstream", "http://127.0.0.1:9/v1"]])
def test_upstream_and_record_go_together(tmp_path: Path, given: list[str]) -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "0", *given], env={"MOCKGPT_UPSTREAM": "", "MOCKGPT_RECORD": ""})
    assert result.exit_code == 1
    assert result.output == "Error: --upstream and --record go together: misses are answered upstream and recorded\n"


# Streams put together


def _events(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks) + b"data: [DONE]\n\n"


def _delta(index: int, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}


def test_a_stream_is_put_together_from_its_deltas_whatever_its_cuts() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    data = _events([
        _delta(0, role="assistant", content=""),
        _delta(1, role="assistant", content=None),
        _delta(0, content="Hé, "),
        _delta(1, tool_calls=[call]),
        _delta(1, tool_calls=[{"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}]),
        _delta(1, tool_calls=[{"index": 0, "function": {"arguments": '{"a": '}}]),
        _delta(0, content="there."),
        _delta(1, tool_calls=[{"index": 0, "id": "call_1", "function": {"arguments": "1}"}}]),
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ])
    stream = Stream()
    for start in range(len(data)):
        stream.feed(data[start : start + 1])
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert [msgspec.to_builtins(answer) for answer in stream.answers()] == [
        {"role": "assistant", "content": "Hé, there."},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]


def test_a_stream_with_an_error_records_nothing() -> None:
    stream = Stream()
    stream.feed(_events([_delta(0, content="Hi"), {"error": {"message": "overloaded", "type": "server_error"}}]))
    assert stream.answers() == []
