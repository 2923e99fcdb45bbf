"""API errors: one base exception with a stable ``code``, and the mapping to error bodies."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shared.resources import ResourceError

CODE_FOR_STATUS: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    503: "unavailable",
}

_AT_RE = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_RE = re.compile(r"(?:unknown field|missing required field) `(?P<name>[^`]+)`")


class ApiError(Exception):
    """Base of every error the API reports; ``status`` and ``code`` are stable."""

    status = 500
    code = "internal"

    def __init__(self, message: str, field: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error body of the contract."""
        return error_body(self.code, self.message, self.field)


class InvalidArgument(ApiError):
    """The request is malformed or the resource is invalid."""

    status, code = 400, "invalid_argument"


class Unauthorized(ApiError):
    """No or a wrong bearer token."""

    status, code = 401, "unauthorized"


class NotFound(ApiError):
    """The resource or route does not exist."""

    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    """The resource exists but does not take this method."""

    status, code = 405, "method_not_allowed"


class Conflict(ApiError):
    """The write conflicts with other resources or a concurrent writer."""

    status, code = 409, "conflict"


class PreconditionFailed(ApiError):
    """``If-Match`` (or the body's ``revision``) is stale."""

    status, code = 412, "precondition_failed"


class PayloadTooLarge(ApiError):
    """The request body is over the limit."""

    status, code = 413, "payload_too_large"


class Unavailable(ApiError):
    """NATS (and so the store) cannot be reached."""

    status, code = 503, "unavailable"


def error_body(code: str, message: str, field: str = "") -> dict[str, Any]:
    """``{"error": {"code", "message", "field"}}``."""
    return {"error": {"code": code, "message": message, "field": field}}


def code_for_status(status: int) -> str:
    """The error code of an HTTP status that no handler chose itself."""
    if status in CODE_FOR_STATUS:
        return CODE_FOR_STATUS[status]
    return "internal" if status >= 500 else "invalid_argument"


def split_validation_message(text: str) -> tuple[str, str]:
    """Split a msgspec error text into (human message, contract field path).

    ``"Expected `int` >= 1 - at `$.addresses[0].weight`"`` gives
    ``("Expected `int` >= 1", "addresses[0].weight")``; unknown and missing
    fields are appended to the path they were found at.
    """
    m = _AT_RE.match(text)
    assert m is not None  # the pattern matches any text
    message, path = m.group("text"), (m.group("path") or "").removeprefix(".")
    named = _FIELD_RE.search(message)
    if named:
        name = named.group("name")
        path = f"{path}.{name}" if path else name
    return message, path


def from_decode_error(exc: msgspec.DecodeError) -> InvalidArgument:
    """Turn a msgspec decode or validation error into ``invalid_argument``."""
    if isinstance(exc, msgspec.ValidationError):
        message, field = split_validation_message(str(exc))
        return InvalidArgument(message, field)
    return InvalidArgument(f"malformed JSON: {exc}")


def from_resource_error(exc: ResourceError) -> InvalidArgument:
    """Turn a resource validation error into ``invalid_argument``."""
    return InvalidArgument(exc.message, exc.field)
