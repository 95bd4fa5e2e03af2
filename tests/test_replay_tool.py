"""tools/replay.py against a live server: the whole real prefix byte-exact, and corrupted data reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mockgpt.server import demo_index
from mockgpt.testing import MockServer

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "mockgpt" / "demo" / "conversations.json"


def replay(url: str, dataset: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(ROOT / "tools" / "replay.py"), str(dataset), "--url", url, "--concurrency", "8"]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_the_whole_real_prefix_replays_byte_exact(sharegpt_path: Path, real_index: Path) -> None:
    with MockServer(real_index) as server:
        result = replay(server.base_url, sharegpt_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:] + server.output[-2000:]
    assert "61,250 requests" in result.stdout and "every answer byte-exact" in result.stdout


def test_corrupted_answers_are_each_reported(tmp_path: Path) -> None:
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
    with MockServer(demo_index()) as server:
        result = replay(server.base_url, copy)
    assert result.returncode == 1
    mismatches = [line for line in result.stdout.splitlines() if line.startswith("MISMATCH")]
    assert len(mismatches) == 3
    for (id, recorded), line in zip(corrupted.items(), mismatches):
        assert f"conversation {id}, turn 1: answer differs at character 20" in line
        assert repr(recorded) in line
    assert "3 mismatches or errors" in result.stdout
