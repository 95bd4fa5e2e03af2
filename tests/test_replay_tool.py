"""tools/replay.py against a live server: the whole real prefix byte-exact, corrupted data reported,
``--limit``, ``--stream`` and the progress line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from mockgpt.serve.server import demo_index
from mockgpt.testing import MockServer
from mockgpt.testing.export import turns

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "replay.py"
DEMO = ROOT / "mockgpt" / "demo" / "conversations.json"
DEMO_TURNS = 69


@pytest.fixture(scope="module")
def demo_server() -> Iterator[MockServer]:
    with MockServer(demo_index()) as server:
        yield server


def replay(url: str, dataset: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), str(dataset), "--url", url, "--concurrency", "8", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def mismatches(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("MISMATCH")]


def corrupt(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The demo with one character changed in three answers; each one's id and recorded text from there."""
    conversations = json.loads(DEMO.read_text())
    corrupted = {}
    # Single-turn conversations: a corrupted answer earlier in a conversation would change later prompts too.
    single = [
        c for c in conversations
        if len(c["conversations"]) == 2 and c["conversations"][0]["value"] != "Hello!" and len(c["conversations"][1]["value"]) > 60
    ]
    for conversation in single[:3]:
        turn = conversation["conversations"][1]
        turn["value"] = turn["value"][:20] + "#" + turn["value"][21:]
        corrupted[conversation["id"]] = turn["value"][20:60]
    copy = tmp_path / "corrupted.json"
    copy.write_text(json.dumps(conversations, ensure_ascii=False))
    return copy, corrupted


def test_the_whole_real_prefix_replays_byte_exact(sharegpt_path: Path, real_index: Path) -> None:
    with MockServer(real_index) as server:
        result = replay(server.base_url, sharegpt_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + server.output[-2000:]
    assert "61,250 requests" in result.stdout and "every answer byte-exact" in result.stdout


def test_corrupted_answers_are_each_reported(demo_server: MockServer, tmp_path: Path) -> None:
    copy, corrupted = corrupt(tmp_path)
    result = replay(demo_server.base_url, copy)
    assert result.returncode == 1
    assert len(mismatches(result)) == 3
    for (id, recorded), line in zip(corrupted.items(), mismatches(result)):
        assert f"conversation {id}, turn 1: answer differs at character 20" in line
        assert repr(recorded) in line
    assert "3 mismatches or errors" in result.stdout


def test_the_demo_replays_byte_exact_and_quietly_off_a_terminal(demo_server: MockServer) -> None:
    result = replay(demo_server.base_url, DEMO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{DEMO_TURNS} requests in " in result.stdout and "every answer byte-exact" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("limit", [1, 5, DEMO_TURNS + 10])
def test_limit_replays_the_first_turns_only(demo_server: MockServer, limit: int) -> None:
    result = replay(demo_server.base_url, DEMO, "--limit", str(limit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"\n{min(limit, DEMO_TURNS)} requests in " in "\n" + result.stdout


def test_limit_stops_before_a_corrupted_turn(demo_server: MockServer, tmp_path: Path) -> None:
    copy, corrupted = corrupt(tmp_path)
    first = next(iter(corrupted))
    place = [turn.conversation_id for conversation in turns([copy]) for turn in conversation].index(first)
    before = replay(demo_server.base_url, copy, "--limit", str(place))
    assert before.returncode == 0 and "every answer byte-exact" in before.stdout
    through = replay(demo_server.base_url, copy, "--limit", str(place + 1))
    assert through.returncode == 1
    assert len(mismatches(through)) == 1 and f"conversation {first}, turn 1: answer differs" in through.stdout


def test_nothing_to_replay_is_a_failure(demo_server: MockServer) -> None:
    result = replay(demo_server.base_url, DEMO, "--limit", "0")
    assert result.returncode == 1
    assert "requests in" not in result.stdout


def test_stream_checks_every_streamed_answer(demo_server: MockServer) -> None:
    result = replay(demo_server.base_url, DEMO, "--stream")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{DEMO_TURNS} requests in " in result.stdout
    assert f"{DEMO_TURNS} streams beside them" in result.stdout
    assert "every answer byte-exact" in result.stdout


def test_stream_reports_a_corrupted_answer_too(demo_server: MockServer, tmp_path: Path) -> None:
    copy, corrupted = corrupt(tmp_path)
    result = replay(demo_server.base_url, copy, "--stream")
    assert result.returncode == 1
    streamed = [line for line in mismatches(result) if ": streamed answer differs" in line]
    assert len(streamed) == 3 and len(mismatches(result)) == 6
    for (id, recorded), line in zip(corrupted.items(), streamed):
        assert f"conversation {id}, turn 1: streamed answer differs at character 20" in line
        assert repr(recorded) in line
    assert "6 mismatches or errors" in result.stdout


def test_an_unknown_server_path_is_an_http_error_per_turn(demo_server: MockServer) -> None:
    result = replay(demo_server.url + "/v2", DEMO, "--limit", "2")
    assert result.returncode == 1
    assert len(mismatches(result)) == 2
    assert all(": HTTP 404: " in line for line in mismatches(result))


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("replay_tool", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # msgspec resolves the Structs' annotations through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stream(*events: object) -> bytes:
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"


def test_the_stream_check_compares_usage_and_framing(tool: ModuleType) -> None:
    request = tool.Request(0, tool.Turn("c", 1, [{"role": "user", "content": "Hi"}], "Hello there"), 0)
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    plain = tool.Completion([tool.Choice(tool.Message("Hello there"))], usage)
    pieces = [{"choices": [{"index": 0, "delta": {"content": text}}], "usage": None} for text in ("Hello", " there")]
    report = tool.Report()
    report.check_stream(request, plain, 200, stream(*pieces, {"choices": [], "usage": usage}), 0.001)
    assert report.failures == []
    report.check_stream(request, plain, 200, stream(*pieces, {"choices": [], "usage": {**usage, "total_tokens": 12}}), 0.001)
    report.check_stream(request, plain, 200, stream(*pieces)[: -len(b"data: [DONE]\n\n")], 0.001)
    report.check_stream(request, plain, 200, stream(*pieces[:1], {"choices": [], "usage": usage}), 0.001)
    assert report.lines() == [
        "MISMATCH conversation c, turn 1: streamed usage differs: got"
        " {'prompt_tokens': 9, 'completion_tokens': 2, 'total_tokens': 12}, plain response"
        " {'prompt_tokens': 9, 'completion_tokens': 2, 'total_tokens': 11}",
        "MISMATCH conversation c, turn 1: the stream is not well-formed: not data: events ending in data: [DONE]",
        "MISMATCH conversation c, turn 1: streamed answer differs at character 5: got '', recorded ' there'",
    ]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_shows_on_a_terminal(demo_server: MockServer) -> None:
    primary, secondary = os.openpty()
    command = [sys.executable, str(SCRIPT), str(DEMO), "--url", demo_server.base_url]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=secondary, text=True) as process:
        os.close(secondary)
        output = process.communicate(timeout=120)[0]
        shown = b""
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # the terminal's other end is closed
                break
            if not data:
                break
            shown += data
    os.close(primary)
    assert process.returncode == 0, output
    assert f"\r{DEMO_TURNS} / {DEMO_TURNS} requests, ".encode() in shown and b" per second" in shown


def test_tool_loops_replay_byte_exact_and_a_changed_call_is_reported(tmp_path: Path) -> None:
    from .test_tools import LEGACY, LOOP, MIXED

    source = tmp_path / "agents.jsonl"
    source.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in [LOOP, MIXED, LEGACY]))
    with MockServer(source) as server:
        result = replay(server.base_url, source, "--stream")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "every answer byte-exact" in result.stdout
        changed = tmp_path / "changed.jsonl"
        moved = json.loads(json.dumps(MIXED))
        moved[1]["tool_calls"][0]["id"] = "call_other"
        changed.write_text(json.dumps({"messages": moved}) + "\n")
        result = replay(server.base_url, changed, "--stream")
    assert result.returncode == 1
    assert "tool calls differ: got [('call_book', 'book', 'not json at all')], recorded [('call_other', 'book', 'not json at all')]" in result.stdout
    assert "streamed tool calls differ" in result.stdout
