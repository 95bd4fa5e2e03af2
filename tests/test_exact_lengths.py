"""vLLM's ``ignore_eos`` and ``min_tokens``: an answer goes on past its recorded end, its recorded tokens
over again, as far as asked, and ``usage`` and ``finish_reason`` say what was sent."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from mockgpt.testing import MockServer

from .conftest import sharegpt

pytestmark = pytest.mark.sdk

ANSWER = "Paris is the capital of France, on the Seine."
CONVERSATIONS = [sharegpt("capital", ("human", "What is the capital of France?"), ("gpt", ANSWER))]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def recorded(client: openai.OpenAI) -> int:
    return client.chat.completions.create(model="m", messages=QUESTION).usage.completion_tokens  # type: ignore[arg-type, union-attr]


def chat(client: openai.OpenAI, stream: bool, **extra: Any) -> tuple[str, str | None, int]:
    """The text, finish reason and completion tokens of an answer, streamed or not."""
    if not stream:
        reply = client.chat.completions.create(model="m", messages=QUESTION, extra_body=extra)  # type: ignore[arg-type]
        return reply.choices[0].message.content or "", reply.choices[0].finish_reason, reply.usage.completion_tokens  # type: ignore[union-attr]
    chunks = list(client.chat.completions.create(model="m", messages=QUESTION, stream=True, stream_options={"include_usage": True}, extra_body=extra))  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    reason = next(chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason)
    return text, reason, chunks[-1].usage.completion_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True])
def test_ignore_eos_sends_max_tokens(client: openai.OpenAI, stream: bool) -> None:
    length = recorded(client)
    text, reason, tokens = chat(client, stream, ignore_eos=True, max_tokens=3 * length)
    assert (text, reason, tokens) == (ANSWER * 3, "length", 3 * length)
    # Not a whole number of recorded answers: cut at a recorded token.
    text, reason, tokens = chat(client, stream, ignore_eos=True, max_completion_tokens=2 * length + 3)
    assert (reason, tokens) == ("length", 2 * length + 3)
    assert text.startswith(ANSWER * 2) and len(text) > 2 * len(ANSWER)


@pytest.mark.parametrize("stream", [False, True])
def test_min_tokens_goes_on_to_a_recorded_end(client: openai.OpenAI, stream: bool) -> None:
    length = recorded(client)
    assert chat(client, stream, min_tokens=3 * length) == (ANSWER * 3, "stop", 3 * length)
    assert chat(client, stream, min_tokens=length + 1) == (ANSWER * 2, "stop", 2 * length)
    # max_tokens still ends it first.
    assert chat(client, stream, min_tokens=3 * length, max_tokens=length + 2)[1:] == ("length", length + 2)


@pytest.mark.parametrize("stream", [False, True])
def test_without_them_the_recorded_answer(client: openai.OpenAI, stream: bool) -> None:
    length = recorded(client)
    assert chat(client, stream) == (ANSWER, "stop", length)
    assert chat(client, stream, ignore_eos=True) == (ANSWER, "stop", length)
    assert chat(client, stream, ignore_eos=False, max_tokens=3 * length) == (ANSWER, "stop", length)
    assert chat(client, stream, ignore_eos=True, max_tokens=length - 2)[1:] == ("length", length - 2)


def test_legacy_completions_too(client: openai.OpenAI) -> None:
    length = recorded(client)
    reply = client.completions.create(model="m", prompt="What is the capital of France?", max_tokens=3 * length, extra_body={"ignore_eos": True})
    assert (reply.choices[0].text, reply.choices[0].finish_reason, reply.usage.completion_tokens) == (ANSWER * 3, "length", 3 * length)  # type: ignore[union-attr]


def test_a_bad_min_tokens_is_a_400(server: MockServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="min_tokens"):
        chat(client, False, min_tokens=-1)
