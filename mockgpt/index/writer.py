"""Writes an index file (format: fileformat.py), never leaving a half-written one behind.

Conversations stream to a temporary file beside the target; in memory stay only each key's digest
and offsets, a few dozen bytes a key. ``finish`` appends the records, the table and the meta, then
renames the temporary file over the target. Any failure before that removes the temporary file and
leaves an existing target as it was.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Callable, Sequence
from types import TracebackType

import msgspec

from mockgpt.index import canonical
from mockgpt.index.fileformat import FORMAT_VERSION, HEADER, LENGTH, MAGIC, SLOT, Header, Meta
from mockgpt.index.records import Record

__all__ = ["Writer"]

_encoder = msgspec.msgpack.Encoder()
_BUFFER_SIZE = 1 << 20


class Writer:
    """Build an index at ``path``: ``add`` each conversation, then ``finish``; a context manager.

    ``hash`` maps framed messages to a 16-byte digest; a test can pass a poor one to force collisions.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, hash: Callable[[bytes | memoryview], bytes] = canonical.digest
    ) -> None:
        self.path = os.fspath(path)
        self._hash = hash
        directory, name = os.path.split(os.path.abspath(self.path))
        fd, self._temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        self._file = os.fdopen(fd, "wb")
        # Our own write buffer: a key compared on a digest match is read back from it or the file.
        self._buffer = bytearray(HEADER.size)
        self._flushed = 0
        self._offset = HEADER.size
        self.conversations = 0
        # Per key ("group"): the digest's first group, other groups with the same digest, key position.
        self._groups: dict[bytes, int] = {}
        self._same_digest: dict[int, int] = {}
        self._key_offset = array("Q")
        self._key_length = array("Q")
        # Per group its answers as a linked list of answer numbers, -1 ending it.
        self._first = array("q")
        self._last = array("q")
        self._next = array("q")
        self._answer_offset = array("Q")

    @property
    def keys(self) -> int:
        return len(self._key_offset)

    @property
    def answers(self) -> int:
        return len(self._answer_offset)

    def add(self, framed: bytes, keys: Sequence[int], answers: Sequence[bytes]) -> None:
        """One conversation: its framed messages, and each answer with the length of its key."""
        base = self._write(framed)
        for key_length, answer in zip(keys, answers):
            group = self._group(framed, base, key_length)
            offset = self._write(LENGTH.pack(len(answer)) + answer)
            self._append_answer(group, offset)
        self.conversations += 1

    def finish(self, meta: Meta) -> None:
        """Write records, table and meta, then move the file into place."""
        record_offsets = array("Q", (self._write_record(group) for group in range(self.keys)))
        self._write(bytes(-self._offset % 8))
        table_offset = self._offset
        slots = self._write_table(record_offsets)
        meta_data = _encoder.encode(meta)
        meta_offset = self._write(meta_data)
        self._flush()
        header = Header(
            MAGIC, FORMAT_VERSION, canonical.VERSION, 0, self.conversations, self.answers, self.keys,
            table_offset, slots, meta_offset, len(meta_data), self._offset,
        )
        self._file.flush()
        os.pwrite(self._file.fileno(), header.pack(), 0)
        os.fsync(self._file.fileno())
        self._file.close()
        # mkstemp makes the file private; an index is as readable as any file the user creates.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._temporary, 0o666 & ~umask)
        os.replace(self._temporary, self.path)

    def abort(self) -> None:
        """Drop everything written so far; the target is untouched."""
        self._file.close()
        if os.path.exists(self._temporary):
            os.unlink(self._temporary)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self, type: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self._file.closed:
            self.abort()

    def several_answers(self) -> int:
        """How many keys have more than one answer."""
        return sum(first != last for first, last in zip(self._first, self._last))

    def _write(self, data: bytes | bytearray) -> int:
        """Append ``data``; a write is never split between the file and the buffer."""
        if len(self._buffer) >= _BUFFER_SIZE or len(data) >= _BUFFER_SIZE:
            self._flush()
        offset = self._offset
        if len(data) >= _BUFFER_SIZE:
            # Straight to the file: a copy of the table or of a huge conversation would double the peak.
            self._file.write(data)
            self._file.flush()
            self._flushed += len(data)
        else:
            self._buffer += data
        self._offset += len(data)
        return offset

    def _flush(self) -> None:
        self._file.write(self._buffer)
        self._file.flush()
        self._flushed += len(self._buffer)
        self._buffer.clear()

    def _group(self, framed: bytes, base: int, key_length: int) -> int:
        key = memoryview(framed)[:key_length]
        digest = self._hash(key)
        group = self._groups.get(digest)
        while group is not None:
            if self._key_length[group] == key_length and self._read(self._key_offset[group], key_length) == key.tobytes():
                return group
            group = self._same_digest.get(group)
        group = self.keys
        if digest in self._groups:
            self._same_digest[group] = self._groups[digest]
        self._groups[digest] = group
        self._key_offset.append(base)
        self._key_length.append(key_length)
        self._first.append(-1)
        self._last.append(-1)
        return group

    def _read(self, offset: int, length: int) -> bytes | bytearray:
        if offset >= self._flushed:
            return self._buffer[offset - self._flushed : offset - self._flushed + length]
        return os.pread(self._file.fileno(), length, offset)

    def _append_answer(self, group: int, offset: int) -> None:
        answer = len(self._answer_offset)
        self._answer_offset.append(offset)
        self._next.append(-1)
        if self._first[group] < 0:
            self._first[group] = answer
        else:
            self._next[self._last[group]] = answer
        self._last[group] = answer

    def _write_record(self, group: int) -> int:
        offsets = []
        answer = self._first[group]
        while answer >= 0:
            offsets.append(self._answer_offset[answer])
            answer = self._next[answer]
        data = _encoder.encode(Record(self._key_offset[group], self._key_length[group], offsets))
        return self._write(LENGTH.pack(len(data)) + data)

    def _write_table(self, record_offsets: array[int]) -> int:
        slots = 8
        while slots < 2 * self.keys:
            slots *= 2
        mask = slots - 1
        table = bytearray(slots * SLOT.size)
        used = bytearray(slots)
        for digest, first in self._groups.items():
            group: int | None = first
            while group is not None:
                slot = int.from_bytes(digest[:8], "little") & mask
                while used[slot]:
                    slot = (slot + 1) & mask
                used[slot] = 1
                SLOT.pack_into(table, slot * SLOT.size, digest, record_offsets[group])
                group = self._same_digest.get(group)
        self._write(table)
        return slots
