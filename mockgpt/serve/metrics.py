"""Prometheus metrics that add up over all of the server's worker processes.

This uses prometheus_client's multiprocess mode: every process writes its values to memory-mapped
files named after its pid in the directory ``$PROMETHEUS_MULTIPROC_DIR``, and a scrape answered by any
one worker reads and merges the files of all of them. Counters and histograms are summed over every
process that ever ran; the two gauges (streams in flight, queue depth) are summed over live processes
only: a scrape first forgets the workers that have exited (``worker_exited``).

prometheus_client decides when it is first imported whether to write those files, so the variable must
be set before that: ``prepare`` sets it in the supervisor, the workers inherit it, and ``Metrics``
imports prometheus_client only when it is created. Importing this module imports nothing else.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics import MetricWrapperBase

__all__ = ["CONTENT_TYPE", "ENV", "LATENCY_BUCKETS", "REJECT_REASONS", "Metrics", "prepare", "worker_exited"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
# What ``generate_latest`` writes. prometheus_client's CONTENT_TYPE_LATEST names version 1.0.0 in newer
# releases and 0.0.4 in older ones; its own HTTP handler sends 0.0.4 unless the scraper asks otherwise.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds, from a cached hit answered at once to a long answer streamed at a human pace.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REJECT_REASONS = ("requests", "tokens", "overload", "fault")

_Family = TypeVar("_Family", bound="MetricWrapperBase")
_Labels = TypeVar("_Labels", bound=tuple[object, ...])


def prepare(directory: str | os.PathLike[str]) -> None:
    """Make ``directory`` ready for a new server and point ``$PROMETHEUS_MULTIPROC_DIR`` at it.

    Called once by the supervising process before the workers start, so that they inherit the variable.
    Creates the directory if needed and deletes the ``*.db`` files a previous run left there (counters
    would otherwise go on from that run's totals); other files are left alone.
    """
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[ENV] = str(path)


def worker_exited(pid: int) -> None:
    """Drop the gauges of the worker process ``pid``, which has exited; called by the supervisor.

    Its counters and histograms stay in the totals, as a Prometheus counter never goes down.
    """
    from prometheus_client import multiprocess

    # prometheus_client.multiprocess has no annotations.
    multiprocess.mark_process_dead(pid, str(_directory()))  # type: ignore[no-untyped-call]


class Metrics:
    """The metrics of one worker process, and the exposition of all workers' metrics.

    Needs ``$PROMETHEUS_MULTIPROC_DIR`` (see ``prepare``), else raises ``RuntimeError``. Every instance in
    a process shares the same underlying metrics, so creating more than one is harmless.
    """

    def __init__(self, model_name: str = "mockgpt", kv_cache_tokens: int = 1 << 20, prefix_caching: bool = False) -> None:
        from mockgpt.serve.vllm_metrics import VllmSeries

        directory = _directory()
        self._families = _families()
        # vLLM's own families too (vllm_metrics.py), for the tools that read a vLLM server's.
        self.vllm = VllmSeries(self._families.vllm, model_name, kv_cache_tokens, prefix_caching)
        self._registry = _registry(directory)
        # labels() validates and locks on each call; a dict lookup is over ten times cheaper.
        self._requests: dict[tuple[str, int, str], Counter] = {}
        self._durations: dict[tuple[str], Histogram] = {}
        self._first_tokens: dict[tuple[str], Histogram] = {}
        self._rejections: dict[tuple[str], Counter] = {}
        self._prompt_tokens = self._families.tokens.labels("prompt")
        self._completion_tokens = self._families.tokens.labels("completion")

    def request(self, route: str, status: int, outcome: str, seconds: float) -> None:
        """Count a request answered with ``status`` and time it; ``outcome`` is hit, synthesized, miss, fault (one asked
        for), gone (its client left before the answer began) or error; none for other routes.

        ``route`` is the path without ``/v1``, from a fixed set: each distinct value is a new series.
        """
        _child(self._requests, self._families.requests, (route, status, outcome)).inc()
        _child(self._durations, self._families.duration, (route,)).observe(seconds)

    def first_token(self, route: str, seconds: float) -> None:
        """Time from a streamed request's arrival to its first content chunk."""
        _child(self._first_tokens, self._families.first_token, (route,)).observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        """Count the prompt and completion tokens of an answered request."""
        if prompt:
            self._prompt_tokens.inc(prompt)
        if completion:
            self._completion_tokens.inc(completion)

    def stream_started(self) -> None:
        """A streamed response began sending."""
        self._families.streams.inc()

    def stream_ended(self) -> None:
        """A streamed response finished, failed or was abandoned by its client."""
        self._families.streams.dec()

    def queued(self, prompt_tokens: int) -> None:
        """A request of ``prompt_tokens`` started waiting for its turn."""
        self._families.queue.inc()
        self.vllm.waiting(1, prompt_tokens)

    def dequeued(self, prompt_tokens: int) -> None:
        """A waiting request left the queue, served or not."""
        self._families.queue.dec()
        self.vllm.waiting(-1, prompt_tokens)

    def rejected(self, reason: str) -> None:
        """Count a request turned away by ``reason``: requests, tokens, overload or fault."""
        _child(self._rejections, self._families.rejected, (reason,)).inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every worker's metrics, merged, and its content type.

        A worker that has exited (uvicorn replaces a dead one, and says so to no one) is forgotten first:
        its gauges no longer count.
        """
        from prometheus_client import generate_latest

        for pid in _gone(_directory()):
            worker_exited(pid)
        return generate_latest(self._registry), CONTENT_TYPE


class _Families:
    """The metric families of this process, each created once: creating one twice would make a second
    value over the same key of this process's files, and the two would overwrite each other."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        # registry=None: in multiprocess mode the exposition comes from the files, not a registry.
        self.requests = Counter(
            "mockgpt_requests_total",
            "Requests answered, by route, status (499: the client left first) and outcome (hit, synthesized, miss, fault, gone, error).",
            ["route", "status", "outcome"], registry=None,
        )
        self.duration = Histogram(
            "mockgpt_request_duration_seconds", "Time to answer a request, to the last byte of a stream.",
            ["route"], registry=None, buckets=LATENCY_BUCKETS,
        )
        self.first_token = Histogram(
            "mockgpt_time_to_first_token_seconds", "Time from a streamed request to its first content chunk.",
            ["route"], registry=None, buckets=LATENCY_BUCKETS,
        )
        self.tokens = Counter("mockgpt_tokens_total", "Tokens of answered requests, by kind.", ["kind"], registry=None)
        self.rejected = Counter(
            "mockgpt_rejected_total",
            "Requests turned away, by reason: a rate limit (requests, tokens), a full queue (overload), a 429 fault.",
            ["reason"], registry=None,
        )
        self.streams = _live_gauge("mockgpt_streams_in_flight", "Streamed responses being sent.")
        from mockgpt.serve.vllm_metrics import VllmFamilies

        self.vllm = VllmFamilies()
        self.queue = _live_gauge("mockgpt_queue_depth", "Requests waiting for their turn.")
        # Series that exist from the start let rate() see their first increment.
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)


def _live_gauge(name: str, documentation: str) -> Gauge:
    """A gauge summed over the processes alive now: ``worker_exited`` removes an exited one's share."""
    from prometheus_client import Gauge

    return Gauge(name, documentation, registry=None, multiprocess_mode="livesum")


@functools.cache
def _families() -> _Families:
    """This process's metric families; the first call decides the directory they are written to."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"prometheus_client was imported before ${ENV} was set, so it keeps metrics in memory only; "
            "call mockgpt.serve.metrics.prepare() before anything imports prometheus_client"
        )
    return _Families()


def _registry(directory: Path) -> CollectorRegistry:
    """A registry that collects every process's files anew at each scrape."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def _gone(directory: Path) -> set[int]:
    """The processes that left live gauges in ``directory`` and have exited."""
    pids = {int(path.stem.rpartition("_")[2]) for path in directory.glob("gauge_live*_*.db")}
    return {pid for pid in pids if not _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _directory() -> Path:
    """The directory named by ``$PROMETHEUS_MULTIPROC_DIR``, which must exist."""
    directory = os.environ.get(ENV)
    if not directory:
        raise RuntimeError(f"metrics need ${ENV}; the supervising process sets it with mockgpt.serve.metrics.prepare()")
    if not os.path.isdir(directory):
        raise RuntimeError(f"${ENV} is {directory!r}, not a directory; create it with mockgpt.serve.metrics.prepare()")
    return Path(directory)


def _child(cache: dict[_Labels, _Family], family: _Family, labels: _Labels) -> _Family:
    """The child of ``family`` with ``labels``, looked up once per process."""
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = family.labels(*labels)
    return child
