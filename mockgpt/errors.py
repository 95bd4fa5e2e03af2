"""mockgpt's exceptions: one root, so a caller can catch everything mockgpt raises on purpose."""

from __future__ import annotations

__all__ = ["DatasetError", "IndexFormatError", "MockGPTError"]


class MockGPTError(Exception):
    """Root of every error mockgpt raises on purpose; its message is one line meant for a person."""


class DatasetError(MockGPTError):
    """A dataset file cannot be read: invalid or truncated JSON, an unknown format, no conversations."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class IndexFormatError(MockGPTError):
    """A file is not a mockgpt index this version can read: foreign, truncated or of another version."""
