"""Responses as bytes: JSON bodies, server-sent event frames, and the one OpenAI error body."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import msgspec

from mockgpt.api.chat import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkWithUsage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionChunk,
    Delta,
    ErrorBody,
    ErrorDetail,
    FirstDelta,
    FunctionDelta,
    FunctionOut,
    PromptTokensDetails,
    ResponseMessage,
    ToolCallDelta,
    ToolCallOut,
    Usage,
)
from mockgpt.errors import APIError
from mockgpt.index import replay
from mockgpt.index.records import Answer, StoredCall

__all__ = [
    "DONE",
    "chat_chunks",
    "chat_completion",
    "chat_completion_whole",
    "completion",
    "completion_chunks",
    "error",
    "error_body",
]

DONE = b"data: [DONE]\n\n"
T = TypeVar("T")

_encode = msgspec.json.Encoder().encode


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> bytes:
    """The body of every error response: ``{"error": {"message", "type", "param", "code"}}``."""
    return _encode(ErrorBody(ErrorDetail(message=message, type=type, param=param, code=code)))


def error(exception: APIError) -> bytes:
    return error_body(exception.message, exception.type, exception.param, exception.code)


def usage(prompt_tokens: int, cuts: Sequence[replay.Cut], cached: int = 0) -> Usage:
    """The usage of ``cuts``, answers to a prompt of ``prompt_tokens``, ``cached`` of them in the prompt cache."""
    completion = sum(cut.completion_tokens for cut in cuts)
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _template(response: msgspec.Struct) -> bytes:
    """``response`` encoded with ``%`` placeholders in its ``Raw`` fields: the schema's shape, to fill fast."""
    return _encode(response)


_D, _S, _QS = msgspec.Raw(b"%d"), msgspec.Raw(b"%s"), msgspec.Raw(b'"%s"')
_USAGE = _template(
    Usage(prompt_tokens=_D, completion_tokens=_D, total_tokens=_D, prompt_tokens_details=PromptTokensDetails(cached_tokens=_D))  # type: ignore[arg-type]
)
_CHAT_CHOICE = _template(ChatChoice(index=_D, message=ResponseMessage(content=_S), finish_reason=_QS))  # type: ignore[arg-type]
_CHAT_CHOICE_CALLS = _template(
    ChatChoice(index=_D, message=ResponseMessage(content=_S, tool_calls=_S), finish_reason=_QS)  # type: ignore[arg-type]
)
_CHAT = _template(ChatCompletion(id=_QS, created=_D, model=_S, choices=[_S], usage=_S, system_fingerprint=_QS))  # type: ignore[arg-type, list-item]
_TEXT_CHOICE = _template(CompletionChoice(text=_S, index=_D, finish_reason=_QS))  # type: ignore[arg-type]
_CHAT_WHOLE = _template(
    ChatCompletion(
        id=_QS, created=_D, model=_S,  # type: ignore[arg-type]
        choices=[ChatChoice(index=0, message=ResponseMessage(content=_S), finish_reason="stop")],  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=_D, completion_tokens=_D, total_tokens=_D),  # type: ignore[arg-type]
        system_fingerprint=_QS,  # type: ignore[arg-type]
    )
)
_CHAT_WHOLE_CALLS = _template(
    ChatCompletion(
        id=_QS, created=_D, model=_S,  # type: ignore[arg-type]
        choices=[ChatChoice(index=0, message=ResponseMessage(content=_S, tool_calls=_S), finish_reason="tool_calls")],  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=_D, completion_tokens=_D, total_tokens=_D),  # type: ignore[arg-type]
        system_fingerprint=_QS,  # type: ignore[arg-type]
    )
)
_TEXT = _template(Completion(id=_QS, created=_D, model=_S, choices=[_S], usage=_S, system_fingerprint=_QS))  # type: ignore[arg-type, list-item]


def _usage(prompt_tokens: int, cuts: Sequence[replay.Cut], cached: int = 0) -> bytes:
    completion = sum([cut.completion_tokens for cut in cuts])
    return _USAGE % (prompt_tokens, completion, prompt_tokens + completion, cached)


def _tool_calls(calls: Sequence[StoredCall]) -> bytes:
    return _encode([ToolCallOut(id=call.id, function=FunctionOut(call.name, call.arguments)) for call in calls])


def _chat_choice(i: int, cut: replay.Cut) -> bytes:
    if cut.calls:
        return _CHAT_CHOICE_CALLS % (i, cut.content, _tool_calls(cut.calls), cut.finish_reason.encode())
    return _CHAT_CHOICE % (i, cut.content, cut.finish_reason.encode())


def chat_completion(id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], cached: int = 0) -> bytes:
    choices = b",".join([_chat_choice(i, cut) for i, cut in enumerate(cuts)])
    usage = _usage(cuts[0].answer.prompt_tokens, cuts, cached)
    return _CHAT % (id.encode(), created, _encode(model), choices, usage, fingerprint.encode())


def chat_completion_whole(id: str, created: int, model: str, fingerprint: str, answer: Answer) -> bytes:
    """``chat_completion`` of one whole answer, the common case, in one step."""
    prompt, completion = answer.prompt_tokens, answer.completion_tokens
    if answer.tool_calls:
        return _CHAT_WHOLE_CALLS % (
            id.encode(), created, _encode(model), answer.content, _tool_calls(answer.tool_calls),
            prompt, completion, prompt + completion, fingerprint.encode(),
        )
    return _CHAT_WHOLE % (
        id.encode(), created, _encode(model), answer.content, prompt, completion, prompt + completion, fingerprint.encode()
    )


def _steps(choices: Sequence[Iterator[T]]) -> Iterator[list[tuple[int, T | None, bool]]]:
    """The generation steps of the choices' pieces, as a server writing the choices together sends them:
    in each, every choice still going writes its next piece, (choice, piece, is it the choice's last); a
    choice with no pieces has one step with none."""
    going = []
    for i, pieces in enumerate(choices):
        going.append((i, pieces, next(pieces, None)))
    while going:
        step = []
        still: list[tuple[int, Iterator[T], T | None]] = []
        for i, pieces, piece in going:
            following = next(pieces, None)
            step.append((i, piece, following is None))
            if following is not None:
                still.append((i, pieces, following))
        yield step
        going = still


# The first delta's content of an answer without text: null, as the real API sends for tool calls alone.
_NO_TEXT: dict[bytes, str | None] = {b"null": None}


def _deltas(cut: replay.Cut) -> Iterator[Delta]:
    """The deltas of one choice: its text a token at a time, then each tool call: a delta that names it,
    then its arguments a token at a time."""
    for piece in replay.pieces(cut):
        yield Delta(content=piece)
    for i, call in enumerate(cut.calls):
        named = FunctionDelta(arguments="", name=call.name)
        yield Delta(tool_calls=[ToolCallDelta(index=i, id=call.id, type="function", function=named)])
        for piece in replay.argument_pieces(call):
            yield Delta(tool_calls=[ToolCallDelta(index=i, function=FunctionDelta(arguments=piece))])


def chat_chunks(
    id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], include_usage: bool, cached: int = 0
) -> Iterator[bytes]:
    """The frames of a streamed chat completion, one item per generation step (see ``_steps``): the first
    also holds each choice's role chunk, the last its finish, the usage chunk if asked and ``data: [DONE]``."""
    chunk = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk

    def frame(choice: ChunkChoice) -> bytes:
        response = chunk(id=id, created=created, model=model, choices=[choice], system_fingerprint=fingerprint)
        return b"data: " + _encode(response) + b"\n\n"

    frames = [frame(ChunkChoice(index=i, delta=FirstDelta(content=_NO_TEXT.get(cut.content, "")))) for i, cut in enumerate(cuts)]
    if len(cuts) == 1 and not cuts[0].calls:
        yield from _text_steps(frame, cuts[0], frames[0], _usage_and_done(id, created, model, fingerprint, cuts, include_usage, cached))
        return
    for number, step in enumerate(_steps([_deltas(cut) for cut in cuts])):
        if number:
            yield b"".join(frames)
            frames = []
        for i, delta, last in step:
            if delta is not None:
                frames.append(frame(ChunkChoice(index=i, delta=delta)))
            if last:
                frames.append(frame(ChunkChoice(index=i, delta=Delta(), finish_reason=cuts[i].finish_reason)))  # type: ignore[arg-type]
    frames.append(_usage_and_done(id, created, model, fingerprint, cuts, include_usage, cached))
    yield b"".join(frames)


def _usage_and_done(
    id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], include_usage: bool, cached: int
) -> bytes:
    """What ends a chat stream: the usage chunk if asked, and ``data: [DONE]``."""
    if not include_usage:
        return DONE
    last = ChatCompletionChunkWithUsage(
        id=id, created=created, model=model, choices=[], usage=usage(cuts[0].answer.prompt_tokens, cuts, cached),
        system_fingerprint=fingerprint,
    )
    return b"data: " + _encode(last) + b"\n\n" + DONE


# Where a text chunk's JSON string goes in its template; a string's JSON never holds a raw NUL.
_SLOT = b"\x00"
# The bytes JSON escapes in a string (msgspec writes every other character as its UTF-8 bytes).
_ESCAPED = bytes(range(0x20)) + b'"\\'


def _text_steps(frame: Callable[[ChunkChoice], bytes], cut: replay.Cut, head: bytes, end: bytes) -> Iterator[bytes]:
    """The steps of one choice of text alone, the stream most requests ask for: each token's chunk is its
    JSON string spliced into the chunk's bytes, made once."""
    prefix, suffix = frame(ChunkChoice(index=0, delta=Delta(content=msgspec.Raw(_SLOT)))).split(_SLOT)  # type: ignore[arg-type]
    text = cut.answer.text.encode()
    pieces = replay.utf8_pieces(cut, text)
    if len(text.translate(None, _ESCAPED)) == len(text):
        # Nothing to escape, the common case: a token's JSON string is its UTF-8 bytes in quotes.
        prefix, suffix = prefix + b'"', b'"' + suffix
    else:
        pieces = map(_encode, map(bytes.decode, pieces))
    # The first token goes with the head, in the first step.
    first = next(pieces, None)
    pending = head if first is None else head + prefix + first + suffix
    for piece in pieces:
        yield pending
        pending = prefix + piece + suffix
    finish = frame(ChunkChoice(index=0, delta=Delta(), finish_reason=cut.finish_reason))  # type: ignore[arg-type]
    yield pending + finish + end


def completion(id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], prompt_tokens: int) -> bytes:
    choices = b",".join([_TEXT_CHOICE % (cut.content, i, cut.finish_reason.encode()) for i, cut in enumerate(cuts)])
    return _TEXT % (id.encode(), created, _encode(model), choices, fingerprint.encode(), _usage(prompt_tokens, cuts))


def completion_chunks(
    id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], prompt_tokens: int, include_usage: bool
) -> Iterator[bytes]:
    """The frames of a streamed legacy completion, one item per generation step as ``chat_chunks``."""
    chunk = Completion if include_usage else CompletionChunk

    def frame(choice: CompletionChoice) -> bytes:
        response = chunk(id=id, created=created, model=model, choices=[choice], system_fingerprint=fingerprint)
        return b"data: " + _encode(response) + b"\n\n"

    frames: list[bytes] = []
    for number, step in enumerate(_steps([replay.pieces(cut) for cut in cuts])):
        if number:
            yield b"".join(frames)
            frames = []
        for i, piece, last in step:
            if piece is not None:
                frames.append(frame(CompletionChoice(text=piece, index=i, finish_reason=None)))
            if last:
                frames.append(frame(CompletionChoice(text="", index=i, finish_reason=cuts[i].finish_reason)))  # type: ignore[arg-type]
    if include_usage:
        last_chunk = Completion(
            id=id, created=created, model=model, choices=[], usage=usage(prompt_tokens, cuts), system_fingerprint=fingerprint
        )
        frames.append(b"data: " + _encode(last_chunk) + b"\n\n")
    frames.append(DONE)
    yield b"".join(frames)
