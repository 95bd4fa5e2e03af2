"""Every object a real server sends, checked against OpenAI's OpenAPI spec (``tests/openapi``).

The requests go through httpx, not an SDK, so that what is checked is the body as sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from mockgpt.testing import MockServer, index_conversations

from .conftest import BUSY
from .openapi import extract
from .spec import EXTRACT, schemas, sse_events, sse_objects, validate

HELLOS = ["Hi! How can I help?", "Hello there. What's on your mind?", "Hey! 👋 Ask me anything."]
STORY = "A fox found a lantern in the snow. It glowed all night, and the fox was never cold again."
CONVERSATIONS = [
    *([{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": text}] for text in HELLOS),
    [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": STORY}],
]
HELLO = [{"role": "user", "content": "Hello!"}]
TELL = [{"role": "user", "content": "Tell me a story."}]
API_KEY = "sk-mockgpt-spec-test"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return index_conversations(CONVERSATIONS, tmp_path_factory.mktemp("spec") / "chats.mgpt")


@pytest.fixture(scope="module", params=[{}, {"deterministic": True}, BUSY], ids=["random", "deterministic", "busy"])
def server(request: pytest.FixtureRequest, index: Path) -> Iterator[MockServer]:
    with MockServer(index, **request.param) as server:
        yield server


@pytest.fixture
def http(server: MockServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def post(http: httpx.Client, path: str, body: dict[str, Any], content_type: str) -> httpx.Response:
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(content_type)
    return response


def finish_reasons(choices: list[dict[str, Any]]) -> list[str | None]:
    return [choice["finish_reason"] for choice in sorted(choices, key=lambda choice: choice["index"])]


# Each case: the request's fields besides the model, and the finish reasons of the choices it gets.
CHAT = {
    "plain": ({"messages": HELLO}, ["stop"]),
    "n=2": ({"messages": HELLO, "n": 2}, ["stop", "stop"]),
    "seed": ({"messages": HELLO, "seed": 2}, ["stop"]),
    "max_tokens": ({"messages": TELL, "max_tokens": 3}, ["length"]),
    "max_completion_tokens": ({"messages": TELL, "max_completion_tokens": 3}, ["length"]),
    "stop": ({"messages": TELL, "stop": ["."]}, ["stop"]),
}


@pytest.mark.parametrize("body, reasons", CHAT.values(), ids=CHAT.keys())
def test_chat_completion(http: httpx.Client, body: dict[str, Any], reasons: list[str]) -> None:
    completion = post(http, "/chat/completions", {"model": "gpt-4o", **body}, "application/json").json()
    validate("CreateChatCompletionResponse", completion)
    assert finish_reasons(completion["choices"]) == reasons


STREAM_OPTIONS = {"include_usage": {"stream_options": {"include_usage": True}}, "no_usage": {}}
CHAT_STREAMS = {
    "plain": ({"messages": HELLO}, ["stop"]),
    "n=2": ({"messages": HELLO, "n": 2}, ["stop", "stop"]),
    "max_tokens": ({"messages": TELL, "max_tokens": 3}, ["length"]),
    "stop": ({"messages": TELL, "stop": ["."]}, ["stop"]),
}


@pytest.mark.parametrize("options", STREAM_OPTIONS.values(), ids=STREAM_OPTIONS.keys())
@pytest.mark.parametrize("body, reasons", CHAT_STREAMS.values(), ids=CHAT_STREAMS.keys())
def test_chat_chunk(http: httpx.Client, body: dict[str, Any], reasons: list[str], options: dict[str, Any]) -> None:
    request = {"model": "gpt-4o", "stream": True, **body, **options}
    chunks = sse_objects(post(http, "/chat/completions", request, "text/event-stream").text)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert_usage_only_last(chunks, options)
    ends = [choice for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"] is not None]
    assert finish_reasons(ends) == reasons


def assert_usage_only_last(chunks: list[dict[str, Any]], options: dict[str, Any]) -> None:
    """As ``stream_options.include_usage`` says: without it no chunk has ``usage``; with it, every chunk
    has one, null but in the last, whose ``choices`` are empty."""
    if not options:
        assert all("usage" not in chunk for chunk in chunks)
        return
    *before, last = chunks
    assert all("usage" in chunk and chunk["usage"] is None for chunk in before)
    assert last["usage"] is not None and last["choices"] == []


COMPLETIONS = {
    "plain": ({"prompt": "Hello!"}, ["stop"]),
    "prompts": ({"prompt": ["Hello!", "Tell me a story."]}, ["stop", "stop"]),
    "n=2": ({"prompt": "Hello!", "n": 2}, ["stop", "stop"]),
    "max_tokens": ({"prompt": "Tell me a story.", "max_tokens": 3}, ["length"]),
    "stop": ({"prompt": "Tell me a story.", "stop": "."}, ["stop"]),
}


@pytest.mark.parametrize("body, reasons", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_completion(http: httpx.Client, body: dict[str, Any], reasons: list[str]) -> None:
    completion = post(http, "/completions", {"model": "gpt-3.5-turbo-instruct", **body}, "application/json").json()
    validate("CreateCompletionResponse", completion)
    assert finish_reasons(completion["choices"]) == reasons


@pytest.mark.parametrize("options", STREAM_OPTIONS.values(), ids=STREAM_OPTIONS.keys())
@pytest.mark.parametrize("body, reasons", COMPLETIONS.values(), ids=COMPLETIONS.keys())
def test_completion_chunk(http: httpx.Client, body: dict[str, Any], reasons: list[str], options: dict[str, Any]) -> None:
    request = {"model": "gpt-3.5-turbo-instruct", "stream": True, **body, **options}
    chunks = sse_objects(post(http, "/completions", request, "text/event-stream").text)
    for chunk in chunks:
        validate("CreateCompletionResponse.chunk", chunk)
    assert_usage_only_last(chunks, options)
    ends = [choice for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"] is not None]
    assert finish_reasons(ends) == reasons


def test_model_list(http: httpx.Client) -> None:
    response = http.get("/models")
    assert response.status_code == 200
    validate("ListModelsResponse", response.json())
    assert response.json()["data"]


def test_model(http: httpx.Client) -> None:
    response = http.get("/models/gpt-4o")
    assert response.status_code == 200
    validate("Model", response.json())


def chat(text: str, **fields: Any) -> dict[str, Any]:
    return {"json": {"model": "gpt-4o", "messages": [{"role": "user", "content": text}], **fields}}


# Each case: the request, and the status of the error it gets.
ERRORS = {
    "404-chat-miss": ("POST", "/chat/completions", chat("Nobody said this."), 404),
    "404-stream-miss": ("POST", "/chat/completions", chat("Nor this.", stream=True), 404),
    "404-completion-miss": ("POST", "/completions", {"json": {"model": "gpt-3.5-turbo-instruct", "prompt": "Nor this."}}, 404),
    "404-unknown-route": ("GET", "/no/such/route", {}, 404),
    "400-missing-field": ("POST", "/chat/completions", {"json": {"model": "gpt-4o"}}, 400),
    "400-wrong-type": ("POST", "/chat/completions", chat("Hello!", n="2"), 400),
    "400-out-of-range": ("POST", "/completions", {"json": {"model": "gpt-4o", "prompt": "Hello!", "max_tokens": 0}}, 400),
    "400-not-json": ("POST", "/chat/completions", {"content": b"{", "headers": {"content-type": "application/json"}}, 400),
    "405-wrong-method": ("GET", "/chat/completions", {}, 405),
}


@pytest.mark.parametrize("method, path, request_options, status", ERRORS.values(), ids=ERRORS.keys())
def test_error(http: httpx.Client, method: str, path: str, request_options: dict[str, Any], status: int) -> None:
    assert_error(http.request(method, path, **request_options), status)


@pytest.fixture(scope="module")
def locked(index: Path) -> Iterator[MockServer]:
    with MockServer(index, api_key=API_KEY, max_body=4096) as server:
        yield server


AUTH_ERRORS = {
    "401-no-key": (None, chat("Hello!"), 401),
    "401-wrong-key": ("sk-wrong-key-1234", chat("Hello!"), 401),
    "413-too-large": (API_KEY, chat("x" * 5000), 413),
}


@pytest.mark.parametrize("key, request_options, status", AUTH_ERRORS.values(), ids=AUTH_ERRORS.keys())
def test_error_with_api_key(locked: MockServer, key: str | None, request_options: dict[str, Any], status: int) -> None:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=locked.base_url, headers=headers, timeout=60) as http:
        assert_error(http.post("/chat/completions", **request_options), status)


# 502 and 524 are left out: the real API's edge sends them with an integer code, which Error does not allow.
FAULTS = [400, 401, 403, 404, 409, 418, 422, 429, 499, 500, 503, 504, 599]


@pytest.mark.parametrize("status", FAULTS)
def test_fault(http: httpx.Client, status: int) -> None:
    assert_error(http.post("/chat/completions", **chat("Hello!"), headers={"x-mockgpt-fault": str(status)}), status)


def test_rate_limit_errors(index: Path) -> None:
    with MockServer(index, rpm=1, tpm=50) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        # Too large for a minute's tokens: refused, it takes nothing from the budgets.
        assert_error(http.post("/chat/completions", **chat("Hello!", max_tokens=60)), 429)
        assert http.post("/chat/completions", **chat("Hello!")).status_code == 200
        assert_error(http.post("/chat/completions", **chat("Hello!")), 429)  # a second request in the minute


@pytest.mark.parametrize("status", [429, 503])
def test_overload_error(index: Path, status: int) -> None:
    with MockServer(index, max_concurrency=1, max_queue=0, ttft_ms=2000, overload_status=status) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as http, http.stream("POST", "/chat/completions", **chat("Hello!", stream=True)):
            # The stream holds the only slot, waiting for its first token; it gives it up when it is closed.
            assert_error(http.post("/chat/completions", **chat("Hello!")), status)


def assert_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    validate("ErrorResponse", response.json())


# The helpers themselves.


def test_the_extract_is_json_schema() -> None:
    assert set(extract.ROOTS) <= schemas().keys()
    for schema in schemas().values():
        Draft202012Validator.check_schema(schema)


def test_the_extract_is_what_extract_py_makes(tmp_path: Path) -> None:
    # Cut from itself, the extract comes out unchanged: ROOTS and the file agree.
    extract.main([str(EXTRACT), "-o", str(tmp_path / "schemas.json")])
    assert (tmp_path / "schemas.json").read_text(encoding="utf-8") == EXTRACT.read_text(encoding="utf-8")


def chat_chunk(**fields: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", **fields}


def test_validate_names_every_error() -> None:
    wrong = chat_chunk(choices=[{"index": 0, "delta": {"content": 7}, "finish_reason": "done"}], system_fingerprint=None, extra=1)
    with pytest.raises(AssertionError) as raised:
        validate("CreateChatCompletionStreamResponse", wrong)
    message = str(raised.value)
    assert "(4 errors)" in message
    assert "$.system_fingerprint: None is not of type 'string'" in message
    assert "$.choices[0].delta.content:" in message and "$.choices[0].finish_reason:" in message
    assert "$: the spec names no property 'extra'" in message
    validate("CreateChatCompletionStreamResponse", chat_chunk(choices=[], extra=1), extra_properties=["extra"])


def test_validate_follows_nullable() -> None:
    # The chunk's finish_reason and usage are written in OpenAPI 3.0 style, "nullable: true".
    choice = {"index": 0, "delta": {}, "finish_reason": None, "logprobs": None}
    validate("CreateChatCompletionStreamResponse", chat_chunk(choices=[choice], usage=None))


def test_a_legacy_chunk_may_hold_nulls_a_completion_may_not() -> None:
    choice = {"text": "Hi", "index": 0, "finish_reason": None, "logprobs": None}
    legacy = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [choice], "usage": None}
    validate("CreateCompletionResponse.chunk", legacy)
    with pytest.raises(AssertionError, match=r"\$.usage: None is not of type 'object'"):
        validate("CreateCompletionResponse", legacy)


def test_validate_knows_its_schemas() -> None:
    with pytest.raises(KeyError, match="ROOTS"):
        validate("NoSuchSchema", {})


def test_sse_events() -> None:
    body = "event: response.created\ndata: {\"a\":\ndata: 1}\n\n: a comment\r\ndata:[DONE]\r\n\r\n"
    assert sse_events(body) == [("response.created", '{"a":\n1}'), (None, "[DONE]")]
    assert sse_objects(body) == [{"a": 1}]
    with pytest.raises(AssertionError, match="ends inside an event"):
        sse_events("data: {}\n\ndata: [DONE]\n")
    with pytest.raises(AssertionError, match="does not end with"):
        sse_objects("data: {}\n\n")
