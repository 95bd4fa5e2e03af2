"""Replay every assistant turn of a dataset against a running mockgpt and check each answer byte-exact.

    python tools/replay.py DATASET... [--url http://127.0.0.1:8000/v1] [--concurrency 16] [--api-key KEY]

Answers recorded for the same messages are served in dataset order, so the k-th of them is asked for
with ``seed: k``. Prints throughput and latency percentiles, and every mismatch; exits 1 on any
mismatch or error. A dataset cut off mid-way is replayed up to the break.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec

from mockgpt import canonical
from mockgpt.export import Turn, turns


def requests(sources: list[Path]) -> Iterator[tuple[Turn, int]]:
    """Every turn with the seed that asks for its answer."""
    seen: Counter[bytes] = Counter()
    for conversation in turns(sources):
        for turn in conversation:
            key = canonical.digest(canonical.frame((m["role"], m["content"]) for m in turn.messages))
            yield turn, seen[key]
            seen[key] += 1


class Report:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def check(self, turn: Turn, response: httpx.Response, seconds: float) -> None:
        self.latencies.append(seconds)
        where = f"conversation {turn.conversation_id}, turn {turn.turn}"
        if response.status_code != 200:
            self.failures.append(f"{where}: HTTP {response.status_code}: {response.text[:200]}")
            return
        content = response.json()["choices"][0]["message"]["content"]
        if content != turn.answer:
            at = next((i for i, (a, b) in enumerate(zip(content, turn.answer)) if a != b), min(len(content), len(turn.answer)))
            self.failures.append(
                f"{where}: answer differs at character {at}: got {content[at:at + 40]!r}, recorded {turn.answer[at:at + 40]!r}"
            )


async def replay(url: str, sources: list[Path], concurrency: int, api_key: str) -> Report:
    report = Report()
    work = requests(sources)
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def worker() -> None:
            for turn, seed in work:
                body = msgspec.json.encode({"model": "gpt-4o", "messages": turn.messages, "seed": seed})
                started = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", content=body)
                except httpx.HTTPError as error:
                    report.failures.append(f"conversation {turn.conversation_id}, turn {turn.turn}: {error!r}")
                    continue
                report.check(turn, response, time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's base URL")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--api-key", default="mockgpt")
    args = parser.parse_args()
    started = time.perf_counter()
    report = asyncio.run(replay(args.url, args.datasets, args.concurrency, args.api_key))
    seconds = time.perf_counter() - started
    for failure in report.failures:
        print(f"MISMATCH {failure}")
    count = len(report.latencies)
    if count:
        cuts = statistics.quantiles(report.latencies, n=100) if count > 1 else report.latencies * 99
        p50, p90, p99 = (cuts[i - 1] * 1000 for i in (50, 90, 99))
        print(f"{count:,} requests in {seconds:.1f} s: {count / seconds:,.0f} per second, concurrency {args.concurrency}")
        print(f"latency ms: p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}, max {max(report.latencies) * 1000:.1f}")
    print(f"{len(report.failures)} mismatches or errors" if report.failures else "every answer byte-exact")
    sys.exit(1 if report.failures or not count else 0)


if __name__ == "__main__":
    main()
