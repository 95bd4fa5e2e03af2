"""Request sets that hit: every assistant turn of a dataset, as the request that gets it back.

Used by ``mockgpt export-requests``, the locustfile and tools/replay.py. A request built here from a
dataset hits any index built from that dataset.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import msgspec

from mockgpt.errors import DatasetError, IndexFormatError
from mockgpt.index import canonical, dataset
from mockgpt.index.fileformat import MAGIC
from mockgpt.index.reader import Index

__all__ = ["FORMATS", "Turn", "export", "sample", "turns"]

FORMATS = ("openai", "vllm")


class Turn(NamedTuple):
    """An assistant turn: the messages before it (API roles), and what was answered."""

    conversation_id: str
    turn: int
    messages: list[dict[str, Any]]
    answer: str
    calls: tuple[canonical.Call, ...] = ()


def turns(
    sources: Sequence[str | os.PathLike[str]],
    *,
    partial: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[list[Turn]]:
    """Each conversation's assistant turns with a message before them, in order, one list per conversation.

    With ``partial``, a source cut off mid-way yields what came before the break. ``on_progress`` is
    called with the bytes read so far, of all sources together.
    """
    done = 0
    for source in sources:
        _not_an_index(source)
        progress = None if on_progress is None else (lambda n, done=done: on_progress(done + n))
        try:
            for item in dataset.read(source, on_progress=progress):
                if isinstance(item, dataset.Conversation):
                    yield list(_turns(item))
        except DatasetError:
            if not partial:
                raise
        # The reader reports every few hundred conversations; the whole source counts once it is read.
        done += os.path.getsize(source)
        if on_progress is not None:
            on_progress(done)


def _not_an_index(source: str | os.PathLike[str]) -> None:
    """``DatasetError`` naming the datasets to read instead if ``source`` is an index file: an index keeps
    its conversations' keys, not the messages a request is made of."""
    with open(source, "rb") as file:
        if file.read(len(MAGIC)) != MAGIC:
            return
    try:
        with Index(source) as index:
            built = ", ".join(index.meta.sources)
    except IndexFormatError:
        built = ""
    hint = f" ({built})" if built else ""
    raise DatasetError(f"{os.fspath(source)} is a mockgpt index, not a dataset: export requests from the dataset it was built from{hint}")


def _turns(conversation: dataset.Conversation) -> Iterator[Turn]:
    messages = list(_api_messages(conversation.messages))
    for number, (role, text, calls) in enumerate(conversation.messages):
        if role == "assistant" and number:
            yield Turn(conversation.id, number, messages[:number], text, calls)


def _api_messages(messages: Iterable[tuple[str, str, tuple[canonical.Call, ...]]]) -> Iterator[dict[str, Any]]:
    """Canonical messages as the API takes them: an assistant's tool calls, and each tool result naming
    the call it answers, in order."""
    pending: list[str] = []
    for role, text, calls in messages:
        message: dict[str, Any] = {"role": role, "content": text}
        if calls:
            message["content"] = text or None
            message["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}} for call in calls
            ]
            pending = [call.id for call in calls]
        elif role == "tool" and pending:
            message["tool_call_id"] = pending.pop(0)
        yield message


def sample(items: Iterable[list[Turn]], n: int | None, seed: int, walk: bool) -> Iterator[Turn]:
    """All turns in dataset order, or ``n`` of them drawn at random; with ``walk``, whole conversations
    (``n`` of them), each in order, so that prompts grow as in a real chat."""
    units: Iterable[list[Turn]] = items if walk else ([turn] for conversation in items for turn in conversation)
    if n is not None:
        units = _reservoir((unit for unit in units if unit), n, random.Random(seed))
    for unit in units:
        yield from unit


def _reservoir(units: Iterable[list[Turn]], n: int, rng: random.Random) -> list[list[Turn]]:
    """``n`` units drawn uniformly in one pass, in constant memory, then shuffled."""
    chosen: list[list[Turn]] = []
    for seen, unit in enumerate(units):
        if len(chosen) < n:
            chosen.append(unit)
        elif (slot := rng.randrange(seen + 1)) < n:
            chosen[slot] = unit
    rng.shuffle(chosen)
    return chosen


def export(
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    n: int | None = None,
    seed: int = 0,
    format: str = "openai",
    walk: bool = False,
    model: str = "gpt-4o",
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write a request set to ``output`` (JSONL); returns how many requests it holds.

    ``openai``: chat completion bodies. ``vllm``: ``{"prompt", "output_tokens"}`` lines for vLLM's
    "custom" benchmark dataset, from the turns whose prompt is one user message (what vLLM sends).
    ``on_progress`` is called with the bytes of ``sources`` read so far.
    """
    conversations = turns(sources, on_progress=on_progress)
    if format == "vllm":
        conversations = ([turn for turn in turns if _one_user_message(turn)] for turns in conversations)
    lines = (_line(turn, format, model) for turn in sample(conversations, n, seed, walk))
    temporary = f"{os.fspath(output)}.tmp"
    count = 0
    try:
        with open(temporary, "wb") as file:
            for line in lines:
                file.write(line)
                count += 1
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return count


_encode = msgspec.json.Encoder().encode
_tokenizer = None


def _one_user_message(turn: Turn) -> bool:
    return len(turn.messages) == 1 and turn.messages[0]["role"] == "user"


def _line(turn: Turn, format: str, model: str) -> bytes:
    if format == "openai":
        return _encode({"model": model, "messages": turn.messages}) + b"\n"
    global _tokenizer
    if _tokenizer is None:
        from mockgpt.index.tokens import Tokenizer

        _tokenizer = Tokenizer()
    return _encode({"prompt": turn.messages[0]["content"], "output_tokens": _tokenizer.count(turn.answer)}) + b"\n"
