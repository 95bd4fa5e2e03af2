"""Reads an index file (format: fileformat.py) through a read-only mmap.

Opening checks the header and reads the small meta section, whatever the file's size; lookups touch
one table slot or a few, one record and the key's bytes.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from types import TracebackType

import msgspec
from xxhash import xxh3_64_hexdigest

from mockgpt.errors import IndexFormatError
from mockgpt.index import canonical
from mockgpt.index.fileformat import FORMAT_VERSION, HEADER, LENGTH, MAGIC, SLOT, Header, Meta
from mockgpt.index.records import Answer, Record

__all__ = ["Index"]

_record = msgspec.msgpack.Decoder(Record)
_answer = msgspec.msgpack.Decoder(Answer)
_meta = msgspec.msgpack.Decoder(Meta)


class Index:
    """An open index file; a context manager.

    ``fingerprint`` names this build of the index (``fp_`` and 10 hex digits), as ``system_fingerprint``.

    ``hash`` must be the function the index was written with (see ``Writer``).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, hash: Callable[[bytes | memoryview], bytes] = canonical.digest
    ) -> None:
        self.path = os.fspath(path)
        self._hash = hash
        with open(self.path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < HEADER.size:
                raise IndexFormatError(f"{self.path}: not a mockgpt index (too short: {size} bytes)")
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)
        self.header = _check(self.path, Header.unpack(self._view), size)
        meta = self._view[self.header.meta_offset : self.header.meta_offset + self.header.meta_length]
        try:
            self.meta = _meta.decode(meta)
        except msgspec.DecodeError:
            raise IndexFormatError(f"{self.path}: damaged index (unreadable meta section)") from None
        # Header and meta name the build (counts, offsets, sources, time): a digest of them names the index.
        self.fingerprint = "fp_" + xxh3_64_hexdigest(bytes(self._view[: HEADER.size]) + bytes(meta))[:10]
        self._table_offset = self.header.table_offset
        self._mask = self.header.table_slots - 1

    def find(self, framed: bytes) -> Record | None:
        """The record of framed canonical messages, or None."""
        found = self.locate(framed)
        return None if found is None else found[1]

    def locate(self, framed: bytes) -> tuple[int, Record] | None:
        """The offset and the record of framed canonical messages, or None."""
        digest = self._hash(framed)
        slot = int.from_bytes(digest[:8], "little") & self._mask
        # The loop of _same_digest, written out: a generator costs a hit a third more time.
        while True:
            slot_digest, offset = SLOT.unpack_from(self._view, self._table_offset + slot * SLOT.size)
            if offset == 0:
                return None
            if slot_digest == digest:
                record = _record.decode(self._blob(offset))
                start = record.key_offset
                # Slicing the map copies, but comparing a memoryview is far slower than a copy and memcmp.
                if self._map[start : start + record.key_length] == framed:
                    return offset, record
            slot = (slot + 1) & self._mask

    def prefixes(self, head: bytes, parts: Sequence[bytes]) -> Callable[[int], Record | None]:
        """``find`` of ``head`` followed by the first k ``parts``, for any k up to ``len(parts)``.

        The digests of all of them are made at once in one pass over the parts, and a prefix's bytes are
        put together only to confirm a digest found in the table: looking up every prefix of a request
        costs time linear in its size.
        """
        digests = self._digests(head, parts)
        ends = list(accumulate(map(len, parts), initial=len(head)))

        def find(count: int) -> Record | None:
            for _, record in self._same_digest(digests[count]):
                if record.key_length == ends[count] and self.key_bytes(record) == head + b"".join(parts[:count]):
                    return record
            return None

        return find

    def _digests(self, head: bytes, parts: Sequence[bytes]) -> list[bytes]:
        if self._hash is canonical.digest:
            return canonical.digests(head, parts)
        # A hash function of a test's own: each prefix hashed whole.
        return [self._hash(head + b"".join(parts[:count])) for count in range(len(parts) + 1)]

    def _same_digest(self, digest: bytes) -> Iterator[tuple[int, Record]]:
        """The offset and record of each key in the table with ``digest``."""
        slot = int.from_bytes(digest[:8], "little") & self._mask
        while True:
            slot_digest, offset = SLOT.unpack_from(self._view, self._table_offset + slot * SLOT.size)
            if offset == 0:
                return
            if slot_digest == digest:
                yield offset, _record.decode(self._blob(offset))
            slot = (slot + 1) & self._mask

    def record_near(self, digest: bytes) -> tuple[int, Record] | None:
        """The offset and record of the first key in the table at or after ``digest``'s slot: a record
        drawn by a digest; None in an index of no keys."""
        if not self.header.keys:
            return None
        slot = int.from_bytes(digest[:8], "little") & self._mask
        while True:
            _, offset = SLOT.unpack_from(self._view, self._table_offset + slot * SLOT.size)
            if offset:
                return offset, _record.decode(self._blob(offset))
            slot = (slot + 1) & self._mask

    def record_at(self, offset: int) -> Record | None:
        """The record at ``offset`` (as ``locate`` gives it); None if no record is there."""
        if not HEADER.size <= offset < self._table_offset:
            return None
        try:
            record = _record.decode(self._blob(offset))
        except (msgspec.DecodeError, struct.error):
            return None
        # Any bytes may decode as a record by chance: a real one is found by its own key.
        found = self.locate(self.key_bytes(record)) if record.key_offset + record.key_length <= self._table_offset else None
        return record if found is not None and found[0] == offset else None

    def key_bytes(self, record: Record) -> bytes:
        """The framed canonical messages of ``record``'s key."""
        return self._map[record.key_offset : record.key_offset + record.key_length]

    def answer(self, offset: int) -> Answer:
        """The answer stored at ``offset`` (one of a record's ``answers``)."""
        return _answer.decode(self._blob(offset))

    def lookup(self, messages: Iterable[tuple[str, str] | tuple[str, str, Sequence[canonical.Call]]]) -> list[Answer]:
        """The answers recorded after (canonical role, raw text[, tool calls]) messages, in dataset order; [] if none."""
        record = self.find(canonical.frame(messages))
        return [] if record is None else [self.answer(offset) for offset in record.answers]

    def _blob(self, offset: int) -> memoryview:
        (length,) = LENGTH.unpack_from(self._view, offset)
        return self._view[offset + LENGTH.size : offset + LENGTH.size + length]

    def close(self) -> None:
        self._view.release()
        self._map.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(
        self, type: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _check(path: str, header: Header, size: int) -> Header:
    if header.magic != MAGIC:
        raise IndexFormatError(f"{path}: not a mockgpt index (magic {header.magic!r})")
    if header.format_version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: index format version {header.format_version}, this mockgpt reads version {FORMAT_VERSION};"
            " rebuild the index with this version"
        )
    if header.canonical_version != canonical.VERSION:
        raise IndexFormatError(
            f"{path}: index keys use canonical version {header.canonical_version}, this mockgpt uses"
            f" {canonical.VERSION}; rebuild the index with this version"
        )
    if header.file_length != size:
        raise IndexFormatError(f"{path}: truncated or damaged index ({size} bytes, header says {header.file_length})")
    return header
