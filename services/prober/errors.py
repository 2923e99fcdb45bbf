"""Turn a failed check's exception into one of the short, stable error strings.

Pure: it only inspects the exception, its ``os_error`` and its cause chain.
:func:`error_label` maps any error string onto the fixed set :data:`ERROR_LABELS`, the only
values the ``error`` label of a metric may take.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

import aiohttp

CONNECTION_REFUSED = "connection refused"
TIMEOUT = "timeout"
CONNECTION_RESET = "connection reset"
TLS_ERROR = "tls error"
DNS_ERROR = "dns error"
PING_NOT_PERMITTED = "ping not permitted"
BODY_MISMATCH = "body mismatch"
OTHER = "other"  # a metric label only: every error string that is none of the above

# "status 503" and the like, by class: a metric label must not take one value per code.
STATUS_LABELS = tuple(f"status {n}xx" for n in range(1, 6))
ERROR_LABELS: tuple[str, ...] = (
    CONNECTION_REFUSED,
    TIMEOUT,
    CONNECTION_RESET,
    TLS_ERROR,
    DNS_ERROR,
    PING_NOT_PERMITTED,
    BODY_MISMATCH,
    *STATUS_LABELS,
    OTHER,
)
_FIXED = frozenset(ERROR_LABELS) - {OTHER}

_MAX_TEXT = 80
_REFUSED = {errno.ECONNREFUSED}
_RESET = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
_TIMEOUT = {errno.ETIMEDOUT}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps (``os_error``) and its causes, outermost first."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        wrapped = getattr(cur, "os_error", None)
        for nxt in (wrapped, cur.__cause__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _category(exc: BaseException) -> str | None:
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror | socket.herror):
        return DNS_ERROR
    if isinstance(exc, ssl.SSLError | ssl.CertificateError | aiohttp.ClientSSLError):
        return TLS_ERROR
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | aiohttp.ServerDisconnectedError):
        return CONNECTION_RESET
    code = exc.errno if isinstance(exc, OSError) else None
    if code in _REFUSED:
        return CONNECTION_REFUSED
    if code in _RESET:
        return CONNECTION_RESET
    if code in _TIMEOUT:
        return TIMEOUT
    return None


def short_text(exc: BaseException) -> str:
    """A one-line, bounded description of ``exc``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def classify_error(exc: BaseException) -> str:
    """The stable error string for ``exc`` ("timeout", ..., else "error: <text>")."""
    for item in _chain(exc):
        found = _category(item)
        if found is not None:
            return found
    return f"error: {short_text(exc)}"


def error_label(error: str) -> str:
    """The metric label of an error string: itself when it is a stable one, its status class, else "other"."""
    if error in _FIXED:
        return error
    kind, _, code = error.partition(" ")
    if kind == "status" and len(code) == 3 and code.isdigit() and "1" <= code[0] <= "5":
        return f"status {code[0]}xx"
    return OTHER
