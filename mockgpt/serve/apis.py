"""The wire APIs a server answers, by route: how each request is read and answered, and how each API
words what the layers in front of the app send themselves (errors, request ids, rate-limit headers).

Replay, pacing, limits and faults are shared; an API differs from another only by a row here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from mockgpt.api import chat_render, messages_render
from mockgpt.api.chat import ChatCompletionRequest, CompletionRequest
from mockgpt.api.embeddings import EmbeddingRequest
from mockgpt.api.messages import CreateMessage
from mockgpt.api.responses import CreateResponse
from mockgpt.errors import APIError
from mockgpt.serve import faults
from mockgpt.serve.state import Verdict

__all__ = ["ANTHROPIC", "APIS", "OPENAI", "Api", "Wire", "duration", "rate_headers", "requests_spent", "wire_of"]

Headers = list[tuple[bytes, bytes]]


class Wire(NamedTuple):
    """How an API words errors and limits: the error body of (status, message, OpenAI error type, param,
    code); the header of the request id; the rate-limit headers' names (``{field}`` limit, remaining or
    reset; ``{kind}`` requests or tokens) and how they write a reset; a fault's body, of (status, model);
    and the status of an overloaded server (None: ``--overload-status``)."""

    error: Callable[[int, str, str, str | None, str | int | None], bytes]
    request_id: bytes
    rate_header: str
    reset: Callable[[float], str]
    fault: Callable[[int, str | None], bytes]
    overload_status: int | None

    def api_error(self, error: APIError) -> bytes:
        return self.error(error.status_code, error.message, error.type, error.param, error.code)


def duration(seconds: float) -> str:
    """A duration as the OpenAI API's rate-limit headers write it: ``20ms``, ``1s``, ``6m0s``."""
    milliseconds = math.ceil(seconds * 1000)
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    minutes, rest = divmod(milliseconds, 60_000)
    rest_text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{rest_text}s" if minutes else f"{rest_text}s"


def _moment(seconds: float) -> str:
    """The time ``seconds`` from now, as the Anthropic API's rate-limit headers write it: RFC 3339, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + math.ceil(seconds)))


def _anthropic_fault(status: int, model: str | None) -> bytes:
    return messages_render.error_body(status, "Overloaded" if status == 529 else faults.message(status, model))


OPENAI = Wire(
    lambda status, message, type, param, code: chat_render.error_body(message, type, param, code),
    b"x-request-id", "x-ratelimit-{field}-{kind}", duration, faults.error, None,
)
ANTHROPIC = Wire(
    lambda status, message, *_: messages_render.error_body(status, message),
    b"request-id", "anthropic-ratelimit-{kind}-{field}", _moment, _anthropic_fault, 529,
)


def rate_headers(wire: Wire, verdict: Verdict) -> Headers:
    """The rate-limit headers of ``verdict``, for each budget that has a limit."""
    headers = []
    for kind, limit, remaining, reset in [
        ("requests", verdict.limit_requests, verdict.remaining_requests, verdict.reset_requests),
        ("tokens", verdict.limit_tokens, verdict.remaining_tokens, verdict.reset_tokens),
    ]:
        if limit is not None:
            headers += [
                (_name(wire, "limit", kind), b"%d" % limit),
                (_name(wire, "remaining", kind), b"%d" % (remaining or 0)),
                (_name(wire, "reset", kind), wire.reset(reset or 0.0).encode()),
            ]
    return headers


def _name(wire: Wire, field: str, kind: str) -> bytes:
    return wire.rate_header.format(field=field, kind=kind).encode()


def requests_spent(wire: Wire, headers: Headers, rpm: int | None, wait_ms: float) -> Headers:
    """``headers`` with the requests budget reported empty until ``wait_ms`` from now, first, as a 429 of
    the rate limiter reports it; the limit is reported only if there is one (``--rpm``)."""
    names = [_name(wire, field, "requests") for field in ("limit", "remaining", "reset")]
    spent = [] if rpm is None else [(names[0], b"%d" % rpm)]
    spent += [(names[1], b"0"), (names[2], wire.reset(wait_ms / 1000).encode())]
    return [*spent, *(header for header in headers if header[0] not in names)]


class Api(NamedTuple):
    """A route that answers from the index: its name (the path without ``/v1``), its request, the
    ``Service`` method that answers it, its API's wording, and the ``Service`` method that frames its
    prompt for the prompt cache (None: not cached)."""

    route: str
    request: type[msgspec.Struct]
    answer: str
    wire: Wire
    prompt: str | None = None

    def decoder(self) -> Callable[[bytes], Any]:
        return msgspec.json.Decoder(self.request).decode


_APIS = [
    Api("/chat/completions", ChatCompletionRequest, "chat", OPENAI, "chat_prompt"),
    Api("/completions", CompletionRequest, "completion", OPENAI),
    Api("/responses", CreateResponse, "responses", OPENAI, "responses_prompt"),
    Api("/messages", CreateMessage, "messages", ANTHROPIC),
    Api("/embeddings", EmbeddingRequest, "embeddings", OPENAI),
]
# Each served with and without /v1.
APIS = {prefix + api.route: api for api in _APIS for prefix in ("/v1", "")}
_ANTHROPIC_PATHS = frozenset({"/v1/messages", "/messages", "/v1/messages/count_tokens", "/messages/count_tokens"})


def wire_of(path: str) -> Wire:
    """The wording of the API a request path belongs to."""
    return ANTHROPIC if path in _ANTHROPIC_PATHS else OPENAI
