"""pytest fixtures for a real mockgpt server; installing mockgpt registers them.

- ``mockgpt_server``: one server for the session, serving ``--mockgpt-index``, the ``mockgpt_index``
  ini key, ``$MOCKGPT_INDEX``, or else the bundled demo;
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

from mockgpt.testing import Conversation, MockServer, index_conversations


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mockgpt")
    group.addoption("--mockgpt-index", help="Index or dataset the mockgpt_server fixture serves (default: the demo).")
    parser.addini("mockgpt_index", help="Index or dataset the mockgpt_server fixture serves (default: the demo).")


@pytest.fixture(scope="session")
def mockgpt_index_path(pytestconfig: pytest.Config) -> str | None:
    """What ``mockgpt_server`` serves; None for the bundled demo."""
    chosen = pytestconfig.getoption("mockgpt_index") or pytestconfig.getini("mockgpt_index")
    return str(chosen or os.environ.get("MOCKGPT_INDEX") or "") or None


@pytest.fixture(scope="session")
def mockgpt_server(mockgpt_index_path: str | None) -> Iterator[MockServer]:
    """A mockgpt server on a free loopback port for the whole session."""
    with MockServer(mockgpt_index_path) as server:
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
