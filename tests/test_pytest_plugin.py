"""The pytest plugin as a user meets it: pytest in a subprocess, on a test file of theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = '''
import openai
import pytest


def test_session_server_serves_the_demo(mockgpt_client):
    reply = mockgpt_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hello!"}])
    assert reply.choices[0].message.content


def test_base_url(mockgpt_base_url):
    assert mockgpt_base_url.startswith("http://127.0.0.1:") and mockgpt_base_url.endswith("/v1")


def test_inline_conversations(mockgpt_make_server):
    server = mockgpt_make_server(
        [
            [{"role": "user", "content": "What is our refund window?"}, {"role": "assistant", "content": "30 days."}],
            {"id": "greeting", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "Hello!"}]},
        ],
        deterministic=True,
    )
    client = openai.OpenAI(base_url=server.base_url, api_key="test")
    ask = lambda text: client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": text}])
    assert ask("What is our refund window?").parse().choices[0].message.content == "30 days."
    assert ask("hi").headers["x-mockgpt-conversation-id"] == "greeting"
    with pytest.raises(openai.NotFoundError):
        ask("What else?")


def test_failing_test_still_stops_its_server(mockgpt_make_server):
    server = mockgpt_make_server([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]])
    with open(PIDFILE, "w") as file:
        file.write(str(server.pid))
    assert False, "this test fails on purpose"
'''


def test_plugin_in_a_users_suite(tmp_path: Path) -> None:
    (tmp_path / "test_example.py").write_text(EXAMPLE.replace("PIDFILE", repr(str(tmp_path / "server.pid"))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCKGPT_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.stdout.splitlines()[-1].startswith("1 failed, 3 passed in"), result.stdout[-3000:]
    assert "this test fails on purpose" in result.stdout
    pid = int((tmp_path / "server.pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_plugin_options_choose_the_index(tmp_path: Path, real_index: Path) -> None:
    (tmp_path / "test_index.py").write_text(
        "def test_index(mockgpt_base_url):\n"
        "    import httpx\n"
        "    assert httpx.get(mockgpt_base_url.removesuffix('/v1') + '/health').json()['answers'] > 60000\n"
    )
    (tmp_path / "pytest.ini").write_text(f"[pytest]\nmockgpt_index = {real_index}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_index.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert "1 passed" in result.stdout, result.stdout[-3000:]
