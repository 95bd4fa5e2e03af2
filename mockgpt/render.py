"""Responses as bytes: JSON bodies, server-sent event frames, and the one OpenAI error body."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec

from mockgpt import replay
from mockgpt.errors import APIError
from mockgpt.schema import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionChunkWithUsage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    ErrorBody,
    ErrorDetail,
    ResponseMessage,
    Usage,
)

__all__ = ["DONE", "chat_chunks", "chat_completion", "completion", "completion_chunks", "error", "error_body"]

DONE = b"data: [DONE]\n\n"

_encode = msgspec.json.Encoder().encode


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    """The body of every error response: ``{"error": {"message", "type", "param", "code"}}``."""
    return _encode(ErrorBody(ErrorDetail(message=message, type=type, param=param, code=code)))


def error(exception: APIError) -> bytes:
    return error_body(exception.message, exception.type, exception.param, exception.code)


def usage(cuts: Sequence[replay.Cut]) -> Usage:
    prompt = cuts[0].answer.prompt_tokens
    completion = sum(cut.completion_tokens for cut in cuts)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def chat_completion(id: str, created: int, model: str, cuts: Sequence[replay.Cut]) -> bytes:
    choices = [
        ChatChoice(index=i, message=ResponseMessage(content=cut.text), finish_reason=cut.finish_reason)  # type: ignore[arg-type]
        for i, cut in enumerate(cuts)
    ]
    return _encode(ChatCompletion(id=id, created=created, model=model, choices=choices, usage=usage(cuts)))


def chat_chunks(id: str, created: int, model: str, cuts: Sequence[replay.Cut], include_usage: bool) -> Iterator[bytes]:
    """The frames of a streamed chat completion, ``data: [DONE]`` last."""
    chunk = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk

    def frame(choices: list[ChunkChoice]) -> bytes:
        return b"data: " + _encode(chunk(id=id, created=created, model=model, choices=choices)) + b"\n\n"

    for i, cut in enumerate(cuts):
        yield frame([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
        for piece in replay.pieces(cut):
            yield frame([ChunkChoice(index=i, delta=Delta(content=piece))])
        yield frame([ChunkChoice(index=i, delta=Delta(), finish_reason=cut.finish_reason)])  # type: ignore[arg-type]
    if include_usage:
        last = ChatCompletionChunkWithUsage(id=id, created=created, model=model, choices=[], usage=usage(cuts))
        yield b"data: " + _encode(last) + b"\n\n"
    yield DONE


def completion(id: str, created: int, model: str, cuts: Sequence[replay.Cut]) -> bytes:
    choices = [CompletionChoice(text=cut.text, index=i, finish_reason=cut.finish_reason) for i, cut in enumerate(cuts)]  # type: ignore[arg-type]
    return _encode(Completion(id=id, created=created, model=model, choices=choices, usage=usage(cuts)))


def completion_chunks(id: str, created: int, model: str, cuts: Sequence[replay.Cut], include_usage: bool) -> Iterator[bytes]:
    """The frames of a streamed legacy completion, ``data: [DONE]`` last."""

    def frame(choice: CompletionChoice) -> bytes:
        return b"data: " + _encode(Completion(id=id, created=created, model=model, choices=[choice])) + b"\n\n"

    for i, cut in enumerate(cuts):
        for piece in replay.pieces(cut):
            yield frame(CompletionChoice(text=piece, index=i, finish_reason=None))
        yield frame(CompletionChoice(text="", index=i, finish_reason=cut.finish_reason))  # type: ignore[arg-type]
    if include_usage:
        yield b"data: " + _encode(Completion(id=id, created=created, model=model, choices=[], usage=usage(cuts))) + b"\n\n"
    yield DONE
