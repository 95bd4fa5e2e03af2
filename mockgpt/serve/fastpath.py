"""The fast path: non-streamed chat completion and Responses API hits, the requests a load test sends most,
answered in front of the Litestar app with the same code its route handlers use (decode, look up,
render), and none of its per-request machinery. Anything else goes on untouched: to the traffic layer if
it asks for faults or timing of its own, else to the app, which words every error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec

from mockgpt.api.chat import ChatCompletionRequest
from mockgpt.api.responses import CreateResponse
from mockgpt.serve.asgi import JSON_TYPE, ASGIApp, Receive, Scope, Send, admissible, read_body, replayed
from mockgpt.serve.service import Reply, Service

__all__ = ["FastPath"]


class FastPath:
    """Answers non-streamed chat completion and Responses API hits itself; passes completion requests that
    carry an ``x-mockgpt-`` header to ``traffic``, and everything else to ``app``."""

    answered = frozenset(
        {"/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/v1/responses", "/responses"}
    )

    def __init__(self, app: ASGIApp, service: Service, traffic: ASGIApp) -> None:
        self.app = app
        self.service = service
        self.traffic = traffic
        chat, responses = _hit(ChatCompletionRequest, service.chat), _hit(CreateResponse, service.responses)
        self._hits = {
            "/v1/chat/completions": chat, "/chat/completions": chat, "/v1/responses": responses, "/responses": responses
        }
        api_key = service.settings.api_key
        self._authorization = None if api_key is None else f"Bearer {api_key}".encode()
        self._max_body = service.settings.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.answered:
            await self.app(scope, receive, send)
            return
        admitted, asked = admissible(scope, self._authorization, self._max_body)
        if admitted and asked:
            await self.traffic(scope, receive, send)
            return
        hit = self._hits.get(scope["path"]) if admitted else None
        if hit is None:
            await self.app(scope, receive, send)
            return
        body, more = await read_body(receive, self._max_body)
        reply = hit(body) if len(body) <= self._max_body else None
        if reply is None:
            await self.app(scope, replayed(body, receive, more), send)
            return
        headers = [JSON_TYPE, (b"content-length", str(len(reply.body)).encode()), *reply.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})


class _Streamable(Protocol):
    stream: bool | None


R = TypeVar("R", bound=_Streamable)


def _hit(request_type: type[R], answer: Callable[[R], Reply]) -> Callable[[bytes], Reply | None]:
    """What answers a body of ``request_type``: the reply to a non-streamed hit; None for anything else,
    which Litestar then answers."""
    decode = msgspec.json.Decoder(request_type).decode

    def hit(body: bytes) -> Reply | None:
        try:
            request = decode(body)
            return None if request.stream else answer(request)
        except Exception:
            return None

    return hit
