"""Agents' tool loops: recorded tool calls indexed, keyed and served, plain and streamed, to the official client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from bpe_openai import get_encoding
from xxhash import xxh3_128_digest

from mockgpt import Index
from mockgpt.index import canonical
from mockgpt.index.build import build
from mockgpt.testing import MockServer

from .conftest import sharegpt, write_sharegpt
from .spec import sse_objects, validate

# The official client's behaviour: CI runs these against the oldest supported openai release too.
pytestmark = pytest.mark.sdk

ENCODING = get_encoding("o200k_base")
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
]
ASK = [{"role": "system", "content": "You are a weather bot."}, {"role": "user", "content": "Weather in Paris and in Tokyo?"}]
CALLS = [
    {"id": "call_paris0001", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}},
    {"id": "call_tokyo0002", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Tokyo", "unit": "C"}'}},
]
CALLED = {"role": "assistant", "content": None, "tool_calls": CALLS}
RESULTS = [
    {"role": "tool", "tool_call_id": "call_paris0001", "content": "14 C, rain"},
    {"role": "tool", "tool_call_id": "call_tokyo0002", "content": "22 C, sun"},
]
FINAL = "Paris: 14 °C and rain. Tokyo: 22 °C and sun."
LOOP = [*ASK, CALLED, *RESULTS, {"role": "assistant", "content": FINAL}]
MIXED = [
    {"role": "user", "content": "Book it."},
    {"role": "assistant", "content": "Booking now.", "tool_calls": [
        {"id": "call_book", "type": "function", "function": {"name": "book", "arguments": "not json at all"}},
    ]},
]
LEGACY = [
    {"role": "user", "content": "Time?"},
    {"role": "assistant", "content": None, "function_call": {"name": "clock", "arguments": "{}"}},
    {"role": "function", "name": "clock", "content": "12:00"},
    {"role": "assistant", "content": "It is noon."},
]
CONVERSATIONS = [LOOP, MIXED, LEGACY]


def streaming_completions(client: openai.OpenAI) -> Any:
    # The streaming helper sat under client.beta before openai 1.92.
    return client.chat.completions if hasattr(client.chat.completions, "stream") else client.beta.chat.completions


def recorded(calls: list[Any]) -> list[tuple[str, str, str]]:
    return [(call.id, call.function.name, call.function.arguments) for call in calls]


def expected_calls() -> list[tuple[str, str, str]]:
    return [(call["id"], call["function"]["name"], call["function"]["arguments"]) for call in CALLS]


def test_a_tool_loop_replays(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o", messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None and recorded(choice.message.tool_calls) == expected_calls()
    # The app sends back what it got, and the tools' results.
    history = [*ASK, choice.message.model_dump(exclude_none=True), *RESULTS]
    final = client.chat.completions.create(model="gpt-4o", messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert final.choices[0].message.content == FINAL and final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None


def test_usage_counts_the_calls(client: openai.OpenAI) -> None:
    usage = client.chat.completions.create(model="gpt-4o", messages=ASK).usage  # type: ignore[arg-type]
    count = sum(len(ENCODING.encode_ordinary(call["function"][part])) for call in CALLS for part in ("name", "arguments"))
    assert usage is not None and usage.completion_tokens == count
    # A call in the history counts in the prompt.
    final = client.chat.completions.create(model="gpt-4o", messages=[*ASK, CALLED, *RESULTS]).usage  # type: ignore[arg-type]
    texts = [m["content"] for m in [*ASK, *RESULTS]] + [""]
    base = sum(len(ENCODING.encode_ordinary(text)) + 4 for text in texts) + 3
    assert final is not None and final.prompt_tokens == base + count


def test_a_tool_loop_streams(client: openai.OpenAI) -> None:
    with streaming_completions(client).stream(model="gpt-4o", messages=ASK, tools=TOOLS) as stream:  # type: ignore[arg-type]
        completion = stream.get_final_completion()
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None and recorded(message.tool_calls) == expected_calls()
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=ASK, stream=True))  # type: ignore[arg-type]
    pieces = [chunk.choices[0].delta.tool_calls[0] for chunk in chunks if chunk.choices and chunk.choices[0].delta.tool_calls]
    # Each call is named once, then its arguments come a recorded token at a time.
    named = [piece for piece in pieces if piece.id]
    assert [(p.index, p.id, p.type, p.function and p.function.name) for p in named] == [
        (0, "call_paris0001", "function", "get_weather"), (1, "call_tokyo0002", "function", "get_weather"),
    ]
    arguments = [piece.function.arguments for piece in pieces if not piece.id and piece.function]
    assert len(arguments) == sum(len(ENCODING.encode_ordinary(call["function"]["arguments"])) for call in CALLS)


def test_text_and_calls_together(client: openai.OpenAI) -> None:
    message = client.chat.completions.create(model="gpt-4o", messages=MIXED[:1]).choices[0].message  # type: ignore[arg-type]
    assert message.content == "Booking now."
    assert message.tool_calls is not None and recorded(message.tool_calls) == [("call_book", "book", "not json at all")]
    with streaming_completions(client).stream(model="gpt-4o", messages=MIXED[:1]) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_completion().choices[0].message
    assert streamed.content == "Booking now." and streamed.tool_calls is not None
    assert recorded(streamed.tool_calls) == [("call_book", "book", "not json at all")]


def test_legacy_function_calls(client: openai.OpenAI) -> None:
    assert client.chat.completions.create(model="gpt-4o", messages=LEGACY[:3]).choices[0].message.content == "It is noon."  # type: ignore[arg-type]
    message = client.chat.completions.create(model="gpt-4o", messages=LEGACY[:1]).choices[0].message  # type: ignore[arg-type]
    assert message.tool_calls is not None and message.tool_calls[0].function.name == "clock"


def with_arguments(arguments: str, id: str = "call_paris0001") -> list[dict[str, Any]]:
    calls = [{**CALLS[0], "id": id, "function": {**CALLS[0]["function"], "arguments": arguments}}, CALLS[1]]
    return [*ASK, {"role": "assistant", "content": None, "tool_calls": calls}, *RESULTS]


@pytest.mark.parametrize(
    "history",
    [
        with_arguments('{"unit":"C",  "city":"Paris"}'),
        with_arguments(CALLS[0]["function"]["arguments"], id="call_other_id"),
        [*ASK, CALLED, {**RESULTS[0], "tool_call_id": "x"}, {**RESULTS[1], "tool_call_id": "y"}],
    ],
    ids=["json-spacing-and-key-order", "another-call-id", "other-tool-call-ids"],
)
def test_what_does_not_count(client: openai.OpenAI, history: list[dict[str, Any]]) -> None:
    assert client.chat.completions.create(model="gpt-4o", messages=history).choices[0].message.content == FINAL  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "history",
    [
        with_arguments('{"city": "Lyon", "unit": "C"}'),
        [*ASK, CALLED, {**RESULTS[0], "content": "15 C, rain"}, RESULTS[1]],
        [*ASK, {**CALLED, "tool_calls": CALLS[:1]}, *RESULTS],
        [*ASK, {**CALLED, "tool_calls": [{**CALLS[0], "function": {**CALLS[0]["function"], "name": "get_time"}}, CALLS[1]]}, *RESULTS],
    ],
    ids=["arguments", "tool-result", "one-call-fewer", "function-name"],
)
def test_what_counts(client: openai.OpenAI, history: list[dict[str, Any]]) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=history)  # type: ignore[arg-type]
    message = caught.value.body["message"]  # type: ignore[index]
    assert "messages[0:2] match a recorded conversation; messages[2] is the first that differs" in message or (
        "messages[0:3] match a recorded conversation; messages[3] is the first that differs" in message
    )


def test_max_tokens_leaves_out_a_call_it_would_split(client: openai.OpenAI) -> None:
    first = len(ENCODING.encode_ordinary("get_weather")) + len(ENCODING.encode_ordinary(CALLS[0]["function"]["arguments"]))
    cut = client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=first + 2)  # type: ignore[arg-type]
    (choice,) = cut.choices
    assert choice.finish_reason == "length" and choice.message.tool_calls is not None
    assert recorded(choice.message.tool_calls) == expected_calls()[:1]
    assert cut.usage is not None and cut.usage.completion_tokens == first + 2


@pytest.mark.parametrize("served_by", ["server", "busy"])
def test_every_object_and_chunk_is_in_the_spec(request: pytest.FixtureRequest, served_by: str) -> None:
    server: MockServer = request.getfixturevalue(served_by)
    for ask in [{"messages": ASK}, {"messages": MIXED[:1]}, {"messages": ASK, "max_tokens": 20}, {"messages": ASK, "n": 2}]:
        body = {"model": "gpt-4o", **ask}
        validate("CreateChatCompletionResponse", httpx.post(f"{server.base_url}/chat/completions", json=body).json())
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks = sse_objects(httpx.post(f"{server.base_url}/chat/completions", json=stream).text)
        assert chunks[-1]["usage"] is not None
        for chunk in chunks:
            validate("CreateChatCompletionStreamResponse", chunk)


def test_sharegpt_tool_roles(tmp_path: Path) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    source = write_sharegpt(tmp_path / "glaive.json", [
        sharegpt("g1", ("human", "Oslo weather?"), ("function_call", json.dumps(call)), ("observation", '{"temp": 3}'), ("gpt", "3 degrees.")),
        sharegpt("g2", ("human", "Two cities?"), ("gpt", "Checking both."), ("function_call", json.dumps([call, {**call, "arguments": {"city": "Rome"}}]))),
    ])
    build([source], tmp_path / "glaive.mgpt")
    with Index(tmp_path / "glaive.mgpt") as index:
        (answer,) = index.lookup([("user", "Oslo weather?")])
        ((id, name, arguments),) = [(c.id, c.name, c.arguments) for c in answer.tool_calls]
        assert answer.text == "" and answer.content == b"null"
        assert id.startswith("call_") and name == "get_weather" and json.loads(arguments) == {"city": "Oslo"}
        history = [("user", "Oslo weather?"), ("assistant", "", (canonical.Call("any", name, '{"city":"Oslo"}'),)), ("tool", '{"temp": 3}')]
        assert [a.text for a in index.lookup(history)] == ["3 degrees."]
        (both,) = index.lookup([("user", "Two cities?")])
        assert both.text == "Checking both." and [json.loads(c.arguments)["city"] for c in both.tool_calls] == ["Oslo", "Rome"]
    # The same build twice gives the same call ids.
    build([source], tmp_path / "again.mgpt")
    with Index(tmp_path / "again.mgpt") as again:
        assert again.lookup([("user", "Oslo weather?")])[0].tool_calls[0].id == id


def test_sharegpt_keys_are_what_they_were(tmp_path: Path) -> None:
    """A conversation without tool calls frames as it did before calls counted: role letter, length, text."""
    turns = [("system", "Be brief."), ("user", "Ça va ?\r\n"), ("assistant", " Oui. "), ("user", "Et toi ?")]
    before = "".join(f"{role[0]}{len(text.replace(chr(13), '').strip())}:{text.replace(chr(13), '').strip()}" for role, text in turns)
    assert canonical.frame(turns) == before.encode()
    source = write_sharegpt(tmp_path / "plain.json", [sharegpt("p", *[(r if r != "assistant" else "gpt", t) for r, t in turns], ("gpt", "Bien."))])
    build([source], tmp_path / "plain.mgpt")
    with Index(tmp_path / "plain.mgpt") as index:
        assert index.find(before.encode()) is not None
        assert canonical.digest(before.encode()) == xxh3_128_digest(before.encode())


def test_lookup_shows_tool_calls(index: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mockgpt", "lookup", str(index), "-"], input=json.dumps({"messages": [*ASK, CALLED, *RESULTS]}),
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert 'calls get_weather({"city":"Paris","unit":"C"})' in result.stdout
    assert FINAL in result.stdout
    first = subprocess.run([sys.executable, "-m", "mockgpt", "lookup", str(index), "-"], input=json.dumps(ASK), capture_output=True, text=True)
    assert 'tool call call_paris0001: get_weather({"city": "Paris", "unit": "C"})' in first.stdout
