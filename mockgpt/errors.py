"""mockgpt's exceptions: one root, so a caller can catch everything mockgpt raises on purpose."""

from __future__ import annotations

__all__ = [
    "APIError",
    "AuthenticationFailed",
    "BadRequest",
    "ConversationNotFound",
    "DatasetError",
    "HeadersTooLarge",
    "IndexFormatError",
    "MethodNotAllowed",
    "MockGPTError",
    "NotFound",
    "PayloadTooLarge",
    "TooManyTokens",
]


class MockGPTError(Exception):
    """Root of every error mockgpt raises on purpose; its message is one line meant for a person."""


class DatasetError(MockGPTError):
    """A dataset file cannot be read: invalid or truncated JSON, an unknown format, no conversations."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class IndexFormatError(MockGPTError):
    """A file is not a mockgpt index this version can read: foreign, truncated or of another version."""


class APIError(MockGPTError):
    """An error a client gets back, in the OpenAI shape, with its HTTP status."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(APIError):
    """The body is not valid JSON or not a valid request."""


class TooManyTokens(BadRequest):
    """The inputs of one embeddings request hold more tokens than it may."""

    type = "max_tokens_per_request"
    code = "max_tokens_per_request"


class AuthenticationFailed(APIError):
    status_code = 401
    code = "invalid_api_key"


class NotFound(APIError):
    status_code = 404


class ConversationNotFound(NotFound):
    """No recorded conversation continues the request's messages."""

    code = "conversation_not_found"


class MethodNotAllowed(APIError):
    status_code = 405


class PayloadTooLarge(APIError):
    status_code = 413


class HeadersTooLarge(APIError):
    status_code = 431
    code = "request_headers_too_large"
