"""Pure access policy: bearer tokens and where an unauthenticated API may listen."""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from services.config.codec import API_BASE
from shared.settings import Settings, split_host_port

DEFAULT_API_PORT = 8080
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CONSOLE_INDEX = "/"
CONSOLE_STATIC = "/console/"  # the console's static files: public, they hold no data
STREAM_PATH = f"{API_BASE}/stream"  # the only route that also takes the token as ?token=


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ListenCheck:
    """Whether the API may start on its listen address, and what to log about it."""

    host: str
    port: int
    refuse: bool = False
    warning: str = ""
    error: str = ""


def check_listen(settings: Settings) -> ListenCheck:
    """Refuse a non-loopback listen address without a token; warn on an open loopback one."""
    host, port = split_host_port(settings.api.listen, default_port=DEFAULT_API_PORT)
    if settings.api.token:
        return ListenCheck(host, port)
    if not is_loopback(host):
        return ListenCheck(
            host,
            port,
            refuse=True,
            error=(
                f"refusing to serve the API on {host}:{port} without a token: "
                "set GTM_API_TOKEN, or listen on loopback (127.0.0.1, ::1, localhost)"
            ),
        )
    return ListenCheck(
        host, port, warning="the API is unauthenticated (no GTM_API_TOKEN); it is bound to loopback only"
    )


def token_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def request_allowed(path: str, authorization: str | None, query_token: str | None, token: str) -> bool:
    """Whether a request may pass: no token set, a public path, the Bearer token, or ``?token=`` on the stream.

    EventSource cannot send headers, so the live stream alone accepts the token as a query parameter.
    """
    if not token or path in OPEN_PATHS or path == CONSOLE_INDEX or path.startswith(CONSOLE_STATIC):
        return True
    if token_ok(authorization, token):
        return True
    return path == STREAM_PATH and bool(query_token) and hmac.compare_digest(str(query_token).encode(), token.encode())
