"""``python -m mockgpt.index`` / ``mockgpt index`` and ``mockgpt lookup`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mockgpt import Index
from mockgpt.cli import main

from .conftest import sharegpt, write_sharegpt

GOOD = [
    sharegpt("a", ("human", "hi"), ("gpt", "Hello! How can I help?")),
    sharegpt("b", ("human", "hi"), ("gpt", "Hi there."), ("human", "Tell me a joke."), ("gpt", "No.")),
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mockgpt.index", *args], capture_output=True, text=True)


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


def test_index_writes_beside_the_source_by_default(tmp_path: Path) -> None:
    source = write_sharegpt(tmp_path / "chats.json", GOOD)
    result = run(str(source))
    assert result.returncode == 0, result.stderr
    assert "2 conversations read, 3 assistant turns indexed" in result.stdout
    assert "2 distinct keys, 1 with several answers" in result.stdout
    with Index(tmp_path / "chats.mgpt") as index:
        assert [a.text for a in index.lookup([("user", "hi")])] == ["Hello! How can I help?", "Hi there."]


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    data = json.dumps(GOOD + [sharegpt("c", ("human", "cut"), ("gpt", "off here"))], indent=2)
    path = tmp_path / "cut.json"
    path.write_text(data[: data.index("off here") + 3])
    return path


def test_truncated_input_fails_and_leaves_the_index_alone(tmp_path: Path, truncated: Path) -> None:
    existing = tmp_path / "cut.mgpt"
    existing.write_bytes(b"the previous index")
    result = run(str(truncated))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert str(truncated) in line and f"byte {truncated.stat().st_size}" in line and "--partial" in line
    assert existing.read_bytes() == b"the previous index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json", "cut.mgpt"]


def test_partial_indexes_what_is_complete(tmp_path: Path, truncated: Path) -> None:
    result = run(str(truncated), "--partial")
    assert result.returncode == 0, result.stderr
    assert f"warning: {truncated}: invalid JSON before byte {truncated.stat().st_size}" in result.stderr
    assert "2 conversations read" in result.stdout
    with Index(tmp_path / "cut.mgpt") as index:
        assert index.lookup([("user", "cut")]) == []
        assert len(index.lookup([("user", "hi")])) == 2


def test_invalid_json_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"id": "a", "conversations": []}, {"id": "b" "conversations": []}]')
    code, output = invoke("index", str(path))
    assert code == 1
    assert f"{path}: invalid JSON before byte" in output
    assert not (tmp_path / "bad.mgpt").exists()


@pytest.mark.parametrize("content", ["", "  \n", "[]", "[\n]\n"])
def test_empty_input(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.json"
    path.write_text(content)
    code, output = invoke("index", str(path))
    assert code == 1
    assert "empty file" in output or "no conversation to index" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json"]


def test_malformed_conversations_are_skipped_and_counted(tmp_path: Path) -> None:
    source = write_sharegpt(
        tmp_path / "mixed.json",
        [
            *GOOD,
            {"id": "no-list"},
            {"id": "no-value", "conversations": [{"from": "human"}]},
            {"id": "number", "conversations": [{"from": "human", "value": 3}]},
            {"id": "alien", "conversations": [{"from": "alien", "value": "x"}, {"from": "gpt", "value": "y"}]},
            sharegpt("lead", ("gpt", "I start."), ("human", "ok"), ("gpt", "fine")),
            sharegpt("lonely", ("human", "anyone?")),
        ],
    )
    code, output = invoke("index", str(source))
    assert code == 0, output
    assert "8 conversations read, 4 assistant turns indexed" in output
    for reason in [
        "1 no conversations list",
        "1 turn without from/value",
        "1 non-string from/value",
        "1 unknown role",
        "1 assistant turn with no message before it",
        "1 conversation without an assistant turn to index",
    ]:
        assert f"skipped: {reason}" in output
    assert "first skipped conversations: no-list, no-value, number, alien" in output


def write_lines(path: Path, objects: list[object]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return path


@pytest.mark.parametrize("forced", [False, True])
def test_sharegpt_jsonl(tmp_path: Path, forced: bool) -> None:
    source = write_lines(tmp_path / "chats.jsonl", GOOD)
    code, output = invoke("index", str(source), *(["--format", "sharegpt-jsonl"] if forced else []))
    assert code == 0, output
    with Index(tmp_path / "chats.mgpt") as index:
        assert len(index.lookup([("user", "hi")])) == 2


def test_openai_jsonl_ids_are_line_numbers(tmp_path: Path) -> None:
    lines = [
        {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "yo"}]},
    ]
    source = write_lines(tmp_path / "ft.jsonl", lines)
    code, output = invoke("index", str(source))
    assert code == 0, output
    with Index(tmp_path / "ft.mgpt") as index:
        (answer,) = index.lookup([("system", "Terse."), ("user", "2+2?")])
        assert (answer.text, answer.conversation_id, answer.turn) == ("4", "1", 2)
        assert index.lookup([("user", "hi")])[0].conversation_id == "2"


def test_jsonl_error_names_line_and_byte(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "chats.jsonl", GOOD)
    with open(source, "a") as file:
        file.write('{"id": "c", "conversa')
    code, output = invoke("index", str(source))
    assert code == 1
    assert f"invalid JSON on line 3 (byte {len(source.read_bytes()) - 21})" in output
    code, output = invoke("index", str(source), "--partial")
    assert code == 0 and "2 conversations read" in output


def test_lookup(tmp_path: Path) -> None:
    source = write_sharegpt(tmp_path / "chats.json", GOOD)
    invoke("index", str(source))
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": " hi\r\n"}]})
    code, output = invoke("lookup", str(tmp_path / "chats.mgpt"), "-", input=body)
    assert code == 0
    assert "user: 'hi'" in output and "key: " in output
    assert "answer 1: conversation b, turn 1" in output and "Hi there." in output
    code, output = invoke("lookup", str(tmp_path / "chats.mgpt"), input='[{"role": "user", "content": "bye"}]')
    assert code == 1 and output.endswith("miss\n")
    code, output = invoke("lookup", str(tmp_path / "chats.mgpt"), input='{"messages": 3}')
    assert code == 1 and "not a chat completion request" in output


def test_lookup_refuses_a_foreign_index(tmp_path: Path) -> None:
    (tmp_path / "x.mgpt").write_bytes(b"\0" * 200)
    code, output = invoke("lookup", str(tmp_path / "x.mgpt"), input='[{"role": "user", "content": "hi"}]')
    assert code == 1 and "not a mockgpt index" in output
