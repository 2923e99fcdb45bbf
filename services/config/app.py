"""The HTTP shell: aiohttp application, middlewares and handlers of REST API v1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from services.config import healthlog, lines
from services.config.apply import apply_document_request, execute
from services.config.backend import Backend, run_backend
from services.config.codec import API_BASE, DOMAIN, KINDS, MAX_BODY_BYTES, Kind, etag, too_deep
from services.config.console import setup_console
from services.config.errors import (
    NATS_ERRORS,
    ApiError,
    InvalidArgument,
    PayloadTooLarge,
    Unavailable,
    code_for_status,
    error_body,
    nats_unavailable,
)
from services.config.metrics import metrics_middleware
from services.config.notifier import AlertPolicy, Notifier
from services.config.openapi import OPENAPI_PATH, openapi_json
from services.config.security import acting, admit
from services.config.views import parse_events_query
from shared import geo, ops
from shared.resources import Topology
from shared.settings import Settings

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
BACKEND = web.AppKey("backend", Backend)
NOTIFIER = web.AppKey("notifier", Notifier)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"[!-~]{1,128}")  # an incoming id of visible ASCII is kept; any other is replaced
# The headers the API reads must be visible ASCII (spaces and tabs too); else 400 before anything reads them.
READ_HEADERS = ("Authorization", "If-Match", "Host", "Origin", "X-GTM-Via", "Content-Encoding")
_FIELD_VALUE_RE = re.compile(r"[\t -~]*")
CONTENT_CODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})  # what aiohttp's parser decodes


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded by msgspec."""
    return web.Response(
        body=msgspec.json.encode(data), status=status, headers=headers, content_type="application/json"
    )


def request_id(request: BaseRequest) -> str:
    """The request's id: its ``X-Request-Id`` when that is 1-128 visible ASCII characters, else a new one."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request's id to every log line written while serving it."""
    with structlog.contextvars.bound_contextvars(request_id=request_id(request)):
        return await handler(request)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response of the app says its request's id."""
    response.headers[REQUEST_ID_HEADER] = request_id(request)


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise ``invalid_argument`` (field: the header) for a header the API reads that it cannot read."""
    for name in READ_HEADERS:
        value = headers.get(name)
        if value is not None and not _FIELD_VALUE_RE.fullmatch(value):
            raise InvalidArgument(f"the {name} header must be printable ASCII", name)
    coding = headers.get("Content-Encoding", "").strip().lower()
    if coding not in CONTENT_CODINGS:
        raise InvalidArgument(
            f"Content-Encoding {coding!r} is not supported: send the body as is, gzip or deflate", "Content-Encoding"
        )


@web.middleware
async def header_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse malformed headers before authentication and the handlers read them."""
    check_headers(request.headers)
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the contract's error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = _http_message(request, exc)
        return json_response(error_body(code_for_status(exc.status), message), status=exc.status, headers=headers)
    except NATS_ERRORS as exc:
        log.warning("nats_request_failed", path=request.path, error=repr(exc))
        err = nats_unavailable(exc)
        return json_response(err.body(), status=err.status)
    except RecursionError:  # a body nested too deeply for a decoder or check that recurses
        log.warning("request_too_deep", method=request.method, path=request.path)
        deep = too_deep()
        return json_response(deep.body(), status=deep.status)
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        return json_response(error_body("internal", "internal error"), status=500)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such resource: {request.path}"
    if exc.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    if exc.status == 413:
        return f"request body is over {MAX_BODY_BYTES} bytes"
    return exc.reason


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit a request, then serve it as its actor (whom the operation log names).

    With tokens configured, require one outside /healthz, /readyz and the console's files; without,
    refuse (403 ``forbidden``) a Host or Origin that is not a loopback name (DNS rebinding).
    """
    admission = admit(
        request.app[SETTINGS], request.path, request.headers, request.query.get("token"), request.remote
    )
    if admission.error is not None:
        raise admission.error  # 401 unauthorized, 403 forbidden
    with acting(admission.actor):
        return await handler(request)


class AccessLogger(AbstractAccessLogger):
    """One structlog line per request."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log method, path, status, duration, the client's address and the request's id."""
        log.info(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 3),
            client=request.remote,
            request_id=request_id(request),
        )


class _ParserErrorFilter(logging.Filter):
    """aiohttp logs each request its parser refuses (a 400 before any handler) with a traceback: keep one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code < 500:
            reason = exc.message.strip().splitlines()[0].rstrip(":") if exc.message.strip() else str(exc.code)
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.msg, record.args = "refused a malformed request from %s: %s", (remote, reason)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_parser_errors() -> None:
    """Install :class:`_ParserErrorFilter` on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ParserErrorFilter) for f in server_log.filters):
        server_log.addFilter(_ParserErrorFilter())


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        return await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413
    except web.RequestPayloadError:  # not the gzip or deflate data it says it is, or broken chunks
        coding = request.headers.get("Content-Encoding", "")
        if coding:
            raise InvalidArgument(f"the request body is not {coding} data", "Content-Encoding") from None
        raise InvalidArgument("the request body is malformed") from None


def resource_routes(kind: Kind) -> list[web.RouteDef]:
    """The routes of one resource kind: list and item GET/PUT/PATCH/DELETE, or GET/PUT of a singleton."""

    async def handle(request: web.Request) -> web.Response:
        body = await _read_body(request) if request.method in ("PUT", "PATCH") else b""
        name = kind.singleton or request.match_info.get("name")
        outcome = await execute(
            request.app[BACKEND].store, request.method, kind, name, body, if_match=request.headers.get("If-Match")
        )
        if outcome.status == 204:
            return web.Response(status=204)
        headers = {"ETag": etag(outcome.revision)} if outcome.revision is not None else None
        return json_response(outcome.body, status=outcome.status, headers=headers)

    base = f"{API_BASE}/{kind.collection}"
    if kind.singleton:
        return [web.get(base, handle, allow_head=False), web.put(base, handle)]
    item = base + "/{name}"
    return [
        web.get(base, handle, allow_head=False),
        web.get(item, handle, allow_head=False),
        web.put(item, handle),
        web.patch(item, handle),
        web.delete(item, handle),
    ]


async def domain_status(request: web.Request) -> web.Response:
    """``GET /domains/{fqdn}/status``."""
    return json_response(await request.app[BACKEND].domain_status(request.match_info["name"]))


async def list_events(request: web.Request) -> web.Response:
    """``GET /events?domain=&kind=&limit=``: newest first."""
    query = parse_events_query(request.query)
    backend = request.app[BACKEND]
    backend.require_available()
    return json_response({"events": await backend.query_events(query)})


async def health_logs(request: web.Request) -> web.Response:
    """``GET /health-logs?pool=&address=&region=&since=&limit=``: failed checks and health changes, newest first."""
    query = healthlog.parse_query(request.query)
    backend = request.app[BACKEND]
    backend.require_available()
    assert backend.js is not None
    return json_response(await healthlog.read(backend.js, query))


async def _topology(request: web.Request) -> Topology | None:
    found = await request.app[BACKEND].store.find(KINDS["topology"], "topology")
    return found.resource if found is not None and isinstance(found.resource, Topology) else None


async def line_catalog(request: web.Request) -> web.Response:
    """``GET /lines``: the kinds of line, the continents, the countries and the topology's regions."""
    return lines.json(lines.catalog(lines.topology_regions(await _topology(request))))


async def line_lookup(request: web.Request) -> web.Response:
    """``GET /lines/lookup?address=``: an address's country, continent, ASN, custom region and lines."""
    net = lines.parse_address(request.query)
    topology = await _topology(request)
    try:
        db = await lines.load_database(request.app[SETTINGS].geoip)
    except geo.GeoError as exc:
        raise Unavailable(f"the GeoIP database cannot be read: {exc}") from None
    return json_response(lines.lookup(db, topology, net))


async def openapi_document(request: web.Request) -> web.Response:
    """``GET /openapi.json``: the API's OpenAPI 3.1 document (public, like /healthz)."""
    return web.Response(body=openapi_json(), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """Alive."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when NATS is connected and the KV bucket answers."""
    reason = await request.app[BACKEND].not_ready_reason()
    if reason:
        return json_response({"status": "not_ready", "reason": reason}, status=503)
    return json_response({"status": "ready"})


async def _nats_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the NATS side in the background (the API answers 503 until it is up); close it at exit."""
    backend = app[BACKEND]
    task = asyncio.create_task(run_backend(backend), name="config-backend")
    yield
    await _cancel(task)
    await backend.close()


async def _alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the alert notifier in the background once NATS is up; stop it before NATS closes."""
    notifier = app[NOTIFIER]
    task = asyncio.create_task(notifier.run(app[BACKEND]), name="config-alerts")
    yield
    await _cancel(task)
    await notifier.close()


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a library swallowed the cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.2)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


def create_app(
    settings: Settings, *, backend: Backend | None = None, alert_policy: AlertPolicy | None = None
) -> web.Application:
    """The REST API v1 application; its NATS side and alert notifier start with the app."""
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[request_id_middleware, metrics_middleware, error_middleware, header_middleware, auth_middleware],
    )
    app.on_response_prepare.append(_echo_request_id)
    quiet_parser_errors()
    app[SETTINGS] = settings
    app[BACKEND] = backend or Backend(settings)
    app[NOTIFIER] = Notifier(alert_policy, console_url=settings.api.console_url)
    app.cleanup_ctx.append(_nats_ctx)
    app.cleanup_ctx.append(_alerts_ctx)  # cleaned up first: before NATS is drained
    setup_console(app, app[BACKEND])  # the console at / and its live stream
    app.add_routes(
        [
            web.get("/healthz", healthz, allow_head=False),
            web.get("/readyz", readyz, allow_head=False),
            web.get("/metrics", ops.metrics, allow_head=False),
            web.get(f"{API_BASE}/{DOMAIN.collection}/{{name}}/status", domain_status, allow_head=False),
            *(route for kind in KINDS.values() for route in resource_routes(kind)),
            web.get(f"{API_BASE}/events", list_events, allow_head=False),
            web.get(f"{API_BASE}/lines", line_catalog, allow_head=False),
            web.get(f"{API_BASE}/health-logs", health_logs, allow_head=False),
            web.get(f"{API_BASE}/lines/lookup", line_lookup, allow_head=False),
            web.get(OPENAPI_PATH, openapi_document, allow_head=False),
            web.post(f"{API_BASE}/apply", apply_document_route),
        ]
    )
    return app


async def apply_document_route(request: web.Request) -> web.Response:
    """``POST /apply``: a whole config document, all-or-nothing (``config.apply``'s document form)."""
    reply = await apply_document_request(request.app[BACKEND].store, await _read_body(request))
    return json_response(reply.body, status=reply.status)
