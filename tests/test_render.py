"""Rendering: the fast path of the common stream sends the very bytes of the general one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mockgpt import Index
from mockgpt.api import chat_render
from mockgpt.index import replay
from mockgpt.index.build import build

from .conftest import sharegpt, write_sharegpt

ANSWERS = ["Hi! 👋 Ça va? 日本語も大丈夫です。", "", "x" * 300, "Quoted: \"yes\",\n\ttabbed \\ and 👋 too."]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    directory = tmp_path_factory.mktemp("render")
    source = write_sharegpt(directory / "chats.json", [sharegpt(f"c{n}", ("human", f"q{n}"), ("gpt", text)) for n, text in enumerate(ANSWERS)])
    build([source], directory / "chats.mgpt")
    with Index(directory / "chats.mgpt") as index:
        yield index


@pytest.mark.parametrize("number", range(len(ANSWERS)))
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("max_tokens", [None, 3])
def test_one_text_choice_streams_as_the_general_path_would(
    index: Index, number: int, include_usage: bool, max_tokens: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (answer,) = index.lookup([("user", f"q{number}")])
    cut = replay.cut(answer, max_tokens, None)
    fast = list(chat_render.chat_chunks("chatcmpl-1", 1, "gpt-4o", "fp_0", [cut], include_usage))
    # The general path, for a choice with a tool call that is not there.
    monkeypatch.setattr(replay.Cut, "calls", property(lambda self: [None]))
    monkeypatch.setattr(chat_render, "_deltas", lambda cut: (chat_render.Delta(content=piece) for piece in replay.pieces(cut)))
    general = list(chat_render.chat_chunks("chatcmpl-1", 1, "gpt-4o", "fp_0", [cut], include_usage))
    assert fast == general and len(fast) == max(1, len(list(replay.pieces(cut))))
