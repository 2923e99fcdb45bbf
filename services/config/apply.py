"""``config.apply``: the REST API's writes and reads over NATS request/reply, same validation and errors.

Request: ``{"method": "PUT", "path": "/api/v1/pools/Primary-DC", "body": {...}, "if_match": "3"}``
(``path`` may omit ``/api/v1``).  Reply: ``{"status": 201, "body": {...}}`` where ``body`` is
what the REST API would answer (the error body for a status >= 400, null for 204).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import nats.errors
import structlog
from msgspec import Struct

from services.config.documents import API_BASE, DOMAIN, POOL, Kind, render
from services.config.errors import ApiError, InvalidArgument, NotFound, error_body, from_decode_error
from services.config.store import ConfigStore

log = structlog.get_logger(__name__)

QUEUE_GROUP = "gtm-config"
_PATH_RE = re.compile(r"^/?(?P<collection>pools|domains)(?:/(?P<name>[^/]+))?/?$")
_METHODS = ("GET", "PUT", "PATCH", "DELETE")


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


request_decoder = msgspec.json.Decoder(ApplyRequest)


def parse_path(path: str) -> tuple[Kind, str | None]:
    """The resource kind and name (None for the collection) of an API path."""
    m = _PATH_RE.match(path.removeprefix(API_BASE))
    if m is None:
        raise NotFound(f"no such resource: {path}")
    return (POOL if m.group("collection") == "pools" else DOMAIN), m.group("name")


async def apply(store: ConfigStore, req: ApplyRequest) -> ApplyReply:
    """Run one request against the store; every failure becomes the API's error reply."""
    try:
        return await _dispatch(store, req)
    except ApiError as exc:
        return ApplyReply(status=exc.status, body=exc.body())
    except (nats.errors.Error, asyncio.TimeoutError) as exc:
        return ApplyReply(status=503, body=error_body("unavailable", f"NATS did not answer: {exc!r}"))


async def _dispatch(store: ConfigStore, req: ApplyRequest) -> ApplyReply:
    method = req.method.upper()
    if method not in _METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(_METHODS)}", "method")
    kind, name = parse_path(req.path)
    body = bytes(req.body)
    if name is None:
        if method != "GET":
            return ApplyReply(status=405, body=error_body("method_not_allowed", f"{method} {req.path}"))
        stored = await store.list_all(kind)
        return ApplyReply(status=200, body={kind.collection: [render(s.resource, s.name, s.revision) for s in stored]})
    if method == "GET":
        s = await store.get(kind, name)
        return ApplyReply(status=200, body=render(s.resource, s.name, s.revision))
    if method == "DELETE":
        await store.delete(kind, name, if_match=req.if_match)
        return ApplyReply(status=204)
    if method == "PUT":
        s, created = await store.put(kind, name, body, if_match=req.if_match)
        return ApplyReply(status=201 if created else 200, body=render(s.resource, s.name, s.revision))
    s = await store.patch(kind, name, body, if_match=req.if_match)
    return ApplyReply(status=200, body=render(s.resource, s.name, s.revision))


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
