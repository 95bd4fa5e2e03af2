"""Load-test mockgpt, or any OpenAI-compatible endpoint, with requests that hit a mockgpt index.

    locust -f locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 1m

Settings, from the environment:

- ``MOCKGPT_REQUESTS``: the request set, chat completion bodies one per line
  (``mockgpt export-requests``); by default, every turn of the bundled demo.
- ``MOCKGPT_MISS_RATE``: the share of requests (0 to 1) changed so that they miss: their 404s
  are expected and reported under "chat miss". Default 0.
- ``MOCKGPT_API_KEY``: a bearer token to send.

Users: ``ChatUser`` (plain chat completions) and ``StreamingChatUser`` (streamed, reporting "time to
first token" and "stream total" as entries of their own). Distributed mode works as usual: every
``--worker`` process reads the same request set.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from mockgpt.testing.export import export

MISS_RATE = float(os.environ.get("MOCKGPT_MISS_RATE", "0"))
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {os.environ.get('MOCKGPT_API_KEY', 'mockgpt')}"}


def load_requests() -> list[dict[str, Any]]:
    path = os.environ.get("MOCKGPT_REQUESTS")
    if not path:
        demo = resources.files("mockgpt") / "demo" / "conversations.json"
        with resources.as_file(demo) as source, tempfile.TemporaryDirectory() as directory:
            exported = Path(directory) / "demo-requests.jsonl"
            export([source], exported)
            return [json.loads(line) for line in exported.read_text().splitlines()]
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


REQUESTS = load_requests()


def next_request(stream: bool) -> tuple[dict[str, Any], bool]:
    """A request of the set, and whether it was changed to miss."""
    body = dict(random.choice(REQUESTS), stream=stream)
    miss = random.random() < MISS_RATE
    if miss:
        last = dict(body["messages"][-1], content=f"{body['messages'][-1]['content']} [changed to miss]")
        body["messages"] = [*body["messages"][:-1], last]
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body, miss


def answered(message: dict[str, Any]) -> bool:
    """Whether a message holds an answer: text, tool calls, or both."""
    return message.get("content") is not None or bool(message.get("tool_calls"))


# A chunk that carries the answer's first piece: text (not the empty text of the role chunk) or a tool call.
_FIRST_TOKEN = re.compile(rb'"content":"[^"]|"tool_calls":')


def report(name: str, started: float, length: int, exception: Exception | None = None) -> None:
    events.request.fire(
        request_type="SSE", name=name, response_time=(time.perf_counter() - started) * 1000,
        response_length=length, exception=exception, context={},
    )


class ChatUser(HttpUser):
    weight = 3
    wait_time = between(0, 0.1)

    @task
    def chat(self) -> None:
        body, miss = next_request(stream=False)
        name = "chat miss" if miss else "chat"
        with self.client.post("/v1/chat/completions", json=body, headers=HEADERS, name=name, catch_response=True) as response:
            if miss and response.status_code == 404:
                response.success()
            elif not miss and response.status_code == 200 and answered(response.json()["choices"][0]["message"]):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class StreamingChatUser(HttpUser):
    weight = 1
    wait_time = between(0, 0.1)

    @task
    def stream(self) -> None:
        body, miss = next_request(stream=True)
        started = time.perf_counter()
        name = "chat stream miss" if miss else "chat stream"
        with self.client.post("/v1/chat/completions", json=body, headers=HEADERS, name=name, stream=True, catch_response=True) as response:
            if miss:
                response.success() if response.status_code == 404 else response.failure(f"HTTP {response.status_code}")
                return
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            response.success()
            self.read_stream(response, started)

    def read_stream(self, response: Any, started: float) -> None:
        first_token = None
        length = 0
        done = False
        for line in response.iter_lines():
            length += len(line)
            if line == b"data: [DONE]":
                done = True
            elif first_token is None and line.startswith(b"data: ") and _FIRST_TOKEN.search(line):
                first_token = time.perf_counter()
                report("time to first token", started, 0)
        if not done:
            report("stream total", started, length, RuntimeError("stream ended without [DONE]"))
            return
        report("stream total", started, length)
