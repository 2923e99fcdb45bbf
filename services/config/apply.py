"""``config.apply``: the REST API's writes and reads over NATS request/reply, same validation and errors.

Request: ``{"method": "PUT", "path": "/api/v1/pools/Primary-DC", "body": {...}, "if_match": "3"}``
(``path`` may omit ``/api/v1``; every resource of the REST API can be reached).  Reply:
``{"status": 201, "body": {...}}`` where ``body`` is what the REST API would answer (the error
body for a status >= 400, null for 204).  The REST handlers run through :func:`execute` too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import structlog
from msgspec import Struct

from services.config.documents import API_BASE, COLLECTIONS, Kind, render
from services.config.errors import (
    ApiError,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    error_body,
    from_decode_error,
)
from services.config.store import ConfigStore, Stored

log = structlog.get_logger(__name__)

QUEUE_GROUP = "gtm-config"
_PATH_RE = re.compile(r"^/?(?P<collection>[a-z-]+)(?:/(?P<name>[^/]+))?/?$")
_METHODS = ("GET", "PUT", "PATCH", "DELETE")
_SINGLETON_METHODS = ("GET", "PUT")


class ApplyRequest(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One config change (or read) sent on ``config.apply``."""

    method: str
    path: str
    body: msgspec.Raw = msgspec.Raw(b"")
    if_match: str | None = None


class ApplyReply(Struct, kw_only=True, frozen=True):
    """The reply: the HTTP status and body the REST API would have answered."""

    status: int
    body: Any = None


@dataclass(frozen=True)
class Outcome:
    """What one request produced: status, body and, for one resource, its revision (the ETag)."""

    status: int
    body: Any = None
    revision: int | None = None


request_decoder = msgspec.json.Decoder(ApplyRequest)


def parse_path(path: str) -> tuple[Kind, str | None]:
    """The resource kind and name (None for a collection) of an API path."""
    m = _PATH_RE.match(path.removeprefix(API_BASE))
    kind = COLLECTIONS.get(m.group("collection")) if m else None
    if m is None or kind is None or (kind.singleton and m.group("name")):
        raise NotFound(f"no such resource: {path}")
    return kind, kind.singleton or m.group("name")


def _one(kind: Kind, stored: Stored, *, status: int = 200) -> Outcome:
    body = render(stored.resource, stored.name, stored.revision, named=not kind.singleton)
    return Outcome(status, body, stored.revision)


async def execute(
    store: ConfigStore, method: str, kind: Kind, name: str | None, body: bytes, *, if_match: str | None
) -> Outcome:
    """Run one API request on the store (the REST API and ``config.apply`` both come here)."""
    allowed = _SINGLETON_METHODS if kind.singleton else _METHODS if name is not None else ("GET",)
    if method not in allowed:
        raise MethodNotAllowed(f"method {method} is not allowed on {kind.path(name or '').rstrip('/')}")
    if name is None:
        listed = await store.list_all(kind)
        return Outcome(200, {kind.list_key: [render(s.resource, s.name, s.revision) for s in listed]})
    if method == "GET":
        return _one(kind, await store.get(kind, name))
    if method == "DELETE":
        await store.delete(kind, name, if_match=if_match)
        return Outcome(204)
    if method == "PUT":
        stored, created = await store.put(kind, name, body, if_match=if_match)
        return _one(kind, stored, status=201 if created else 200)
    return _one(kind, await store.patch(kind, name, body, if_match=if_match))


async def apply(store: ConfigStore, req: ApplyRequest) -> ApplyReply:
    """Run one request against the store; every failure becomes the API's error reply."""
    try:
        method = req.method.upper()
        if method not in _METHODS:
            raise InvalidArgument(f"method must be one of {', '.join(_METHODS)}", "method")
        kind, name = parse_path(req.path)
        outcome = await execute(store, method, kind, name, bytes(req.body), if_match=req.if_match)
        return ApplyReply(status=outcome.status, body=outcome.body)
    except ApiError as exc:
        return ApplyReply(status=exc.status, body=exc.body())
    except (TimeoutError, nats.errors.Error) as exc:
        return ApplyReply(status=503, body=error_body("unavailable", f"NATS did not answer: {exc!r}"))


async def handle(store: ConfigStore, data: bytes) -> bytes:
    """Decode one ``config.apply`` request, run it, encode the reply."""
    try:
        req = request_decoder.decode(data)
    except msgspec.DecodeError as exc:
        err = from_decode_error(exc)
        reply = ApplyReply(status=400, body=err.body())
    else:
        reply = await apply(store, req)
    log.info("config_apply", status=reply.status)
    return msgspec.json.encode(reply)
