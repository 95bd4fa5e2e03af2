"""The Litestar app that serves the OpenAI API, and the Anthropic Messages API, from an index.

``create_app`` is a factory: uvicorn workers call it with no arguments and it reads its settings from
``MOCKGPT_*`` environment variables. Every route is served with and without the ``/v1`` prefix.

A ``POST /v1/chat/completions``, ``/v1/responses`` or ``/v1/messages`` that is not streamed, the request
a load test sends most, is answered by ``FastPath`` (fastpath.py) in front of the Litestar app when it is
a valid request: a hit, or a miss with this app's own error. Any other request goes to Litestar untouched.
Errors leave in the shape of their route's API (``apis.wire_of``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException, ValidationException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.response import Stream
from litestar.static_files import create_static_files_router

from mockgpt.api import messages_render
from mockgpt.api.chat import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Conversations,
    ErrorBody,
    Health,
    Model,
    ModelList,
)
from mockgpt.api.embeddings import EmbeddingList, EmbeddingRequest
from mockgpt.api.messages import CountTokens, CreateMessage
from mockgpt.api.responses import CreateResponse
from mockgpt.api.responses_render import Response as ResponseObject
from mockgpt.errors import (
    APIError,
    AuthenticationFailed,
    BadRequest,
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from mockgpt.index.reader import Index
from mockgpt.serve.apis import ANTHROPIC, wire_of
from mockgpt.serve.asgi import IN_A_ROW, MAX_HEADERS, ASGIApp, answering_head, header_bytes
from mockgpt.serve.coordinator import Remote
from mockgpt.serve.fastpath import FastPath
from mockgpt.serve.metrics import Metrics
from mockgpt.serve.service import MODEL_CREATED, Reply, Service, Settings, random_id
from mockgpt.serve.state import Local, State
from mockgpt.serve.traffic import Traffic

__all__ = ["Settings", "Service", "create_app"]

logger = logging.getLogger("mockgpt")

MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4-turbo", "gpt-3.5-turbo", "o3-mini", "mockgpt",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
]
# What GET /v1/models lists to a client of the Anthropic API (one that sends ``anthropic-version``).
CLAUDE_MODELS = {
    "claude-opus-4-1": "Claude Opus 4.1", "claude-sonnet-4-5": "Claude Sonnet 4.5", "claude-haiku-4-5": "Claude Haiku 4.5",
    "mockgpt": "mockgpt",
}
_CREATED_AT = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MODEL_CREATED))
_JSON = "application/json"


# Routes


def _api_key_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    service: Service = connection.app.state.service
    key = service.settings.api_key
    if key is None:
        return
    authorization = connection.headers.get("authorization", "")
    given_key = connection.headers.get("x-api-key")
    if given_key == key or authorization == f"Bearer {key}":
        return
    if wire_of(connection.scope["path"]) is ANTHROPIC:
        raise AuthenticationFailed("x-api-key header is required" if given_key is None and not authorization else "invalid x-api-key")
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization header"
            " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="missing_api_key",
        )
    given = authorization.removeprefix("Bearer ")
    shown = given[:3] + "*" * max(len(given) - 7, 0) + given[-4:] if len(given) > 7 else "*" * len(given)
    raise AuthenticationFailed(f"Incorrect API key provided: {shown}.")


def _headers_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if header_bytes(connection.scope) > MAX_HEADERS:  # type: ignore[arg-type]
        raise HeadersTooLarge(f"Request header fields too large: the limit is {MAX_HEADERS} bytes.")


def _reply(reply: Reply) -> Response[bytes] | Stream:
    headers = {name.decode(): value.decode() for name, value in reply.headers}
    if reply.frames is None:
        return Response(reply.body, media_type=_JSON, headers=headers)
    frames = reply.frames

    async def stream() -> AsyncIterator[bytes]:
        for number, frame in enumerate(frames, 1):
            yield frame
            # Writing a frame rarely waits, so let the loop run now and then: other requests get their
            # turn, and Litestar's disconnect watcher can cancel a stream whose client has gone.
            if not number % IN_A_ROW:
                await asyncio.sleep(0)

    return Stream(stream(), media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


_ERRORS = {status: ResponseSpec(data_container=ErrorBody, description=description) for status, description in [
    (400, "Malformed JSON or an invalid request"),
    (401, "Missing or wrong API key, with --api-key"),
    (404, "No recorded conversation continues these messages"),
    (413, "Body over the size limit"),
]}


def _strict(request_type: type[msgspec.Struct], invalid: Callable[[str], BadRequest] | None = None) -> Any:
    """A before-request hook that decodes the body strictly, as the fast path and the real API do, and
    words a field's error with ``invalid`` (the OpenAI API's words by default).

    Litestar's own conversion of ``data`` would accept "2" for an integer; this runs first.
    """
    invalid = invalid or _invalid
    decode = msgspec.json.Decoder(request_type).decode

    async def check(request: Request[Any, Any, Any]) -> None:
        try:
            decode(await request.body())
        except msgspec.ValidationError as error:
            raise invalid(str(error)) from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise BadRequest(_NOT_JSON) from None
        except RecursionError:
            raise BadRequest("The JSON body of your request is nested too deeply.") from None

    return check


_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP"
    " library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def _invalid(message: str) -> BadRequest:
    """A ``BadRequest`` from a msgspec validation message, its JSON path as the param."""
    message, _, path = message.partition(" - at `$")
    param = path.rstrip("`").lstrip(".") or None
    if message.startswith("Object missing required field `"):
        param = message.split("`")[1] if param is None else f"{param}.{message.split('`')[1]}"
        return BadRequest(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    return BadRequest(f"Invalid value for '{param}': {message}." if param else f"Invalid request: {message}.", param=param)


def _anthropic_invalid(message: str) -> BadRequest:
    """A ``BadRequest`` from a msgspec validation message, worded as the Anthropic API words it:
    ``messages.0.content: Field required``."""
    message, _, path = message.partition(" - at `$")
    where = re.sub(r"\[(\d+)\]", r".\1", path.rstrip("`")).lstrip(".")
    if message.startswith("Object missing required field `"):
        name = message.split("`")[1]
        return BadRequest(f"{where}.{name}: Field required" if where else f"{name}: Field required")
    return BadRequest(f"{where}: {message}" if where else message)


@post(
    ["/chat/completions"],
    before_request=_strict(ChatCompletionRequest),
    summary="Create a chat completion",
    description="The recorded answer to these messages; `stream: true` sends it as server-sent events, one token a chunk.",
    responses={200: ResponseSpec(data_container=ChatCompletion, description="The recorded answer"), **_ERRORS},
    status_code=200,
)
async def chat_completions(data: ChatCompletionRequest, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return _reply(request.app.state.service.chat(data))


@post(
    ["/completions"],
    before_request=_strict(CompletionRequest),
    summary="Create a completion (legacy)",
    description="The prompt is looked up as one user message. Without `max_tokens` the whole recorded answer is returned.",
    responses={200: ResponseSpec(data_container=Completion, description="The recorded answer"), **_ERRORS},
    status_code=200,
)
async def completions(data: CompletionRequest, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return _reply(request.app.state.service.completion(data))


@post(
    ["/responses"],
    before_request=_strict(CreateResponse),
    summary="Create a model response",
    description=(
        "The recorded answer to this input, after the history of `previous_response_id`; `stream: true` sends"
        " it as server-sent events, one token an event."
    ),
    responses={
        200: ResponseSpec(data_container=ResponseObject, description="The recorded answer", generate_examples=False),
        **_ERRORS,
    },
    status_code=200,
)
async def create_response(data: CreateResponse, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return _reply(request.app.state.service.responses(data))


@post(
    ["/embeddings"],
    before_request=_strict(EmbeddingRequest),
    summary="Create embeddings",
    description=(
        "Deterministic unit vectors made from the words of each input: texts that share words and phrases lie"
        " closer than texts that share none. `usage` counts `cl100k_base` tokens."
    ),
    responses={200: ResponseSpec(data_container=EmbeddingList, description="One vector per input, in order"), **_ERRORS},
    status_code=200,
)
async def create_embeddings(data: EmbeddingRequest, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return _reply(request.app.state.service.embeddings(data))


@get(
    "/responses/{response_id:str}",
    summary="Retrieve a model response",
    description="A response again, read from its id: any worker serving the same index answers it.",
    responses={
        200: ResponseSpec(data_container=ResponseObject, description="The response", generate_examples=False),
        404: ResponseSpec(data_container=ErrorBody, description="No response of this index has this id"),
    },
)
async def retrieve_response(response_id: str, request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.service.retrieve(response_id), media_type=_JSON)


_ANTHROPIC_ERRORS = {
    status: ResponseSpec(data_container=messages_render.ErrorResponse, description=spec.description) for status, spec in _ERRORS.items()
}


@post(
    ["/messages"],
    before_request=_strict(CreateMessage, _anthropic_invalid),
    summary="Create a message (Anthropic Messages API)",
    description=(
        "The recorded answer to these messages, after the system prompt; `stream: true` sends it as the API's"
        " server-sent events, one token a `content_block_delta`."
    ),
    responses={
        200: ResponseSpec(data_container=messages_render.MessageObject, description="The recorded answer", generate_examples=False),
        **_ANTHROPIC_ERRORS,
    },
    status_code=200,
)
async def create_message(data: CreateMessage, request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    return _reply(request.app.state.service.messages(data))


class TokenCount(msgspec.Struct):
    input_tokens: int


@post(
    ["/messages/count_tokens"],
    before_request=_strict(CountTokens, _anthropic_invalid),
    summary="Count a message's tokens (Anthropic Messages API)",
    description="The o200k tokens of the messages and the system prompt, counted as a chat prompt of them.",
    responses={**_ANTHROPIC_ERRORS},
    status_code=200,
    # In a thread: the first count loads the tokenizer, which takes a second or two.
    sync_to_thread=True,
)
def count_tokens(data: CountTokens, request: Request[Any, Any, Any]) -> TokenCount:
    return TokenCount(request.app.state.service.count_tokens(data))


@get(
    "/models", summary="List models",
    description="The OpenAI API's list, or the Anthropic API's to a request with an `anthropic-version` header.",
    responses={200: ResponseSpec(data_container=ModelList, description="The models")},
)
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    if "anthropic-version" in request.headers:
        return Response(messages_render.models(CLAUDE_MODELS, _CREATED_AT), media_type=_JSON)
    return Response(msgspec.json.encode(ModelList(data=[_model(name) for name in MODELS])), media_type=_JSON)


@get(
    "/models/{model_id:str}", summary="Retrieve a model", description="Every model id is served: answers do not depend on it.",
    responses={200: ResponseSpec(data_container=Model, description="The model")},
)
async def retrieve_model(model_id: str, request: Request[Any, Any, Any]) -> Response[bytes]:
    if "anthropic-version" in request.headers:
        return Response(messages_render.model(model_id, CLAUDE_MODELS.get(model_id, model_id), _CREATED_AT), media_type=_JSON)
    return Response(msgspec.json.encode(_model(model_id)), media_type=_JSON)


def _model(name: str) -> Model:
    return Model(id=name, created=MODEL_CREATED, owned_by="mockgpt")


@get("/health", summary="The index being served")
async def health(request: Request[Any, Any, Any]) -> Health:
    index: Index = request.app.state.service.index
    header = index.header
    return Health(
        status="ok",
        index=index.path,
        format_version=header.format_version,
        conversations=Conversations(
            read=index.meta.stats.get("read", header.conversations), indexed=header.conversations,
            skipped=sum(index.meta.skipped.values()),
        ),
        answers=header.answers,
        keys=header.keys,
        sources=index.meta.sources,
        built_at=index.meta.built_at,
    )


# Errors: every one leaves in the shape of the API of its route (the OpenAI API's but for the Messages
# API's routes), from here.


def _error_response(request: Request[Any, Any, Any], status: int, message: str, type: str) -> Response[bytes]:
    wire = wire_of(request.url.path)
    body = wire.error(status, message, type, None, None)
    return Response(body, status_code=status, media_type=_JSON, headers={wire.request_id.decode(): "req_" + random_id()})


def _api_error(request: Request[Any, Any, Any], error: APIError) -> Response[bytes]:
    wire = wire_of(request.url.path)
    headers = {wire.request_id.decode(): "req_" + random_id()}
    return Response(wire.api_error(error), status_code=error.status_code, media_type=_JSON, headers=headers)


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[bytes]:
    where = f"({request.method} {request.url.path})"
    if isinstance(error, NotFoundException):
        return _api_error(request, NotFound(f"Invalid URL {where}"))
    if isinstance(error, MethodNotAllowedException):
        return _api_error(request, MethodNotAllowed(f"Invalid method for URL {where}"))
    if error.status_code == 413:
        limit = request.app.state.service.settings.max_body
        return _api_error(request, PayloadTooLarge(f"Request body too large: the limit is {limit} bytes.", code="request_too_large"))
    if isinstance(error, ValidationException) or error.status_code == 400:
        return _api_error(request, _bad_request(error))
    return _error_response(request, error.status_code, str(error.detail), "invalid_request_error")


def _bad_request(error: HTTPException) -> BadRequest:
    extra = error.extra if isinstance(error.extra, list) else []
    details = [item for item in extra if isinstance(item, dict) and item.get("message")]
    if not details:
        return BadRequest(_NOT_JSON)
    key = details[0].get("key")
    param = key if isinstance(key, str) and key else None
    return BadRequest(f"Invalid value for '{param}': {details[0]['message']}.", param=param)


def _server_error(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    logger.exception("unexpected error answering %s %s", request.method, request.url.path)
    return _error_response(request, 500, "The server had an error processing your request.", "server_error")


def _swagger() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        js_url="/static/swagger-ui/swagger-ui-bundle.js",
        css_url="/static/swagger-ui/swagger-ui.css",
        standalone_preset_js_url="/static/swagger-ui/swagger-ui-standalone-preset.js",
        path="/",
        favicon="<link rel='icon' type='image/png' href='/static/swagger-ui/favicon-32x32.png'>",
    )


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The ASGI app serving ``settings.index`` (settings from the environment if not given)."""
    from swagger_ui_bundle import swagger_ui_path

    settings = settings or Settings.from_env()
    service = Service(settings)
    api = [
        chat_completions, completions, create_response, retrieve_response, create_message, count_tokens, create_embeddings,
        list_models, retrieve_model
    ]
    app = Litestar(
        route_handlers=[
            Router("/v1", route_handlers=api, guards=[_api_key_guard]),
            Router("/", route_handlers=api, guards=[_api_key_guard]),
            health,
            create_static_files_router("/static/swagger-ui", directories=[Path(swagger_ui_path)], include_in_schema=False),
        ],
        state=_state(service),
        guards=[_headers_guard],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _server_error},
        request_max_body_size=settings.max_body,
        openapi_config=OpenAPIConfig(
            title="mockgpt",
            version="1",
            description="The OpenAI API, answered from recorded conversations.",
            path="/docs",
            render_plugins=[_swagger()],
        ),
        debug=False,
    )
    inner = answering_head(app)  # type: ignore[arg-type]
    if settings.upstream:
        from mockgpt.serve.upstream import Recorder

        # Misses go upstream: the layers before this one hand it what they would hand Litestar.
        inner = Recorder(inner, service)
    traffic = _traffic(inner, service)
    # Everything built so far lives as long as the process: keep the collector from walking it again and again.
    gc.freeze()
    return traffic if settings.busy else FastPath(inner, service, traffic)


def _traffic(app: ASGIApp, service: Service) -> Traffic:
    """The busy-server layer: its state shared with the other workers through the coordinator, if any, and
    its budgets and fault counters with other replicas through the Redis of ``--state``, if given."""
    settings = service.settings
    state: State = Remote(settings.coordinator) if settings.coordinator else Local(settings.limits)
    if settings.state:
        from mockgpt.serve.redis_state import Shared

        state = Shared(settings.state, settings.limits, state)
    metrics = Metrics(settings.served_model_name, settings.kv_cache_tokens, settings.prompt_cache) if settings.metrics else None
    return Traffic(app, service, state, metrics)


def _state(service: Service) -> Any:
    from litestar.datastructures import State

    return State({"service": service})
