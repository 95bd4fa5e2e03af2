"""``--misses synthesize``: a request the index does not hold gets a recorded answer drawn by its digest,
the same every time, and says so; the default stays the 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mockgpt.index.tokens import Tokenizer
from mockgpt.testing import MockServer

from .conftest import BUSY, sharegpt

pytestmark = pytest.mark.sdk

ANSWERS = [f"Recorded answer number {i}, " + "with some words " * i for i in range(1, 9)]
CONVERSATIONS = [sharegpt(f"c{i}", ("human", f"Recorded question {i}?"), ("gpt", answer)) for i, answer in enumerate(ANSWERS)]
PROMPT = [{"role": "user", "content": "A benchmark tool's synthetic prompt: lorem ipsum dolor sit amet " * 20}]


@pytest.fixture(scope="module")
def synthesizing(index: Path) -> Iterator[MockServer]:
    with MockServer(index, misses="synthesize", **BUSY) as server:
        yield server


def answer(server: MockServer, messages: list[dict[str, Any]], stream: bool = False) -> tuple[str, Any, httpx.Headers]:
    with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0) as client:
        if not stream:
            raw = client.chat.completions.with_raw_response.create(model="m", messages=messages)  # type: ignore[arg-type]
            reply = raw.parse()
            return reply.choices[0].message.content or "", reply.usage, raw.headers
        with client.chat.completions.with_streaming_response.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        ) as response:
            chunks = list(response.parse())
            text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
            return text, chunks[-1].usage, response.headers


@pytest.mark.parametrize("stream", [False, True])
def test_a_synthetic_prompt_gets_a_recorded_answer_the_same_every_time(synthesizing: MockServer, stream: bool) -> None:
    text, usage, headers = answer(synthesizing, PROMPT, stream)
    assert text in ANSWERS
    assert headers["x-mockgpt-synthesized"] == "true"
    assert answer(synthesizing, PROMPT, not stream)[0] == answer(synthesizing, PROMPT, stream)[0] == text
    # Its prompt tokens are the request's: 3 + 1 framing the message, the text's, and 3 priming the reply.
    assert usage.prompt_tokens == 3 + 1 + Tokenizer().count(PROMPT[0]["content"]) + 3
    assert usage.completion_tokens > 0


def test_different_prompts_draw_different_answers(synthesizing: MockServer) -> None:
    drawn = {answer(synthesizing, [{"role": "user", "content": f"synthetic prompt {i}"}])[0] for i in range(40)}
    assert len(drawn) >= 4


def test_a_hit_is_still_a_hit(synthesizing: MockServer) -> None:
    text, _, headers = answer(synthesizing, [{"role": "user", "content": "Recorded question 3?"}])
    assert text == ANSWERS[3] and "x-mockgpt-synthesized" not in headers


def test_legacy_completions_and_responses_too(synthesizing: MockServer) -> None:
    with openai.OpenAI(base_url=synthesizing.base_url, api_key="x", max_retries=0) as client:
        completion = client.completions.with_raw_response.create(model="m", prompt="made up by a benchmark")
        assert completion.headers["x-mockgpt-synthesized"] == "true" and completion.parse().choices[0].text in ANSWERS
        response = client.responses.with_raw_response.create(model="m", input="made up by a benchmark")
        assert response.headers["x-mockgpt-synthesized"] == "true" and response.parse().output_text in ANSWERS


def test_the_messages_api_too(synthesizing: MockServer) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": "made up by a benchmark"}]}
    response = httpx.post(f"{synthesizing.base_url}/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200 and response.headers["x-mockgpt-synthesized"] == "true"
    assert response.json()["content"][0]["text"] in ANSWERS


def test_metrics_count_them_apart(synthesizing: MockServer) -> None:
    answer(synthesizing, PROMPT)
    answer(synthesizing, [{"role": "user", "content": "Recorded question 1?"}])
    metrics = httpx.get(f"{synthesizing.url}/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("mockgpt_requests_total{") and 'route="/chat/completions"' in line]
    assert any('outcome="synthesized"' in line for line in counted) and any('outcome="hit"' in line for line in counted)


def test_without_the_option_a_miss_is_the_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="m", messages=PROMPT)  # type: ignore[arg-type]
    assert caught.value.code == "conversation_not_found"
