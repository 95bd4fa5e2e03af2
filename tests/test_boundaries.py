"""Data flows one way: the wings import down, never up (index <- api <- serve; testing above all three),
the server never loads the indexer's parts, and the indexer never loads the server's."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import mockgpt


def loaded(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())


def wing(name: str) -> list[str]:
    package = f"mockgpt.{name}"
    path = [p for p in mockgpt.__path__][0] + f"/{name}"
    return [package] + [f"{package}.{module.name}" for module in pkgutil.iter_modules([path]) if module.name != "__main__"]


@pytest.mark.parametrize(
    ("name", "below"), [("index", []), ("api", ["index"]), ("serve", ["index", "api"]), ("testing", ["index", "api", "serve"])]
)
def test_a_wing_imports_only_the_wings_below_it(name: str, below: list[str]) -> None:
    modules = loaded(*wing(name))
    above = {"index", "api", "serve", "testing"} - {name, *below}
    assert not {module for module in modules if module.split(".")[:2][-1] in above and module.startswith("mockgpt.")}


def test_the_app_does_not_import_the_indexer() -> None:
    modules = loaded("mockgpt.serve.app")
    assert "litestar" in modules
    assert not {"ijson", "mockgpt.index.dataset", "mockgpt.index.writer", "mockgpt.index.build", "bpe_openai", "quicktok"} & modules
    # Metrics are an option: without it, their library is never loaded.
    assert "prometheus_client" not in modules


@pytest.mark.parametrize("module", ["mockgpt.index.build", "mockgpt.index.__main__"])
def test_the_indexer_does_not_import_the_server(module: str) -> None:
    modules = loaded(module)
    assert module in modules
    assert not {"litestar", "uvicorn", "mockgpt.serve.app", "mockgpt.api.chat_render"} & modules
