"""Answers from the index, before HTTP: the settings a worker serves with, and what it replies to a request;
and the one way the layers in front of the app send an error themselves."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from random import getrandbits
from urllib.parse import quote

import msgspec
from xxhash import xxh3_128_hexdigest

from mockgpt.api import chat_render, embeddings, embeddings_render, messages_render, responses, responses_render
from mockgpt.api.chat import ChatCompletionRequest, CompletionRequest
from mockgpt.api.messages import CountTokens, CreateMessage, occurring, prompt
from mockgpt.api.responses import CreateResponse
from mockgpt.errors import NotFound
from mockgpt.index import replay, tokens, vectors
from mockgpt.index.canonical import Message, calls_of, text_of
from mockgpt.index.reader import Index
from mockgpt.index.records import Answer, Record
from mockgpt.serve.asgi import JSON_TYPE, Send, send_whole
from mockgpt.serve.pacing import Timing
from mockgpt.serve.state import Limits

__all__ = ["MODEL_CREATED", "Cached", "Reply", "Service", "Settings", "random_id", "send_error"]

MODEL_CREATED = 1_700_000_000


class Settings(msgspec.Struct, kw_only=True):
    """What ``mockgpt serve`` passes to each worker, through ``MOCKGPT_*`` environment variables.

    Each field is the variable of its name in capitals (``fault_status`` -> ``MOCKGPT_FAULT_STATUS``);
    an empty variable is the default, a list is comma-separated, a flag is ``1`` or ``true``.
    """

    index: str
    api_key: str | None = None
    max_body: int = 32 << 20
    deterministic: bool = False
    ignore_system: bool = False
    # "synthesize": a request the index does not hold gets a recorded answer drawn by its digest.
    misses: str = "404"
    # Pacing (pacing.py).
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    prefill_ms_per_1k: float = 0.0
    jitter: float = 0.0
    seed: int | None = None
    # Capacity and rate limits, for the server as a whole (state.py).
    max_concurrency: int | None = None
    # The factor the time to first token and between tokens reach with max_concurrency answers running
    # (pacing.py), and the workers they are shared out among (set by server.py).
    slowdown: float = 1.0
    workers: int = 1
    max_queue: int | None = None
    overload_status: int = 429
    rpm: int | None = None
    tpm: int | None = None
    # Faults at random (faults.py); by header they need no option.
    fault_rate: float = 0.0
    fault_status: list[int] = msgspec.field(default_factory=lambda: [429, 500, 503])
    metrics: bool = False
    # vLLM's metrics (vllm_metrics.py): the model_name label, and the KV cache the load is measured against.
    served_model_name: str = "mockgpt"
    kv_cache_tokens: int = 1 << 20
    # Prompt caching (prompt_cache.py), and the prompt prefixes it remembers.
    prompt_cache: bool = False
    prompt_cache_size: int = 65_536
    # Where rate-limit budgets and fault counters are shared with other replicas: a redis:// URL
    # (redis_state.py); None keeps them to this server.
    state: str | None = None
    # The Unix socket of the coordinator that keeps the shared state of several workers (set by server.py).
    coordinator: str | None = None
    # Recording misses (upstream.py): the base URL that answers them (OpenAI-compatible, and
    # Anthropic-compatible for Messages API misses), the OpenAI chat JSONL file they are appended to, and
    # the keys sent upstream.
    upstream: str | None = None
    record: str | None = None
    upstream_api_key: str | None = None
    # The key sent to an Anthropic-compatible upstream, as x-api-key, for Messages API misses.
    upstream_anthropic_api_key: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        if not env.get("MOCKGPT_INDEX"):
            raise RuntimeError("MOCKGPT_INDEX is not set; start the server with `mockgpt serve`")
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            value = env.get(f"MOCKGPT_{field.name.upper()}", "")
            if value:
                values[field.name] = value.split(",") if field.name == "fault_status" else value
        return msgspec.convert(values, cls, strict=False)

    def to_env(self) -> dict[str, str]:
        env = {}
        for name, value in msgspec.structs.asdict(self).items():
            if isinstance(value, list):
                value = ",".join(map(str, value))
            elif isinstance(value, bool):
                value = "1" if value else ""
            env[f"MOCKGPT_{name.upper()}"] = "" if value is None else str(value)
        return env

    @property
    def timing(self) -> Timing:
        return Timing(
            ttft_ms=self.ttft_ms, itl_ms=self.itl_ms, prefill_ms_per_1k=self.prefill_ms_per_1k, jitter=self.jitter, seed=self.seed
        )

    @property
    def limits(self) -> Limits:
        return Limits(
            max_concurrency=self.max_concurrency, max_queue=self.max_queue, rpm=self.rpm, tpm=self.tpm,
            prompt_prefixes=self.prompt_cache_size if self.prompt_cache else None,
        )

    @property
    def busy(self) -> bool:
        """Whether any option makes the server behave as a busy one: pacing, limits, random faults, metrics,
        prompt caching."""
        return bool(
            self.ttft_ms or self.itl_ms or self.prefill_ms_per_1k or self.max_concurrency or self.rpm or self.tpm
            or self.fault_rate or self.metrics or self.prompt_cache
        )


# How many of a prompt's tokens, given their number, the prompt cache holds (prompt_cache.py).
Cached = Callable[[int], int]


class Reply(msgspec.Struct, gc=False):
    """A rendered hit: a JSON body or SSE frames (one item per generation step), the headers that name the
    recorded turn, and its tokens."""

    # As ASGI sends them: lowercase names and values, in bytes.
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    frames: Iterator[bytes] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The most completion tokens the request allowed, over all its choices; None for no limit.
    max_tokens: int | None = None
    # The tokens of its longest choice: the steps a model takes to write them all, side by side.
    steps: int = 0
    # Prompt tokens found in the prompt cache, and the keys of the prompt's prefixes it then remembers.
    cached_tokens: int = 0
    prefixes: list[bytes] = []


class Service:
    """Answers decoded requests from the index: the part of the app that HTTP does not touch."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = Index(settings.index)
        synthesize = settings.misses == "synthesize"
        self.replayer = replay.Replayer(self.index, ignore_system=settings.ignore_system, synthesize=synthesize)
        self.fingerprint = self.index.fingerprint
        self.response_ids = responses.ResponseIds(self.index)
        self._embedder: tuple[tokens.EmbeddingTokenizer, vectors.Embedder] | None = None
        # Loaded on the first count_tokens request: no other request tokenizes.
        self._tokenizer: tokens.Tokenizer | None = None

    def chat(self, request: ChatCompletionRequest, cached: Cached | None = None) -> Reply:
        """A chat completion; ``cached`` tells how much of its prompt the prompt cache holds."""
        _, record, drawn, sent = self._looked_up(request.messages)
        if cached is None and self._whole_answer(request):
            answer = self.replayer.choose(record, 1, request.seed, sent)[0]
            request_id = random_id()
            id, created = "chatcmpl-" + request_id[:29], int(time.time())
            body = chat_render.chat_completion_whole(id, created, request.model, self.fingerprint, answer)
            tokens = answer.completion_tokens
            return Reply(_headers(answer, request_id, drawn=drawn), body, None, answer.prompt_tokens, tokens, None, tokens)
        max_tokens = request.max_completion_tokens or request.max_tokens
        answers = _lengthened(self.replayer.choose(record, request.n or 1, request.seed, sent), request, max_tokens)
        cuts = [replay.cut(answer, max_tokens, request.stop) for answer in answers]
        id, created, headers = self._identity("chatcmpl-", request, cuts, drawn=drawn)
        limit = max_tokens * len(cuts) if max_tokens else None
        prompt_tokens = cuts[0].answer.prompt_tokens
        hit = cached(prompt_tokens) if cached else 0
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            frames = chat_render.chat_chunks(id, created, request.model, self.fingerprint, cuts, include_usage, hit)
            return _reply(headers, cuts, prompt_tokens, limit, frames=frames, cached=hit)
        body = chat_render.chat_completion(id, created, request.model, self.fingerprint, cuts, hit)
        return _reply(headers, cuts, prompt_tokens, limit, body=body, cached=hit)

    def chat_prompt(self, request: ChatCompletionRequest) -> list[bytes]:
        """A chat request's prompt framed a message at a time, as the prompt cache keys it."""
        return self.replayer.framed(request.messages)

    def _looked_up(
        self, messages: list[Message], history: bytes = b"", sent: replay.Sent = replay.Sent()
    ) -> tuple[int, Record, int | None, int]:
        """The offset and record of request messages after ``history``, or with ``--misses synthesize`` a
        record drawn for them; the prompt tokens they hold beyond a drawn record's (None for a record of
        their own); and the prompt tokens they sent beyond the record's, to give ``choose``."""
        try:
            (offset, record), drawn = self.replayer.locate(messages, history, sent), None
        except replay.Unrecorded as miss:
            offset, record, drawn = self.replayer.stand_in(messages, miss)
        # The key left the request's system messages out, but its prompt holds them: count what was sent.
        extra = drawn if drawn is not None else self.replayer.system_tokens(messages) if self.settings.ignore_system else 0
        return offset, record, drawn, extra

    def _whole_answer(self, request: ChatCompletionRequest) -> bool:
        """Whether the reply is one whole answer, not streamed, with a random id: most requests. They take
        a shorter path, as what the server does per request is a large share of its time."""
        return (
            not request.stream and (request.n or 1) == 1 and request.max_tokens is None
            and request.max_completion_tokens is None and not request.stop and not self.settings.deterministic
            and request.min_tokens is None
        )

    def completion(self, request: CompletionRequest) -> Reply:
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        cuts = []
        prompt_tokens = 0
        drawn = None
        for number, prompt in enumerate(prompts):
            # A miss names the prompt, as the request does.
            field = "prompt" if isinstance(request.prompt, str) else f"prompt[{number}]"
            messages = [Message("user", prompt)]
            try:
                record, extra = self.replayer.find(messages, replay.Sent(field, "prompt", single=True)), 0
            except replay.Unrecorded as miss:
                _, record, extra = self.replayer.stand_in(messages, miss)
                drawn = extra
            answers = _lengthened(self.replayer.choose(record, request.n or 1, request.seed, extra), request, request.max_tokens)
            cuts += [replay.cut(answer, request.max_tokens, request.stop) for answer in answers]
            prompt_tokens += tokens.text_prompt_tokens(answers[0].prompt_tokens)
        id, created, headers = self._identity("cmpl-", request, cuts, drawn=drawn)
        limit = request.max_tokens * len(cuts) if request.max_tokens else None
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            frames = chat_render.completion_chunks(id, created, request.model, self.fingerprint, cuts, prompt_tokens, include_usage)
            return _reply(headers, cuts, prompt_tokens, limit, frames=frames)
        body = chat_render.completion(id, created, request.model, self.fingerprint, cuts, prompt_tokens)
        return _reply(headers, cuts, prompt_tokens, limit, body=body)

    def responses(self, request: CreateResponse, cached: Cached | None = None) -> Reply:
        """A Responses API hit: the answer to its input, after the history of its ``previous_response_id``;
        ``cached`` tells how much of its prompt the prompt cache holds."""
        prompt = responses.prompt(request, self.response_ids)
        offset, record, drawn, sent = self._looked_up(prompt.messages, prompt.framed_history, prompt.sent)
        cut = replay.cut(self.replayer.choose(record, 1, None, sent)[0], request.max_output_tokens, None)
        unique, created, headers = self._identity("", request, [cut], drawn=drawn)
        kept = cut.completion_tokens if cut.finish_reason == "length" else 0
        id = self.response_ids.make(responses.Served(offset, 0, kept, created, int(unique[:4], 16)))
        counts = cut.answer.prompt_tokens, cut.completion_tokens, request.max_output_tokens, cut.completion_tokens
        hit = cached(cut.answer.prompt_tokens) if cached else 0
        if request.stream:
            return Reply(headers, b"", responses_render.events(id, created, cut, request, hit), *counts, cached_tokens=hit)
        return Reply(headers, responses_render.response_body(id, created, cut, request, hit), None, *counts, cached_tokens=hit)

    def responses_prompt(self, request: CreateResponse) -> list[bytes]:
        """A Responses API request's prompt framed a message at a time, as the prompt cache keys it: the
        recorded prompt and answer of its ``previous_response_id`` first, if it has one."""
        asked = responses.prompt(request, self.response_ids)
        return [*asked.history, *self.replayer.framed(asked.messages)]

    def messages(self, request: CreateMessage) -> Reply:
        """An Anthropic Messages API hit: the answer to its messages, after its system prompt."""
        asked = prompt(request)
        _, record, drawn, sent = self._looked_up(asked.messages, sent=asked.sent)
        answer = self.replayer.choose(record, 1, None, sent)[0]
        # max_tokens is required: one the whole answer fits in cuts nothing, and need not be counted out.
        limit = None if request.max_tokens >= answer.completion_tokens else request.max_tokens
        stops = occurring(answer.text, request.stop_sequences) if request.stop_sequences else ()
        cut = replay.cut(answer, limit, stops)
        unique, _, headers = self._identity("", request, [cut], b"request-id", drawn)
        id = "msg_" + unique[:24]
        counts = answer.prompt_tokens, cut.completion_tokens, request.max_tokens, cut.completion_tokens
        if request.stream:
            return Reply(headers, b"", messages_render.events(id, request.model, cut, stops), *counts)
        return Reply(headers, messages_render.message_body(id, request.model, cut, stops), None, *counts)

    def count_tokens(self, request: CountTokens) -> int:
        """The prompt tokens of a Messages API request's messages, as a chat prompt of them counts: o200k
        tokens of each message's text and tool calls, and the framing of each."""
        if self._tokenizer is None:
            self._tokenizer = tokens.Tokenizer()
        count = self._tokenizer.count
        return tokens.prompt_tokens([
            count(text_of(message.content)) + sum(count(call.name) + count(call.arguments) for call in calls_of(message))
            for message in prompt(request).messages
        ])

    def embeddings(self, request: embeddings.EmbeddingRequest) -> Reply:
        """The vectors of the request's inputs, made from their tokens (vectors.py)."""
        if self._embedder is None:
            # Loaded by the first embeddings request, in a second or so: most servers never see one.
            tokenizer = tokens.EmbeddingTokenizer()
            self._embedder = tokenizer, vectors.Embedder(tokenizer.pieces)
        tokenizer, embedder = self._embedder
        inputs = embeddings.read(request, tokenizer)
        found = [embedder.embed(ids, inputs.size, inputs.dimensions) for ids in inputs.inputs]
        body = embeddings_render.embeddings_body(found, inputs.model, inputs.tokens, request.encoding_format == "base64")
        return Reply([(b"x-request-id", b"req_" + random_id().encode())], body, None, inputs.tokens)

    def retrieve(self, id: str) -> bytes:
        """The response object of a response id, as it was served (with the defaults for the request's
        settings, which the id does not hold); ``NotFound`` if it is not one of this index's."""
        found = self.response_ids.read(id)
        if found is None:
            raise NotFound(f"Response with id '{id}' not found.")
        served, record = found
        return responses_render.response_body(id, served.created, self.response_ids.cut(served, record), None)

    def _identity(
        self, prefix: str, request: msgspec.Struct, cuts: list[replay.Cut], request_id_header: bytes = b"x-request-id",
        drawn: int | None = None,
    ) -> tuple[str, int, list[tuple[bytes, bytes]]]:
        """The response's id, created time and headers; derived from request and answers if deterministic."""
        first = cuts[0].answer
        if self.settings.deterministic:
            seen = [(cut.answer.conversation_id, cut.answer.turn, cut.end) for cut in cuts]
            digest = xxh3_128_hexdigest(msgspec.msgpack.encode((request, seen)))
            id, created, request_id = digest[:29], MODEL_CREATED + int(digest[:6], 16), digest
        else:
            request_id = random_id()
            id, created = request_id[:29], int(time.time())
        return prefix + id, created, _headers(first, request_id, request_id_header, drawn)


def _lengthened(answers: list[Answer], request: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> list[Answer]:
    """The answers gone on past their recorded ends as far as ``ignore_eos`` and ``min_tokens`` ask: with
    ``ignore_eos``, past ``max_tokens``, so that the limit is what ends them."""
    least = max(request.min_tokens or 0, max_tokens + 1 if request.ignore_eos and max_tokens else 0)
    return [replay.lengthened(answer, least) for answer in answers] if least else answers


def _reply(
    headers: list[tuple[bytes, bytes]], cuts: list[replay.Cut], prompt_tokens: int, max_tokens: int | None,
    body: bytes = b"", frames: Iterator[bytes] | None = None, cached: int = 0,
) -> Reply:
    tokens = [cut.completion_tokens for cut in cuts]
    return Reply(headers, body, frames, prompt_tokens, sum(tokens), max_tokens, max(tokens), cached)


def random_id() -> str:
    """Random enough to tell responses apart, and no system call per request."""
    return f"{getrandbits(128):032x}"


async def send_error(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] = [], request_id_header: bytes = b"x-request-id"
) -> None:
    """An error response the layers in front of the app send themselves: ``body`` with a request id of its
    own (in ``request_id_header``), and ``extra`` headers."""
    request_id = (request_id_header, b"req_" + random_id().encode())
    await send_whole(send, status, [JSON_TYPE, request_id, *extra], body)


SYNTHESIZED = (b"x-mockgpt-synthesized", b"true")


def _headers(
    answer: Answer, request_id: str, request_id_header: bytes = b"x-request-id", drawn: int | None = None
) -> list[tuple[bytes, bytes]]:
    """The headers that name the recorded turn, and the request id (in the header the API names it in);
    and say so if the answer was drawn for a request the index does not hold (``drawn`` not None)."""
    headers = [
        (b"x-mockgpt-conversation-id", _header_value(answer.conversation_id)),
        (b"x-mockgpt-turn", b"%d" % answer.turn),
        (request_id_header, b"req_" + request_id.encode()),
    ]
    if drawn is not None:
        headers.append(SYNTHESIZED)
    return headers


def _header_value(text: str) -> bytes:
    """``text`` as is if it can be a header value, else percent-encoded."""
    return (text if text.isascii() and text.isprintable() else quote(text, safe="")).encode()
