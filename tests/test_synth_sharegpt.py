"""tools/synth_sharegpt.py: the synthetic ShareGPT dataset it writes, and that mockgpt indexes it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from mockgpt import Index
from mockgpt.index.canonical import normalize

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "synth_sharegpt.py"
SIZE = 2_000_000


def synthesize(out: Path, *options: str) -> str:
    """Run the script for 2 MB into ``out``; its stderr."""
    command = [sys.executable, str(SCRIPT), str(out), "--size", "2MB", *options]
    return subprocess.run(command, check=True, capture_output=True, text=True).stderr


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synth.json"
    synthesize(out)
    return out


def conversations(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_bytes())
    return data


def test_sharegpt_shape_laid_out_like_the_real_file(synthetic: Path) -> None:
    data = synthetic.read_bytes()
    items = conversations(synthetic)
    for item in items:
        assert set(item) == {"id", "conversations"}
        assert re.fullmatch(r"[A-Za-z0-9]{7}_\d+", item["id"])
        for turn in item["conversations"]:
            assert set(turn) == {"from", "value"}
            assert turn["from"] in ("human", "gpt")
            assert isinstance(turn["value"], str)
    # The real file is json.dump(..., indent=2) with its default ASCII escapes.
    assert data == json.dumps(items, indent=2).encode("ascii")
    largest = max(len(json.dumps([item], indent=2)) for item in items)
    assert SIZE <= len(data) < SIZE + largest
    assert [path.name for path in synthetic.parent.iterdir()] == [synthetic.name]


def test_same_seed_same_bytes_and_other_seed_other_bytes(synthetic: Path, tmp_path: Path) -> None:
    stderr = synthesize(tmp_path / "again.json", "--seed", "0")
    assert (tmp_path / "again.json").read_bytes() == synthetic.read_bytes()
    assert re.fullmatch(r"wrote \S+again\.json: \d+ conversations, \d+ messages, 2\.0 MB in [\d.]+ s\n", stderr)
    synthesize(tmp_path / "other.json", "--seed", "1")
    assert (tmp_path / "other.json").read_bytes() != synthetic.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["again.json", "other.json"]


def openings(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The answers given to each (normalized) opening human message, in file order."""
    answers: dict[str, list[str]] = defaultdict(list)
    for item in items:
        turns = item["conversations"]
        if [turn["from"] for turn in turns[:2]] == ["human", "gpt"]:
            answers[normalize(turns[0]["value"])].append(turns[1]["value"])
    return answers


def test_edge_cases_are_present(synthetic: Path) -> None:
    items = conversations(synthetic)
    assert any(len(answers) > 1 for answers in openings(items).values())
    values = [turn["value"] for item in items for turn in item["conversations"]]
    assert any(not value.isascii() for value in values)
    assert any("\r\n" in value for value in values)
    assert any(value != value.strip() for value in values)
    assert any(item["conversations"][:1] and item["conversations"][0]["from"] == "gpt" for item in items)


def test_indexes_and_answers_a_repeated_opener(synthetic: Path, tmp_path: Path) -> None:
    index_path = tmp_path / "s.mgpt"
    command = [sys.executable, "-m", "mockgpt.index", str(synthetic), "-o", str(index_path)]
    assert subprocess.run(command, capture_output=True).returncode == 0
    items = conversations(synthetic)
    turns = [turn for item in items for turn in enumerate(item["conversations"])]
    expected = sum(1 for number, message in turns if number and message["from"] == "gpt")
    opener, answers = max(openings(items).items(), key=lambda pair: len(pair[1]))
    assert len(answers) > 1
    with Index(index_path) as index:
        assert index.header.answers == expected
        assert [answer.text for answer in index.lookup([("user", opener)])] == answers


def test_size_units(tmp_path: Path) -> None:
    def run(name: str, size: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / name), "--size", size], capture_output=True)

    assert run("units.json", "1.5KB").returncode == run("bytes.json", "1500").returncode == 0
    assert (tmp_path / "units.json").read_bytes() == (tmp_path / "bytes.json").read_bytes()
    assert len((tmp_path / "units.json").read_bytes()) >= 1500
    bad = run("bad.json", "7 parsecs")
    assert bad.returncode == 2
    assert b"not a size" in bad.stderr
    assert not (tmp_path / "bad.json").exists()
