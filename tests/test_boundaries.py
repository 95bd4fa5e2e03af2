"""Data flows one way: the server never loads the indexer's parts, the indexer never loads the server's."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


def test_the_app_does_not_import_the_indexer() -> None:
    modules = loaded("mockgpt.app")
    assert "litestar" in modules
    assert not {"ijson", "mockgpt.dataset", "mockgpt.writer", "mockgpt.indexer", "bpe_openai"} & modules
    # Metrics are an option: without it, their library is never loaded.
    assert "prometheus_client" not in modules


@pytest.mark.parametrize("module", ["mockgpt.indexer", "mockgpt.index"])
def test_the_indexer_does_not_import_the_server(module: str) -> None:
    modules = loaded(module)
    assert module in modules
    assert not {"litestar", "uvicorn", "mockgpt.app", "mockgpt.render"} & modules
