"""Turn a failed check's exception into one of the short, stable error strings.

Pure: it only inspects the exception, its ``os_error`` and its cause chain.
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
