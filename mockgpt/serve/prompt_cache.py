"""Prompt caching as OpenAI reports it (``--prompt-cache``): a prompt that begins as one read lately did is
partly cached.

A prompt's prefixes are keyed at its message boundaries: a key is the digest of the API key's digest, the
model, and the framed messages (canonical.py) up to the boundary; a prompt has at most ``BOUNDARIES`` keys,
those of its first messages and of its last. The state remembers keys for the server as a whole (state.py;
across replicas, redis_state.py), the least recently used forgotten first past ``--prompt-cache-size``.

The cached tokens of a request are those of the longest of its prefixes found: its prompt tokens times the
prefix's share of the prompt's framed bytes, rounded down to a multiple of ``STEP``. None are cached unless
the prompt and the cached part hold ``MINIMUM`` tokens or more, and a prompt's last token never is. A
request's prefixes are remembered once it is let in (past rate limits, faults and the queue), as a model
reads them then.

Chat completions report the cached tokens in ``usage.prompt_tokens_details.cached_tokens``, the Responses
API in ``usage.input_tokens_details.cached_tokens``; pacing charges ``--prefill-ms-per-1k`` on the other
prompt tokens only, and vLLM's metrics count them as prefix-cache hits.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

from mockgpt.index import canonical
from mockgpt.serve.apis import APIS, Api
from mockgpt.serve.service import Reply, Service
from mockgpt.serve.state import State

__all__ = ["BOUNDARIES", "MINIMUM", "STEP", "Answering", "PrefixKeys", "PromptCache", "cached_tokens", "prefix_keys"]

# How a request of an API is read from its body, and the ``Service`` method that answers it.
Answering = tuple[Callable[[bytes], Any], Callable[..., Reply]]

MINIMUM = 1024
STEP = 128
BOUNDARIES = 256


class PrefixKeys(NamedTuple):
    """The keys of a prompt's prefixes, from the shortest, and the framed bytes up to the end of each."""

    keys: list[bytes]
    ends: list[int]

    def share(self, found: int) -> float:
        """The share of the prompt's bytes in the ``found``-th prefix (0 for none)."""
        return self.ends[found - 1] / self.ends[-1] if found else 0.0


def prefix_keys(scope: bytes, messages: list[bytes]) -> PrefixKeys:
    """The prefixes of framed ``messages`` sent in ``scope``: those of the first and last ``BOUNDARIES`` / 2
    messages, if there are more."""
    keys = canonical.digests(scope, messages)[1:]
    ends = list(itertools.accumulate(map(len, messages)))
    if len(keys) > BOUNDARIES:
        half = BOUNDARIES // 2
        keys, ends = keys[:half] + keys[-half:], ends[:half] + ends[-half:]
    return PrefixKeys(keys, ends)


def cached_tokens(prompt_tokens: int, share: float) -> int:
    """The tokens of a prompt of ``prompt_tokens`` reported cached, ``share`` of it found."""
    if prompt_tokens < MINIMUM:
        return 0
    cached = min(int(prompt_tokens * share), prompt_tokens - 1) // STEP * STEP
    return cached if cached >= MINIMUM else 0


class PromptCache:
    """Where the prompt cache meets a request: its reply, told its cached tokens; and what to remember of it
    once it is let in (``Reply.prefixes``), for ``State.cache_prefixes``."""

    def __init__(self, service: Service, state: State) -> None:
        self._state = state
        # Per route: what frames its prompt a message at a time; None for an API that is not cached.
        self._prompts = {api.route: None if api.prompt is None else getattr(service, api.prompt) for api in APIS.values()}

    async def reply(self, api: Api, body: bytes, api_key: str, answering: Answering) -> Reply | None:
        """The reply to a hit of ``api`` sent with ``api_key`` (its digest), read and answered as
        ``answering`` says; None for anything else."""
        decode, answer = answering
        prompt = self._prompts[api.route]
        try:
            request = decode(body)
            found = None if prompt is None else prefix_keys(_scope(api_key, request.model), prompt(request))
        except Exception:
            return None
        if found is None or not found.keys:
            return _answered(answer, request)
        place = await self._state.cached_prefix(found.keys)
        reply = _answered(answer, request, functools.partial(cached_tokens, share=found.share(place)) if place else None)
        if reply is not None:
            reply.prefixes = found.keys
        return reply


def _scope(api_key: str, model: str) -> bytes:
    """What the keys of a prompt's prefixes begin with: the prompts of one API key and model share a cache."""
    return f"{api_key}\0{model}\0".encode("utf-8", "surrogatepass")


def _answered(answer: Callable[..., Reply], *args: Any) -> Reply | None:
    try:
        return answer(*args)
    except Exception:
        return None
