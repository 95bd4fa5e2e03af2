"""The OpenAI wire format: the request fields mockgpt reads, and the responses it sends.

Requests are view structs: they declare only what mockgpt uses, and every other field a client
sends is accepted and ignored, as the real API accepts fields it does not act on.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from mockgpt.index.canonical import Message

__all__ = [
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionRequest",
    "Conversations",
    "Delta",
    "ErrorBody",
    "ErrorDetail",
    "FirstDelta",
    "FunctionDelta",
    "FunctionOut",
    "Health",
    "Model",
    "ModelList",
    "ResponseMessage",
    "StreamOptions",
    "ToolCallDelta",
    "ToolCallOut",
    "Usage",
]

Positive = Annotated[int, Meta(ge=1)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Stop = str | Annotated[list[str], Meta(max_length=4)] | None


class StreamOptions(Struct):
    include_usage: bool = False


class ChatCompletionRequest(Struct):
    """``POST /v1/chat/completions``, the fields mockgpt reads."""

    model: str
    messages: Annotated[list[Message], Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = 1
    seed: Seed | None = None
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    stop: Stop = None
    # vLLM's extensions: go on past the recorded end, up to the token limit, or at least this far.
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Meta(ge=0)] | None = None


class CompletionRequest(Struct):
    """``POST /v1/completions`` (legacy), the fields mockgpt reads; the prompt is one user message."""

    model: str
    prompt: str | Annotated[list[str], Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = 1
    seed: Seed | None = None
    max_tokens: Positive | None = None
    stop: Stop = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Meta(ge=0)] | None = None


class PromptTokensDetails(Struct, frozen=True, gc=False):
    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(Struct, frozen=True, gc=False):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(Struct, gc=False):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()


FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionOut(Struct, gc=False):
    name: str
    arguments: str


class ToolCallOut(Struct, kw_only=True, gc=False):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


class ResponseMessage(Struct, kw_only=True, gc=False):
    """An answer: text, tool calls, or both; ``content`` is null when tool calls come without text."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    annotations: list[dict[str, str]] = []
    tool_calls: list[ToolCallOut] | UnsetType = UNSET


class ChatChoice(Struct, gc=False):
    index: int
    message: ResponseMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(Struct, kw_only=True, gc=False):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    service_tier: str = "default"
    system_fingerprint: str


class FirstDelta(Struct, gc=False):
    """The delta of a choice's first chunk: its role, and no text yet (null if there is none to come)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = ""
    refusal: None = None


class FunctionDelta(Struct, omit_defaults=True, gc=False):
    arguments: str
    name: str | None = None


class ToolCallDelta(Struct, omit_defaults=True, gc=False):
    """A piece of a tool call: the first names it (id, type, name), the others add to its arguments."""

    index: int
    function: FunctionDelta
    id: str | None = None
    type: Literal["function"] | None = None


class Delta(Struct, omit_defaults=True, gc=False):
    """The delta of every later chunk: a piece of text or of a tool call, or nothing in the chunk that finishes."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(Struct, gc=False):
    index: int
    delta: FirstDelta | Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct, kw_only=True, gc=False):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    service_tier: str = "default"
    system_fingerprint: str


class ChatCompletionChunkWithUsage(ChatCompletionChunk, kw_only=True):
    """A chunk of a stream that asked for usage: ``null`` on every chunk but the last."""

    usage: Usage | None = None


class CompletionChoice(Struct, gc=False):
    text: str
    index: int
    finish_reason: FinishReason | None
    logprobs: None = None


class CompletionChunk(Struct, kw_only=True, gc=False):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str


class Completion(CompletionChunk, kw_only=True):
    """A legacy completion; also a chunk of a stream that asked for usage, ``null`` on every chunk but the last."""

    usage: Usage | None = None


class Model(Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(Struct, gc=False):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorBody(Struct, gc=False):
    """Every error mockgpt sends, in the OpenAI shape."""

    error: ErrorDetail


class Conversations(Struct):
    """The dataset's conversations: every one read was indexed or skipped, as ``mockgpt index`` reports them."""

    read: int
    indexed: int
    skipped: int


class Health(Struct):
    status: str
    index: str
    format_version: int
    conversations: Conversations
    # Assistant turns indexed, and the distinct keys they are recorded under.
    answers: int
    keys: int
    sources: list[str]
    built_at: str
