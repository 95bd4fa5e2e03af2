"""The real ShareGPT_V3 prefix, indexed end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ijson
import pytest
from bpe_openai import get_encoding

from mockgpt import Index
from mockgpt.index.canonical import ROLES


def complete_conversations(path: Path) -> Iterator[dict[str, Any]]:
    """The file's conversations up to where it is cut off, read independently of mockgpt."""
    with open(path, "rb") as file:
        try:
            yield from ijson.items(file, "item")
        except ijson.IncompleteJSONError:
            return


def test_every_assistant_turn_is_found_byte_exact(sharegpt_path: Path, real_index: Path) -> None:
    expected = 0
    with Index(real_index) as index:
        for conversation in complete_conversations(sharegpt_path):
            messages = [(ROLES[turn["from"]], turn["value"]) for turn in conversation["conversations"]]
            for turn, (role, text) in enumerate(messages):
                if role != "assistant" or turn == 0:
                    continue
                expected += 1
                answers = index.lookup(messages[:turn])
                found = [(a.conversation_id, a.turn) for a in answers if a.text == text]
                assert (conversation["id"], turn) in found, (conversation["id"], turn)
        assert expected > 60_000
        assert index.header.answers == expected


def real_sample(path: Path, count: int) -> Iterator[tuple[list[tuple[str, str]], int]]:
    """(messages, turn) of answers with non-ASCII text, code, and plain prose, from the real prefix."""
    wanted = {"non-ascii": count, "code": count, "plain": count}
    for conversation in complete_conversations(path):
        messages = [(ROLES[turn["from"]], turn["value"]) for turn in conversation["conversations"]]
        for turn, (role, text) in enumerate(messages):
            if role != "assistant" or turn == 0:
                continue
            kind = "code" if "```" in text else "plain" if text.isascii() else "non-ascii"
            if wanted[kind]:
                wanted[kind] -= 1
                yield messages, turn
        if not any(wanted.values()):
            return


def test_tokens_agree_with_o200k_base(sharegpt_path: Path, real_index: Path) -> None:
    encoding = get_encoding("o200k_base")
    with Index(real_index) as index:
        assert index.meta.encoding == "o200k_base"
        for messages, turn in real_sample(sharegpt_path, 40):
            text = messages[turn][1]
            answer = next(a for a in index.lookup(messages[:turn]) if a.turn == turn and a.text == text)
            ids = encoding.encode_ordinary(text)
            pieces = answer.pieces()
            assert answer.completion_tokens == len(ids) == len(pieces)
            assert pieces == [encoding.decode_single_token_bytes(token) for token in ids]
            assert b"".join(pieces) == text.encode()
            prompt = sum(3 + 1 + len(encoding.encode_ordinary(content)) for _, content in messages[:turn]) + 3
            assert answer.prompt_tokens == prompt


@pytest.mark.parametrize("role", ["user", "assistant", "system", "tool"])
def test_role_names_are_one_token(role: str) -> None:
    assert len(get_encoding("o200k_base").encode_ordinary(role)) == 1
