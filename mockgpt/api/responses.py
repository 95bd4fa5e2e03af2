"""The Responses API's requests: what mockgpt reads of them, their input as chat messages, and the ids
that chain responses with no state kept between requests.

Input items become the canonical messages a chat request holds, so that a conversation recorded through
either API replays through the other. ``instructions`` are a system message before the input; a string
input is one user message; a message item is a message (``developer`` and ``system`` both count as
system); consecutive assistant output items, an assistant message and the ``function_call`` items after
it, are one assistant message whose tool calls are those items in order; a ``function_call_output`` is
a tool message with its output as its text. Item ids and statuses, like every other field, do not count.

A response answered from the index is a recorded answer to a recorded history, so its id names that
answer in the index: ``resp_`` and 50 lowercase hex digits,

    fingerprint (10) | record offset (12) | answer number (4) | tokens kept (6) | created (8) | nonce (4) | check (6)

the index's fingerprint without ``fp_``, the offset of the record of the answered messages, which of
the record's answers was served, how many of its tokens if ``max_output_tokens`` cut it (0 for all),
the Unix time it was created, a random number (from the request with ``--deterministic``) that tells
apart responses of the same second, and the first 6 hex digits of the xxh3-64 of the 44 before. A
follow-up that names it in ``previous_response_id`` is keyed as the record's framed key, then the
served answer framed as the assistant message it was, then the follow-up's own input: the framing of
the whole conversation, as a chat request sending it all would frame it. Any worker serving the same
index file reads the same ids. The instructions of a follow-up do not count: those of the chain's first
request are in its history already.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from xxhash import xxh3_64_hexdigest

from mockgpt.errors import BadRequest, NotFound
from mockgpt.index import canonical, replay
from mockgpt.index.reader import Index
from mockgpt.index.records import Record

__all__ = [
    "ContentPart",
    "CreateResponse",
    "FunctionTool",
    "InputItem",
    "Prompt",
    "Reasoning",
    "ResponseIds",
    "Served",
    "TextConfig",
    "TextFormat",
    "ToolChoice",
    "prompt",
]


def _missing(name: str) -> ValueError:
    # Worded as msgspec words a missing field, so that the app reports it as it reports any other.
    return ValueError(f"Object missing required field `{name}`")


class ContentPart(Struct, gc=False):
    """A part of a message's content, or of a function call's output; only text parts count."""

    type: Literal["input_text", "input_image", "input_file", "output_text", "refusal"]
    text: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type in _TEXT_PARTS and self.text is UNSET:
            raise _missing("text")


_TEXT_PARTS = frozenset({"input_text", "output_text"})
Content = str | list[ContentPart]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputItem(Struct, gc=False):
    """An item of ``input``: a message (with or without ``type``), a function call, or a function call's output.

    Which fields an item requires depends on its type: ``prompt`` checks them as it reads the items, the
    hot path of a request with many of them.
    """

    type: str = "message"
    role: Literal["user", "assistant", "system", "developer"] | UnsetType = UNSET
    content: Content | UnsetType = UNSET
    call_id: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET
    output: Content | UnsetType = UNSET
    # What frameworks send back of an output item; neither counts.
    id: str | None = None
    status: ItemStatus | None = None


_REQUIRED = {
    "message": ("role", "content"),
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
}


class StreamOptions(Struct, frozen=True, gc=False):
    include_obfuscation: bool = True


class Reasoning(Struct, frozen=True, gc=False):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None | UnsetType = UNSET
    context: Literal["auto", "current_turn", "all_turns"] | None | UnsetType = UNSET
    mode: str | UnsetType = UNSET


class TextFormat(Struct, frozen=True, gc=False):
    type: Literal["text", "json_schema", "json_object"]
    name: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    description: str | UnsetType = UNSET
    strict: bool | None | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "json_schema":
            for name in ("name", "schema"):
                if getattr(self, name) is UNSET:
                    raise _missing(name)


class TextConfig(Struct, frozen=True, gc=False):
    format: TextFormat = TextFormat("text")
    verbosity: Literal["low", "medium", "high"] | None = "medium"


class FunctionTool(Struct, kw_only=True, gc=False):
    """A tool the model may call: mockgpt replays recorded function calls, so only function tools."""

    type: str
    name: str | UnsetType = UNSET
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = True

    def __post_init__(self) -> None:
        if self.type != "function":
            raise ValueError(f"mockgpt replays recorded function calls: tools of type '{self.type}' are not supported")
        if self.name is UNSET:
            raise _missing("name")


class ToolChoice(Struct, frozen=True, gc=False):
    type: Literal[
        "function", "allowed_tools", "custom", "mcp", "file_search", "web_search_preview", "computer",
        "computer_use_preview", "computer_use", "web_search_preview_2025_03_11", "image_generation",
        "code_interpreter", "programmatic_tool_calling", "apply_patch", "shell",
    ]
    name: str | None | UnsetType = UNSET
    mode: Literal["auto", "required"] | UnsetType = UNSET
    tools: list[dict[str, Any]] | UnsetType = UNSET
    server_label: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        for name in _CHOICE_REQUIRES.get(self.type, ()):
            if getattr(self, name) is UNSET:
                raise _missing(name)


_CHOICE_REQUIRES = {"function": ("name",), "custom": ("name",), "allowed_tools": ("mode", "tools"), "mcp": ("server_label",)}


class _Id(Struct, frozen=True, gc=False):
    id: str


class _StoredPrompt(Struct, frozen=True, gc=False):
    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


class _Moderation(Struct, frozen=True, gc=False):
    model: str
    policy: dict[str, Any] | None = None


class _ContextManagement(Struct, frozen=True, gc=False):
    type: str
    compact_threshold: Annotated[int, Meta(ge=1000)] | None = None


class _CacheOptions(Struct, frozen=True, gc=False):
    ttl: Literal["30m"] | UnsetType = UNSET
    mode: Literal["implicit", "explicit"] | UnsetType = UNSET


Include = Literal[
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
]
Metadata = Annotated[
    dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]], Meta(max_length=16)
]
ServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"]


class CreateResponse(Struct, kw_only=True, gc=False):
    """``POST /v1/responses``: the fields mockgpt reads or echoes, each checked as the API reference says."""

    model: str
    input: str | list[InputItem] | UnsetType = UNSET
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_output_tokens: Annotated[int, Meta(ge=16)] | None = None
    include: list[Include] | None = None
    metadata: Metadata | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    user: str | UnsetType = UNSET
    safety_identifier: Annotated[str, Meta(max_length=64)] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: _CacheOptions | UnsetType = UNSET
    service_tier: ServiceTier | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | UnsetType = UNSET
    tools: list[FunctionTool] | UnsetType = UNSET
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | UnsetType = UNSET
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = None
    background: bool | None = None
    store: bool | None = None
    conversation: str | _Id | None = None
    prompt: _StoredPrompt | None = None
    moderation: _Moderation | None = None
    context_management: Annotated[list[_ContextManagement], Meta(min_length=1)] | None = None


class Served(Struct, frozen=True, array_like=True, gc=False):
    """What a response id names: the record answered (its offset), which of its answers, how many of its
    tokens (0: all), when, and a number below 2**16 that tells it from others."""

    offset: int
    number: int
    kept: int
    created: int
    nonce: int


_ID = re.compile(r"resp_([0-9a-f]{44})([0-9a-f]{6})")
_WELL_FORMED = re.compile(r"[A-Za-z0-9_-]+")


class ResponseIds:
    """Makes the ids of the responses answered from ``index``, and reads them back."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._fingerprint = index.fingerprint.removeprefix("fp_")

    def make(self, served: Served) -> str:
        body = "%s%012x%04x%06x%08x%04x" % (self._fingerprint, *msgspec.structs.astuple(served))
        return "resp_%s%s" % (body, xxh3_64_hexdigest(body.encode())[:6])

    def read(self, id: str) -> tuple[Served, Record] | None:
        """What ``id`` names and the record it names, if it is a response of this index; else None."""
        match = _ID.fullmatch(id)
        if match is None or not match[1].startswith(self._fingerprint) or xxh3_64_hexdigest(match[1].encode())[:6] != match[2]:
            return None
        body = match[1][10:]
        served = Served(*(int(body[start:end], 16) for start, end in [(0, 12), (12, 16), (16, 22), (22, 30), (30, 34)]))
        record = self.index.record_at(served.offset)
        if record is None or served.number >= len(record.answers):
            return None
        return served, record

    def cut(self, served: Served, record: Record) -> replay.Cut:
        """The answer served, cut as it was."""
        return replay.cut(self.index.answer(record.answers[served.number]), served.kept or None, None)

    def history(self, id: str) -> tuple[bytes, bytes]:
        """The framed conversation up to response ``id``'s answer, and its answer framed; ``NotFound`` as the
        API words it for an unknown ``previous_response_id``."""
        if _WELL_FORMED.fullmatch(id) is None:
            raise BadRequest(
                f"Invalid 'previous_response_id': '{id}'. Expected an ID that contains letters, numbers,"
                " underscores, or dashes, but this value contained additional characters.",
                param="previous_response_id",
            )
        found = self.read(id)
        if found is None:
            raise NotFound(
                f"Previous response with id '{id}' not found.", param="previous_response_id", code="previous_response_not_found"
            )
        cut = self.cut(*found)
        return self.index.key_bytes(found[1]), replay.framed_answer(_served_text(cut) or "", cut.calls)


def _served_text(cut: replay.Cut) -> str | None:
    """The text of a cut answer; None for tool calls without text."""
    text: str | None = msgspec.json.decode(cut.content)
    return text


class Prompt(Struct, frozen=True, gc=False):
    """A request as the replayer looks it up: its messages, the recorded history they follow (a prompt and
    its answer, framed), and how a miss names them."""

    messages: list[canonical.Message]
    history: tuple[bytes, bytes] | tuple[()]
    sent: replay.Sent

    @property
    def framed_history(self) -> bytes:
        return b"".join(self.history)


def prompt(request: CreateResponse, ids: ResponseIds) -> Prompt:
    """``request``'s messages, after the history of its ``previous_response_id`` if it has one; ``BadRequest``
    for an item that lacks a field its type requires."""
    if request.conversation is not None or request.prompt is not None:
        raise _unsupported(request)
    previous, input = request.previous_response_id, request.input
    places: list[int | None] | None
    if isinstance(input, str):
        messages, places = [canonical.Message("user", input)], None
    else:
        messages, places = _messages(input or [])
    if request.instructions is not None and previous is None:
        messages.insert(0, canonical.Message("system", request.instructions))
        places = [None, *(range(len(messages) - 1) if places is None else places)]
    history = () if previous is None else ids.history(previous)
    after = None if previous is None else f"response '{previous}'"
    items = 1 if isinstance(input, str) else len(input or ())
    return Prompt(messages, history, replay.Sent("input", "input item", places, items, after))


def _unsupported(request: CreateResponse) -> BadRequest:
    if request.conversation is not None:
        return BadRequest(
            "mockgpt keeps no conversations: send the whole input, or chain responses with previous_response_id.",
            param="conversation",
        )
    return BadRequest("mockgpt keeps no prompts: send the prompt's text as input.", param="prompt")


def _messages(items: list[InputItem]) -> tuple[list[canonical.Message], list[int | None] | None]:
    """The canonical messages of input items, and the position of the item each came from (None when
    each came from its own)."""
    # Most inputs: messages, each with a string.
    messages = [
        canonical.Message(item.role, item.content)
        for item in items
        if item.type == "message" and isinstance(item.content, str) and item.role is not UNSET
    ]
    if len(messages) == len(items):
        return messages, None
    messages = []
    places: list[int | None] = []
    for place, item in enumerate(items):
        kind, content = item.type, item.content
        _check(item, place)
        if kind == "function_call":
            call = canonical.ToolCall(canonical.FunctionCall(item.name, item.arguments), id=item.call_id)  # type: ignore[arg-type]
            # A call joins the assistant message before it: the text and calls of one answer. Every message
            # here is made here, with a list of its own.
            if messages and messages[-1].role == "assistant":
                last = messages[-1]
                if last.tool_calls is None:
                    last.tool_calls = [call]
                else:
                    last.tool_calls.append(call)
                continue
            messages.append(canonical.Message("assistant", "", [call]))
        elif kind == "function_call_output":
            messages.append(canonical.Message("tool", _text(item.output)))  # type: ignore[arg-type]
        else:
            messages.append(canonical.Message(item.role, _text(content)))  # type: ignore[arg-type]
        places.append(place)
    return messages, places


def _check(item: InputItem, place: int) -> None:
    """``BadRequest`` for an item of a type mockgpt does not replay, or without a field its type requires."""
    required = _REQUIRED.get(item.type)
    if required is None:
        raise BadRequest(
            f"Invalid value: '{item.type}'. mockgpt replays items of type 'message', 'function_call' and"
            " 'function_call_output'.",
            param=f"input[{place}].type",
        )
    for name in required:
        if getattr(item, name) is UNSET:
            # Worded as the app words every other missing field.
            param = f"input[{place}].{name}"
            raise BadRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _text(content: Content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if part.type in _TEXT_PARTS and isinstance(part.text, str))
