"""Config service metrics: API requests by route and status; the config revision it serves."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("gtm_api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("gtm_api_request_seconds", "API request duration", ["method", "route"])
REVISION = Gauge(
    "gtm_config_revision", "Highest revision (stream sequence) of the config bucket gtm_config this service has seen"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by its route pattern (not its path: names would explode the labels)."""
    started = time.perf_counter()
    status = 500
    if request.path == "/metrics":
        _sample_revision(request.app)
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        REQUESTS.labels(request.method, route, str(status)).inc()
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)


def _sample_revision(app: web.Application) -> None:
    """Set ``gtm_config_revision`` from ``app``'s view of the bucket, just before a scrape renders."""
    from services.config.app import BACKEND  # the app module imports this one

    backend = app.get(BACKEND)
    view = backend.view if backend is not None else None
    if view is not None:
        REVISION.set(view.seq)
