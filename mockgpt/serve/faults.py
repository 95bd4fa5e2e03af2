"""Faults on purpose: failed requests and broken streams, for testing a client's retries and timeouts.

By header, one request at a time:

- ``x-mockgpt-fault: 503`` fails the request with that status and the error body the real API sends;
- ``x-mockgpt-fault: 500,500,ok`` with ``x-mockgpt-fault-key: K``: the n-th request carrying key K takes
  the n-th step, and every request after the last step is answered (keys are counted server-wide);
- ``disconnect-after:N`` closes the connection after N content chunks of a stream (a whole answer: after
  its headers); ``stall-after:N`` sends nothing more after N content chunks and keeps the connection open;
- ``x-mockgpt-delay-ms: MS`` starts the answer MS later;
- ``x-mockgpt-retry-after-ms: MS`` adds ``retry-after-ms`` and ``retry-after`` to a fault's error.

At random: ``--fault-rate P`` of the requests fail with a status drawn from ``--fault-status``, from a
generator seeded by ``--seed``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import NamedTuple

from xxhash import xxh3_128_hexdigest

from mockgpt.api import chat_render
from mockgpt.errors import BadRequest
from mockgpt.serve.state import State

__all__ = ["OK", "Fault", "Faults", "error", "message", "parse"]

FAULT, KEY, DELAY, RETRY_AFTER = "x-mockgpt-fault", "x-mockgpt-fault-key", "x-mockgpt-delay-ms", "x-mockgpt-retry-after-ms"


class Fault(NamedTuple):
    """What happens to one request: ``ok``, ``status`` (``value`` the status), ``disconnect`` or ``stall``
    (``value`` content chunks sent first)."""

    kind: str
    value: int = 0


OK = Fault("ok")

# What the real API sends with each status. Its Cloudflare edge words 502 and 524 itself, with the status as
# an integer ``code``: the OpenAPI spec's error has a string there, but clients meet these bodies as they are.
_BODIES: Mapping[int, tuple[str, str, str | int | None]] = {
    400: ("We could not parse the JSON body of your request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "cf_bad_gateway", 502),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    524: ("Gateway timeout.", "cf_gateway_timeout", 524),
}


def error(status: int, model: str | None = None) -> bytes:
    """The error body the real API sends with ``status`` (from 400 to 599), for a request naming ``model``."""
    if status == 404 and model is not None:
        return chat_render.error_body(message(status, model), "invalid_request_error", None, "model_not_found")
    words, type, code = _BODIES.get(status) or (_phrase(status), "server_error" if status >= 500 else "invalid_request_error", None)
    return chat_render.error_body(words, type, None, code)


def message(status: int, model: str | None = None) -> str:
    """The words of the real API's error with ``status``, for a request naming ``model``."""
    if status == 404 and model is not None:
        return f"The model `{model}` does not exist or you do not have access to it."
    return _BODIES[status][0] if status in _BODIES else _phrase(status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase + "."
    except ValueError:
        return f"Error {status}."


def parse(plan: str) -> list[Fault]:
    """The steps of an ``x-mockgpt-fault`` header; ``BadRequest`` naming the header if one is not a step."""
    return [_step(step.strip().lower()) for step in plan.split(",")]


def _step(step: str) -> Fault:
    kind, _, count = step.partition(":")
    if step == "ok":
        return OK
    if _number(step) and 400 <= int(step) <= 599:
        return Fault("status", int(step))
    if kind in ("disconnect-after", "stall-after") and _number(count):
        return Fault(kind.removesuffix("-after"), int(count))
    raise BadRequest(
        f"Invalid {FAULT} step {step!r}: expected a status from 400 to 599, 'ok', 'disconnect-after:N' or 'stall-after:N'.",
        param=FAULT,
    )


def _number(text: str) -> bool:
    """Whether ``text`` is a whole number in ASCII digits (``str.isdigit`` also takes "²")."""
    return text.isascii() and text.isdigit()


class Faults:
    """Decides each request's fault: from its headers, else at random."""

    def __init__(self, rate: float = 0.0, statuses: Sequence[int] = (500,), seed: int | None = None) -> None:
        self.rate = rate
        self.statuses = list(statuses)
        self._random = random.Random(seed)

    async def choose(self, plan: list[Fault] | None, key: str | None, state: State) -> Fault:
        """The fault of a request whose ``x-mockgpt-fault`` header gave ``plan`` (None without one), and
        whose ``x-mockgpt-fault-key`` gave ``key``; at random without a plan."""
        if plan is not None:
            # Counted by a digest of the key: however long the keys clients send, each costs the state 32 bytes.
            number = 0 if key is None else await state.fault_step(xxh3_128_hexdigest(key.encode("latin-1")))
            return plan[number] if number < len(plan) else OK
        if self.rate and self._random.random() < self.rate:
            return Fault("status", self._random.choice(self.statuses))
        return OK
