"""Dataset files in, one index file out: the pipeline behind ``python -m mockgpt.index``.

The main process parses, frames and writes; tokenizing, most of the work, is shared between it and
other processes, with a bounded number of batches in flight, so memory stays flat whatever the
dataset's size.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from multiprocessing.pool import Pool
from typing import Protocol

import msgspec

from mockgpt.errors import DatasetError
from mockgpt.index import canonical, dataset, records, tokens
from mockgpt.index.fileformat import Meta
from mockgpt.index.writer import Writer

__all__ = ["Stats", "build"]

# Below this many bytes of input, starting tokenizer processes costs more than it saves.
_INLINE_BELOW = 8 << 20
_BATCH_CHARS = 1 << 20
_SHOWN_IDS = 5


class Stats(msgspec.Struct, kw_only=True):
    """What a build read, indexed and left out: every conversation read is indexed or skipped."""

    read: int = 0
    indexed: int = 0
    # Conversations left out, by reason.
    skipped: dict[str, int] = msgspec.field(default_factory=dict)
    skipped_ids: list[str] = msgspec.field(default_factory=list)
    # Indexed conversations that open with an assistant turn, which has nothing before it to be a key.
    assistant_openers: int = 0
    answers: int = 0
    keys: int = 0
    several_answers: int = 0
    # The most messages of an indexed conversation, up to its last answer.
    longest: int = 0
    bytes_read: int = 0
    seconds: float = 0.0


def build(
    sources: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    format: str | None = None,
    partial: bool = False,
    jobs: int | None = None,
    hash: Callable[[bytes | memoryview], bytes] = canonical.digest,
    on_progress: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    allow_empty: bool = False,
) -> Stats:
    """Index the conversations of ``sources`` into ``output``.

    ``partial`` keeps every complete conversation before invalid JSON (warning through ``on_warning``)
    instead of failing. ``jobs`` is the number of tokenizer processes, 0 to tokenize in this one.
    ``allow_empty`` writes an index of no conversations instead of failing (a record file before its
    first line).
    """
    started = time.perf_counter()
    sizes = [os.path.getsize(source) for source in sources]
    if jobs is None:
        jobs = 0 if sum(sizes) < _INLINE_BELOW else max(1, (os.cpu_count() or 1) - 1)
    stats = Stats()
    conversations = _conversations(sources, sizes, format, partial, stats, on_progress, on_warning)
    with Writer(output, hash=hash) as writer:
        for prepared, measured in _measure(_prepare(conversations, stats), jobs):
            answers = records.encode_answers(prepared, measured)
            writer.add(prepared.framed, [length for length, _ in prepared.keys], answers)
            stats.longest = max(stats.longest, prepared.keys[-1][1] + 1)
        if writer.answers == 0 and not allow_empty:
            raise DatasetError(f"no conversation to index in {', '.join(map(os.fsdecode, sources))}")
        stats.indexed, stats.answers, stats.keys = writer.conversations, writer.answers, writer.keys
        stats.several_answers = writer.several_answers()
        stats.seconds = time.perf_counter() - started
        writer.finish(_meta(sources, stats))
    return stats


def _conversations(
    sources: Sequence[str | os.PathLike[str]],
    sizes: Sequence[int],
    format: str | None,
    partial: bool,
    stats: Stats,
    on_progress: Callable[[int], None] | None,
    on_warning: Callable[[str], None] | None,
) -> Iterator[dataset.Conversation | dataset.Skip]:
    done = 0
    for source, size in zip(sources, sizes):
        progress = None if on_progress is None else (lambda n, done=done: on_progress(done + n))
        try:
            yield from dataset.read(source, format, on_progress=progress)
        except DatasetError as error:
            if not partial or error.offset is None:
                raise
            if on_warning is not None:
                on_warning(f"{error}; indexed the complete conversations before it")
        done += size
        stats.bytes_read = done
        if on_progress is not None:
            on_progress(done)


def _prepare(items: Iterable[dataset.Conversation | dataset.Skip], stats: Stats) -> Iterator[records.Prepared]:
    skipped: Counter[str] = Counter()
    for item in items:
        stats.read += 1
        prepared = _prepared(item)
        if isinstance(prepared, str):
            skipped[prepared] += 1
            if len(stats.skipped_ids) < _SHOWN_IDS:
                stats.skipped_ids.append(item.id)
            continue
        assert isinstance(item, dataset.Conversation)
        stats.assistant_openers += item.messages[0][0] == "assistant"
        yield prepared
    stats.skipped = dict(skipped)


def _prepared(item: dataset.Conversation | dataset.Skip) -> records.Prepared | str:
    """A conversation ready to tokenize, or why it is skipped."""
    if isinstance(item, dataset.Skip):
        return item.reason
    try:
        prepared = records.prepare(item.id, item.messages)
    except canonical.TooDeep:
        return f"tool call arguments nested more than {canonical.MAX_DEPTH} levels deep"
    return "conversation without an assistant turn to index" if prepared is None else prepared


def _measure(
    prepared: Iterable[records.Prepared], jobs: int
) -> Iterator[tuple[records.Prepared, list[int | bytes]]]:
    """Each prepared conversation with its token results, in order.

    Batches go to ``jobs`` tokenizer processes while they have work queued, else are tokenized here,
    so both this process and the others stay busy. The tokenizer is loaded before the processes fork,
    so they share its memory.
    """
    if jobs == 0:
        for batch in _batches(prepared):
            yield from zip(batch, _measure_batch([item.texts for item in batch]))
        return
    tokens.measure([])
    pending: deque[tuple[list[records.Prepared], _Result]] = deque()
    with _pool(jobs) as pool:
        for batch in _batches(prepared):
            texts = [item.texts for item in batch]
            queued = sum(not result.ready() for _, result in pending)
            if queued < 2 * jobs:
                pending.append((batch, pool.apply_async(_measure_batch, (texts,))))
            else:
                pending.append((batch, _Ready(_measure_batch(texts))))
            while pending and (pending[0][1].ready() or len(pending) > 8 * jobs):
                batch, result = pending.popleft()
                yield from zip(batch, result.get())
        while pending:
            batch, result = pending.popleft()
            yield from zip(batch, result.get())


class _Result(Protocol):
    def ready(self) -> bool: ...
    def get(self) -> list[list[int | bytes]]: ...


class _Ready:
    """A batch tokenized in this process, in the shape of a pool's result."""

    def __init__(self, value: list[list[int | bytes]]) -> None:
        self._value = value

    def ready(self) -> bool:
        return True

    def get(self) -> list[list[int | bytes]]:
        return self._value


def _pool(jobs: int) -> Pool:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn").Pool(jobs)


def _measure_batch(batch: list[list[tuple[str, bool]]]) -> list[list[int | bytes]]:
    return [tokens.measure(texts) for texts in batch]


def _batches(prepared: Iterable[records.Prepared]) -> Iterator[list[records.Prepared]]:
    batch: list[records.Prepared] = []
    chars = 0
    for item in prepared:
        batch.append(item)
        chars += sum(len(text) for text, _ in item.texts)
        if chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _meta(sources: Sequence[str | os.PathLike[str]], stats: Stats) -> Meta:
    return Meta(
        encoding=tokens.ENCODING,
        sources=[os.path.basename(os.fsdecode(source)) for source in sources],
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        stats={"read": stats.read, "indexed": stats.indexed, "answers": stats.answers, "keys": stats.keys},
        skipped=stats.skipped,
        longest=stats.longest,
    )
