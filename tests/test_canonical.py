"""Requests that differ only in what the canonicalizer ignores hit the same recorded answer."""

from __future__ import annotations

import unicodedata

import pytest

from mockgpt import Index
from mockgpt.index import canonical
from mockgpt.index.build import build
from mockgpt.index.canonical import Message, TextPart

from .conftest import sharegpt, write_sharegpt

CAFE = unicodedata.normalize("NFC", "Un café, s'il vous plaît.\nMerci")


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    directory = tmp_path_factory.mktemp("canonical")
    source = write_sharegpt(
        directory / "small.json",
        [
            sharegpt("cafe", ("human", CAFE), ("gpt", "Voilà.")),
            sharegpt("sys", ("system", "Be brief."), ("human", "Why is the sky blue?"), ("gpt", "Rayleigh.")),
            sharegpt("tool", ("human", "Weather?"), ("gpt", "Checking."), ("tool", "12 C"), ("gpt", "It is 12 C.")),
        ],
    )
    build([source], directory / "small.mgpt")
    return Index(directory / "small.mgpt")


def answer(index: Index, messages: list[Message]) -> str | None:
    pairs = [(canonical.ROLES[m.role], canonical.text_of(m.content)) for m in messages]
    answers = index.lookup(pairs)
    return answers[0].text if answers else None


@pytest.mark.parametrize(
    "content",
    [
        CAFE,
        [TextPart("text", CAFE)],
        [TextPart("text", CAFE[:7]), TextPart("image_url"), TextPart("text", CAFE[7:])],
        CAFE.replace("\n", "\r\n"),
        f"  \n\t{CAFE} \n",
        unicodedata.normalize("NFD", CAFE),
    ],
    ids=["string", "parts", "split-parts", "crlf", "outer-whitespace", "nfd"],
)
def test_equivalent_content_hits(index: Index, content: str | list[TextPart]) -> None:
    assert answer(index, [Message("user", content)]) == "Voilà."


@pytest.mark.parametrize("changed", [CAFE.replace("café", "cafe"), CAFE + ".", CAFE.replace("M", "m"), CAFE[1:]])
def test_one_changed_character_misses(index: Index, changed: str) -> None:
    assert answer(index, [Message("user", changed)]) is None


@pytest.mark.parametrize("system", ["system", "developer"])
@pytest.mark.parametrize("user", ["user", "human"])
def test_role_aliases_hit(index: Index, system: str, user: str) -> None:
    messages = [Message(system, "Be brief."), Message(user, "Why is the sky blue?")]
    assert answer(index, messages) == "Rayleigh."


@pytest.mark.parametrize("assistant", ["assistant", "gpt", "chatgpt", "bing", "bard", "model"])
@pytest.mark.parametrize("tool", ["tool", "function"])
def test_assistant_and_tool_aliases_hit(index: Index, assistant: str, tool: str) -> None:
    messages = [Message("user", "Weather?"), Message(assistant, "Checking."), Message(tool, "12 C")]
    assert answer(index, messages) == "It is 12 C."


def test_role_counts(index: Index) -> None:
    assert answer(index, [Message("assistant", CAFE)]) is None
    assert answer(index, [Message("user", "Be brief."), Message("user", "Why is the sky blue?")]) is None


def test_null_content_is_empty() -> None:
    assert canonical.text_of(None) == "" == canonical.text_of([])


def test_framing_is_unambiguous() -> None:
    one = canonical.frame([("user", "a"), ("user", "b")])
    other = canonical.frame([("user", "a\x00\x00\x00\x00ub")])
    assert one != other
    assert canonical.frame([("user", "ab")]) != canonical.frame([("user", "a"), ("user", "b")])
    assert canonical.frame([("user", "")]) != canonical.frame([])


@pytest.mark.parametrize(
    "text", ["café", "cafe\u0301", "e\u0316\u0301 à la carte", "한국어", "ஆ\u0bbe", "x" + "\u0301\u0316" * 15]
)
def test_text_is_nfc(text: str) -> None:
    assert canonical.normalize(text) == unicodedata.normalize("NFC", text)


@pytest.mark.parametrize(("marks", "joiners"), [(30, 0), (31, 1), (61, 2), (90, 2)])
@pytest.mark.parametrize("pair", ["\u0301\u0316", "\U0001d165\U0001d16d"])
def test_long_runs_of_marks_are_made_stream_safe(marks: int, joiners: int, pair: str) -> None:
    # Out of canonical order, so not in NFC: a joiner after every 30 marks in a row, then NFC.
    text = "a" + (pair * marks)[:marks]
    normalized = canonical.normalize(text)
    assert normalized.count("\u034f") == joiners
    assert unicodedata.is_normalized("NFC", normalized)
    assert canonical.normalize(normalized) == normalized
    # What the joiners cut apart is each normalized as it stood.
    pieces = normalized.split("\u034f")
    assert [unicodedata.normalize("NFC", piece) for piece in pieces] == pieces
