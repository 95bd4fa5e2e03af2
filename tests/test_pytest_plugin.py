"""The pytest plugin as a user meets it: pytest in a subprocess, on a test file of theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The official client's behaviour: CI runs these against the oldest supported openai release too.
pytestmark = pytest.mark.sdk

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


RECORDED = '''
import openai
import pytest


def ask(client, text):
    return client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": text}]).choices[0].message.content


def test_asks(mockgpt_client):
    assert ask(mockgpt_client, "Ship to Mars?") == "Not yet: Earth only."


def test_a_miss_is_a_404_unless_recording(mockgpt_client):
    with pytest.raises(openai.NotFoundError):
        ask(mockgpt_client, "Ship to Venus?")
'''


def test_plugin_records_then_replays(tmp_path: Path) -> None:
    from mockgpt.index.build import build
    from mockgpt.testing import MockServer

    from .conftest import sharegpt, write_sharegpt

    secret = "sk-upstream-secret-plugin-7c2e"
    source = write_sharegpt(tmp_path / "upstream.json", [
        sharegpt("mars", ("human", "Ship to Mars?"), ("gpt", "Not yet: Earth only.")),
        sharegpt("venus", ("human", "Ship to Venus?"), ("gpt", "Never.")),
    ])
    build([source], tmp_path / "upstream.mgpt")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_recorded.py").write_text(RECORDED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCKGPT_")}

    def run(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mockgpt-index", "fixtures.jsonl", *options],
            cwd=suite, capture_output=True, text=True, env=env, timeout=300,
        )

    with MockServer(tmp_path / "upstream.mgpt", api_key=secret) as upstream:
        env |= {"OPENAI_BASE_URL": upstream.base_url, "OPENAI_API_KEY": secret}
        recorded = run("--mockgpt-record", "-k", "test_asks")
        assert "1 passed" in recorded.stdout, recorded.stdout[-3000:]
        # Without the flag, what the fixtures lack stays a 404 though the upstream could answer it.
        replayed = run()
        assert "2 passed" in replayed.stdout, replayed.stdout[-3000:]
    replayed = run()
    assert "2 passed" in replayed.stdout, replayed.stdout[-3000:]
    assert (suite / "fixtures.jsonl").read_text().splitlines() == [
        '{"messages":[{"role":"user","content":"Ship to Mars?"},{"role":"assistant","content":"Not yet: Earth only."}]}'
    ]
    assert not any(secret.encode() in path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())


def test_recording_needs_a_jsonl_dataset(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmockgpt_record = true\nmockgpt_index = chats.mgpt\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 4
    assert "--mockgpt-record appends to the dataset mockgpt_server serves" in result.stderr
