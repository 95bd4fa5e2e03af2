"""pytest fixtures for a real mockgpt server; installing mockgpt registers them.

- ``mockgpt_server``: one server for the session, serving ``--mockgpt-index``, the ``mockgpt_index``
  ini key, ``$MOCKGPT_INDEX``, or else the bundled demo; with ``--mockgpt-record`` (or the
  ``mockgpt_record`` ini key) it answers what that ``.jsonl`` dataset lacks from ``$OPENAI_BASE_URL``
  (the OpenAI API by default, with ``$OPENAI_API_KEY``) and appends the answers to it;
- ``mockgpt_base_url``: its ``http://127.0.0.1:PORT/v1``;
- ``mockgpt_client``: an ``openai.OpenAI`` pointed at it (skipped if openai is not installed);
- ``mockgpt_make_server(conversations, **serve_options)``: a server of its own for conversations
  stated inline, stopped when the test ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mockgpt.testing.mock_server import Conversation, MockServer, index_conversations

OPENAI_BASE_URL = "https://api.openai.com/v1"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mockgpt")
    group.addoption("--mockgpt-index", help="Index or dataset the mockgpt_server fixture serves (default: the demo).")
    parser.addini("mockgpt_index", help="Index or dataset the mockgpt_server fixture serves (default: the demo).")
    record = "Answer what the --mockgpt-index dataset (.jsonl) lacks from $OPENAI_BASE_URL and append the answers to it."
    group.addoption("--mockgpt-record", action="store_true", help=record)
    parser.addini("mockgpt_record", type="bool", default=False, help=record)


def pytest_configure(config: pytest.Config) -> None:
    # Checked before any test runs: a wrong option is the run's error, not each test's.
    if _recording(config) and not str(_index_path(config) or "").endswith(".jsonl"):
        raise pytest.UsageError(
            "--mockgpt-record appends to the dataset mockgpt_server serves: give one with"
            " --mockgpt-index or mockgpt_index, an OpenAI chat JSONL file (.jsonl) that may not exist yet"
        )


def _recording(config: pytest.Config) -> bool:
    return bool(config.getoption("mockgpt_record", False) or config.getini("mockgpt_record"))


def _index_path(config: pytest.Config) -> str | None:
    chosen = config.getoption("mockgpt_index") or config.getini("mockgpt_index")
    return str(chosen or os.environ.get("MOCKGPT_INDEX") or "") or None


@pytest.fixture(scope="session")
def mockgpt_index_path(pytestconfig: pytest.Config) -> str | None:
    """What ``mockgpt_server`` serves; None for the bundled demo."""
    return _index_path(pytestconfig)


@pytest.fixture(scope="session")
def mockgpt_server(pytestconfig: pytest.Config, mockgpt_index_path: str | None) -> Iterator[MockServer]:
    """A mockgpt server on a free loopback port for the whole session; it records misses with
    ``--mockgpt-record``."""
    recording: dict[str, Any] = {}
    if _recording(pytestconfig):
        # The key stays in the environment, which the server inherits: never on its command line.
        recording = {"upstream": os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL, "record": mockgpt_index_path}
    with MockServer(mockgpt_index_path, **recording) as server:
        yield server


@pytest.fixture(scope="session")
def mockgpt_base_url(mockgpt_server: MockServer) -> str:
    """The session server's base URL, ``http://127.0.0.1:PORT/v1``."""
    return mockgpt_server.base_url


@pytest.fixture
def mockgpt_client(mockgpt_base_url: str) -> Iterator[Any]:
    """An ``openai.OpenAI`` client of the session server."""
    openai = pytest.importorskip("openai", reason="the mockgpt_client fixture needs the openai package")
    with openai.OpenAI(base_url=mockgpt_base_url, api_key="mockgpt", max_retries=0) as client:
        yield client


@pytest.fixture
def mockgpt_make_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., MockServer]]:
    """Make a server of conversations given inline (ShareGPT dicts or OpenAI message lists)."""
    servers: list[MockServer] = []

    def make(conversations: list[Conversation], **serve_options: Any) -> MockServer:
        index = index_conversations(conversations, tmp_path_factory.mktemp("mockgpt") / "inline.mgpt")
        server = MockServer(index, **serve_options)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
