"""Metrics recorded by real worker processes add up in the exposition any one of them renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

# Imported now, while $PROMETHEUS_MULTIPROC_DIR is unset, so that prometheus_client in this process keeps
# its values in memory whatever a test sets later: the multiprocess files are written by child processes.
from prometheus_client.parser import text_string_to_metric_families

from mockgpt.serve import metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

CHAT, LEGACY = "/chat/completions", "/completions"
# What each worker records; the two differ so that a sum cannot pass by doubling one of them.
PLANS: list[dict[str, Any]] = [
    {
        "requests": [[CHAT, 200, "hit", 0.003]] * 3 + [[CHAT, 404, "miss", 0.02], [LEGACY, 200, "hit", 0.7], [CHAT, 500, "error", 40.0]],
        "first_tokens": [[CHAT, 0.004], [CHAT, 0.3]],
        "tokens": [[10, 20], [5, 0]],
        "streams": [3, 1],
        "queue": [4, 3],
        "rejected": ["requests", "tokens", "requests"],
    },
    {
        "requests": [[CHAT, 200, "hit", 0.04]] * 2 + [[LEGACY, 200, "hit", 0.004], [LEGACY, 429, "error", 0.001]],
        "first_tokens": [[LEGACY, 2.0]],
        "tokens": [[7, 9]],
        "streams": [1, 0],
        "queue": [2, 0],
        "rejected": ["overload"],
    },
]

WORKER = """
import json, os, sys
from mockgpt.serve.metrics import Metrics

plan = json.loads(sys.argv[1])
m = Metrics()
for route, status, outcome, seconds in plan["requests"]:
    m.request(route, status, outcome, seconds)
for route, seconds in plan["first_tokens"]:
    m.first_token(route, seconds)
for prompt, completion in plan["tokens"]:
    m.tokens(prompt, completion)
for _ in range(plan["streams"][0]): m.stream_started()
for _ in range(plan["streams"][1]): m.stream_ended()
for _ in range(plan["queue"][0]): m.queued(10)
for _ in range(plan["queue"][1]): m.dequeued(10)
for reason in plan["rejected"]:
    m.rejected(reason)
print(os.getpid(), flush=True)
# Alive until the test closes stdin, so that the two workers run at once and cannot share a pid.
sys.stdin.read()
"""

SCRAPE = """
import json
from mockgpt.serve.metrics import Metrics

body, content_type = Metrics().render()
print(json.dumps({"body": body.decode(), "content_type": content_type}))
"""


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A prepared metrics directory; the variable ``prepare`` sets is undone after the test."""
    monkeypatch.setenv(metrics.ENV, "")
    metrics.prepare(tmp_path / "metrics")
    return tmp_path / "metrics"


def run_workers(plans: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    """One real process per plan, all at once, each alive once it has recorded its plan until ``end``."""
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(plan)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for plan in plans
    ]
    for worker in workers:
        assert worker.stdout is not None and int(worker.stdout.readline()) == worker.pid
    return workers


def end(worker: subprocess.Popen[str]) -> None:
    worker.communicate("")
    assert worker.returncode == 0


def scrape() -> Samples:
    """What a worker serving a scrape renders: parsed into samples by name and labels."""
    run = subprocess.run([sys.executable, "-c", SCRAPE], check=True, capture_output=True, text=True)
    rendered = json.loads(run.stdout)
    assert rendered["content_type"] == metrics.CONTENT_TYPE
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(rendered["body"])
        for sample in family.samples
    }


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


def test_totals_are_sums_over_processes_and_live_gauges_forget_exited_ones(directory: Path) -> None:
    workers = run_workers(PLANS)
    samples = scrape()

    requests = Counter((route, str(status), outcome) for plan in PLANS for route, status, outcome, _ in plan["requests"])
    for (route, status, outcome), count in requests.items():
        assert samples["mockgpt_requests_total", labels(route=route, status=status, outcome=outcome)] == count
    assert samples["mockgpt_requests_total", labels(route=CHAT, status="200", outcome="hit")] == 5
    assert_histogram(samples, "mockgpt_request_duration_seconds", [(r[0], r[3]) for plan in PLANS for r in plan["requests"]])
    assert_histogram(samples, "mockgpt_time_to_first_token_seconds", [tuple(f) for plan in PLANS for f in plan["first_tokens"]])
    assert samples["mockgpt_tokens_total", labels(kind="prompt")] == 10 + 5 + 7
    assert samples["mockgpt_tokens_total", labels(kind="completion")] == 20 + 0 + 9
    rejected = {reason: samples["mockgpt_rejected_total", labels(reason=reason)] for reason in metrics.REJECT_REASONS}
    assert rejected == {"requests": 2, "tokens": 1, "overload": 1, "fault": 0}
    assert samples["mockgpt_streams_in_flight", labels()] == (3 - 1) + (1 - 0)
    assert samples["mockgpt_queue_depth", labels()] == (4 - 3) + (2 - 0)

    # A scrape forgets the gauges of a worker that has exited.
    end(workers[0])
    after = scrape()
    end(workers[1])
    assert after["mockgpt_streams_in_flight", labels()] == 1
    assert after["mockgpt_queue_depth", labels()] == 2
    # What the exited worker counted stays counted: only its gauges went.
    assert {k: v for k, v in after.items() if "_total" in k[0] or "_seconds" in k[0]} == {
        k: v for k, v in samples.items() if "_total" in k[0] or "_seconds" in k[0]
    }


def assert_histogram(samples: Samples, name: str, observations: list[tuple[str, float]]) -> None:
    """Count, sum and buckets per route equal those of ``observations``, as (route, seconds)."""
    for route in {route for route, _ in observations}:
        seconds = [value for r, value in observations if r == route]
        assert samples[f"{name}_count", labels(route=route)] == len(seconds)
        assert samples[f"{name}_sum", labels(route=route)] == pytest.approx(sum(seconds))
        for bound in metrics.LATENCY_BUCKETS:
            within = sum(value <= bound for value in seconds)
            assert samples[f"{name}_bucket", labels(route=route, le=str(bound))] == within
        assert samples[f"{name}_bucket", labels(route=route, le="+Inf")] == len(seconds)


def test_prepare_empties_the_directory_of_a_previous_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(metrics.ENV, "")
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "README").write_text("kept")
    metrics.prepare(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README"]
    assert Path(os.environ[metrics.ENV]) == tmp_path.resolve()


def test_metrics_need_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"metrics need \$PROMETHEUS_MULTIPROC_DIR.*prepare\(\)"):
        metrics.Metrics()
    monkeypatch.setenv(metrics.ENV, str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="not a directory"):
        metrics.Metrics()


def test_metrics_refuse_a_prometheus_client_imported_too_early(directory: Path) -> None:
    # This process imported prometheus_client (above) before the variable was set.
    with pytest.raises(RuntimeError, match="imported before"):
        metrics.Metrics()
    assert list(directory.iterdir()) == []


def test_importing_the_module_does_not_import_prometheus_client() -> None:
    code = "import sys, mockgpt.serve.metrics; print('prometheus_client' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert run.stdout.strip() == "False"
