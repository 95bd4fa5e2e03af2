"""mockgpt: a mock of the OpenAI API that replays recorded conversations."""

from mockgpt.errors import DatasetError, IndexFormatError, MockGPTError
from mockgpt.index.reader import Index

__all__ = ["DatasetError", "Index", "IndexFormatError", "MockGPTError"]
__version__ = "0.1.0"
