"""The index file: one file, looked up in O(1) straight from a read-only mmap.

All integers are little-endian. Offsets are absolute file offsets.

::

    0        +------------------------------------------------------------------------+
             | header, 88 bytes                                                       |
             |   magic "MOCKGPT\\0" (8) | format version u32 | canonical version u32    |
             |   hash seed u64 | conversations u64 | answers u64 | keys u64             |
             |   table offset u64 | table slots u64 | meta offset u64 | meta length u64 |
             |   file length u64                                                      |
    88       +------------------------------------------------------------------------+
             | data, for each indexed conversation in dataset order:                  |
             |   its framed canonical messages (see canonical.py), up to its last key |
             |   each of its answers: length u32 | msgpack Answer                     |
             +------------------------------------------------------------------------+
             | records, one per distinct key: length u32 | msgpack Record             |
             +------------------------------------------------------------------------+
             | table, 8-byte aligned: slots x 24 bytes                                |
             |   key digest (16) | record offset u64, 0 for an empty slot             |
             +------------------------------------------------------------------------+
             | meta: msgpack Meta (encoding, sources, build time, build statistics)   |
             +------------------------------------------------------------------------+

``Answer`` and ``Record`` are msgpack arrays (see records.py); fields are only ever appended.

A key is the xxh3_128 digest (seeded with the header's hash seed) of a request's framed canonical
messages. The table has a power-of-two number of slots, at most half full. Lookup: start at slot
``(low 64 bits of the digest) mod slots`` and probe forward, wrapping around, until an empty slot
(a miss). A slot with the same digest points at a record; the record names where its key's framed
bytes lie in the data section, and only if those bytes equal the request's is it a hit. The record
lists the offsets of its answers, in dataset order.

The format version changes with any change to this layout that an older reader could misread.
"""

from __future__ import annotations

import struct

import msgspec

__all__ = ["FORMAT_VERSION", "HEADER", "LENGTH", "MAGIC", "SLOT", "Header", "Meta"]

MAGIC = b"MOCKGPT\0"
FORMAT_VERSION = 2
HEADER = struct.Struct("<8sIIQQQQQQQQQ")
SLOT = struct.Struct("<16sQ")
LENGTH = struct.Struct("<I")


class Header(msgspec.Struct, frozen=True):
    """The fixed-size header, field for field."""

    magic: bytes
    format_version: int
    canonical_version: int
    hash_seed: int
    conversations: int
    answers: int
    keys: int
    table_offset: int
    table_slots: int
    meta_offset: int
    meta_length: int
    file_length: int

    def pack(self) -> bytes:
        return HEADER.pack(*msgspec.structs.astuple(self))

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Header:
        return cls(*HEADER.unpack_from(data))


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    """What the index was built from and how; not needed for lookups."""

    encoding: str
    sources: list[str]
    built_at: str
    stats: dict[str, int] = {}
    skipped: dict[str, int] = {}
    # The most messages of a recorded conversation, up to its last answer: no longer request can match one.
    longest: int = 0
