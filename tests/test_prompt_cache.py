"""``--prompt-cache``: repeated prompt prefixes are reported cached as OpenAI's automatic prompt caching
reports them, in chat completions and the Responses API, across workers, bounded in memory."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mockgpt.serve.state import Prefixes
from mockgpt.testing import MockServer

from .conftest import sharegpt
from .spec import sse_objects, validate
from .test_index_real import complete_conversations

pytestmark = pytest.mark.sdk

_WORDS = (
    "river mountain lantern copper garden harbor meadow violin thunder pepper marble orchard canyon velvet"
    " compass falcon glacier saddle timber quartz beacon meadowlark prairie ember tundra willow cobalt anvil"
).split()


def prose(seed: int, words: int) -> str:
    """``words`` words of sentences, the same for the same seed."""
    draw = random.Random(seed)
    sentences = []
    while words > 0:
        length = min(words, draw.randint(6, 14))
        sentences.append(" ".join(draw.choice(_WORDS) for _ in range(length)).capitalize() + ".")
        words -= length
    return " ".join(sentences)


# A first message of some 1,100 tokens, then turns of some 260: every prompt holds 1,024 tokens or more.
LONG = [(role, prose(n, 850 if n == 0 else 200)) for n, role in enumerate(["human", "gpt"] * 5)]
MEDIUM = prose(99, 600)
CONVERSATIONS = [
    sharegpt("long", *LONG),
    sharegpt("medium", ("human", MEDIUM), ("gpt", "Noted.")),
    *(sharegpt(f"short-{n}", ("human", f"Question {n}?"), ("gpt", f"Answer {n}.")) for n in range(4)),
]
MESSAGES = [{"role": "user" if role == "human" else "assistant", "content": text} for role, text in LONG]


def turns(count: int = 5) -> Iterator[list[dict[str, str]]]:
    """The prompts of the long conversation's turns, in order, each resending the turns before it."""
    for turn in range(count):
        yield MESSAGES[: 2 * turn + 1]


def chat_usage(client: openai.OpenAI, messages: list[dict[str, str]], stream: bool = False) -> tuple[int, int]:
    """Prompt tokens and cached tokens of a chat completion of ``messages``."""
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}))  # type: ignore[arg-type]
        usage = chunks[-1].usage
    else:
        usage = client.chat.completions.create(model="gpt-4o", messages=messages).usage  # type: ignore[arg-type]
    assert usage is not None and usage.prompt_tokens_details is not None
    return usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0


def assert_cached_steps(usages: list[tuple[int, int]]) -> None:
    """The first turn cached nothing, every later one the turns before it, near enough, in steps of 128."""
    assert usages[0][1] == 0
    for (before, _), (prompt, cached) in zip(usages, usages[1:]):
        assert prompt >= 1024
        assert cached % 128 == 0 and 1024 <= cached < prompt
        # The prompt of the turn before is what was read: its tokens, give or take the estimate.
        assert before - 256 <= cached <= before + 128, (before, prompt, cached)


@pytest.fixture(scope="module")
def cached_server(index: Path) -> Iterator[MockServer]:
    with MockServer(index, prompt_cache=True, metrics=True) as server:
        yield server


def cached_client(server: MockServer, key: str) -> openai.OpenAI:
    # Each test its own API key: the cache is kept per key, so that tests do not see each other's prompts.
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


@pytest.mark.parametrize("stream", [False, True])
def test_replaying_a_conversation_turn_by_turn_hits_the_cache(cached_server: MockServer, stream: bool) -> None:
    with cached_client(cached_server, f"replay-{stream}") as client:
        assert_cached_steps([chat_usage(client, messages, stream) for messages in turns()])


def test_the_same_prompt_again_is_cached_but_its_last_token(cached_server: MockServer) -> None:
    with cached_client(cached_server, "again") as client:
        prompt, cached = chat_usage(client, MESSAGES[:3])
        assert cached == 0
        assert chat_usage(client, MESSAGES[:3]) == (prompt, (prompt - 1) // 128 * 128)


def test_short_prompts_and_other_keys_and_models_cache_nothing(cached_server: MockServer) -> None:
    medium = [{"role": "user", "content": MEDIUM}]
    with cached_client(cached_server, "short") as client:
        # Under 1,024 tokens: not cached however often sent.
        assert [chat_usage(client, [{"role": "user", "content": "Question 1?"}])[1] for _ in range(2)] == [0, 0]
        prompt, _ = chat_usage(client, medium)
        assert prompt < 1024 and chat_usage(client, medium)[1] == 0
        chat_usage(client, MESSAGES[:3])
        assert chat_usage(client, MESSAGES[:3])[1] > 0
    with cached_client(cached_server, "another key") as client:
        assert chat_usage(client, MESSAGES[:3])[1] == 0
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES[:3])  # type: ignore[arg-type]
        assert reply.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]


def test_without_the_option_nothing_is_cached(client: openai.OpenAI) -> None:
    assert [chat_usage(client, messages)[1] for messages in turns(3)] == [0, 0, 0]
    assert [chat_usage(client, MESSAGES[:5])[1] for _ in range(2)] == [0, 0]


def test_bodies_and_chunks_validate_against_the_spec(cached_server: MockServer) -> None:
    headers = {"authorization": "Bearer spec"}
    for _ in range(2):
        body = {"model": "gpt-4o", "messages": MESSAGES[:3]}
        reply = httpx.post(cached_server.url + "/v1/chat/completions", json=body, headers=headers)
        validate("CreateChatCompletionResponse", reply.json())
        streamed = httpx.post(
            cached_server.url + "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}, headers=headers
        )
        for chunk in sse_objects(streamed.text):
            validate("CreateChatCompletionStreamResponse", chunk)
    assert reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 1024
    assert [chunk for chunk in sse_objects(streamed.text) if chunk["usage"]][0]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 1024


def responses_walk(client: openai.OpenAI, stream: bool) -> list[tuple[int, int]]:
    """Input tokens and cached tokens of each turn of the long conversation, each turn sent as its user
    message after the response before it."""
    usages, previous = [], None
    for turn in range(5):
        asked: dict[str, Any] = {"model": "gpt-4o", "input": MESSAGES[2 * turn]["content"]}
        if previous is not None:
            asked["previous_response_id"] = previous
        if stream:
            events = list(client.responses.create(stream=True, **asked))
            response = events[-1].response  # type: ignore[union-attr]
        else:
            response = client.responses.create(**asked)
        assert response.usage is not None
        # As a dict: the oldest SDK supported has no input_tokens_details in its types yet.
        usage = response.usage.model_dump()
        usages.append((usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"]))
        previous = response.id
    return usages


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api_reports_input_tokens_details(cached_server: MockServer, stream: bool) -> None:
    with cached_client(cached_server, f"responses-{stream}") as client:
        assert_cached_steps(responses_walk(client, stream))


def test_responses_body_validates_against_the_spec(cached_server: MockServer) -> None:
    headers = {"authorization": "Bearer responses-spec"}
    for _ in range(2):
        reply = httpx.post(cached_server.url + "/v1/responses", json={"model": "gpt-4o", "input": MESSAGES[:3]}, headers=headers)
        validate("Response", reply.json(), extra_properties=["store"])
    assert reply.json()["usage"]["input_tokens_details"]["cached_tokens"] >= 1024


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found[1])


def test_vllm_prefix_cache_metrics_count_the_tokens(index: Path) -> None:
    with MockServer(index, prompt_cache=True, metrics=True) as server, cached_client(server, "metrics") as client:
        usages = [chat_usage(client, messages) for messages in turns(3)]
        text = httpx.get(server.url + "/metrics").text
    assert metric(text, "vllm:prefix_cache_queries_total") == sum(prompt for prompt, _ in usages)
    assert metric(text, "vllm:prefix_cache_hits_total") == sum(cached for _, cached in usages) > 0
    assert metric(text, "vllm:gpu_prefix_cache_hits_total") == metric(text, "vllm:prefix_cache_hits_total")
    assert 'enable_prefix_caching="True"' in text


def first_token_seconds(client: openai.OpenAI, messages: list[dict[str, str]]) -> float:
    started = time.perf_counter()
    with client.chat.completions.create(model="gpt-4o", messages=messages, stream=True) as stream:  # type: ignore[arg-type]
        next(iter(stream))
    return time.perf_counter() - started


def test_prefill_is_charged_on_the_tokens_not_cached(index: Path) -> None:
    # 1 s per 1,000 prompt tokens: the third turn's ~1,900 tokens take ~1.9 s read afresh, ~0.1 s cached.
    with MockServer(index, prompt_cache=True, prefill_ms_per_1k=1000) as server, cached_client(server, "prefill") as client:
        afresh = first_token_seconds(client, MESSAGES[:5])
        again = first_token_seconds(client, MESSAGES[:5])
    assert afresh > 1.5
    assert again < afresh / 4


def test_two_workers_share_the_cache(index: Path) -> None:
    with MockServer(index, prompt_cache=True, workers=2) as server, cached_client(server, "workers") as client:
        # Each on a new connection, so that both workers answer some.
        usages = []
        for messages in turns():
            with cached_client(server, "workers") as fresh:
                usages.append(chat_usage(fresh, messages))
        assert_cached_steps(usages)
        assert chat_usage(client, MESSAGES[:9])[1] > 0


def test_the_least_recently_used_prefixes_are_forgotten(index: Path) -> None:
    # Three prefixes: the first turn's prompt, then two others push it out.
    with MockServer(index, prompt_cache=True, prompt_cache_size=3) as server, cached_client(server, "bound") as client:
        chat_usage(client, MESSAGES[:3])
        assert chat_usage(client, MESSAGES[:3])[1] > 0
        for n in range(3):
            chat_usage(client, [{"role": "user", "content": f"Question {n}?"}])
        assert chat_usage(client, MESSAGES[:3])[1] == 0


def test_prefixes_hold_at_most_their_size() -> None:
    prefixes = Prefixes(100)
    for start in range(0, 1000, 10):
        prefixes.add([b"%016d" % key for key in range(start, start + 10)])
        assert len(prefixes) <= 100
    # The last used are those kept, the longest found first, and finding one uses it.
    assert prefixes.longest([b"%016d" % 5, b"%016d" % 950, b"%016d" % 999]) == 3
    assert prefixes.longest([b"%016d" % 5, b"%016d" % 899]) == 0
    prefixes.add([b"%016d" % key for key in range(2000, 2099)])
    assert prefixes.longest([b"%016d" % 999]) == 1
    assert prefixes.longest([b"%016d" % 998]) == 0


def test_a_real_conversation_replayed_turn_by_turn(sharegpt_path: Path, real_index: Path) -> None:
    """A recorded ShareGPT conversation whose first message is some 1,500 tokens or more."""
    chosen = next(
        messages
        for conversation in complete_conversations(sharegpt_path)
        if len(messages := conversation["conversations"]) >= 8 and len(messages[0]["value"]) > 6000
        and [m["from"] for m in messages[:8]] == ["human", "gpt"] * 4
    )
    chat = [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]} for m in chosen]
    with MockServer(real_index, prompt_cache=True) as server, cached_client(server, "real") as client:
        assert_cached_steps([chat_usage(client, chat[: 2 * turn + 1]) for turn in range(4)])
