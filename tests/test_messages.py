"""The Anthropic Messages API from the same index as chat, to the official ``anthropic`` client: plain,
streamed, tool loops recorded through chat completions, cuts, counts, misses, errors, limits and faults;
every body and event checked against the SDK's types both ways (it parses, and it has no field they lack)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import pydantic
import pytest
from anthropic.types import Message, MessageTokensCount, ModelInfo, RawMessageStreamEvent

from mockgpt.api.messages import CreateMessage, prompt
from mockgpt.index import canonical
from mockgpt.serve.upstream import MessageStream, message_answers
from mockgpt.testing import MockServer

from .test_growth import assert_linear
from .test_tools import ASK, CALLS, ENCODING, FINAL, LOOP, MIXED, RESULTS

# The official client's behaviour: CI runs these against the oldest supported anthropic release too.
pytestmark = pytest.mark.anthropic

HELLO = "Hi! How can I help?"
STORY = (
    "A fox found a lantern in the snow. It glowed all night, and the fox was never cold again. In spring it"
    " gave the lantern to a lost hare, who found her way home by its light."
)
CONVERSATIONS = [
    LOOP,
    MIXED,
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": HELLO}],
    [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": STORY}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}],
]
SYSTEM, QUESTION = ASK[0]["content"], ASK[1]["content"]
# Fields of the newest SDK's types that older releases lack: a server of the newest API sends them.
NEWER = {"lifecycle"}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def tokens(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def conforms(value: Any, type: Any) -> Any:
    """``value`` (raw JSON) parsed as the SDK's ``type``, checked to carry no field that type lacks."""
    parsed = pydantic.TypeAdapter(type).validate_python(value)
    _no_extra(parsed)
    return parsed


def _no_extra(model: Any) -> None:
    if isinstance(model, list):
        for item in model:
            _no_extra(item)
    elif isinstance(model, pydantic.BaseModel):
        assert set(model.model_extra or {}) <= NEWER, (type(model).__name__, model.model_extra)
        for name in type(model).model_fields:
            _no_extra(getattr(model, name))


@pytest.fixture
def claude(server: MockServer) -> Iterator[anthropic.Anthropic]:
    """The official Anthropic client of ``server``, which does not retry."""
    with anthropic.Anthropic(base_url=server.base_url.removesuffix("/v1"), api_key="test", max_retries=0) as client:
        yield client


def create(client: anthropic.Anthropic, **body: Any) -> Message:
    """``messages.create``, its raw body checked against the SDK's ``Message``."""
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=body.pop("max_tokens", 1024), **body)
    assert raw.headers["request-id"].startswith("req_")
    message: Message = raw.parse()
    assert conforms(raw.http_response.json(), Message) == message
    return message


def events(server: MockServer, headers: dict[str, str] | None = None, **body: Any) -> list[dict[str, Any]]:
    """A streamed message's events, read off the wire, each checked against the SDK's event types."""
    request = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True, **body}
    with httpx.stream("POST", f"{server.base_url}/messages", json=request, headers=headers, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        frames = response.read().decode().split("\n\n")
    assert frames.pop() == ""
    seen = []
    for frame in frames:
        event, data = frame.split("\n")
        kind, value = event.removeprefix("event: "), json.loads(data.removeprefix("data: "))
        assert value["type"] == kind
        if kind != "ping":
            conforms(value, RawMessageStreamEvent)
        seen.append(value)
    return seen


def test_a_plain_message(claude: anthropic.Anthropic, server: MockServer) -> None:
    message = create(claude, messages=[user("Hello!")])
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "claude-sonnet-4-5" and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [(block.type, block.text) for block in message.content] == [("text", HELLO)]  # type: ignore[union-attr]
    # The same counts as the chat completion of the same message.
    chat = httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": [user("Hello!")]}).json()["usage"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (chat["prompt_tokens"], chat["completion_tokens"])
    assert message.usage.output_tokens == tokens(HELLO) and message.usage.cache_read_input_tokens == 0
    # A system prompt, as a string or as text blocks, is the system message.
    assert create(claude, system="Be terse.", messages=[user("2+2?")]).content[0].text == "4."  # type: ignore[union-attr]
    blocks = [{"type": "text", "text": "Be "}, {"type": "text", "text": "terse."}]
    assert create(claude, system=blocks, messages=[user([{"type": "text", "text": "2+2?"}])]).content[0].text == "4."  # type: ignore[union-attr]


def test_a_streamed_message(claude: anthropic.Anthropic, server: MockServer) -> None:
    seen = events(server, messages=[user("Tell me a story.")])
    kinds = [event["type"] for event in seen]
    deltas = [event["delta"]["text"] for event in seen if event["type"] == "content_block_delta"]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[3 + len(deltas):] == ["content_block_stop", "message_delta", "message_stop"]
    # One delta per recorded token.
    assert "".join(deltas) == STORY and len(deltas) == tokens(STORY)
    assert seen[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None} and seen[-2]["usage"] == {"output_tokens": len(deltas)}
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, messages=[user("Tell me a story.")]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == STORY and final.content[0].text == STORY  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == len(deltas)


def anthropic_history(message: Message) -> list[dict[str, Any]]:
    """The tool loop's next request, as an app sends it: the answer back, and the tools' results."""
    results = [
        {"type": "tool_result", "tool_use_id": block.id, "content": result["content"]}
        for block, result in zip(message.content, RESULTS)
    ]
    return [user(QUESTION), {"role": "assistant", "content": [block.model_dump() for block in message.content]}, user(results)]


def test_a_tool_loop_recorded_through_chat(claude: anthropic.Anthropic, server: MockServer) -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    first = create(claude, system=SYSTEM, messages=[user(QUESTION)], tools=tools)
    assert first.stop_reason == "tool_use"
    calls = [(block.id, block.name, block.input) for block in first.content]  # type: ignore[union-attr]
    assert calls == [("toolu_" + call["id"], call["function"]["name"], json.loads(call["function"]["arguments"])) for call in CALLS]
    final = create(claude, system=SYSTEM, messages=anthropic_history(first), tools=tools)
    assert final.content[0].text == FINAL and final.stop_reason == "end_turn"  # type: ignore[union-attr]
    # Streamed: each call named once, its input a recorded token at a time.
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=1024, system=SYSTEM, messages=[user(QUESTION)], tools=tools) as stream:  # type: ignore[arg-type]
        streamed = stream.get_final_message()
    assert [(block.id, block.name, block.input) for block in streamed.content] == calls  # type: ignore[union-attr]
    seen = events(server, system=SYSTEM, messages=[user(QUESTION)])
    pieces = [event["delta"]["partial_json"] for event in seen if event["type"] == "content_block_delta" and event["index"] == 0]
    assert "".join(pieces) == CALLS[0]["function"]["arguments"] and len(pieces) == tokens(CALLS[0]["function"]["arguments"])
    assert seen[-2]["delta"]["stop_reason"] == "tool_use"


def test_one_key_whichever_api_sends_it() -> None:
    """The canonical framing of a conversation is the same sent through chat or the Messages API, both ways."""
    chat = [canonical.Message(m["role"], m.get("content"), [msgspec.convert(c, canonical.ToolCall) for c in m.get("tool_calls", [])] or None) for m in LOOP[:-1]]
    blocks = [
        {"type": "tool_use", "id": "toolu_" + call["id"], "name": call["function"]["name"], "input": json.loads(call["function"]["arguments"])}
        for call in CALLS
    ]
    results = [{"type": "tool_result", "tool_use_id": r["tool_call_id"], "content": [{"type": "text", "text": r["content"]}]} for r in RESULTS]
    request = {
        "model": "m", "max_tokens": 10, "system": [{"type": "text", "text": SYSTEM}],
        "messages": [user(QUESTION), {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}, *blocks]}, user(results)],
    }
    messages = prompt(msgspec.convert(request, CreateMessage)).messages
    assert canonical.frame_request(messages) == canonical.frame_request(chat)
    # And back: the messages read from the Messages API, sent as chat messages, frame as chat frames them.
    as_chat = [msgspec.json.decode(msgspec.json.encode(message), type=canonical.Message) for message in messages]
    assert canonical.frame_request(as_chat) == canonical.frame_request(chat)
    # Text and calls in one answer, an image beside the text: images count for nothing, as in chat.
    mixed = {
        "model": "m", "max_tokens": 10,
        "messages": [
            user([{"type": "text", "text": "Book"}, {"type": "image", "source": {"type": "url", "url": "u"}}, {"type": "text", "text": " it."}]),
            {"role": "assistant", "content": [{"type": "text", "text": "Booking now."}, {"type": "tool_use", "id": "x", "name": "book", "input": {"b": 1, "a": [2]}}]},
        ],
    }
    chat_mixed = [
        canonical.Message("user", "Book it."),
        canonical.Message("assistant", "Booking now.", [canonical.ToolCall(canonical.FunctionCall("book", '{"a": [2], "b": 1}'))]),
    ]
    assert canonical.frame_request(prompt(msgspec.convert(mixed, CreateMessage)).messages) == canonical.frame_request(chat_mixed)


def test_max_tokens_and_stop_sequences(claude: anthropic.Anthropic, server: MockServer) -> None:
    cut = create(claude, messages=[user("Tell me a story.")], max_tokens=5)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 5
    assert cut.content[0].text == ENCODING.decode(ENCODING.encode_ordinary(STORY)[:5])  # type: ignore[union-attr]
    streamed = events(server, messages=[user("Tell me a story.")], max_tokens=5)
    assert len([event for event in streamed if event["type"] == "content_block_delta"]) == 5
    assert streamed[-2]["delta"]["stop_reason"] == "max_tokens"
    stopped = create(claude, messages=[user("Tell me a story.")], stop_sequences=["zebra", "snow"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "snow"
    assert stopped.content[0].text == "A fox found a lantern in the "  # type: ignore[union-attr]
    assert stopped.usage.output_tokens == tokens("A fox found a lantern in the snow")
    # A stop sequence the answer does not hold stops nothing.
    assert create(claude, messages=[user("Tell me a story.")], stop_sequences=["zebra"]).stop_reason == "end_turn"
    # A max_tokens that would split a tool call leaves it out.
    partial = create(claude, system=SYSTEM, messages=[user(QUESTION)], max_tokens=20)
    assert partial.stop_reason == "max_tokens" and [block.type for block in partial.content] == ["tool_use"]


def test_count_tokens(claude: anthropic.Anthropic, server: MockServer) -> None:
    for body in [dict(messages=[user("Hello!")]), dict(system="Be terse.", messages=[user("2+2?")])]:
        raw = claude.messages.with_raw_response.count_tokens(model="claude-sonnet-4-5", **body)  # type: ignore[arg-type]
        counted = conforms(raw.http_response.json(), MessageTokensCount)
        assert counted.input_tokens == create(claude, **body).usage.input_tokens
    # Any messages are counted, recorded or not.
    # A message's text, 3 tokens of framing and 1 of its role, and 3 that prime the reply.
    assert claude.messages.count_tokens(model="m", messages=[user("Not recorded at all")]).input_tokens == tokens("Not recorded at all") + 7


def test_a_miss(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="m", max_tokens=10, system="Be terse.", messages=[user("2+2?"), {"role": "assistant", "content": "5."}, user("Sure?")])
    error = caught.value
    assert error.status_code == 404 and error.response.headers["request-id"].startswith("req_")
    body = error.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["error"]["message"] == (
        "No recorded conversation continues these 3 messages: messages[0:1] match a recorded conversation; messages[1]"
        " is the first that differs (no answer recorded there has this text)."
    )
    with pytest.raises(anthropic.NotFoundError, match=r"system already differs"):
        claude.messages.create(model="m", max_tokens=10, system="Be verbose.", messages=[user("2+2?")])


@pytest.mark.parametrize(
    "body, message",
    [
        ({"messages": [user("Hello!")]}, "max_tokens: Field required"),
        ({"max_tokens": 0, "messages": [user("Hello!")]}, "max_tokens: Expected `int` >= 1"),
        ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role: Invalid enum value 'tool'"),
        ({"max_tokens": 5, "messages": [user([{"type": "tool_use", "id": "a", "name": "b"}])]}, "messages.0.content.0.tool_use.input: Field required"),
        ({"max_tokens": 5, "messages": [user("Hello!")], "temperature": 1.5}, "temperature: Expected `float` <= 1.0"),
        ({"max_tokens": 5, "messages": [user("Hello!")], "tool_choice": {"type": "tool"}}, "tool_choice.name: Field required"),
        ({"max_tokens": 5, "messages": [user("Hello!")], "thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking.budget_tokens: Expected `int` >= 1024"),
    ],
)
def test_invalid_requests(server: MockServer, body: dict[str, Any], message: str) -> None:
    response = httpx.post(f"{server.base_url}/messages", json={"model": "m", **body})
    assert response.status_code == 400 and response.headers["request-id"].startswith("req_")
    error = conforms(response.json(), anthropic.types.ErrorResponse)
    assert error.error.type == "invalid_request_error" and error.error.message.startswith(message)


def test_models(claude: anthropic.Anthropic, server: MockServer) -> None:
    raw = claude.models.with_raw_response.list()
    page = raw.http_response.json()
    assert page["has_more"] is False and page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
    models = [conforms(model, ModelInfo) for model in page["data"]]
    assert "claude-sonnet-4-5" in [model.id for model in models] and all(isinstance(model.created_at, datetime) for model in models)
    assert claude.models.retrieve("claude-sonnet-4-5").display_name == "Claude Sonnet 4.5"
    # Without the header, the OpenAI API's list.
    assert httpx.get(f"{server.base_url}/models").json()["object"] == "list"


def test_the_api_key(index: Path) -> None:
    with MockServer(index, api_key="sk-ant-secret") as server:
        base = server.base_url.removesuffix("/v1")
        with anthropic.Anthropic(base_url=base, api_key="sk-ant-secret", max_retries=0) as client:
            assert create(client, messages=[user("Hello!")]).content[0].text == HELLO  # type: ignore[union-attr]
            assert client.messages.count_tokens(model="m", messages=[user("Hello!")]).input_tokens == 9
        with anthropic.Anthropic(base_url=base, auth_token="sk-ant-secret", max_retries=0) as client:
            assert create(client, messages=[user("Hello!")]).content[0].text == HELLO  # type: ignore[union-attr]
        with anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0) as client, pytest.raises(anthropic.AuthenticationError) as caught:
            client.messages.create(model="m", max_tokens=5, messages=[user("Hello!")])
        assert caught.value.response.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}


def test_faults_and_retries(claude: anthropic.Anthropic, server: MockServer) -> None:
    headers = {"x-mockgpt-fault": "500,500,ok", "x-mockgpt-fault-key": "retries", "x-mockgpt-retry-after-ms": "10"}
    with anthropic.Anthropic(base_url=str(claude.base_url), api_key="test", max_retries=2) as retrying:
        message = retrying.messages.create(model="m", max_tokens=50, messages=[user("Hello!")], extra_headers=headers)
    assert message.content[0].text == HELLO  # type: ignore[union-attr]
    with pytest.raises(anthropic.InternalServerError) as caught:
        claude.messages.create(model="m", max_tokens=50, messages=[user("Hello!")], extra_headers={"x-mockgpt-fault": "500"})
    assert conforms(caught.value.response.json(), anthropic.types.ErrorResponse).error.type == "api_error"
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude.messages.create(model="m", max_tokens=50, messages=[user("Hello!")], extra_headers={"x-mockgpt-fault": "529"})
    assert overloaded.value.status_code == 529 and overloaded.value.response.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="m", max_tokens=50, messages=[user("Hello!")], extra_headers={"x-mockgpt-fault": "429"})
    response = limited.value.response
    assert response.headers["retry-after"] == "1" and response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert response.json()["error"]["type"] == "rate_limit_error" and "x-ratelimit-remaining-requests" not in response.headers


def test_rate_limits(index: Path) -> None:
    with MockServer(index, rpm=2) as server:
        with anthropic.Anthropic(base_url=server.base_url.removesuffix("/v1"), api_key="limited", max_retries=0) as client:
            raw = client.messages.with_raw_response.create(model="m", max_tokens=50, messages=[user("Hello!")])
            assert raw.headers["anthropic-ratelimit-requests-limit"] == "2" and raw.headers["anthropic-ratelimit-requests-remaining"] == "1"
            reset = datetime.fromisoformat(raw.headers["anthropic-ratelimit-requests-reset"].replace("Z", "+00:00"))
            assert 0 <= reset.timestamp() - time.time() <= 61
            client.messages.create(model="m", max_tokens=50, messages=[user("Hello!")])
            with pytest.raises(anthropic.RateLimitError) as caught:
                client.messages.create(model="m", max_tokens=50, messages=[user("Hello!")])
    response = caught.value.response
    assert int(response.headers["retry-after"]) >= 1 and response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    error = conforms(response.json(), anthropic.types.ErrorResponse)
    assert error.error.type == "rate_limit_error" and response.headers["request-id"].startswith("req_")


def test_overload_is_529(index: Path) -> None:
    with MockServer(index, max_concurrency=1, max_queue=0) as server:
        slow = {"x-mockgpt-ttft-ms": "3000"}
        body = {"model": "m", "max_tokens": 50, "stream": True, "messages": [user("Tell me a story.")]}
        with httpx.stream("POST", f"{server.base_url}/messages", json=body, headers=slow, timeout=30) as busy:
            assert busy.status_code == 200
            turned = httpx.post(f"{server.base_url}/messages", json={**body, "stream": False})
    assert turned.status_code == 529 and turned.json()["error"]["type"] == "overloaded_error"
    assert turned.headers["request-id"].startswith("req_")


def test_busy_stream_with_tools(busy: MockServer) -> None:
    """Paced, in answer slots, rate-limited and counted: the same events."""
    seen = events(busy, system=SYSTEM, messages=[user(QUESTION)])
    assert [event["content_block"]["name"] for event in seen if event["type"] == "content_block_start"] == ["get_weather"] * 2
    with anthropic.Anthropic(base_url=busy.base_url.removesuffix("/v1"), api_key="t", max_retries=0) as client:
        assert create(client, messages=[user("Hello!")]).content[0].text == HELLO  # type: ignore[union-attr]


# Recording from an Anthropic-compatible upstream.

SECRET = "sk-ant-upstream-secret-8f14e45fceea167a"


def test_misses_are_recorded_from_an_anthropic_upstream_and_replayed(index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "fixtures.jsonl"
    # The Anthropic API's key for its misses; the OpenAI API's would not do.
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-other")
    monkeypatch.delenv("MOCKGPT_UPSTREAM_API_KEY", raising=False)
    with MockServer(index, api_key=SECRET) as upstream:
        with MockServer(record, upstream=upstream.base_url, record=record) as recorder:
            with anthropic.Anthropic(base_url=recorder.url, api_key="local", max_retries=0) as client:
                assert create(client, messages=[user("Hello!")]).content[0].text == HELLO  # type: ignore[union-attr]
                with client.messages.stream(model="m", max_tokens=1024, system=SYSTEM, messages=[user(QUESTION)]) as stream:
                    called = stream.get_final_message()
                # An upstream error goes to the client, and nothing is recorded.
                with pytest.raises(anthropic.NotFoundError):
                    client.messages.create(model="m", max_tokens=10, messages=[user("Not recorded upstream either")])
    assert [block.input for block in called.content] == [json.loads(call["function"]["arguments"]) for call in CALLS]  # type: ignore[union-attr]
    recorded = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert recorded[0] == {"messages": [user("Hello!"), {"role": "assistant", "content": HELLO}]}
    *asked, answer = recorded[1]["messages"]
    assert asked == [{"role": "system", "content": SYSTEM}, user(QUESTION)] and answer["content"] is None and len(recorded) == 2
    # The streamed input as the upstream wrote it, token by token.
    calls = [(call["id"], call["type"], call["function"]["name"], call["function"]["arguments"]) for call in answer["tool_calls"]]
    assert calls == [("toolu_" + call["id"], "function", call["function"]["name"], call["function"]["arguments"]) for call in CALLS]
    assert SECRET not in record.read_text(encoding="utf-8") and SECRET not in recorder.output
    # Replayed on the next start, through either API.
    with MockServer(record) as replaying:
        with anthropic.Anthropic(base_url=replaying.url, api_key="local", max_retries=0) as client:
            again = create(client, system=SYSTEM, messages=[user(QUESTION)])
        assert [(block.name, block.input) for block in again.content] == [(block.name, block.input) for block in called.content]  # type: ignore[union-attr]
        chat = httpx.post(f"{replaying.base_url}/chat/completions", json={"model": "m", "messages": [user("Hello!")]}).json()
        assert chat["choices"][0]["message"]["content"] == HELLO


def test_an_unreachable_upstream_is_a_502_of_this_api(index: Path, tmp_path: Path) -> None:
    options = dict(upstream="http://127.0.0.1:9/v1", record=tmp_path / "fixtures.jsonl")
    with MockServer(tmp_path / "fixtures.jsonl", **options) as recorder:  # type: ignore[arg-type]
        response = httpx.post(f"{recorder.base_url}/messages", json={"model": "m", "max_tokens": 5, "messages": [user("Hi")]})
    assert response.status_code == 502 and response.json()["error"]["type"] == "api_error"
    assert response.json()["error"]["message"].startswith("The upstream endpoint could not be reached")


def test_a_recorded_stream_is_put_together_whatever_its_cuts(server: MockServer) -> None:
    request = {"model": "m", "max_tokens": 1024, "system": SYSTEM, "messages": [user(QUESTION)]}
    whole = httpx.post(f"{server.base_url}/messages", json=request).content
    streamed = httpx.post(f"{server.base_url}/messages", json={**request, "stream": True}).content
    (expected,) = message_answers(whole)
    for size in [1, 7, 64, len(streamed)]:
        stream = MessageStream()
        for start in range(0, len(streamed), size):
            stream.feed(streamed[start : start + size])
        (answer,) = stream.answers()
        assert answer.content is None and answer.tool_calls is not None and expected.tool_calls is not None
        assert [(call.id, call.function.name, json.loads(call.function.arguments)) for call in answer.tool_calls] == [
            (call.id, call.function.name, json.loads(call.function.arguments)) for call in expected.tool_calls
        ]
    broken = MessageStream()
    broken.feed(streamed[:200] + b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n')
    assert broken.answers() == []


GOOD = {"model": "m", "max_tokens": 5, "messages": [user("Hello!")]}
ERRORS = [
    # (what, method, path, body, headers, status, error type)
    ("malformed JSON", "POST", "/v1/messages", b'{"model": "m", "messages": [', {}, 400, "invalid_request_error"),
    ("not an object", "POST", "/v1/messages", b"[1, 2]", {}, 400, "invalid_request_error"),
    ("missing model", "POST", "/v1/messages", json.dumps({"max_tokens": 5, "messages": []}), {}, 400, "invalid_request_error"),
    ("count without messages", "POST", "/v1/messages/count_tokens", json.dumps({"model": "m"}), {}, 400, "invalid_request_error"),
    ("no key", "POST", "/v1/messages", json.dumps(GOOD), {"x-api-key": ""}, 401, "authentication_error"),
    ("wrong key", "POST", "/messages", json.dumps(GOOD), {"x-api-key": "sk-nope"}, 401, "authentication_error"),
    ("miss", "POST", "/v1/messages", json.dumps({**GOOD, "messages": [user("Bye!")]}), {}, 404, "not_found_error"),
    ("wrong method", "GET", "/v1/messages", None, {}, 405, "invalid_request_error"),
    ("body too large", "POST", "/v1/messages", json.dumps({**GOOD, "metadata": {"user_id": "x" * 70_000}}), {}, 413, "request_too_large"),
    ("invalid fault header", "POST", "/v1/messages", json.dumps(GOOD), {"x-mockgpt-fault": "sometimes"}, 400, "invalid_request_error"),
    ("headers too large", "POST", "/v1/messages", json.dumps({**GOOD, "stream": True}), {"x-big": "x" * 70_000}, 431, "invalid_request_error"),
]


@pytest.fixture(scope="module")
def keyed(index: Path) -> Iterator[MockServer]:
    with MockServer(index, api_key="sk-test", max_body=64 * 1024) as server:
        yield server


@pytest.mark.parametrize("what, method, path, body, headers, status, type", ERRORS, ids=[case[0] for case in ERRORS])
def test_every_error_in_this_apis_shape(
    keyed: MockServer, what: str, method: str, path: str, body: Any, headers: dict[str, str], status: int, type: str
) -> None:
    sent = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01", "content-type": "application/json", **headers}
    response = httpx.request(method, f"{keyed.url}{path}", content=body, headers={k: v for k, v in sent.items() if v}, timeout=30)
    assert response.status_code == status and response.headers["request-id"].startswith("req_") and "x-request-id" not in response.headers
    assert list(response.json()) == ["type", "error"] and list(response.json()["error"]) == ["type", "message"]
    error = conforms(response.json(), anthropic.types.ErrorResponse) if type != "request_too_large" else None
    assert response.json()["error"]["type"] == type and response.json()["error"]["message"]
    assert error is None or error.error.type == type


# Cost follows size.


def test_many_blocks_and_stop_sequences_cost_time_linear_in_their_size(server: MockServer) -> None:
    def blocks(n: int) -> dict[str, Any]:
        results = [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "x"}]} for _ in range(n)]
        calls = [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1]}} for _ in range(n)]
        return {**GOOD, "messages": [user(results), {"role": "assistant", "content": calls}, user([{"type": "text", "text": "x"}] * n)]}

    assert_linear(server, "/messages", blocks, 20_000)
    assert_linear(server, "/messages", stops, 50_000, status=200)


def stops(n: int) -> dict[str, Any]:
    """Stop sequences that the story's text holds the first characters of, asked of the story: a hit."""
    return {**GOOD, "max_tokens": 1024, "messages": [user("Tell me a story.")], "stop_sequences": [f"A fox{i}" for i in range(n)]}
