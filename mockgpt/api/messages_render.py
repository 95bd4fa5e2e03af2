"""The Anthropic Messages API's answers as bytes: the message object, its stream of events, its errors,
and its model list.

A served answer is at most one ``text`` block (its text) followed by one ``tool_use`` block per recorded
tool call, its ``input`` the recorded arguments (an object: arguments that are not a JSON object are
served as ``{}``). A call's id is its recorded id, after ``toolu_`` unless it starts so already.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import msgspec
from msgspec import Struct

from mockgpt.api.responses_render import steps
from mockgpt.index import replay
from mockgpt.index.records import StoredCall

__all__ = [
    "ErrorResponse", "MessageObject", "error_body", "error_type", "events", "message", "message_body", "model", "models", "stop_reason",
]

_encode = msgspec.json.Encoder().encode
_EMPTY_INPUT = msgspec.Raw(b"{}")


class TextBlock(Struct, kw_only=True, tag_field="type", tag="text", gc=False):
    # The text as a JSON string, spliced in as it is stored.
    text: msgspec.Raw


class ToolUseBlock(Struct, kw_only=True, tag_field="type", tag="tool_use", gc=False):
    id: str
    name: str
    input: msgspec.Raw


class MessageUsage(Struct, kw_only=True, gc=False):
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageObject(Struct, kw_only=True, gc=False):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: MessageUsage


def stop_reason(cut: replay.Cut, stop_sequences: Sequence[str]) -> tuple[StopReason, str | None]:
    """Why the answer ``cut`` stopped, in this API's words, and the stop sequence it stopped at, if any."""
    if cut.finish_reason == "length":
        return "max_tokens", None
    if cut.finish_reason == "tool_calls":
        return "tool_use", None
    if cut.end is not None and stop_sequences:
        rest = cut.answer.text.encode()[cut.end :].decode(errors="ignore")
        found = [sequence for sequence in stop_sequences if sequence and rest.startswith(sequence)]
        if found:
            return "stop_sequence", min(found)
    return "end_turn", None


def message(id: str, model: str, cut: replay.Cut, stop_sequences: Sequence[str]) -> MessageObject:
    """The message object of ``cut`` served as ``id``."""
    reason, sequence = stop_reason(cut, stop_sequences)
    return MessageObject(id=id, model=model, content=_content(cut), stop_reason=reason, stop_sequence=sequence, usage=_usage(cut))


def message_body(id: str, model: str, cut: replay.Cut, stop_sequences: Sequence[str]) -> bytes:
    """``message`` as JSON: a whole answer of text alone, most requests, from a template."""
    if cut.end is None and not cut.calls:
        prompt = cut.answer.prompt_tokens
        return _WHOLE_TEXT % (id.encode(), _encode(model), cut.content, prompt, cut.completion_tokens)
    return _encode(message(id, model, cut, stop_sequences))


_D, _S, _QS = msgspec.Raw(b"%d"), msgspec.Raw(b"%s"), msgspec.Raw(b'"%s"')
_WHOLE_TEXT = _encode(
    MessageObject(
        id=_QS, model=_S, content=[TextBlock(text=_S)], stop_reason="end_turn",  # type: ignore[arg-type]
        usage=MessageUsage(input_tokens=_D, output_tokens=_D),  # type: ignore[arg-type]
    )
)


def _content(cut: replay.Cut) -> list[TextBlock | ToolUseBlock]:
    content: list[TextBlock | ToolUseBlock] = []
    # An answer of tool calls alone has no text block, however it was cut.
    if cut.content != b"null" and not (cut.content == b'""' and cut.answer.content == b"null"):
        content.append(TextBlock(text=msgspec.Raw(cut.content)))
    return content + [_tool_use(call) for call in cut.calls]


def _tool_use(call: StoredCall) -> ToolUseBlock:
    id = call.id if call.id.startswith("toolu_") else "toolu_" + call.id
    return ToolUseBlock(id=id, name=call.name, input=msgspec.Raw(call.arguments) if _is_object(call) else _EMPTY_INPUT)


def _is_object(call: StoredCall) -> bool:
    """Whether a call's recorded arguments are a JSON object."""
    try:
        return isinstance(msgspec.json.decode(call.arguments), dict)
    except (msgspec.DecodeError, RecursionError):
        return False


def _usage(cut: replay.Cut) -> MessageUsage:
    return MessageUsage(input_tokens=cut.answer.prompt_tokens, output_tokens=cut.completion_tokens)


# The events of a stream.


class _Event(Struct, kw_only=True, tag_field="type", gc=False):
    pass


class MessageStart(_Event, kw_only=True, tag="message_start"):
    message: MessageObject


class BlockStart(_Event, kw_only=True, tag="content_block_start"):
    index: int
    content_block: TextBlock | ToolUseBlock


class Ping(_Event, tag="ping"):
    pass


class TextDelta(Struct, kw_only=True, tag_field="type", tag="text_delta", gc=False):
    text: str


class InputDelta(Struct, kw_only=True, tag_field="type", tag="input_json_delta", gc=False):
    partial_json: str


class BlockDelta(_Event, kw_only=True, tag="content_block_delta"):
    index: int
    delta: TextDelta | InputDelta


class BlockStop(_Event, kw_only=True, tag="content_block_stop"):
    index: int


class Stopped(Struct, kw_only=True, gc=False):
    stop_reason: StopReason
    stop_sequence: str | None


class OutputUsage(Struct, kw_only=True, gc=False):
    output_tokens: int


class MessageDelta(_Event, kw_only=True, tag="message_delta"):
    delta: Stopped
    usage: OutputUsage


class MessageStop(_Event, tag="message_stop"):
    pass


def events(id: str, model: str, cut: replay.Cut, stop_sequences: Sequence[str]) -> Iterator[bytes]:
    """The frames of a streamed message, one item per generation step (a token of the text, a call's
    name, a token of its input): the first also holds the events before the first token, the last the
    events after the last."""
    return steps(
        (step, b"event: %s\ndata: %s\n\n" % (event.__struct_config__.tag.encode(), _encode(event)))  # type: ignore[union-attr]
        for step, event in _events(id, model, cut, stop_sequences)
    )


def _events(id: str, model: str, cut: replay.Cut, stop_sequences: Sequence[str]) -> Iterator[tuple[bool, _Event]]:
    done = message(id, model, cut, stop_sequences)
    usage = MessageUsage(input_tokens=done.usage.input_tokens, output_tokens=0)
    started = msgspec.structs.replace(done, content=[], stop_reason=None, stop_sequence=None, usage=usage)
    yield False, MessageStart(message=started)
    calls = iter(cut.calls)
    for index, block in enumerate(done.content):
        if isinstance(block, TextBlock):
            yield False, BlockStart(index=index, content_block=TextBlock(text=msgspec.Raw(b'""')))
            pieces: Iterator[tuple[bool, _Event]] = (
                (True, BlockDelta(index=index, delta=TextDelta(text=piece))) for piece in replay.pieces(cut)
            )
        else:
            # Naming the tool is a step of its own, as in a chat completion's stream.
            yield True, BlockStart(index=index, content_block=msgspec.structs.replace(block, input=_EMPTY_INPUT))
            pieces = _input_deltas(index, block, next(calls))
        if not index:
            yield False, Ping()
        yield from pieces
        yield False, BlockStop(index=index)
    assert done.stop_reason is not None
    stopped = Stopped(stop_reason=done.stop_reason, stop_sequence=done.stop_sequence)
    yield False, MessageDelta(delta=stopped, usage=OutputUsage(output_tokens=done.usage.output_tokens))
    yield False, MessageStop()


def _input_deltas(index: int, block: ToolUseBlock, call: StoredCall) -> Iterator[tuple[bool, _Event]]:
    """A call's input a recorded token at a time (``{}`` at once for arguments that are not an object)."""
    pieces = replay.argument_pieces(call) if block.input is not _EMPTY_INPUT else iter(["{}"])
    return ((True, BlockDelta(index=index, delta=InputDelta(partial_json=piece))) for piece in pieces)


# Errors.

# The error types of this API, by status; other statuses: invalid_request_error below 500, api_error from it.
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 504: "timeout_error",
    529: "overloaded_error",
}


class ErrorObject(Struct, gc=False):
    type: str
    message: str


class ErrorResponse(Struct, tag_field="type", tag="error", gc=False):
    error: ErrorObject


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str) -> bytes:
    """The body of every error of this API: ``{"type": "error", "error": {"type", "message"}}``."""
    return _encode(ErrorResponse(ErrorObject(error_type(status), message)))


# Models.


class ModelInfo(Struct, kw_only=True, tag_field="type", tag="model", gc=False):
    id: str
    display_name: str
    created_at: str
    lifecycle: Literal["active"] = "active"


class ModelPage(Struct, kw_only=True, gc=False):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None
    last_id: str | None


def model(id: str, display_name: str, created_at: str) -> bytes:
    """A model as ``GET /v1/models/{id}`` shows it."""
    return _encode(ModelInfo(id=id, display_name=display_name, created_at=created_at))


def models(names: Mapping[str, str], created_at: str) -> bytes:
    """A page of every model of ``names`` (id: display name), as ``GET /v1/models`` lists them."""
    data = [ModelInfo(id=id, display_name=name, created_at=created_at) for id, name in names.items()]
    return _encode(ModelPage(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None))
