"""The Anthropic Messages API's requests: what mockgpt reads of them, and their messages as chat messages.

Messages become the canonical messages a chat request holds, so that a conversation recorded through
either API replays through the other. ``system`` (a string or text blocks) is a system message first; a
message with a string is that message; a user message's ``tool_result`` blocks are tool messages, their
content's text as their text, and its other blocks, in runs between them, user messages of their text
blocks' text joined; an assistant message is one assistant message: its text blocks' text joined, and
its ``tool_use`` blocks as tool calls whose arguments are their ``input`` as JSON (which the canonicalizer
puts in its canonical form, as it does a chat call's arguments). Images, documents, thinking and every
id, ``cache_control`` or ``is_error`` count for nothing, as images do in chat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from mockgpt.errors import BadRequest
from mockgpt.index import canonical, replay

__all__ = ["Block", "CountTokens", "CreateMessage", "InputMessage", "Prompt", "ResultBlock", "SystemBlock", "occurring", "prompt"]

BlockType = Literal[
    "text", "image", "document", "search_result", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload",
]


class ResultBlock(Struct, gc=False):
    """A block of a ``tool_result``'s content; only text blocks count."""

    type: Literal["text", "image", "document", "search_result"]
    text: str | UnsetType = UNSET


class Block(Struct, gc=False):
    """A content block; which fields it requires depends on its type: ``prompt`` checks them as it reads."""

    type: BlockType
    text: str | UnsetType = UNSET
    source: dict[str, Any] | UnsetType = UNSET
    id: str | UnsetType = UNSET
    name: str | UnsetType = UNSET
    input: dict[str, Any] | UnsetType = UNSET
    tool_use_id: str | UnsetType = UNSET
    content: str | list[ResultBlock] | UnsetType = UNSET
    is_error: bool | UnsetType = UNSET
    thinking: str | UnsetType = UNSET
    signature: str | UnsetType = UNSET
    data: str | UnsetType = UNSET


_REQUIRED = {
    "text": ("text",),
    "image": ("source",),
    "document": ("source",),
    "tool_use": ("id", "name", "input"),
    "tool_result": ("tool_use_id",),
    "thinking": ("thinking", "signature"),
    "redacted_thinking": ("data",),
}


class InputMessage(Struct, gc=False):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class SystemBlock(Struct, gc=False):
    type: Literal["text"]
    text: str


class MessageToolChoice(Struct, frozen=True, gc=False):
    type: Literal["auto", "any", "tool", "none"]
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "tool" and self.name is UNSET:
            raise ValueError("Object missing required field `name`")


class Tool(Struct, gc=False):
    """A tool the model may use: a custom tool (``name`` and ``input_schema``) or a server tool (a ``type``)."""

    name: str
    type: str | None | UnsetType = UNSET
    description: str | UnsetType = UNSET
    input_schema: dict[str, Any] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type in (UNSET, None, "custom") and self.input_schema is UNSET:
            raise ValueError("Object missing required field `input_schema`")


class Thinking(Struct, frozen=True, gc=False):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Meta(ge=1024)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.type == "enabled" and self.budget_tokens is UNSET:
            raise ValueError("Object missing required field `budget_tokens`")


class Metadata(Struct, frozen=True, gc=False):
    user_id: Annotated[str, Meta(max_length=256)] | None = None


class CountTokens(Struct, kw_only=True, gc=False):
    """``POST /v1/messages/count_tokens``: the fields that make a prompt, each checked as the API does."""

    model: str
    messages: list[InputMessage]
    system: str | list[SystemBlock] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: MessageToolChoice | UnsetType = UNSET
    thinking: Thinking | UnsetType = UNSET


class CreateMessage(CountTokens, kw_only=True):
    """``POST /v1/messages``: the fields mockgpt reads or checks; the others are accepted and ignored."""

    max_tokens: Annotated[int, Meta(ge=1)]
    stream: bool = False
    stop_sequences: list[str] | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0, le=1)] | UnsetType = UNSET
    top_p: Annotated[float, Meta(ge=0, le=1)] | UnsetType = UNSET
    top_k: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    service_tier: Literal["auto", "standard_only"] | UnsetType = UNSET


class Prompt(Struct, frozen=True, gc=False):
    """A request's canonical messages, and how a miss names them."""

    messages: list[canonical.Message]
    sent: replay.Sent


def prompt(request: CountTokens) -> Prompt:
    """``request``'s canonical messages; ``BadRequest`` for a block without a field its type requires."""
    items = request.messages
    # Most requests: messages with a string each, and perhaps a system prompt.
    messages = [canonical.Message(item.role, item.content) for item in items if isinstance(item.content, str)]
    places: list[int | None] | None = None
    if len(messages) != len(items):
        messages, places = _messages(items)
    system = request.system
    if system is not UNSET:
        text = system if isinstance(system, str) else "".join(block.text for block in system)
        messages.insert(0, canonical.Message("system", text))
        places = [None, *(range(len(messages) - 1) if places is None else places)]
    return Prompt(messages, replay.Sent(places=places, items=len(items), preamble="system"))


def _messages(items: list[InputMessage]) -> tuple[list[canonical.Message], list[int | None]]:
    """The canonical messages of ``items``, and the position of the message each came from."""
    messages: list[canonical.Message] = []
    places: list[int | None] = []
    for place, item in enumerate(items):
        content = item.content
        if isinstance(content, str):
            made = [canonical.Message(item.role, content)]
        else:
            _check(content, place)
            made = _assistant(content) if item.role == "assistant" else _user(content)
        messages += made
        places += [place] * len(made)
    return messages, places


def _check(blocks: list[Block], place: int) -> None:
    for number, block in enumerate(blocks):
        for name in _REQUIRED.get(block.type, ()):
            if getattr(block, name) is UNSET:
                raise BadRequest(f"messages.{place}.content.{number}.{block.type}.{name}: Field required")


def _assistant(blocks: list[Block]) -> list[canonical.Message]:
    """An assistant message's blocks as one message: its text, and its ``tool_use`` blocks as calls."""
    calls = [
        canonical.ToolCall(canonical.FunctionCall(block.name, _json(block.input)), id=block.id)  # type: ignore[arg-type]
        for block in blocks
        if block.type == "tool_use"
    ]
    return [canonical.Message("assistant", _text(blocks), calls or None)]


def _user(blocks: list[Block]) -> list[canonical.Message]:
    """A user message's blocks: each ``tool_result`` a tool message, each run of other blocks a user message."""
    messages: list[canonical.Message] = []
    run: list[Block] = []
    for block in blocks:
        if block.type != "tool_result":
            run.append(block)
            continue
        if run:
            messages.append(canonical.Message("user", _text(run)))
            run = []
        result = block.content
        messages.append(canonical.Message("tool", "" if result is UNSET else result if isinstance(result, str) else _text(result)))
    if run:
        messages.append(canonical.Message("user", _text(run)))
    return messages


def _text(blocks: list[Block] | list[ResultBlock]) -> str:
    return "".join(block.text for block in blocks if block.type == "text" and isinstance(block.text, str))


_encode = msgspec.json.Encoder().encode


def _json(input: dict[str, Any]) -> str:
    return _encode(input).decode()


# How many characters of a stop sequence are looked up before it is looked for.
_HEAD = 4


def occurring(text: str, sequences: Sequence[str]) -> Sequence[str]:
    """Those of ``sequences`` that occur in ``text``, each once; a few are returned as they are.

    The API sets no bound on their number: each is looked for in full only if its first four characters
    occur in ``text``, so that many sequences cost time in proportion to their size, not to their
    number times the text's length.
    """
    if len(sequences) <= _HEAD:
        return sequences
    heads = {text[start : start + size] for size in range(1, _HEAD + 1) for start in range(len(text) - size + 1)}
    return [s for s in dict.fromkeys(sequences) if s[:_HEAD] in heads and (len(s) <= _HEAD or s in text)]
