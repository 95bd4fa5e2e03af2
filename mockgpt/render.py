"""Responses as bytes: JSON bodies, server-sent event frames, and the one OpenAI error body."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain, repeat

import msgspec

from mockgpt import replay
from mockgpt.errors import APIError
from mockgpt.records import Answer
from mockgpt.schema import (
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
    ResponseMessage,
    Usage,
)

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

_encode = msgspec.json.Encoder().encode


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> bytes:
    """The body of every error response: ``{"error": {"message", "type", "param", "code"}}``."""
    return _encode(ErrorBody(ErrorDetail(message=message, type=type, param=param, code=code)))


def error(exception: APIError) -> bytes:
    return error_body(exception.message, exception.type, exception.param, exception.code)


def usage(prompt_tokens: int, cuts: Sequence[replay.Cut]) -> Usage:
    completion = sum(cut.completion_tokens for cut in cuts)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


def _template(response: msgspec.Struct) -> bytes:
    """``response`` encoded with ``%`` placeholders in its ``Raw`` fields: the schema's shape, to fill fast."""
    return _encode(response)


_D, _S, _QS = msgspec.Raw(b"%d"), msgspec.Raw(b"%s"), msgspec.Raw(b'"%s"')
_USAGE = _template(Usage(prompt_tokens=_D, completion_tokens=_D, total_tokens=_D))  # type: ignore[arg-type]
_CHAT_CHOICE = _template(ChatChoice(index=_D, message=ResponseMessage(content=_S), finish_reason=_QS))  # type: ignore[arg-type]
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
_TEXT = _template(Completion(id=_QS, created=_D, model=_S, choices=[_S], usage=_S, system_fingerprint=_QS))  # type: ignore[arg-type, list-item]


def _usage(prompt_tokens: int, cuts: Sequence[replay.Cut]) -> bytes:
    completion = sum([cut.completion_tokens for cut in cuts])
    return _USAGE % (prompt_tokens, completion, prompt_tokens + completion)


def chat_completion(id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut]) -> bytes:
    choices = b",".join([_CHAT_CHOICE % (i, cut.content, cut.finish_reason.encode()) for i, cut in enumerate(cuts)])
    usage = _usage(cuts[0].answer.prompt_tokens, cuts)
    return _CHAT % (id.encode(), created, _encode(model), choices, usage, fingerprint.encode())


def chat_completion_whole(id: str, created: int, model: str, fingerprint: str, answer: Answer) -> bytes:
    """``chat_completion`` of one whole answer, the common case, in one step."""
    prompt, completion = answer.prompt_tokens, answer.completion_tokens
    return _CHAT_WHOLE % (
        id.encode(), created, _encode(model), answer.content, prompt, completion, prompt + completion, fingerprint.encode()
    )


def _in_token_order(cuts: Sequence[replay.Cut]) -> Iterator[tuple[int, str | None]]:
    """(choice, piece) as a server generating the choices together sends them: every choice's first
    token, then every choice's second, ...; a choice's piece is None once it has no more."""
    if len(cuts) == 1:
        return zip(repeat(0), chain(replay.pieces(cuts[0]), (None,)))
    return _round_robin(cuts)


def _round_robin(cuts: Sequence[replay.Cut]) -> Iterator[tuple[int, str | None]]:
    going = [(i, replay.pieces(cut)) for i, cut in enumerate(cuts)]
    while going:
        still = []
        for i, pieces in going:
            piece = next(pieces, None)
            yield i, piece
            if piece is not None:
                still.append((i, pieces))
        going = still


def chat_chunks(
    id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], include_usage: bool
) -> Iterator[bytes]:
    """The frames of a streamed chat completion, ``data: [DONE]`` last."""
    chunk = ChatCompletionChunkWithUsage if include_usage else ChatCompletionChunk

    def frame(choices: list[ChunkChoice]) -> bytes:
        response = chunk(id=id, created=created, model=model, choices=choices, system_fingerprint=fingerprint)
        return b"data: " + _encode(response) + b"\n\n"

    for i in range(len(cuts)):
        yield frame([ChunkChoice(index=i, delta=FirstDelta())])
    for i, piece in _in_token_order(cuts):
        if piece is None:
            yield frame([ChunkChoice(index=i, delta=Delta(), finish_reason=cuts[i].finish_reason)])  # type: ignore[arg-type]
        else:
            yield frame([ChunkChoice(index=i, delta=Delta(content=piece))])
    if include_usage:
        last = ChatCompletionChunkWithUsage(
            id=id, created=created, model=model, choices=[], usage=usage(cuts[0].answer.prompt_tokens, cuts),
            system_fingerprint=fingerprint,
        )
        yield b"data: " + _encode(last) + b"\n\n"
    yield DONE


def completion(id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], prompt_tokens: int) -> bytes:
    choices = b",".join([_TEXT_CHOICE % (cut.content, i, cut.finish_reason.encode()) for i, cut in enumerate(cuts)])
    return _TEXT % (id.encode(), created, _encode(model), choices, fingerprint.encode(), _usage(prompt_tokens, cuts))


def completion_chunks(
    id: str, created: int, model: str, fingerprint: str, cuts: Sequence[replay.Cut], prompt_tokens: int, include_usage: bool
) -> Iterator[bytes]:
    """The frames of a streamed legacy completion, ``data: [DONE]`` last."""
    chunk = Completion if include_usage else CompletionChunk

    def frame(choice: CompletionChoice) -> bytes:
        response = chunk(id=id, created=created, model=model, choices=[choice], system_fingerprint=fingerprint)
        return b"data: " + _encode(response) + b"\n\n"

    for i, piece in _in_token_order(cuts):
        if piece is None:
            yield frame(CompletionChoice(text="", index=i, finish_reason=cuts[i].finish_reason))  # type: ignore[arg-type]
        else:
            yield frame(CompletionChoice(text=piece, index=i, finish_reason=None))
    if include_usage:
        last = Completion(
            id=id, created=created, model=model, choices=[], usage=usage(prompt_tokens, cuts), system_fingerprint=fingerprint
        )
        yield b"data: " + _encode(last) + b"\n\n"
    yield DONE
