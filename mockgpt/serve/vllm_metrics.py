"""vLLM's own metrics, for the gateways, autoscalers and dashboards that read a vLLM server's ``/metrics``.

The families are those vLLM's v1 engine exports (``vllm/v1/metrics/loggers.py`` in ``vllm-project/vllm``,
revision ``REVISION``), with their names, types, label names and histogram buckets; each series is
labelled ``model_name`` (``--served-model-name``) and ``engine`` ("0"). They are fed with what mockgpt
knows of each answer:

- requests running (``vllm:num_requests_running``: answers being sent, in an answer slot if
  ``--max-concurrency`` is set) and waiting for a slot (``vllm:num_requests_waiting``), summed over the
  server's workers;
- KV-cache usage, modelled: the prompt and answer tokens of the running requests and the prompt tokens of
  the waiting ones, over ``--kv-cache-tokens``;
- prompt and generation tokens, per request and in all; successes by finish reason (``length`` when an
  answer was cut at the request's limit, ``abort`` when its client left, else ``stop``);
- time in the queue, to the first token and per output token after it (streamed answers: a whole one
  sends its first token with its last), end to end, and the prefill, decode and inference phases that
  these times divide a request into.

Prefix caching, preemption and LoRA do not happen here: their counters stay at 0 and
``vllm:lora_requests_info`` is not exported, as vLLM without LoRA does not export it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "FINISH_REASONS",
    "LABELS",
    "MAX_MODEL_LEN",
    "REQUEST_LATENCY_BUCKETS",
    "REVISION",
    "TIME_PER_OUTPUT_TOKEN_BUCKETS",
    "TIME_TO_FIRST_TOKEN_BUCKETS",
    "Finished",
    "VllmFamilies",
    "VllmSeries",
    "buckets_1_2_5",
]

REVISION = "005a810bc40faa25b8870fbc8559c3462581eee3"
LABELS = ("model_name", "engine")
# The context of the model vLLM would serve: the top of the token-count buckets.
MAX_MODEL_LEN = 131_072
FINISH_REASONS = ("stop", "length", "abort")
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)
TIME_PER_OUTPUT_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
PREFILL_TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)


def buckets_1_2_5(top: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``top``: vLLM's buckets of token counts."""
    buckets: list[int] = []
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale > top:
                return buckets
            buckets.append(step * scale)
        scale *= 10


class Finished(NamedTuple):
    """An answered request, for the histograms: its tokens, the most it allowed, how it ended, its times in
    seconds from its arrival (``first``: to its first token, None if not streamed), and its prompt tokens
    found in the prompt cache."""

    prompt_tokens: int
    generation_tokens: int
    max_tokens: int | None
    reason: str
    queued: float
    first: float | None
    total: float
    cached_tokens: int = 0


# Each histogram: the name it is kept under here, and vLLM's name, description and buckets (None: token
# counts, ``buckets_1_2_5(MAX_MODEL_LEN)``).
_HISTOGRAMS: dict[str, tuple[str, str, tuple[float, ...] | None]] = {
    "prompt": ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", None),
    "generation": ("vllm:request_generation_tokens", "Number of generation tokens processed.", None),
    "max_generation": ("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.", None),
    "max_tokens": ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", None),
    "first_token": ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TIME_TO_FIRST_TOKEN_BUCKETS),
    "per_output_token": (
        "vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", TIME_PER_OUTPUT_TOKEN_BUCKETS
    ),
    "per_prefill_token": (
        "vllm:time_per_prefill_token_request_seconds", "Time spent per token during prefill phase in seconds", PREFILL_TOKEN_BUCKETS
    ),
    "e2e": ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS),
    "queue": ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", REQUEST_LATENCY_BUCKETS),
    "inference": (
        "vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", REQUEST_LATENCY_BUCKETS
    ),
    "prefill": ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", REQUEST_LATENCY_BUCKETS),
    "decode": ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", REQUEST_LATENCY_BUCKETS),
}


class VllmFamilies:
    """The families, created once per process; ``bind`` gives the series of one served model."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def gauge(name: str, documentation: str) -> Gauge:
            # Summed over the workers alive: each counts the requests it holds.
            return Gauge(name, documentation, LABELS, registry=None, multiprocess_mode="livesum")

        def counter(name: str, documentation: str, *extra: str) -> Counter:
            return Counter(name, documentation, [*LABELS, *extra], registry=None)

        def histogram(name: str, documentation: str, buckets: tuple[float, ...] | list[int]) -> Histogram:
            return Histogram(name, documentation, LABELS, registry=None, buckets=buckets)

        tokens = buckets_1_2_5(MAX_MODEL_LEN)
        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.gpu_cache = gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.")
        self.kv_cache = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        # Counted with --prompt-cache (prompt_cache.py), in tokens; 0 without.
        self.prefix_queries = [
            counter("vllm:gpu_prefix_cache_queries", "GPU prefix cache queries, in terms of number of queried tokens."),
            counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."),
        ]
        self.prefix_hits = [
            counter("vllm:gpu_prefix_cache_hits", "GPU prefix cache hits, in terms of number of cached tokens."),
            counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."),
        ]
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.success = counter("vllm:request_success", "Count of successfully processed requests.", "finished_reason")
        self.histograms = {
            key: histogram(name, documentation, tokens if buckets is None else buckets)
            for key, (name, documentation, buckets) in _HISTOGRAMS.items()
        }
        self.cache_config = Gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
            ["block_size", "num_gpu_blocks", "enable_prefix_caching", "engine"], registry=None, multiprocess_mode="livemax",
        )


class VllmSeries:
    """The series of one served model in one worker, each there from the start as vLLM's are, and the
    load it carries now."""

    BLOCK_SIZE = 16

    def __init__(self, families: VllmFamilies, model_name: str, kv_cache_tokens: int, prefix_caching: bool = False) -> None:
        labels = (model_name, "0")
        self._running, self._waiting = families.running.labels(*labels), families.waiting.labels(*labels)
        self._caches = families.gpu_cache.labels(*labels), families.kv_cache.labels(*labels)
        self._kv_cache_tokens = kv_cache_tokens
        self._tokens = 0
        families.preemptions.labels(*labels)
        # vLLM counts prefix-cache queries only when it caches prefixes.
        self._prefix_caching = prefix_caching
        self._prefix_queries = [family.labels(*labels) for family in families.prefix_queries]
        self._prefix_hits = [family.labels(*labels) for family in families.prefix_hits]
        self._success = {reason: families.success.labels(*labels, reason) for reason in FINISH_REASONS}
        self._prompt_tokens, self._generation_tokens = families.prompt_tokens.labels(*labels), families.generation_tokens.labels(*labels)
        self._observed = {key: family.labels(*labels) for key, family in families.histograms.items()}
        blocks = kv_cache_tokens // self.BLOCK_SIZE
        families.cache_config.labels(str(self.BLOCK_SIZE), str(blocks), str(prefix_caching), "0").set(1)

    def waiting(self, change: int, tokens: int) -> None:
        """``change`` requests of ``tokens`` prompt tokens started (1) or stopped (-1) waiting."""
        self._waiting.inc(change)
        self._hold(change * tokens)

    def running(self, change: int, tokens: int) -> None:
        """``change`` requests of ``tokens`` prompt and answer tokens started (1) or stopped (-1) running."""
        self._running.inc(change)
        self._hold(change * tokens)

    def _hold(self, tokens: int) -> None:
        self._tokens += tokens
        usage = self._tokens / self._kv_cache_tokens
        for gauge in self._caches:
            gauge.set(usage)

    def finished(self, request: Finished) -> None:
        """Count and time an answered request."""
        self._prompt_tokens.inc(request.prompt_tokens)
        self._generation_tokens.inc(request.generation_tokens)
        self._success[request.reason].inc()
        if self._prefix_caching:
            for queries, hits in zip(self._prefix_queries, self._prefix_hits):
                queries.inc(request.prompt_tokens)
                hits.inc(request.cached_tokens)
        observed: dict[str, float] = {"prompt": request.prompt_tokens, "generation": request.generation_tokens}
        if request.max_tokens:
            observed["max_generation"] = observed["max_tokens"] = request.max_tokens
        first = request.total if request.first is None else request.first
        if request.first is not None:
            observed["first_token"] = request.first
            if request.generation_tokens > 1:
                observed["per_output_token"] = (request.total - request.first) / (request.generation_tokens - 1)
        prefill = max(first - request.queued, 0.0)
        observed |= {
            "e2e": request.total, "queue": request.queued, "inference": max(request.total - request.queued, 0.0),
            "prefill": prefill, "decode": max(request.total - first, 0.0),
        }
        if request.prompt_tokens:
            observed["per_prefill_token"] = prefill / request.prompt_tokens
        for key, amount in observed.items():
            self._observed[key].observe(amount)
