"""locustfile.py against a live server: a short headless run, and locust's distributed mode."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mockgpt.serve.server import demo_index
from mockgpt.testing import MockServer

ROOT = Path(__file__).resolve().parent.parent
LOCUST = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py")]


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    with MockServer(demo_index()) as server:
        yield server


def stats(prefix: Path) -> dict[str, tuple[int, int]]:
    """Requests and failures by entry name, from locust's CSV."""
    with open(f"{prefix}_stats.csv") as file:
        return {row["Name"]: (int(row["Request Count"]), int(row["Failure Count"])) for row in csv.DictReader(file)}


ENV = {**os.environ, "MOCKGPT_MISS_RATE": "0.2"}


def run(server: MockServer, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [*LOCUST, "--host", server.url, "--headless", "-u", "6", "-r", "6", "-t", "4s", "--csv", str(tmp_path / "run"), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)


def assert_clean(prefix: Path) -> None:
    entries = stats(prefix)
    for name in ["chat", "chat miss", "chat stream", "time to first token", "stream total"]:
        assert entries[name][0] > 0, name
    assert all(failures == 0 for _, failures in entries.values()), entries


def test_headless_run_has_no_failures(server: MockServer, tmp_path: Path) -> None:
    result = run(server, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_clean(tmp_path / "run")


def test_distributed_mode(server: MockServer, tmp_path: Path) -> None:
    workers = [
        subprocess.Popen([*LOCUST, "--worker"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV) for _ in range(2)
    ]
    try:
        result = run(server, tmp_path, "--master", "--expect-workers", "2", "--expect-workers-max-wait", "60")
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(30)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "to 2 ready workers" in result.stderr
    assert_clean(tmp_path / "run")
