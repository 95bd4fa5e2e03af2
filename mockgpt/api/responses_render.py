"""The Responses API's answers as bytes: the response object, and its stream of server-sent events.

A served answer is at most one ``message`` item (its text) followed by one ``function_call`` item per
recorded tool call. Item ids derive from the response's id, so that retrieving a response gives the
same items again. The request's settings are echoed as the API echoes them, with its defaults for
those not sent.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

from mockgpt.api.responses import CreateResponse, FunctionTool, Reasoning, TextConfig, ToolChoice
from mockgpt.index import replay
from mockgpt.index.records import StoredCall

__all__ = ["FunctionCallItem", "OutputMessage", "OutputText", "Response", "ResponseUsage", "events", "response", "response_body", "steps"]

_encode = msgspec.json.Encoder().encode
_EMPTY = msgspec.Raw(b'""')


class OutputText(Struct, kw_only=True, gc=False):
    type: Literal["output_text"] = "output_text"
    # The text as a JSON string, spliced in as it is stored.
    text: msgspec.Raw
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(Struct, kw_only=True, tag_field="type", tag="message", gc=False):
    id: str
    status: str
    content: list[OutputText]
    role: Literal["assistant"] = "assistant"


class FunctionCallItem(Struct, kw_only=True, tag_field="type", tag="function_call", gc=False):
    id: str
    status: str
    arguments: str
    call_id: str
    name: str


class InputTokensDetails(Struct, frozen=True, gc=False):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(Struct, frozen=True, gc=False):
    reasoning_tokens: int = 0


class ResponseUsage(Struct, kw_only=True, gc=False):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(Struct, frozen=True, gc=False):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class Response(Struct, kw_only=True, gc=False):
    """The response object; ``usage`` only once it is done."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    background: bool = False
    completed_at: int | None = None
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputMessage | FunctionCallItem]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    reasoning: Reasoning = Reasoning()
    safety_identifier: str | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float = 1.0
    text: TextConfig = TextConfig()
    tool_choice: str | ToolChoice = "auto"
    tools: list[FunctionTool] = []
    top_logprobs: int = 0
    top_p: float = 1.0
    truncation: str = "disabled"
    usage: ResponseUsage | UnsetType = UNSET
    user: str | UnsetType = UNSET
    metadata: dict[str, str] = {}


def response(id: str, created: int, cut: replay.Cut, request: CreateResponse | None, cached: int = 0) -> Response:
    """The response object of ``cut`` served as ``id``, echoing ``request``'s settings (the defaults without
    one), ``cached`` of its input tokens in the prompt cache."""
    incomplete = cut.finish_reason == "length"
    return Response(
        id=id, created_at=created, status="incomplete" if incomplete else "completed",
        completed_at=None if incomplete else created, incomplete_details=IncompleteDetails() if incomplete else None,
        output=_output(id, cut), usage=_usage(cut, cached), **(_UNKNOWN if request is None else _echo(request)),
    )


def response_body(id: str, created: int, cut: replay.Cut, request: CreateResponse | None, cached: int = 0) -> bytes:
    """``response`` as JSON: from a template when ``request`` set none of the settings it echoes, most
    requests, as what the server does per request is a large share of its time."""
    if request is None or _settings(request) != _UNSENT:
        return _encode(response(id, created, cut, request, cached))
    prompt, completion = cut.answer.prompt_tokens, cut.completion_tokens
    instructions, model, previous = _encode(request.instructions), _encode(request.model), _encode(request.previous_response_id)
    if cut.calls:
        output = _encode(_output(id, cut))
        return _WHOLE % (
            id.encode(), created, created, instructions, model, output, previous, prompt, cached, completion, prompt + completion
        )
    id_bytes = id.encode()
    return _WHOLE_TEXT % (
        id_bytes, created, created, instructions, model, id_bytes[5:], cut.content, previous, prompt, cached, completion,
        prompt + completion,
    )


# What a response echoes when the request is not known: its id names the answer, not the settings.
_UNKNOWN: dict[str, Any] = {"model": "mockgpt"}


def _echo(r: CreateResponse) -> dict[str, Any]:
    """``r``'s settings as the API echoes them, its defaults for those not sent."""
    return dict(
        background=bool(r.background), instructions=r.instructions, max_output_tokens=r.max_output_tokens,
        max_tool_calls=r.max_tool_calls, model=r.model, previous_response_id=r.previous_response_id,
        parallel_tool_calls=r.parallel_tool_calls is not False, prompt_cache_key=r.prompt_cache_key,
        prompt_cache_retention=r.prompt_cache_retention, reasoning=r.reasoning or _REASONING,
        safety_identifier=r.safety_identifier, store=r.store is not False,
        # "auto" asks for the default tier.
        service_tier="default" if r.service_tier in (None, "auto") else r.service_tier,
        temperature=1.0 if r.temperature is None else r.temperature, top_p=1.0 if r.top_p is None else r.top_p,
        text=_TEXT if r.text is UNSET else r.text, tool_choice="auto" if r.tool_choice is UNSET else r.tool_choice,
        tools=[] if r.tools is UNSET else r.tools, top_logprobs=r.top_logprobs or 0, truncation=r.truncation or "disabled",
        user=r.user, metadata=r.metadata or {},
    )


_REASONING, _TEXT = Reasoning(), TextConfig()
# The settings ``_echo`` echoes besides instructions, model and previous response, and their values unsent.
_SETTING_NAMES = (
    "background", "max_output_tokens", "max_tool_calls", "parallel_tool_calls", "prompt_cache_key",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "temperature", "text",
    "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user", "metadata",
)
_settings = operator.attrgetter(*_SETTING_NAMES)
_UNSENT = tuple({f.name: f.default for f in msgspec.structs.fields(CreateResponse)}[name] for name in _SETTING_NAMES)
_D, _S, _QS = msgspec.Raw(b"%d"), msgspec.Raw(b"%s"), msgspec.Raw(b'"%s"')
_USAGE = ResponseUsage(input_tokens=_D, input_tokens_details=InputTokensDetails(cached_tokens=_D), output_tokens=_D, total_tokens=_D)  # type: ignore[arg-type]
# A completed response to a request that set none of those settings: its output, or its one message item's.
_WHOLE = _encode(
    Response(
        id=_QS, created_at=_D, status="completed", completed_at=_D, instructions=_S, model=_S, output=_S,  # type: ignore[arg-type]
        previous_response_id=_S, usage=_USAGE,  # type: ignore[arg-type]
    )
)
_WHOLE_TEXT = _encode(
    Response(
        id=_QS, created_at=_D, status="completed", completed_at=_D, instructions=_S, model=_S,  # type: ignore[arg-type]
        output=[OutputMessage(id=msgspec.Raw(b'"msg_%s"'), status="completed", content=[OutputText(text=_S)])],  # type: ignore[arg-type]
        previous_response_id=_S, usage=_USAGE,  # type: ignore[arg-type]
    )
)


def _output(id: str, cut: replay.Cut) -> list[OutputMessage | FunctionCallItem]:
    output: list[OutputMessage | FunctionCallItem] = []
    if cut.content != b"null":
        # Cut inside its text, the message is incomplete; cut among the calls after it, not.
        text_cut = cut.finish_reason == "length" and cut.completion_tokens < len(cut.answer.token_lengths)
        status = "incomplete" if text_cut else "completed"
        output.append(OutputMessage(id="msg_" + id[5:], status=status, content=[OutputText(text=msgspec.Raw(cut.content))]))
    for number, call in enumerate(cut.calls):
        output.append(_call_item(id, number, call))
    return output


def _call_item(id: str, number: int, call: StoredCall) -> FunctionCallItem:
    return FunctionCallItem(
        id=f"fc_{id[5:51]}{number:04x}", status="completed", arguments=call.arguments, call_id=call.id, name=call.name
    )


def _usage(cut: replay.Cut, cached: int) -> ResponseUsage:
    prompt, completion = cut.answer.prompt_tokens, cut.completion_tokens
    return ResponseUsage(
        input_tokens=prompt, input_tokens_details=InputTokensDetails(cached_tokens=cached), output_tokens=completion,
        total_tokens=prompt + completion,
    )


# The events of a stream.


class _Event(Struct, kw_only=True, tag_field="type", gc=False):
    sequence_number: int


class _Lifecycle(_Event, kw_only=True):
    response: Response


class Created(_Lifecycle, tag="response.created"):
    pass


class InProgress(_Lifecycle, tag="response.in_progress"):
    pass


class Completed(_Lifecycle, tag="response.completed"):
    pass


class Incomplete(_Lifecycle, tag="response.incomplete"):
    pass


class ItemAdded(_Event, kw_only=True, tag="response.output_item.added"):
    output_index: int
    item: OutputMessage | FunctionCallItem


class ItemDone(_Event, kw_only=True, tag="response.output_item.done"):
    output_index: int
    item: OutputMessage | FunctionCallItem


class PartAdded(_Event, kw_only=True, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class PartDone(_Event, kw_only=True, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class TextDelta(_Event, kw_only=True, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[Any] = []


class TextDone(_Event, kw_only=True, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int = 0
    text: msgspec.Raw
    logprobs: list[Any] = []


class ArgumentsDelta(_Event, kw_only=True, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class ArgumentsDone(_Event, kw_only=True, tag="response.function_call_arguments.done"):
    item_id: str
    name: str
    output_index: int
    arguments: str


def events(id: str, created: int, cut: replay.Cut, request: CreateResponse, cached: int = 0) -> Iterator[bytes]:
    """The frames of a streamed response, one item per generation step (a token of the text, a call's
    name, a token of its arguments): the first also holds the events before the first token, the last
    the events after the last."""
    return steps(
        (step, b"event: %s\ndata: %s\n\n" % (event.__struct_config__.tag.encode(), _encode(event)))  # type: ignore[union-attr]
        for step, event in _events(id, created, cut, request, cached)
    )


def steps(frames: Iterable[tuple[bool, bytes]]) -> Iterator[bytes]:
    """Event frames, each with whether it is a step of generation, joined one item per step: the first
    item also holds the frames before the first step, the last those after the last."""
    joined: list[bytes] = []
    stepped = False
    for step, frame in frames:
        if step and stepped:
            yield b"".join(joined)
            joined = []
        stepped = stepped or step
        joined.append(frame)
    yield b"".join(joined)


def _events(id: str, created: int, cut: replay.Cut, request: CreateResponse, cached: int) -> Iterator[tuple[bool, _Event]]:
    """The events of the stream, in order, each with whether it is a step of generation."""
    number = itertools.count()
    done = response(id, created, cut, request, cached)
    started = msgspec.structs.replace(done, status="in_progress", completed_at=None, incomplete_details=None, output=[], usage=UNSET)
    yield False, Created(sequence_number=next(number), response=started)
    yield False, InProgress(sequence_number=next(number), response=started)
    calls = iter(cut.calls)
    for index, item in enumerate(done.output):
        if isinstance(item, OutputMessage):
            yield from _message_events(index, item, cut, number)
        else:
            yield from _call_events(index, item, next(calls), number)
    closing = Completed if done.status == "completed" else Incomplete
    yield False, closing(sequence_number=next(number), response=done)


def _message_events(
    index: int, item: OutputMessage, cut: replay.Cut, number: Iterator[int]
) -> Iterator[tuple[bool, _Event]]:
    started = msgspec.structs.replace(item, status="in_progress", content=[])
    yield False, ItemAdded(sequence_number=next(number), output_index=index, item=started)
    yield False, PartAdded(sequence_number=next(number), item_id=item.id, output_index=index, part=OutputText(text=_EMPTY))
    for piece in replay.pieces(cut):
        yield True, TextDelta(sequence_number=next(number), item_id=item.id, output_index=index, delta=piece)
    part = item.content[0]
    yield False, TextDone(sequence_number=next(number), item_id=item.id, output_index=index, text=part.text)
    yield False, PartDone(sequence_number=next(number), item_id=item.id, output_index=index, part=part)
    yield False, ItemDone(sequence_number=next(number), output_index=index, item=item)


def _call_events(
    index: int, item: FunctionCallItem, call: StoredCall, number: Iterator[int]
) -> Iterator[tuple[bool, _Event]]:
    started = msgspec.structs.replace(item, status="in_progress", arguments="")
    # Naming the function is a step of its own, as in a chat completion's stream.
    yield True, ItemAdded(sequence_number=next(number), output_index=index, item=started)
    for piece in replay.argument_pieces(call):
        yield True, ArgumentsDelta(sequence_number=next(number), item_id=item.id, output_index=index, delta=piece)
    yield False, ArgumentsDone(
        sequence_number=next(number), item_id=item.id, name=call.name, output_index=index, arguments=call.arguments
    )
    yield False, ItemDone(sequence_number=next(number), output_index=index, item=item)
