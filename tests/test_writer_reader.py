"""The index file: collisions, and files the reader must refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from mockgpt import Index, IndexFormatError
from mockgpt.index.build import build
from mockgpt.index.fileformat import HEADER

from .conftest import sharegpt, write_sharegpt


def constant(data: bytes | memoryview) -> bytes:
    return b"\x01" * 16


def conversations(count: int) -> list[dict[str, object]]:
    return [
        sharegpt(f"c{n}", ("human", f"question {n % 50}"), ("gpt", f"answer {n}"), ("human", "more"), ("gpt", f"more {n}"))
        for n in range(count)
    ]


def test_every_key_colliding_still_finds_the_right_records(tmp_path: Path) -> None:
    source = write_sharegpt(tmp_path / "many.json", conversations(200))
    build([source], tmp_path / "collide.mgpt", hash=constant)
    with Index(tmp_path / "collide.mgpt", hash=constant) as index:
        assert index.header.keys == 50 + 200
        for n in range(200):
            first = index.lookup([("user", f"question {n % 50}")])
            assert [a.text for a in first] == [f"answer {m}" for m in range(n % 50, 200, 50)]
            (second,) = index.lookup([("user", f"question {n % 50}"), ("assistant", f"answer {n}"), ("user", "more")])
            assert (second.text, second.conversation_id, second.turn) == (f"more {n}", f"c{n}", 3)
        assert index.lookup([("user", "question 50")]) == []


@pytest.fixture
def small_index(tmp_path: Path) -> Path:
    source = write_sharegpt(tmp_path / "small.json", conversations(3))
    build([source], tmp_path / "small.mgpt")
    return tmp_path / "small.mgpt"


def test_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.mgpt"
    foreign.write_bytes(b'[{"id": "x", "conversations": []}]' * 10)
    with pytest.raises(IndexFormatError, match="not a mockgpt index"):
        Index(foreign)


def test_short_file(tmp_path: Path) -> None:
    (tmp_path / "short.mgpt").write_bytes(b"MOCK")
    with pytest.raises(IndexFormatError, match="not a mockgpt index"):
        Index(tmp_path / "short.mgpt")


def test_truncated_index(small_index: Path) -> None:
    data = small_index.read_bytes()
    small_index.write_bytes(data[: len(data) - 100])
    with pytest.raises(IndexFormatError, match="truncated"):
        Index(small_index)


@pytest.mark.parametrize("field, name", [(1, "format version"), (2, "canonical version")])
def test_other_version(small_index: Path, field: int, name: str) -> None:
    header = list(HEADER.unpack(small_index.read_bytes()[: HEADER.size]))
    header[field] += 1
    with open(small_index, "r+b") as file:
        file.write(HEADER.pack(*header))
    with pytest.raises(IndexFormatError, match=f"{name} {header[field]}.*rebuild"):
        Index(small_index)


def test_answers_in_dataset_order_with_metadata(small_index: Path) -> None:
    with Index(small_index) as index:
        (answer,) = index.lookup([("user", "question 1")])
        assert (answer.conversation_id, answer.turn, answer.text) == ("c1", 1, "answer 1")
        assert answer.completion_tokens == len(answer.pieces())
        assert b"".join(answer.pieces()) == b"answer 1"
        assert index.meta.sources == ["small.json"]
