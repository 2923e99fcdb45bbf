"""The HTTP shell: aiohttp application, middlewares and handlers of REST API v1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from services.config.apply import execute
from services.config.backend import Backend, run_backend
from services.config.codec import API_BASE, DOMAIN, KINDS, MAX_BODY_BYTES, Kind, etag
from services.config.console import setup_console
from services.config.errors import (
    NATS_ERRORS,
    ApiError,
    PayloadTooLarge,
    Unauthorized,
    code_for_status,
    error_body,
    nats_unavailable,
)
from services.config.metrics import metrics_middleware
from services.config.notifier import AlertPolicy, Notifier
from services.config.security import request_allowed
from services.config.views import parse_events_query
from shared import ops
from shared.settings import Settings

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
BACKEND = web.AppKey("backend", Backend)
NOTIFIER = web.AppKey("notifier", Notifier)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded by msgspec."""
    return web.Response(
        body=msgspec.json.encode(data), status=status, headers=headers, content_type="application/json"
    )


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
    """With a token configured, require the Bearer token outside /healthz, /readyz and the console's files."""
    auth, query_token = request.headers.get("Authorization"), request.query.get("token")
    if not request_allowed(request.path, auth, query_token, request.app[SETTINGS].api.token):
        raise Unauthorized("missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


class AccessLogger(AbstractAccessLogger):
    """One structlog line per request."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log method, path, status and duration."""
        log.info(
            "http_request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(time * 1000, 3),
        )


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is over {MAX_BODY_BYTES} bytes")
    return await request.read()  # over client_max_size: HTTPRequestEntityTooLarge -> 413


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
    return json_response({"events": backend.events.query(query)})


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
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[BACKEND] = backend or Backend(settings)
    app[NOTIFIER] = Notifier(alert_policy)
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
        ]
    )
    return app
