"""vLLM's metrics on /metrics: the families of vLLM's own source, and what they report under a known load."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mockgpt.serve.pacing import slowdown
from mockgpt.serve.vllm_metrics import REVISION
from mockgpt.testing import MockServer

from .conftest import sharegpt

ANSWER = " ".join(f"word{i}" for i in range(40))
CONVERSATIONS = [sharegpt("long", ("human", "Tell me a long story."), ("gpt", ANSWER))]
STORY = {"model": "m", "messages": [{"role": "user", "content": "Tell me a long story."}]}

# vllm/v1/metrics/loggers.py at this revision of vllm-project/vllm: each family's type and its buckets.
VLLM_REVISION = "005a810bc40faa25b8870fbc8559c3462581eee3"
TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000]
LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
FAMILIES = {
    "vllm:num_requests_running": ("gauge", None),
    "vllm:num_requests_waiting": ("gauge", None),
    "vllm:gpu_cache_usage_perc": ("gauge", None),
    "vllm:kv_cache_usage_perc": ("gauge", None),
    "vllm:gpu_prefix_cache_queries": ("counter", None),
    "vllm:gpu_prefix_cache_hits": ("counter", None),
    "vllm:prefix_cache_queries": ("counter", None),
    "vllm:prefix_cache_hits": ("counter", None),
    "vllm:num_preemptions": ("counter", None),
    "vllm:prompt_tokens": ("counter", None),
    "vllm:generation_tokens": ("counter", None),
    "vllm:request_success": ("counter", None),
    "vllm:request_prompt_tokens": ("histogram", TOKEN_BUCKETS),
    "vllm:request_generation_tokens": ("histogram", TOKEN_BUCKETS),
    "vllm:request_max_num_generation_tokens": ("histogram", TOKEN_BUCKETS),
    "vllm:request_params_max_tokens": ("histogram", TOKEN_BUCKETS),
    "vllm:time_to_first_token_seconds": (
        "histogram",
        [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0],
    ),
    "vllm:time_per_output_token_seconds": (
        "histogram", [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0],
    ),
    "vllm:time_per_prefill_token_request_seconds": ("histogram", [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
    "vllm:e2e_request_latency_seconds": ("histogram", LATENCY),
    "vllm:request_queue_time_seconds": ("histogram", LATENCY),
    "vllm:request_inference_time_seconds": ("histogram", LATENCY),
    "vllm:request_prefill_time_seconds": ("histogram", LATENCY),
    "vllm:request_decode_time_seconds": ("histogram", LATENCY),
}


def scrape(server: MockServer) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}


def value(families: dict[str, object], name: str, **labels: str) -> float:
    family = families[re.sub(r"_(total|count|sum)$", "", name)]
    return sum(s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def counted(index: Path) -> Iterator[MockServer]:
    with MockServer(index, metrics=True, served_model_name="llama-3-8b") as server:
        yield server


def test_the_families_are_vllms(counted: MockServer) -> None:
    assert REVISION == VLLM_REVISION
    httpx.post(f"{counted.base_url}/chat/completions", json={**STORY, "max_tokens": 5}).raise_for_status()
    families = scrape(counted)
    for name, (kind, buckets) in FAMILIES.items():
        family = families[name.removesuffix("_total")]
        assert family.type == kind, name  # type: ignore[attr-defined]
        samples = family.samples  # type: ignore[attr-defined]
        assert samples, name
        for sample in samples:
            assert {"model_name", "engine"} <= set(sample.labels), (name, sample)
            assert sample.labels["model_name"] == "llama-3-8b" and sample.labels["engine"] == "0"
        if buckets is not None:
            bounds = sorted({float(s.labels["le"]) for s in samples if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"})
            assert bounds == [float(bound) for bound in buckets], name
    assert {s.labels["finished_reason"] for s in families["vllm:request_success"].samples} == {"stop", "length", "abort"}  # type: ignore[attr-defined]
    info = families["vllm:cache_config_info"]
    assert info.type == "gauge" and info.samples[0].value == 1  # type: ignore[attr-defined]


def test_tokens_and_finish_reasons_add_up(counted: MockServer) -> None:
    before = scrape(counted)
    usages = [httpx.post(f"{counted.base_url}/chat/completions", json=body).json()["usage"] for body in [STORY, {**STORY, "max_tokens": 3}]]
    after = scrape(counted)
    for name, field in [("vllm:prompt_tokens", "prompt_tokens"), ("vllm:generation_tokens", "completion_tokens")]:
        assert value(after, name + "_total") - value(before, name + "_total") == sum(usage[field] for usage in usages)
    for reason in ("stop", "length"):
        assert value(after, "vllm:request_success_total", finished_reason=reason) - value(before, "vllm:request_success_total", finished_reason=reason) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_running_and_waiting_follow_the_load(index: Path, workers: int) -> None:
    with MockServer(index, metrics=True, max_concurrency=2, itl_ms=100, workers=workers) as server:
        threads = [threading.Thread(target=_stream, args=(server,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        deadline, seen = time.monotonic() + 10, (0.0, 0.0, 0.0)
        while time.monotonic() < deadline and seen[:2] != (2.0, 3.0):
            families = scrape(server)
            seen = (value(families, "vllm:num_requests_running"), value(families, "vllm:num_requests_waiting"), value(families, "vllm:kv_cache_usage_perc"))
            time.sleep(0.05)
        assert seen[:2] == (2.0, 3.0)
        assert seen[2] > 0
        for thread in threads:
            thread.join()
        families = scrape(server)
        assert value(families, "vllm:num_requests_running") == value(families, "vllm:num_requests_waiting") == 0
        assert value(families, "vllm:kv_cache_usage_perc") == 0
        assert value(families, "vllm:request_queue_time_seconds_count") == 5
        # Three of the five waited for a slot: at least one whole answer, 40 tokens at 100 ms.
        assert value(families, "vllm:request_queue_time_seconds_sum") > 3 * 3


def _stream(server: MockServer) -> None:
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**STORY, "stream": True}, timeout=60) as response:
        for _ in response.iter_bytes():
            pass


def test_slowdown_is_linear_in_the_answers_running() -> None:
    running = [1]
    load = slowdown(3.0, lambda: running[0], 5)
    assert [load() for running[0] in (0, 1, 2, 3, 5, 9)] == [1.0, 1.0, 1.5, 2.0, 3.0, 3.0]
    assert slowdown(2.0, lambda: 1, 1)() == 2.0


def test_at_full_concurrency_tokens_come_slowdown_times_slower(index: Path) -> None:
    with MockServer(index, metrics=True, max_concurrency=4, itl_ms=20, slowdown=3) as server:
        gaps: list[list[float]] = [[] for _ in range(4)]
        threads = [threading.Thread(target=_timed_stream, args=(server, found)) for found in gaps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        median = statistics.median(gap for found in gaps for gap in found)
        assert 0.060 * 0.85 <= median <= 0.060 * 1.15, median
        # vLLM's time per output token says so too.
        families = scrape(server)
        per_token = value(families, "vllm:time_per_output_token_seconds_sum") / value(families, "vllm:time_per_output_token_seconds_count")
        assert 0.060 * 0.85 <= per_token <= 0.060 * 1.15, per_token


def _timed_stream(server: MockServer, gaps: list[float]) -> None:
    """The gaps between the content chunks of one streamed answer, as they arrive."""
    arrived: list[float] = []
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**STORY, "stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            if '"content":"' in line:
                arrived.append(time.perf_counter())
    gaps.extend(later - earlier for earlier, later in zip(arrived, arrived[1:]))
