"""The fast path: non-streamed chat completion, Responses API and Messages API requests, the ones a load test sends most,
answered in front of the Litestar app with the same code its route handlers use (decode, look up,
render), and none of its per-request machinery: a hit, and a valid request that the service turns down
(a miss, say) with the error the app would send. Anything else goes on untouched: to the traffic layer if
it asks for faults or timing of its own, else to the app, which words every other error; with
``--upstream``, misses go on too, to be recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from mockgpt.errors import APIError
from mockgpt.serve.apis import APIS, Api
from mockgpt.serve.asgi import (
    JSON_TYPE, MAX_HEADERS, ASGIApp, Receive, Scope, Send, admissible, header_bytes, read_body, replayed,
)
from mockgpt.serve.service import Reply, Service, send_error

__all__ = ["FastPath"]


class FastPath:
    """Answers non-streamed chat completion, Responses API and Messages API hits and embeddings itself;
    passes requests of these routes that carry an ``x-mockgpt-`` header to ``traffic``, and everything
    else to ``app``."""

    answered = frozenset(APIS)
    # Legacy completions are left to the app.
    _HIT_ROUTES = frozenset({"/chat/completions", "/responses", "/messages", "/embeddings"})

    def __init__(self, app: ASGIApp, service: Service, traffic: ASGIApp) -> None:
        self.app = app
        self.service = service
        self.traffic = traffic
        self._hits = {
            path: (_hit(api.request, getattr(service, api.answer)), api) for path, api in APIS.items() if api.route in self._HIT_ROUTES
        }
        api_key = service.settings.api_key
        self._authorization = None if api_key is None else f"Bearer {api_key}".encode()
        self._max_body = service.settings.max_body
        # A recorder behind this layer answers misses from its upstream.
        self._errors_answered = service.settings.upstream is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.answered:
            await self.app(scope, receive, send)
            return
        admitted, asked = admissible(scope, self._authorization, self._max_body)
        if admitted and asked:
            await self.traffic(scope, receive, send)
            return
        found: _Hit | None = self._hits.get(scope["path"]) if admitted else None
        if found is None:
            await self.app(scope, receive, send)
            return
        hit, api = found
        body, more = await read_body(receive, self._max_body)
        reply = hit(body) if len(body) <= self._max_body else None
        if isinstance(reply, APIError) and self._errors_answered and header_bytes(scope) <= MAX_HEADERS:
            await send_error(send, reply.status_code, api.wire.api_error(reply), [], api.wire.request_id)
            return
        if not isinstance(reply, Reply):
            await self.app(scope, replayed(body, receive, more), send)
            return
        headers = [JSON_TYPE, (b"content-length", str(len(reply.body)).encode()), *reply.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


_Hit = tuple[Callable[[bytes], Reply | APIError | None], Api]


def _hit(request_type: type[Any], answer: Callable[[Any], Reply]) -> Callable[[bytes], Reply | APIError | None]:
    """What answers a body of ``request_type``: the reply to a non-streamed hit, or the error the service
    turned it down with; None for anything else, which Litestar then answers."""
    decode = msgspec.json.Decoder(request_type).decode

    def hit(body: bytes) -> Reply | APIError | None:
        try:
            request = decode(body)
            return None if request.stream else answer(request)
        except APIError as error:
            return error
        except Exception:
            return None

    return hit
