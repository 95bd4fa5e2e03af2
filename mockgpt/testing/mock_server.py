"""A real mockgpt server in a background process, for tests and scripts.

    with MockServer(index="data/chats.json", deterministic=True) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")

``index_conversations`` turns conversations written inline into an index to serve.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import msgspec

from mockgpt.errors import MockGPTError
from mockgpt.index import canonical

__all__ = ["MockServer", "ServerError", "index_conversations"]

_READY = re.compile(r"^mockgpt: serving .* on (http://\S+)$")
# Passed in the environment: a command line is visible to every user of the machine.
_SECRETS = frozenset({"api_key", "upstream_api_key"})


class ServerError(MockGPTError):
    """The server did not start."""


class MockServer:
    """``mockgpt serve`` on a free loopback port, in a child process; a context manager.

    ``options`` are ``mockgpt serve``'s, by their Python names: ``workers``, ``api_key``, ``ttft_ms``, ``rpm``, ...
    """

    def __init__(self, index: str | os.PathLike[str] | None = None, *, timeout: float = 120.0, **options: object) -> None:
        self.index = index
        self.options = options
        self.timeout = timeout
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._output: list[str] = []

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def url(self) -> str:
        """The server's root URL, without ``/v1``."""
        return self.base_url.removesuffix("/v1")

    def start(self) -> MockServer:
        command = [sys.executable, "-m", "mockgpt", "serve", "--host", "127.0.0.1", "--port", "0"]
        env = dict(os.environ)
        if self.index is not None:
            command += ["--index", os.fspath(self.index)]
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            if name in _SECRETS and value is not None:
                env[f"MOCKGPT_{name.upper()}"] = str(value)
            elif value is True:
                command.append(flag)
            elif value is not None and value is not False:
                command += [flag, str(value)]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env
        )
        lines: queue.Queue[str | None] = queue.Queue()
        assert self._process.stdout is not None
        self._pump = threading.Thread(target=_pump, args=(self._process.stdout, lines, self._output), daemon=True)
        self._pump.start()
        self.base_url = self._wait_ready(lines)
        return self

    def _wait_ready(self, lines: queue.Queue[str | None]) -> str:
        while True:
            try:
                line = lines.get(timeout=self.timeout)
            except queue.Empty:
                self.stop()
                raise ServerError(f"mockgpt serve did not start within {self.timeout} s") from None
            if line is None:
                self.stop()
                raise ServerError("mockgpt serve exited: " + "".join(self._output).strip())
            match = _READY.match(line.strip())
            if match:
                return match.group(1)

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._pump.join(5)
        if process.stdout is not None:
            process.stdout.close()

    @property
    def output(self) -> str:
        """What the server printed so far."""
        return "".join(self._output)

    def __enter__(self) -> MockServer:
        return self.start()

    def __exit__(
        self, type: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _pump(stream: IO[str], lines: queue.Queue[str | None], output: list[str]) -> None:
    for line in stream:
        output.append(line)
        lines.put(line)
    lines.put(None)


Conversation = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def index_conversations(conversations: Iterable[Conversation], path: str | os.PathLike[str]) -> Path:
    """Index conversations given inline into ``path``.

    Each is a ShareGPT dict (``{"id", "conversations": [{"from", "value"}]}``) or a list of OpenAI
    messages (``[{"role", "content"}, ...]``, ids ``inline-1``, ``inline-2``, ...).
    """
    from mockgpt.index.build import build

    path = Path(path)
    source = path.with_suffix(".jsonl")
    with open(source, "wb") as file:
        for number, conversation in enumerate(conversations, 1):
            file.write(msgspec.json.encode(_sharegpt(conversation, number)) + b"\n")
    build([source], path, format="sharegpt-jsonl")
    return path


def _sharegpt(conversation: Conversation, number: int) -> Mapping[str, Any]:
    if isinstance(conversation, Mapping):
        return conversation
    turns = [
        {"from": message["role"], "value": canonical.text_of(msgspec.convert(message, canonical.Message).content)}
        for message in conversation
    ]
    return {"id": f"inline-{number}", "conversations": turns}
