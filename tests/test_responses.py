"""The Responses API from the same index as chat: plain, streamed, chained with ``previous_response_id``
across workers, retrieved, tool loops, and every object and event checked against the OpenAPI spec."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from mockgpt.api import responses_render
from mockgpt.api.responses import CreateResponse
from mockgpt.index import replay
from mockgpt.index.records import Answer, StoredCall
from mockgpt.testing import MockServer, index_conversations

from .spec import sse_events, validate
from .test_tools import ASK, CALLS, ENCODING, FINAL, LOOP, MIXED, RESULTS, TOOLS

# The official client's behaviour: CI runs these against the oldest supported openai release too.
pytestmark = pytest.mark.sdk

HELLO = "Hi! How can I help?"
STORY = (
    "A fox found a lantern in the snow. It glowed all night, and the fox was never cold again. In spring it"
    " gave the lantern to a lost hare, who found her way home by its light."
)
TOUR = [
    {"role": "system", "content": "You are a tour guide in Paris."},
    {"role": "user", "content": "Where should I start?"},
    {"role": "assistant", "content": "At the Louvre."},
    {"role": "user", "content": "And after that?"},
    {"role": "assistant", "content": "Walk along the Seine to Notre-Dame."},
    {"role": "user", "content": "Where do I eat?"},
    {"role": "assistant", "content": "Try a bistro in the Latin Quarter."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "Enjoy Paris!"},
]
CONVERSATIONS = [
    LOOP,
    MIXED,
    TOUR,
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": HELLO}],
    [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": STORY}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Four, of course."}],
]
FUNCTION_TOOLS = [{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}]
ID = re.compile(r"resp_[0-9a-f]{50}")


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def tokens(text: str) -> int:
    return len(ENCODING.encode_ordinary(text))


def calls_of(response: Any) -> list[tuple[str, str, str]]:
    return [(item.call_id, item.name, item.arguments) for item in response.output if item.type == "function_call"]


def recorded_calls() -> list[tuple[str, str, str]]:
    return [(call["id"], call["function"]["name"], call["function"]["arguments"]) for call in CALLS]


def post(server: MockServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/responses", json={"model": "gpt-4o", **body}, timeout=30)


def test_a_plain_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model="gpt-4o", input="Hello!")
    assert ID.fullmatch(response.id) and response.object == "response" and response.status == "completed"
    assert response.output_text == HELLO and response.model == "gpt-4o"
    (message,) = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    # The same counts as the chat completion of the same message.
    chat = client.chat.completions.create(model="gpt-4o", messages=[user("Hello!")])  # type: ignore[list-item]
    assert response.usage is not None and chat.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert response.usage.total_tokens == chat.usage.total_tokens and response.usage.output_tokens == tokens(HELLO)


def test_a_streamed_response(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o", input="Tell me a story.", stream=True))
    kinds = [event.type for event in events]
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[4 + len(deltas):] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    # One event per recorded token.
    assert "".join(deltas) == STORY and len(deltas) == tokens(STORY)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == STORY and completed.usage is not None and completed.usage.output_tokens == len(deltas)
    assert len({event.response.id for event in events if event.type in ("response.created", "response.completed")}) == 1  # type: ignore[union-attr]


def test_the_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt-4o", input="Tell me a story.") as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == STORY and final.status == "completed"
    with client.responses.stream(model="gpt-4o", input=[user("Book it.")]) as stream:
        mixed = stream.get_final_response()
    assert mixed.output_text == "Booking now." and calls_of(mixed) == [("call_book", "book", "not json at all")]


def test_a_chain_across_workers(index: Path) -> None:
    """Each turn sends only its new input and the previous id, on a fresh connection: either worker answers."""
    with MockServer(index, workers=2) as server:
        previous = None
        for question, answer in zip(TOUR[1::2], TOUR[2::2]):
            with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
                response = client.responses.create(
                    model="gpt-4o", instructions=TOUR[0]["content"], input=question["content"], previous_response_id=previous,
                )
            assert response.output_text == answer["content"] and response.previous_response_id == previous
            previous = response.id
        with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
            assert client.responses.retrieve(previous).output_text == "Enjoy Paris!"
            # The whole conversation as the key of the last turn: the chat prompt of the same messages.
            usage = client.responses.retrieve(previous).usage
            chat = client.chat.completions.create(model="gpt-4o", messages=TOUR[:-1]).usage  # type: ignore[arg-type]
            assert usage is not None and chat is not None and usage.input_tokens == chat.prompt_tokens


def test_retrieve(client: openai.OpenAI) -> None:
    for create in [dict(input="Hello!"), dict(input=ASK[1:], instructions=ASK[0]["content"]), dict(input="Tell me a story.", max_output_tokens=16)]:
        created = client.responses.create(model="gpt-4o", **create)  # type: ignore[call-overload]
        again = client.responses.retrieve(created.id)
        assert again.id == created.id and again.created_at == created.created_at and again.status == created.status
        assert [item.model_dump() for item in again.output] == [item.model_dump() for item in created.output]
        assert again.usage == created.usage and again.incomplete_details == created.incomplete_details


def test_a_miss_says_how_far_the_input_matched(client: openai.OpenAI) -> None:
    cases = [
        (dict(input="Bonjour"), "this input item: input[0] already differs from every recorded conversation."),
        (dict(input=[user("Hello!"), user("Again?")]),
         "input[0:1] match a recorded conversation; input[1] is the first that differs (the recorded conversation goes on with an assistant answer there)."),
        (dict(input=[*ASK[1:], {"type": "function_call", "call_id": "c", "name": "get_weather", "arguments": "{}"}], instructions=ASK[0]["content"]),
         "input[0:1] match a recorded conversation; input[1] is the first that differs (no answer recorded there has this text)."),
        # The calls of one answer are one message: the first that differs starts at its first item.
        (dict(input=[*ASK[1:], *call_items(), {**result_items()[0], "output": "15 C, rain"}, result_items()[1]], instructions=ASK[0]["content"]),
         "input[0:3] match a recorded conversation; input[3] is the first that differs."),
        (dict(input=[user("Where should I start?")], instructions="You are a tour guide in Rome."),
         "instructions already differs from every recorded conversation."),
    ]
    for request, explanation in cases:
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model="gpt-4o", **request)  # type: ignore[call-overload]
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "conversation_not_found" and error["param"] == "input"
        assert error["message"].startswith("No recorded conversation continues ") and error["message"].endswith(explanation), error


def test_a_chained_miss_names_the_chain(client: openai.OpenAI) -> None:
    first = client.responses.create(model="gpt-4o", instructions=TOUR[0]["content"], input="Where should I start?")
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-4o", input=[user("And after that?"), user("Quickly!")], previous_response_id=first.id)
    message = caught.value.body["message"]  # type: ignore[index]
    assert message == (
        f"No recorded conversation continues these 2 input items after response '{first.id}': input[0:1] match a recorded"
        " conversation; input[1] is the first that differs (the recorded conversation goes on with an assistant answer there)."
    )
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-4o", input="And before that?", previous_response_id=first.id)
    assert caught.value.body["message"].endswith("input[0] already differs from every recorded conversation.")  # type: ignore[index]


def test_unknown_and_foreign_ids(client: openai.OpenAI, tmp_path: Path) -> None:
    real = client.responses.create(model="gpt-4o", input="Hello!").id
    other = index_conversations([[user("Hello!"), {"role": "assistant", "content": HELLO}]], tmp_path / "other.mgpt")
    with MockServer(other) as elsewhere, openai.OpenAI(base_url=elsewhere.base_url, api_key="t", max_retries=0) as foreign:
        foreign_id = foreign.responses.create(model="gpt-4o", input="Hello!").id
    tampered = real[:-9] + ("0" if real[-9] != "0" else "1") + real[-8:]
    for id in [foreign_id, tampered, "resp_0123456789abcdef", "resp_" + "0" * 50]:
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model="gpt-4o", input="And after that?", previous_response_id=id)
        assert caught.value.body == {
            "message": f"Previous response with id '{id}' not found.", "type": "invalid_request_error",
            "param": "previous_response_id", "code": "previous_response_not_found",
        }
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.retrieve(id)
        assert caught.value.body == {"message": f"Response with id '{id}' not found.", "type": "invalid_request_error", "param": None, "code": None}
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="gpt-4o", input="Hi", previous_response_id="resp_not an id!")
    assert bad.value.body["param"] == "previous_response_id"  # type: ignore[index]


def call_items() -> list[dict[str, Any]]:
    """The calls of the recorded answer as a framework sends them back: with ids and statuses."""
    return [
        {"type": "function_call", "id": f"fc_{n}", "status": "completed", "call_id": call["id"], **call["function"]}
        for n, call in enumerate(CALLS)
    ]


def result_items() -> list[dict[str, Any]]:
    return [{"type": "function_call_output", "call_id": result["tool_call_id"], "output": result["content"]} for result in RESULTS]


def test_a_tool_loop(client: openai.OpenAI) -> None:
    first = client.responses.create(model="gpt-4o", instructions=ASK[0]["content"], input=ASK[1:], tools=FUNCTION_TOOLS)  # type: ignore[arg-type]
    assert calls_of(first) == recorded_calls() and first.output_text == ""
    assert [item.type for item in first.output] == ["function_call", "function_call"]
    assert all(item.id.startswith("fc_") and item.status == "completed" for item in first.output)  # type: ignore[union-attr]
    outputs = [{"type": "function_call_output", "call_id": call_id, "output": result["content"]}
               for (call_id, _, _), result in zip(calls_of(first), RESULTS)]
    # The whole history sent back, the calls as the SDK gives them ...
    history = [*ASK[1:], *[item.model_dump(exclude_none=True) for item in first.output], *outputs]
    final = client.responses.create(model="gpt-4o", instructions=ASK[0]["content"], input=history, tools=FUNCTION_TOOLS)  # type: ignore[arg-type]
    assert final.output_text == FINAL and calls_of(final) == []
    # ... or only the tools' results after the previous response.
    chained = client.responses.create(model="gpt-4o", input=outputs, previous_response_id=first.id, tools=FUNCTION_TOOLS)  # type: ignore[arg-type]
    assert chained.output_text == FINAL and chained.usage == final.usage


def test_a_streamed_tool_loop(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o", instructions=ASK[0]["content"], input=ASK[1:], stream=True))
    added = [event.item for event in events if event.type == "response.output_item.added"]
    assert [(item.type, item.call_id, item.name, item.arguments, item.status) for item in added] == [  # type: ignore[union-attr]
        ("function_call", call_id, name, "", "in_progress") for call_id, name, _ in recorded_calls()
    ]
    arguments = [event for event in events if event.type == "response.function_call_arguments.delta"]
    assert len(arguments) == sum(tokens(arguments) for _, _, arguments in recorded_calls())
    done = [event for event in events if event.type == "response.function_call_arguments.done"]
    assert [(event.name, event.arguments) for event in done] == [(name, arguments) for _, name, arguments in recorded_calls()]
    with client.responses.stream(model="gpt-4o", instructions=ASK[0]["content"], input=ASK[1:]) as stream:
        assert calls_of(stream.get_final_response()) == recorded_calls()


def test_chat_and_responses_continue_each_other(client: openai.OpenAI) -> None:
    instructions, first, second = TOUR[0]["content"], TOUR[1]["content"], TOUR[3]["content"]
    # Begun through chat completions, continued through the Responses API ...
    answer = client.chat.completions.create(model="gpt-4o", messages=TOUR[:2]).choices[0].message.content  # type: ignore[arg-type]
    response = client.responses.create(
        model="gpt-4o", instructions=instructions, input=[user(first), {"role": "assistant", "content": answer}, user(second)],  # type: ignore[list-item]
    )
    assert response.output_text == TOUR[4]["content"]
    # ... and the other way round, tool calls included.
    begun = client.responses.create(model="gpt-4o", instructions=instructions, input=first)
    messages = [*TOUR[:2], {"role": "assistant", "content": begun.output_text}, user(second)]
    assert client.chat.completions.create(model="gpt-4o", messages=messages).choices[0].message.content == TOUR[4]["content"]  # type: ignore[arg-type]
    called = client.responses.create(model="gpt-4o", instructions=ASK[0]["content"], input=ASK[1:])
    tool_calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}} for call_id, name, arguments in calls_of(called)]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": tool_calls}, *RESULTS]
    assert client.chat.completions.create(model="gpt-4o", messages=history).choices[0].message.content == FINAL  # type: ignore[arg-type]


def test_instructions_are_the_system_message(client: openai.OpenAI) -> None:
    assert client.responses.create(model="gpt-4o", instructions="Be terse.", input="2+2?").output_text == "4."
    assert client.responses.create(model="gpt-4o", input="2+2?").output_text == "Four, of course."
    developer = [{"role": "developer", "content": "Be terse."}, user("2+2?")]
    assert client.responses.create(model="gpt-4o", input=developer).output_text == "4."  # type: ignore[arg-type]
    echoed = client.responses.create(model="gpt-4o", instructions="Be terse.", input="2+2?")
    assert echoed.instructions == "Be terse."


def test_ignore_system_leaves_instructions_out_of_the_key(index: Path) -> None:
    with MockServer(index, ignore_system=True) as server, openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client:
        plain = client.responses.create(model="gpt-4o", input="Hello!")
        instructed = client.responses.create(model="gpt-4o", instructions="Answer in French.", input="Hello!")
    assert plain.output_text == instructed.output_text == HELLO
    # The instructions were sent, so they count in the prompt.
    assert plain.usage is not None and instructed.usage is not None
    assert instructed.usage.input_tokens == plain.usage.input_tokens + 4 + tokens("Answer in French.")


def test_the_template_is_the_response_object() -> None:
    """Plain requests are rendered from a template: it must say what the structs say."""
    calls = [StoredCall("call_1", "f", '{"a": 1}', bytes([1, 2]), 1)]
    for answer in [Answer("c", 1, 10, 3, b'"Hi \\"there\\"!"', bytes([1, 5, 1])), Answer("c", 1, 10, 7, b'"Hi."', bytes([2]), calls)]:
        cut = replay.cut(answer, None, None)
        for body in [{"input": "x"}, {"input": "x", "instructions": "Be \"nice\".", "previous_response_id": "resp_1"}]:
            request = msgspec.json.decode(json.dumps({"model": "gpt-\"4\"", **body}), type=CreateResponse)
            id = "resp_" + "ab" * 25
            assert responses_render.response_body(id, 1_700_000_000, cut, request) == msgspec.json.encode(
                responses_render.response(id, 1_700_000_000, cut, request)
            )


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    cut = client.responses.create(model="gpt-4o", input="Tell me a story.", max_output_tokens=16)
    assert cut.status == "incomplete" and cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text == ENCODING.decode(ENCODING.encode_ordinary(STORY)[:16]) and cut.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert cut.usage is not None and cut.usage.output_tokens == 16 and cut.max_output_tokens == 16
    events = list(client.responses.create(model="gpt-4o", input="Tell me a story.", max_output_tokens=16, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.output_text == cut.output_text
    assert len([event for event in events if event.type == "response.output_text.delta"]) == 16
    whole = client.responses.create(model="gpt-4o", input="Tell me a story.", max_output_tokens=tokens(STORY))
    assert whole.status == "completed" and whole.output_text == STORY


ECHOED = {
    "instructions": "Be terse.",
    "tools": [{"type": "function", "name": "add", "description": "Adds.", "parameters": {"type": "object"}, "strict": False}],
    "tool_choice": {"type": "function", "name": "add"},
    "temperature": 0.2,
    "top_p": 0.9,
    "metadata": {"run": "42"},
    "max_output_tokens": 100,
    "parallel_tool_calls": False,
    "reasoning": {"effort": "low", "summary": "auto"},
    "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}, "verbosity": "low"},
    "truncation": "auto",
    "user": "user-1",
    "safety_identifier": "hashed-user",
    "prompt_cache_key": "cache-1",
    "top_logprobs": 2,
    "max_tool_calls": 3,
    "service_tier": "flex",
    "store": False,
}
DEFAULTS = {
    "instructions": None, "tools": [], "tool_choice": "auto", "temperature": 1.0, "top_p": 1.0, "metadata": {},
    "max_output_tokens": None, "parallel_tool_calls": True, "reasoning": {"effort": None, "summary": None},
    "text": {"format": {"type": "text"}, "verbosity": "medium"}, "truncation": "disabled", "safety_identifier": None,
    "prompt_cache_key": None, "top_logprobs": 0, "max_tool_calls": None, "service_tier": "default", "store": True,
    "previous_response_id": None, "background": False, "error": None, "incomplete_details": None,
}


def test_request_fields_are_echoed(server: MockServer) -> None:
    sent = post(server, {"input": "2+2?", **ECHOED}).json()
    assert sent["output"][0]["content"][0]["text"] == "4."
    assert {name: sent[name] for name in ECHOED} == ECHOED
    plain = post(server, {"input": "Hello!"}).json()
    assert {name: plain[name] for name in DEFAULTS} == DEFAULTS and "user" not in plain
    strict = post(server, {"input": "Hello!", "tools": FUNCTION_TOOLS}).json()["tools"]
    assert strict == [{**FUNCTION_TOOLS[0], "description": None, "strict": True}]


def test_the_agent_framework_shape(server: MockServer) -> None:
    """What agent frameworks send: the whole input again each turn, typeless messages, output items echoed
    with their ids and statuses, and every setting spelled out. None of it changes the key."""
    settings = {
        "instructions": ASK[0]["content"], "include": [], "reasoning": {"effort": None}, "text": {"verbosity": "medium"},
        "store": False, "truncation": "disabled", "tools": [{**FUNCTION_TOOLS[0], "strict": False}], "tool_choice": "auto",
        "parallel_tool_calls": True, "stream": False, "top_p": None, "temperature": None, "metadata": {}, "max_output_tokens": None,
    }
    first = post(server, {**settings, "input": [{"role": "user", "content": ASK[1]["content"]}]}).json()
    assert [item["call_id"] for item in first["output"]] == [call["id"] for call in CALLS]
    turn = [
        {"role": "user", "content": [{"type": "input_text", "text": ASK[1]["content"]}]},
        *first["output"],
        *result_items(),
    ]
    final = post(server, {**settings, "input": turn}).json()
    assert final["output"][0]["content"][0]["text"] == FINAL
    # A framework that types its messages and echoes an answer as an output message.
    typed = [{"type": "message", "role": "user", "content": "Book it."}]
    booked = post(server, {**settings, "instructions": None, "input": typed}).json()
    history = [*typed, *booked["output"], {"type": "function_call_output", "call_id": "call_book", "output": "done"}]
    assert [item["type"] for item in booked["output"]] == ["message", "function_call"]
    missed = post(server, {**settings, "instructions": None, "input": history})
    # No recorded answer follows the booking's result: the miss still counts the history as matched.
    assert missed.status_code == 404 and "input[0:3] match a recorded conversation" in missed.json()["error"]["message"]


INVALID = {
    "no-model": ({"model": None}, "model"),
    "input-type": ({"input": 5}, "input"),
    "role": ({"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    "call-without-call-id": ({"input": [user("hi"), {"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[1].call_id"),
    "output-without-output": ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    "item-type": ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    "part-type": ({"input": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "input[0].content[0].type"),
    "temperature": ({"temperature": 2.5}, "temperature"),
    "top_p": ({"top_p": -0.1}, "top_p"),
    "max_output_tokens": ({"max_output_tokens": 15}, "max_output_tokens"),
    "top_logprobs": ({"top_logprobs": 21}, "top_logprobs"),
    "include": ({"include": ["everything"]}, "include[0]"),
    "metadata": ({"metadata": {"n": 1}}, "metadata[...]"),
    "metadata-keys": ({"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
    "reasoning": ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    "text-format": ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    "tool-type": ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    "tool-choice": ({"tool_choice": "sometimes"}, "tool_choice"),
    "truncation": ({"truncation": "middle"}, "truncation"),
    "service_tier": ({"service_tier": "gold"}, "service_tier"),
    "stream": ({"stream": "yes"}, "stream"),
    "store": ({"store": "no"}, "store"),
    "safety_identifier": ({"safety_identifier": "x" * 65}, "safety_identifier"),
    "context_management": ({"context_management": []}, "context_management"),
    "conversation": ({"conversation": "conv_123"}, "conversation"),
}


@pytest.mark.parametrize("fields, param", INVALID.values(), ids=INVALID.keys())
def test_invalid_fields_are_a_400(server: MockServer, fields: dict[str, Any], param: str) -> None:
    body = {"model": "gpt-4o", "input": "Hello!", **fields}
    response = httpx.post(f"{server.base_url}/responses", json={k: v for k, v in body.items() if v is not None}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


SPEC_CASES = {
    "plain": {"input": "Hello!"},
    "instructions": {"input": "2+2?", "instructions": "Be terse."},
    "calls": {"input": ASK[1:], "instructions": ASK[0]["content"], "tools": FUNCTION_TOOLS},
    "text-and-call": {"input": "Book it."},
    "incomplete": {"input": "Tell me a story.", "max_output_tokens": 16},
    "incomplete-among-calls": {"input": ASK[1:], "instructions": ASK[0]["content"], "max_output_tokens": 20},
    "echoed": {"input": "2+2?", **ECHOED},
}


@pytest.mark.parametrize("body", SPEC_CASES.values(), ids=SPEC_CASES.keys())
def test_every_object_and_event_is_in_the_spec(server: MockServer, body: dict[str, Any]) -> None:
    assert_in_spec(server, body)


@pytest.mark.parametrize("body", SPEC_CASES.values(), ids=SPEC_CASES.keys())
def test_a_busy_server_sends_the_same_objects_and_events(busy: MockServer, body: dict[str, Any]) -> None:
    assert_in_spec(busy, body)


def assert_in_spec(server: MockServer, body: dict[str, Any]) -> None:
    response = post(server, body)
    assert response.status_code == 200, response.text
    validate("Response", response.json(), extra_properties=["store"])
    streamed = post(server, {**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    for number, event in enumerate(events):
        data = json.loads(event.data)
        assert event.name == data["type"] and data["sequence_number"] == number
        validate("ResponseStreamEvent", data, extra_properties=["store"])
    # The stream ends with the response object as a plain request gets it.
    final = json.loads(events[-1].data)["response"]
    assert anonymous(final) == anonymous(response.json())
    validate("Response", httpx.get(f"{server.base_url}/responses/{final['id']}").json(), extra_properties=["store"])


def anonymous(response: dict[str, Any]) -> dict[str, Any]:
    """A response object without what tells two responses apart: ids and times."""
    output = [{**item, "id": None} for item in response["output"]]
    return {**response, "id": None, "created_at": None, "completed_at": None, "output": output}


def test_deterministic_ids(index: Path) -> None:
    with MockServer(index, deterministic=True) as server:
        first, again = post(server, {"input": "Hello!"}), post(server, {"input": "Hello!"})
        assert first.content == again.content
        other = post(server, {"input": "Hello!", "temperature": 0.5}).json()
        assert other["id"] != first.json()["id"] and other["created_at"] != first.json()["created_at"]


def test_a_busy_server_paces_and_fails_responses(index: Path) -> None:
    with MockServer(index, itl_ms=10) as server, openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0) as client:
        started = time.perf_counter()
        arrivals = []
        for event in client.responses.create(model="gpt-4o", input="Tell me a story.", stream=True):
            if event.type == "response.output_text.delta":
                arrivals.append(time.perf_counter())
        assert len(arrivals) == tokens(STORY)
        gaps = sorted(later - earlier for earlier, later in zip(arrivals, arrivals[1:]))
        assert gaps[len(gaps) // 2] >= 0.009 and arrivals[-1] - started >= 0.01 * (len(arrivals) - 1)
        with pytest.raises(openai.InternalServerError) as caught:
            client.responses.create(model="gpt-4o", input="Hello!", extra_headers={"x-mockgpt-fault": "503"})
        assert caught.value.status_code == 503
        assert client.responses.create(model="gpt-4o", input="Hello!").output_text == HELLO
