"""Every error a client can get, in the one OpenAI shape, and never a 5xx for anything a client sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mockgpt.testing import MockServer

from .test_server import CONVERSATIONS  # noqa: F401  (the module's conversations, which conftest indexes)

LIMIT = 64 * 1024
GOOD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}]}


@pytest.fixture(scope="module")
def server(index: Path) -> Iterator[MockServer]:  # noqa: F811
    with MockServer(index, api_key="sk-test", max_body=LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def http(server: MockServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"authorization": "Bearer sk-test"}, timeout=30) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    return error  # type: ignore[no-any-return]


CASES = [
    # (name, method, path, body, headers, status, param, code)
    ("malformed JSON", "POST", "/v1/chat/completions", b'{"model": "m", "messages": [', {}, 400, None, None),
    ("not an object", "POST", "/v1/chat/completions", b"[1, 2]", {}, 400, None, None),
    ("missing model", "POST", "/v1/chat/completions", json.dumps({"messages": GOOD["messages"]}), {}, 400, "model", "missing_required_parameter"),
    ("messages not a list", "POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": 3}), {}, 400, "messages", None),
    ("no messages", "POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": []}), {}, 400, "messages", None),
    ("unknown role", "POST", "/v1/chat/completions", json.dumps({**GOOD, "messages": [{"role": "human", "content": "Hello!"}]}), {}, 400, "messages[0].role", None),
    ("content of a wrong type", "POST", "/v1/chat/completions", json.dumps({**GOOD, "messages": [{"role": "user", "content": 5}]}), {}, 400, "messages[0].content", None),
    ("n as a string", "POST", "/v1/chat/completions", json.dumps({**GOOD, "n": "2"}), {}, 400, "n", None),
    ("stream as a string", "POST", "/v1/chat/completions", json.dumps({**GOOD, "stream": "yes"}), {}, 400, "stream", None),
    ("max_tokens zero", "POST", "/v1/chat/completions", json.dumps({**GOOD, "max_tokens": 0}), {}, 400, "max_tokens", None),
    ("five stop sequences", "POST", "/v1/chat/completions", json.dumps({**GOOD, "stop": list("abcde")}), {}, 400, "stop", None),
    ("legacy prompt of tokens", "POST", "/v1/completions", json.dumps({"model": "m", "prompt": [1, 2]}), {}, 400, "prompt[0]", None),
    ("no key", "POST", "/v1/chat/completions", json.dumps(GOOD), {"authorization": ""}, 401, None, "missing_api_key"),
    ("wrong key", "POST", "/v1/chat/completions", json.dumps(GOOD), {"authorization": "Bearer sk-nope"}, 401, None, "invalid_api_key"),
    ("wrong key on models", "GET", "/v1/models", None, {"authorization": "Bearer sk-nope"}, 401, None, "invalid_api_key"),
    ("miss", "POST", "/v1/chat/completions", json.dumps({**GOOD, "messages": [{"role": "user", "content": "Bye!"}]}), {}, 404, "messages", "conversation_not_found"),
    ("legacy miss", "POST", "/v1/completions", json.dumps({"model": "m", "prompt": "Bye!"}), {}, 404, "prompt", "conversation_not_found"),
    ("unknown route", "GET", "/v1/nothing", None, {}, 404, None, None),
    ("unknown route without v1", "POST", "/audio/speech", b"{}", {}, 404, None, None),
    ("wrong method", "GET", "/v1/chat/completions", None, {}, 405, None, None),
    ("wrong method on models", "DELETE", "/v1/models", None, {}, 405, None, None),
    ("body over the limit", "POST", "/v1/chat/completions", b" " * (LIMIT + 1), {}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize("name, method, path, body, headers, status, param, code", CASES, ids=[c[0] for c in CASES])
def test_error_paths(
    http: httpx.Client, name: str, method: str, path: str, body: bytes | str | None, headers: dict[str, str],
    status: int, param: str | None, code: str | None,
) -> None:
    response = http.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert response.headers["x-request-id"].startswith("req_")


def test_chunked_body_over_the_limit(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(4 * LIMIT // 1024):
            yield b" " * 1024

    response = http.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


def nested(depth: int) -> bytes:
    return json.dumps({**GOOD, "extra": "X"}).encode().replace(b'"X"', b"[" * depth + b"]" * depth)


HOSTILE = {
    "truncated JSON": json.dumps(GOOD).encode()[:-7],
    "invalid UTF-8": json.dumps(GOOD).encode().replace(b"Hello!", b"Hel\xff\xfelo"),
    "lone surrogate bytes": json.dumps(GOOD).encode().replace(b"Hello!", b"\xed\xa0\x80"),
    "raw NUL bytes": json.dumps(GOOD).encode().replace(b"Hello!", b"Hel\x00lo"),
    "escaped NUL": json.dumps({**GOOD, "messages": [{"role": "user", "content": "Hel\u0000lo"}]}).encode(),
    "escaped lone surrogate": json.dumps(GOOD).encode().replace(b"Hello!", b"\\ud800"),
    "deeply nested unknown field": nested(30_000),
    "deeply nested messages": json.dumps({"model": "m", "messages": "X"}).encode().replace(b'"X"', b"[" * 30_000 + b"]" * 30_000),
    "thousands of messages": json.dumps({**GOOD, "messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "x"}] * 2000}).encode(),
    "huge seed": json.dumps(GOOD).encode()[:-1] + b', "seed": 1' + b"0" * 400 + b"}",
    "binary garbage": bytes(range(256)) * 100,
    "empty body": b"",
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_gets_a_4xx_and_the_next_request_works(http: httpx.Client, body: bytes, stream: bool) -> None:
    if stream:
        body = body.replace(b'"model"', b'"stream": true, "model"', 1)
    response = http.post("/v1/chat/completions", content=body)
    assert 400 <= response.status_code < 500, response.text
    error_of(response)
    good = http.post("/v1/chat/completions", json=GOOD)
    assert good.status_code == 200
    assert good.json()["choices"][0]["message"]["content"] == CONVERSATIONS[0]["conversations"][1]["value"]
