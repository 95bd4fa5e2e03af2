"""A real server on a free port, driven by the official openai client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from bpe_openai import get_encoding

from mockgpt.index.build import build
from mockgpt.index.fileformat import FORMAT_VERSION
from mockgpt.testing import MockServer, index_conversations

from .conftest import sharegpt, write_sharegpt

# The official client's behaviour: CI runs these against the oldest supported openai release too.
pytestmark = pytest.mark.sdk

HELLOS = ["Hi! How can I help?", "Hello there. What's on your mind?", "Hey! 👋 Ask me anything."]
CODE = "Here you go:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nCall `add(2, 3)` to get 5. Ça marche très bien — 日本語も大丈夫です。"
CONVERSATIONS = [
    *(sharegpt(f"hello-{n}", ("human", "Hello!"), ("gpt", text)) for n, text in enumerate(HELLOS)),
    sharegpt("code", ("human", "Write an add function in Python."), ("gpt", CODE), ("human", "Thanks!"), ("gpt", "You're welcome.")),
    sharegpt("sys", ("system", "Be terse."), ("human", "2+2?"), ("gpt", "4.")),
]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


ENCODING = get_encoding("o200k_base")
CODE_TURN = user("Write an add function in Python.")


def test_create(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o"
    (choice,) = completion.choices
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content == CODE
    assert choice.message.refusal is None
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.prompt_tokens == 3 + 1 + 7 + 3


def test_async_create(server: MockServer) -> None:
    async def ask() -> str | None:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
            completion = await client.chat.completions.create(model="gpt-4o-mini", messages=user("Hello!"))  # type: ignore[arg-type]
            return completion.choices[0].message.content

    assert asyncio.run(ask()) == HELLOS[0]


def test_stream_with_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=CODE_TURN, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        )
    )
    assert len({chunk.id for chunk in chunks}) == 1 and len({chunk.created for chunk in chunks}) == 1
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    first, *middle, finish, last = chunks
    assert first.choices[0].delta.role == "assistant"
    contents = [chunk.choices[0].delta.content for chunk in middle]
    assert "".join(c or "" for c in contents) == CODE
    assert whole.usage is not None and last.usage is not None
    # One recorded token a chunk, except where a token ends inside a character.
    assert len(contents) <= whole.usage.completion_tokens <= len(contents) + len(CODE.encode()) - len(CODE)
    assert finish.choices[0].finish_reason == "stop" and finish.usage is None
    assert last.choices == [] and last.usage.model_dump() == whole.usage.model_dump()


def test_stream_without_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("Hello!"), stream=True))  # type: ignore[arg-type]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == HELLOS[0]


def test_a_client_that_disconnects_stops_its_stream(tmp_path: Path) -> None:
    # An answer of some 150,000 tokens: streaming it costs the server a measurable share of a second.
    long_answer = " ".join(f"word{n}" for n in range(50_000))
    index = index_conversations([[{"role": "user", "content": "long"}, {"role": "assistant", "content": long_answer}]], tmp_path / "long.mgpt")
    body = {"model": "gpt-4o", "messages": user("long"), "stream": True}
    with MockServer(index) as server, httpx.Client(base_url=server.base_url, timeout=60) as client:
        assert server.pid is not None
        start = _settled_cpu_time(server.pid)
        with client.stream("POST", "/chat/completions", json=body) as response:
            received = sum(len(chunk) for chunk in response.iter_raw())
        whole = _settled_cpu_time(server.pid) - start
        start = _settled_cpu_time(server.pid)
        with httpx.Client(base_url=server.base_url, timeout=60) as leaving:
            with leaving.stream("POST", "/chat/completions", json=body) as response:
                next(response.iter_raw())
        abandoned = _settled_cpu_time(server.pid) - start
        assert received > 10_000_000
        assert abandoned < whole / 4, (abandoned, whole)
        assert client.post("/chat/completions", json={**body, "stream": False}).json()["choices"][0]["message"]["content"] == long_answer


def _settled_cpu_time(pid: int) -> float:
    """The process's CPU seconds, once it has stopped using any for a while."""
    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    last = cpu()
    for _ in range(100):
        time.sleep(0.3)
        now = cpu()
        if now == last:
            return now
        last = now
    raise AssertionError(f"process {pid} kept using CPU")


def test_n_cycles_through_answers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user("Hello!"), n=4)  # type: ignore[arg-type]
    assert [c.message.content for c in completion.choices] == [*HELLOS, HELLOS[0]]
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_n_streams_interleave_in_token_order(server: MockServer, path: str) -> None:
    chat = path == "/chat/completions"
    body = {"model": "gpt-4o", "stream": True, "n": 3, **({"messages": user("Hello!")} if chat else {"prompt": "Hello!"})}
    events = [line.removeprefix("data: ") for line in httpx.post(server.base_url + path, json=body).text.split("\n\n") if line]
    chunks = [json.loads(event) for event in events[:-1]]
    pieces: list[list[str]] = [[], [], []]
    order = []
    for chunk in chunks[3:] if chat else chunks:
        (choice,) = chunk["choices"]
        i = choice["index"]
        if choice["finish_reason"]:
            order.append(-1 - i)
        else:
            order.append(i)
            pieces[i].append(choice["delta"]["content"] if chat else choice["text"])
    assert ["".join(p) for p in pieces] == HELLOS
    if chat:
        assert [c["choices"][0]["index"] for c in chunks[:3]] == [0, 1, 2]
        assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks[:3])
    # Step after step, every choice still going sends its next token, and its finish after the last.
    expected = []
    for step in range(max(len(p) for p in pieces)):
        for i, p in enumerate(pieces):
            if step < len(p):
                expected.append(i)
            if step == len(p) - 1:
                expected.append(-1 - i)
    assert order == expected


def test_every_response_names_the_index_build(server: MockServer, index: Path) -> None:
    fingerprints = {
        httpx.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": user("Hello!"), **extra}).json()["system_fingerprint"]
        for extra in [{}, {"n": 2}]
    }
    fingerprints.add(httpx.post(f"{server.base_url}/completions", json={"model": "m", "prompt": "Hello!"}).json()["system_fingerprint"])
    (fingerprint,) = fingerprints
    assert fingerprint.startswith("fp_") and len(fingerprint) == 13
    # Another build of the same conversations is another index.
    copy = index.parent / "copy.mgpt"
    build([index.parent / "chats.json"], copy)
    with MockServer(copy) as other:
        assert httpx.post(f"{other.base_url}/completions", json={"model": "m", "prompt": "Hello!"}).json()["system_fingerprint"] != fingerprint


@pytest.mark.parametrize("messages", [user("Hello!"), CODE_TURN], ids=["hello", "code"])
def test_whole_answers_take_a_shorter_path_to_the_same_bytes(server: MockServer, messages: list[dict[str, str]]) -> None:
    # A max_tokens past the answer's length takes the general path, and changes nothing else.
    bodies = []
    for extra in [{}, {"max_tokens": 10**6}]:
        response = httpx.post(f"{server.base_url}/chat/completions", json={"model": "gpt-4o", "messages": messages, **extra})
        reply = response.json()
        bodies.append(response.content.replace(reply["id"].encode(), b"ID").replace(b'"created":%d' % reply["created"], b"CREATED"))
    assert bodies[0] == bodies[1]
    assert b"ID" in bodies[0] and b"CREATED" in bodies[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 7])
def test_seed_picks_an_answer(client: openai.OpenAI, seed: int) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=user("Hello!"), seed=seed)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == HELLOS[seed % 3]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_exactly(client: openai.OpenAI, field: str) -> None:
    whole = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN)  # type: ignore[arg-type]
    cut = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN, **{field: 5})  # type: ignore[call-overload]
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 5
    assert cut.usage.prompt_tokens == whole.usage.prompt_tokens  # type: ignore[union-attr]
    tokens = [ENCODING.decode([token]) for token in ENCODING.encode_ordinary(CODE)[:5]]
    assert cut.choices[0].message.content == "".join(tokens)
    streamed = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN, stream=True, **{field: 5})  # type: ignore[call-overload]
    chunks = [chunk.choices[0] for chunk in streamed]
    assert [c.delta.content for c in chunks[1:-1]] == tokens
    assert chunks[-1].finish_reason == "length"


def test_stop(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN, stop=["def", "```"])  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Here you go:\n\n"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and 0 < completion.usage.completion_tokens < 10
    streamed = client.chat.completions.create(model="gpt-4o", messages=CODE_TURN, stop="def", stream=True)  # type: ignore[arg-type]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == CODE[: CODE.index("def")]


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert "gpt-4o" in [model.id for model in models.data]
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_legacy_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello!", seed=1)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == HELLOS[1]
    assert completion.choices[0].finish_reason == "stop"
    cut = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Write an add function in Python.", max_tokens=3)
    assert cut.choices[0].text == ENCODING.decode(ENCODING.encode_ordinary(CODE)[:3])
    assert cut.choices[0].finish_reason == "length" and cut.usage is not None and cut.usage.completion_tokens == 3
    streamed = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello!", stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == HELLOS[0]


def test_legacy_prompt_tokens_are_the_prompts_own(client: openai.OpenAI) -> None:
    # The legacy API counts the prompt's text alone, without the framing of a chat message.
    prompts = ["Hello!", "Write an add function in Python."]
    expected = [len(ENCODING.encode_ordinary(prompt)) for prompt in prompts]
    for prompt, count in zip(prompts, expected):
        completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt)
        assert completion.usage is not None and completion.usage.prompt_tokens == count
    both = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts)
    assert both.usage is not None and both.usage.prompt_tokens == sum(expected)
    chunks = list(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompts[0], stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == expected[0]


@pytest.mark.parametrize(
    ("prompt", "param", "explanation"),
    [
        ("Bonjour", "prompt", "this prompt: prompt already differs from every recorded conversation."),
        (["Hello!", "Bonjour"], "prompt[1]", "this prompt: prompt[1] already differs from every recorded conversation."),
        ("Be terse.", "prompt", "this prompt: prompt already differs from every recorded conversation."),
    ],
)
def test_a_legacy_miss_speaks_of_the_prompt(client: openai.OpenAI, prompt: str | list[str], param: str, explanation: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "conversation_not_found" and error["param"] == param
    assert error["message"] == "No recorded conversation continues " + explanation


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
def test_stream_chunks_carry_usage_only_when_asked(server: MockServer, path: str) -> None:
    body = {"model": "gpt-4o", "stream": True, **({"messages": user("Hello!")} if path == "/chat/completions" else {"prompt": "Hello!"})}
    for include_usage in [False, True]:
        response = httpx.post(server.base_url + path, json={**body, "stream_options": {"include_usage": include_usage}})
        events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(event) for event in events[:-1]]
        if include_usage:
            assert all(chunk["usage"] is None for chunk in chunks[:-1]) and chunks[-1]["usage"]["total_tokens"] > 0
        else:
            assert all("usage" not in chunk for chunk in chunks)
    if path == "/chat/completions":
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}
        assert chunks[-2]["choices"][0]["delta"] == {}


def test_raw_response_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[*CODE_TURN, {"role": "assistant", "content": CODE}, *user("Thanks!")]  # type: ignore[list-item]
    )
    assert raw.headers["x-mockgpt-conversation-id"] == "code"
    assert raw.headers["x-mockgpt-turn"] == "3"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse().choices[0].message.content == "You're welcome."


SYS = [{"role": "system", "content": "Be terse."}, *user("2+2?")]
CODE_TALK = [*CODE_TURN, {"role": "assistant", "content": CODE}, *user("Thanks!")]
AFTER = "match a recorded conversation; messages[{0}] is the first that differs"
GOES_ON = " (the recorded conversation goes on with an assistant answer there)."
NO_SUCH_ANSWER = " (no answer recorded there has this text)."


@pytest.mark.parametrize(
    "messages, explanation",
    [
        (user("Bonjour"), "this message: messages[0] already differs from every recorded conversation."),
        ([*user("Hello!"), *user("Hello!")], "messages[0:1] " + AFTER.format(1) + GOES_ON),
        ([*SYS, *user("3+3?")], "messages[0:2] " + AFTER.format(2) + GOES_ON),
        ([*SYS, {"role": "assistant", "content": "5."}], "messages[0:2] " + AFTER.format(2) + NO_SUCH_ANSWER),
        ([*CODE_TURN, {"role": "assistant", "content": "No."}], "messages[0:1] " + AFTER.format(1) + NO_SUCH_ANSWER),
        ([*CODE_TALK[:2], *user("Thanks a lot!")], "messages[0:2] " + AFTER.format(2) + "."),
        ([*CODE_TALK, {"role": "assistant", "content": "Sure."}], "messages[0:3] " + AFTER.format(3) + NO_SUCH_ANSWER),
        ([*CODE_TALK, *user("More?")], "messages[0:3] " + AFTER.format(3) + GOES_ON),
        ([*CODE_TALK[:1], {"role": "assistant", "content": "No."}, *CODE_TALK[2:]], "messages[0:1] " + AFTER.format(1) + NO_SUCH_ANSWER),
        ([*SYS, {"role": "assistant", "content": "4."}], "messages[0:3] match a recorded conversation, but it has no assistant answer after them."),
        (CODE_TALK[:2], "messages[0:2] match a recorded conversation, but it has no assistant answer after them."),
        ([{"role": "system", "content": "Be verbose."}, *user("2+2?")], "messages[0] already differs from every recorded conversation."),
    ],
    ids=[
        "first", "user-after-question", "user-after-system-question", "answer-differs", "first-answer-differs",
        "user-after-answer", "later-answer-differs", "user-after-later-question", "differs-before-a-recorded-tail",
        "stops-after-last-answer", "stops-after-answer-before-user", "system-differs",
    ],
)
def test_a_miss_says_how_far_the_request_matched(client: openai.OpenAI, messages: list[dict[str, str]], explanation: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "conversation_not_found" and error["param"] == "messages"
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("No recorded conversation continues ")
    assert error["message"].endswith(explanation)


def test_a_miss_with_ignore_system_counts_every_message(index: Path) -> None:
    with MockServer(index, ignore_system=True) as server:
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "system", "content": "Hi."}, *user("Hello!"), *user("Again?")]},
        )
    assert response.status_code == 404
    assert response.json()["error"]["message"].endswith("messages[0:2] " + AFTER.format(2) + GOES_ON)


def test_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[misc, list-item]
    assert caught.value.body["param"] == "messages[0].role"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=user("Hello!"), n=0)  # type: ignore[arg-type]


def test_system_message_counts(client: openai.OpenAI) -> None:
    messages = [{"role": "developer", "content": "Be terse."}, *user("2+2?")]
    assert client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content == "4."  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=user("2+2?"))  # type: ignore[arg-type]


def test_ignore_system(index: Path, server: MockServer) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as plain:
        recorded = plain.chat.completions.create(model="gpt-4o", messages=user("Hello!")).usage  # type: ignore[arg-type]
    system = "You are a helpful assistant."
    developer = "Answer in English."
    with MockServer(index, ignore_system=True) as ignoring, openai.OpenAI(base_url=ignoring.base_url, api_key="test", max_retries=0) as client:
        messages = [{"role": "system", "content": system}, *user("Hello!"), {"role": "developer", "content": developer}]
        completion = client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == HELLOS[0]
        # The prompt counted is the one sent, system and developer messages included.
        sent = sum(3 + 1 + len(ENCODING.encode_ordinary(text)) for text in [system, developer])
        assert recorded is not None and completion.usage is not None
        assert completion.usage.prompt_tokens == recorded.prompt_tokens + sent
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        streamed = list(client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        ))
        assert streamed[-1].usage is not None and streamed[-1].usage.prompt_tokens == completion.usage.prompt_tokens
        without = client.chat.completions.create(model="gpt-4o", messages=user("Hello!")).usage  # type: ignore[arg-type]
        assert without is not None and without.prompt_tokens == recorded.prompt_tokens


def test_api_key(index: Path) -> None:
    with MockServer(index, api_key="sk-right-key-1234") as server:
        right = openai.OpenAI(base_url=server.base_url, api_key="sk-right-key-1234", max_retries=0)
        assert right.chat.completions.create(model="gpt-4o", messages=user("Hello!")).choices  # type: ignore[arg-type]
        wrong = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong-key-5678", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.chat.completions.create(model="gpt-4o", messages=user("Hello!"))  # type: ignore[arg-type]
        assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
        assert "5678" in caught.value.body["message"] and "wrong" not in caught.value.body["message"]  # type: ignore[index]
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        assert httpx.get(f"{server.url}/health").status_code == 200


def test_deterministic_runs_are_byte_identical(index: Path) -> None:
    bodies = []
    for _ in range(2):
        with MockServer(index, deterministic=True) as server:
            for request in [{"messages": CODE_TURN}, {"messages": user("Hello!"), "n": 2, "stream": True}]:
                response = httpx.post(f"{server.base_url}/chat/completions", json={"model": "gpt-4o", **request})
                bodies.append((response.content, response.headers["x-request-id"]))
    assert bodies[:2] == bodies[2:]
    assert bodies[0] != bodies[1]


def test_workers_share_the_index(index: Path) -> None:
    with MockServer(index, workers=2) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        for seed in range(6):
            content = client.chat.completions.create(model="gpt-4o", messages=user("Hello!"), seed=seed).choices[0].message.content  # type: ignore[arg-type]
            assert content == HELLOS[seed % 3]


def test_routes_without_v1(server: MockServer) -> None:
    response = httpx.post(f"{server.url}/chat/completions", json={"model": "m", "messages": user("Hello!")})
    assert response.json()["choices"][0]["message"]["content"] == HELLOS[0]
    assert httpx.get(f"{server.url}/models").json()["object"] == "list"


def test_health(server: MockServer, index: Path) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["index"] == str(index) and health["answers"] == 6 and health["keys"] == 4
    assert health["conversations"] == {"read": 5, "indexed": 5, "skipped": 0}
    assert health["format_version"] == FORMAT_VERSION


def test_health_counts_conversations_as_the_indexer_does(tmp_path: Path) -> None:
    mixed = [*CONVERSATIONS, {"id": "no-list"}, sharegpt("lonely", ("human", "anyone?")), sharegpt("lead", ("gpt", "Hi."))]
    source = write_sharegpt(tmp_path / "mixed.json", mixed)
    said = subprocess.run(
        [sys.executable, "-m", "mockgpt", "index", str(source)], capture_output=True, text=True, check=True
    ).stdout
    with MockServer(tmp_path / "mixed.mgpt") as server:
        health = httpx.get(f"{server.url}/health").json()
    counts = health["conversations"]
    assert counts == {"read": 8, "indexed": 5, "skipped": 3}
    assert f"{counts['read']} conversations read: {counts['indexed']} indexed, {counts['skipped']} skipped" in said
    assert f"{health['answers']} answers (assistant turns) under {health['keys']} keys" in said


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/models/gpt-4o", "/docs", "/docs/openapi.json"])
def test_head_answers_wherever_get_does(server: MockServer, path: str) -> None:
    got = httpx.get(f"{server.url}{path}")
    head = httpx.head(f"{server.url}{path}")
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]
