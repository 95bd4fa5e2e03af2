"""The README's code blocks, run, so that they stay true.

- ```python blocks run as scripts; one that starts with ``# test_*.py`` is a user's test file and runs
  under pytest in a subprocess, the way a user meets the plugin.
- ```sh blocks run line by line through bash.
- ```shell blocks are shown, not run: they install, serve forever, or need a dataset or tool not here.

Everything runs in a scratch directory that links the repository's ``mockgpt/``, ``tools/`` and
``locustfile.py``, against a demo server listening where the blocks say ``127.0.0.1:8000``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mockgpt.testing import MockServer

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
BLOCKS = [(language, code) for language, code in FENCE.findall((ROOT / "README.md").read_text())]
ADDRESS = "127.0.0.1:8000"


def blocks(language: str) -> list[str]:
    return [code for found, code in BLOCKS if found == language]


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    with MockServer() as server:
        yield server


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    for name in ["mockgpt", "tools", "locustfile.py"]:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def environment() -> dict[str, str]:
    """This interpreter's scripts (``mockgpt``, ``locust``, ``python``) first, and no stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOCKGPT_", "OPENAI_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_the_readme_has_blocks_of_each_kind() -> None:
    assert blocks("python") and blocks("sh") and blocks("shell")
    assert {language for language, _ in BLOCKS} == {"python", "sh", "shell"}


@pytest.mark.parametrize("code", blocks("python"))
def test_python_block(code: str, server: MockServer, scratch: Path) -> None:
    code = code.replace(ADDRESS, server.url.removeprefix("http://"))
    first = code.splitlines()[0]
    if re.fullmatch(r"# (test_\w+\.py)", first):
        name = first[2:]
        (scratch / name).write_text(code)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
    else:
        (scratch / "block.py").write_text(code)
        command = [sys.executable, "block.py"]
    result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=300, env=environment())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if command[1] == "-m":
        tests = len(re.findall(r"^def test_", code, re.MULTILINE))
        assert f"{tests} passed" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("code", blocks("sh"))
def test_sh_block(code: str, server: MockServer, scratch: Path) -> None:
    for line in code.splitlines():
        line = line.replace(ADDRESS, server.url.removeprefix("http://"))
        result = subprocess.run(
            ["bash", "-c", line], cwd=scratch, capture_output=True, text=True, timeout=300, env=environment()
        )
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
