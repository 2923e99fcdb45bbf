"""Pure access policy: bearer tokens, where an unauthenticated API may listen, whom it answers.

With tokens (GTM_API_TOKEN, GTM_API_TOKENS) every request but the public paths needs one, and the
operation log records its name.  Without, the API listens on loopback only and answers only
requests addressed to a loopback name: a page whose DNS name was rebound to 127.0.0.1 sends its
own name as ``Host`` (and ``Origin``) and is refused with 403 ``forbidden`` (:func:`browser_refusal`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from services.config.audit import VIA_HEADER, Actor, acting
from services.config.codec import API_BASE
from services.config.errors import ApiError, Forbidden, Unauthorized
from shared.settings import Settings, split_host_port

__all__ = ["Actor", "Admission", "acting", "admit", "browser_refusal", "check_listen", "request_allowed", "token_ok"]

DEFAULT_API_PORT = 8080
OPEN_PATHS = frozenset({"/healthz", "/readyz", f"{API_BASE}/openapi.json"})  # no token (the contract)
CONSOLE_INDEX = "/"
CONSOLE_STATIC = "/console/"  # the console's static files: public, they hold no data
STREAM_PATH = f"{API_BASE}/stream"  # the only route that also takes the token as ?token=
APPLY_PATH = f"{API_BASE}/apply"  # POST /api/v1/apply: its writes are recorded as via "apply"


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
    if settings.api.credentials():
        return ListenCheck(host, port)
    if not is_loopback(host):
        return ListenCheck(
            host,
            port,
            refuse=True,
            error=(
                f"refusing to serve the API on {host}:{port} without a token: "
                "set GTM_API_TOKEN (or GTM_API_TOKENS), or listen on loopback (127.0.0.1, ::1, localhost)"
            ),
        )
    return ListenCheck(
        host,
        port,
        warning=(
            "the API is unauthenticated (no GTM_API_TOKEN); it is bound to loopback only "
            "and answers only requests whose Host (and Origin) is a loopback name"
        ),
    )


def _bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, or None."""
    if not authorization:
        return None
    scheme, _, given = authorization.strip().partition(" ")
    return given.strip() if scheme.lower() == "bearer" else None


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def token_name(given: str | None, credentials: tuple[tuple[str, str], ...]) -> str | None:
    """The name of the token ``given`` is, or None.

    Every token is compared, each in constant time over equal-length digests, whatever matched
    before: the time taken says nothing about which token, or how much of one, was right.
    """
    if not given:
        return None
    digest = _digest(given)
    found = None
    for name, secret in credentials:
        if hmac.compare_digest(digest, _digest(secret)) and found is None:
            found = name
    return found


def token_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time compare)."""
    return token_name(_bearer(authorization), (("", token),)) is not None


def public_path(path: str) -> bool:
    """Whether ``path`` needs no token: /healthz, /readyz, the console's page and static files."""
    return path in OPEN_PATHS or path == CONSOLE_INDEX or path.startswith(CONSOLE_STATIC)


def request_allowed(path: str, authorization: str | None, query_token: str | None, token: str) -> bool:
    """Whether a request may pass: no token set, a public path, the Bearer token, or ``?token=`` on the stream.

    EventSource cannot send headers, so the live stream alone accepts the token as a query parameter.
    """
    if not token or public_path(path):
        return True
    return authenticated(path, authorization, query_token, (("", token),)) is not None


def authenticated(
    path: str, authorization: str | None, query_token: str | None, credentials: tuple[tuple[str, str], ...]
) -> str | None:
    """The name of the token a request carries (Bearer, or ``?token=`` on the stream), or None."""
    name = token_name(_bearer(authorization), credentials)
    if name is None and path == STREAM_PATH:
        name = token_name(query_token, credentials)
    return name


# -- DNS rebinding: an unauthenticated API answers loopback names only ------------------------------


def _authority(value: str, default_port: int) -> tuple[str, int] | None:
    """(host lower-cased without brackets, port) of ``host[:port]``; None when malformed."""
    try:
        parts = urllib.parse.urlsplit("//" + value)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return host.lower(), port if port is not None else default_port


def _local_name(host: str, listen_host: str) -> bool:
    return is_loopback(host) or host == listen_host.strip("[]").lower()


def browser_refusal(host: str | None, origin: str | None, listen_host: str) -> tuple[str, str] | None:
    """Why an unauthenticated API must not answer a request, as (header, message); None when it may.

    ``Host`` must be a loopback name or address (localhost, 127.0.0.0/8, ::1) or the listen host;
    ``Origin``, when sent, must be that same host and port (the console's own page).  A request
    without ``Host`` (not a browser) passes.
    """
    if host is None:
        return None
    own = _authority(host, 80)
    if own is None or not _local_name(own[0], listen_host):
        return "Host", (
            f"Host {host!r} is not a loopback name: without a token the API answers only requests to "
            "localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding); set GTM_API_TOKEN to serve other names"
        )
    if origin is None:
        return None
    scheme, _, rest = origin.partition("://")
    if scheme.lower() in ("http", "https"):
        theirs = _authority(rest, 443 if scheme.lower() == "https" else 80)
        if theirs is not None and theirs == own:
            return None
    return "Origin", (
        f"Origin {origin!r} is not this API's own page ({host}): without a token the API refuses "
        "requests from other web pages"
    )


@dataclass(frozen=True)
class Admission:
    """What to do with a request: serve it as ``actor``, or refuse it with ``error`` (401, 403)."""

    actor: Actor = Actor()
    error: ApiError | None = None


def admit(
    settings: Settings,
    path: str,
    headers: Mapping[str, str],
    query_token: str | None,
    remote: str | None,
) -> Admission:
    """Check a request's token (or, without tokens, its Host and Origin); say who it acts as.

    ``who`` is the token's name, else the client's address; ``via`` is ``apply`` for
    ``POST /api/v1/apply``, ``console`` when the console says so (``X-GTM-Via: console``), else ``rest``.
    """
    client = remote or ""
    via = "apply" if path == APPLY_PATH else "console" if headers.get(VIA_HEADER, "").strip() == "console" else "rest"
    credentials = settings.api.credentials()
    if not credentials:
        if path not in OPEN_PATHS:
            listen_host, _ = split_host_port(settings.api.listen, default_port=DEFAULT_API_PORT)
            refused = browser_refusal(headers.get("Host"), headers.get("Origin"), listen_host)
            if refused is not None:
                return Admission(error=Forbidden(refused[1], refused[0]))
        return Admission(Actor(who=client, via=via, client=client))
    name = authenticated(path, headers.get("Authorization"), query_token, credentials)
    if name is None and not public_path(path):
        unauthorized = Unauthorized("missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        return Admission(error=unauthorized)
    return Admission(Actor(who=name or client, via=via, client=client))
