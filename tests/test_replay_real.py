"""The whole real ShareGPT prefix, replayed over HTTP: every assistant turn comes back byte-exact."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import msgspec

from mockgpt import canonical
from mockgpt.testing import MockServer

from .test_index_real import complete_conversations

CONCURRENCY = 16


def recorded_turns(path: Path) -> list[tuple[list[dict[str, str]], str, int]]:
    """(request messages, recorded answer, seed) for every assistant turn with a message before it.

    Answers to the same messages are served in dataset order, so the k-th is asked for with seed k.
    """
    turns = []
    seen: Counter[bytes] = Counter()
    for conversation in complete_conversations(path):
        messages = [{"role": canonical.ROLES[t["from"]], "content": t["value"]} for t in conversation["conversations"]]
        for turn, message in enumerate(messages):
            if message["role"] != "assistant" or turn == 0:
                continue
            key = canonical.digest(canonical.frame((m["role"], m["content"]) for m in messages[:turn]))
            turns.append((messages[:turn], message["content"], seen[key]))
            seen[key] += 1
    return turns


async def replay(base_url: str, turns: list[tuple[list[dict[str, str]], str, int]]) -> list[str]:
    failures: list[str] = []
    queue = iter(turns)
    limits = httpx.Limits(max_connections=CONCURRENCY)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for messages, answer, seed in queue:
                body = msgspec.json.encode({"model": "gpt-4o", "messages": messages, "seed": seed})
                response = await client.post("/chat/completions", content=body, headers={"content-type": "application/json"})
                if response.status_code != 200 or response.json()["choices"][0]["message"]["content"] != answer:
                    failures.append(f"{response.status_code} {response.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return failures


def test_every_turn_replays_byte_exact(sharegpt_path: Path, real_index: Path) -> None:
    turns = recorded_turns(sharegpt_path)
    assert len(turns) > 60_000
    with MockServer(real_index) as server:
        failures = asyncio.run(replay(server.base_url, turns))
    assert failures == []
