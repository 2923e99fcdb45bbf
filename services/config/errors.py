"""API errors: one base exception with a stable ``code``, and the mapping to error bodies."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import nats.errors
from msgspec import Struct

from shared.resources import ResourceError

STATUS_FOR_CODE: dict[str, int] = {  # the one table of codes and their HTTP statuses
    "invalid_argument": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "precondition_failed": 412,
    "payload_too_large": 413,
    "internal": 500,
    "unavailable": 503,
}
CODE_FOR_STATUS: dict[int, str] = {status: code for code, status in STATUS_FOR_CODE.items()}
NATS_ERRORS: tuple[type[Exception], ...] = (TimeoutError, nats.errors.Error)  # NATS did not answer

_AT_RE = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_RE = re.compile(r"(?:unknown field|missing required field) `(?P<name>[^`]+)`")


class ErrorDetail(Struct, kw_only=True, frozen=True):
    """What went wrong: a stable ``code``, a human ``message`` and the offending ``field`` ("" for none)."""

    code: str  # one of STATUS_FOR_CODE
    message: str
    field: str = ""  # a JSON path into the body (``addresses[0].address``), a query parameter or a header


class ErrorBody(Struct, kw_only=True, frozen=True):
    """The body of every error response of the REST API."""

    error: ErrorDetail


class ApiError(Exception):
    """Base of every error the API reports; ``code`` is stable, ``status`` follows from it.

    A subclass names its code: ``class NotFound(ApiError, code="not_found")``.
    """

    code = "internal"
    status = STATUS_FOR_CODE[code]

    def __init_subclass__(cls, *, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.code, cls.status = code, STATUS_FOR_CODE[code]

    def __init__(self, message: str, field: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON error body of the contract."""
        return error_body(self.code, self.message, self.field)


class InvalidArgument(ApiError, code="invalid_argument"):
    """The request is malformed or the resource is invalid."""


class Unauthorized(ApiError, code="unauthorized"):
    """No or a wrong bearer token."""


class Forbidden(ApiError, code="forbidden"):
    """Refused whoever asks: an unauthenticated API addressed by a name that is not a loopback one."""


class NotFound(ApiError, code="not_found"):
    """The resource or route does not exist."""


class MethodNotAllowed(ApiError, code="method_not_allowed"):
    """The resource exists but does not take this method."""


class Conflict(ApiError, code="conflict"):
    """The write conflicts with other resources or a concurrent writer."""


class PreconditionFailed(ApiError, code="precondition_failed"):
    """``If-Match`` (or the body's ``revision``) is stale."""


class PayloadTooLarge(ApiError, code="payload_too_large"):
    """The request body is over the limit."""


class Unavailable(ApiError, code="unavailable"):
    """NATS (and so the store) cannot be reached."""


def nats_unavailable(exc: Exception) -> Unavailable:
    """The error for a NATS request that failed (one of :data:`NATS_ERRORS`)."""
    return Unavailable(f"NATS did not answer: {exc!r}")


def error_body(code: str, message: str, field: str = "") -> dict[str, Any]:
    """``{"error": {"code", "message", "field"}}``, always encodable as JSON.

    Messages quote what the client sent (a name, a header), which may hold lone surrogates: aiohttp
    decodes header bytes that are not UTF-8 with ``surrogateescape``.  They are shown escaped.
    """
    detail = ErrorDetail(code=code, message=printable(message), field=printable(field))
    body: dict[str, Any] = msgspec.to_builtins(ErrorBody(error=detail))
    return body


def printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes) escaped, so that it encodes as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
