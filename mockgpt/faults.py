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

from mockgpt import render
from mockgpt.errors import BadRequest
from mockgpt.shared import State

__all__ = ["OK", "Fault", "Faults", "error", "parse"]

FAULT, KEY, DELAY, RETRY_AFTER = "x-mockgpt-fault", "x-mockgpt-fault-key", "x-mockgpt-delay-ms", "x-mockgpt-retry-after-ms"


class Fault(NamedTuple):
    """What happens to one request: ``ok``, ``status`` (``value`` the status), ``disconnect`` or ``stall``
    (``value`` content chunks sent first)."""

    kind: str
    value: int = 0


OK = Fault("ok")

# What the real API sends with each status.
_BODIES: Mapping[int, tuple[str, str, str | None]] = {
    400: ("We could not parse the JSON body of your request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "cf_bad_gateway", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "cf_gateway_timeout", None),
}


def error(status: int) -> bytes:
    """The error body the real API sends with ``status``."""
    message, type, code = _BODIES.get(status) or (
        HTTPStatus(status).phrase + ".", "server_error" if status >= 500 else "invalid_request_error", None
    )
    return render.error_body(message, type, None, code)


def parse(plan: str) -> list[Fault]:
    """The steps of an ``x-mockgpt-fault`` header; ``BadRequest`` naming the header if one is not a step."""
    return [_step(step.strip().lower()) for step in plan.split(",")]


def _step(step: str) -> Fault:
    kind, _, count = step.partition(":")
    if step == "ok":
        return OK
    if step.isdigit() and 400 <= int(step) <= 599:
        return Fault("status", int(step))
    if kind in ("disconnect-after", "stall-after") and count.isdigit():
        return Fault(kind.removesuffix("-after"), int(count))
    raise BadRequest(
        f"Invalid {FAULT} step {step!r}: expected a status from 400 to 599, 'ok', 'disconnect-after:N' or 'stall-after:N'.",
        param=FAULT,
    )


class Faults:
    """Decides each request's fault: from its headers, else at random."""

    def __init__(self, rate: float = 0.0, statuses: Sequence[int] = (500,), seed: int | None = None) -> None:
        self.rate = rate
        self.statuses = list(statuses)
        self._random = random.Random(seed)

    async def choose(self, headers: Mapping[str, str], state: State) -> Fault:
        plan = headers.get(FAULT)
        if plan is not None:
            steps = parse(plan)
            key = headers.get(KEY)
            number = 0 if key is None else await state.fault_step(key)
            return steps[number] if number < len(steps) else OK
        if self.rate and self._random.random() < self.rate:
            return Fault("status", self._random.choice(self.statuses))
        return OK

