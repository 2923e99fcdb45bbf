"""The operations endpoint every service can expose: /metrics, /healthz, /readyz.

The config service serves these on its API port; the others on ``GTM_METRICS_LISTEN``
(off when empty).  Metrics are prometheus-client objects in each service's own module;
the NATS connection state is common and lives here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from nats.aio.client import Client
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from shared.settings import split_host_port

log = structlog.get_logger(__name__)

NATS_CONNECTED = Gauge("gtm_nats_connected", "1 while the service's NATS connection is up")


def watch_nats(nc: Client) -> None:
    """Make ``gtm_nats_connected`` follow ``nc`` (sampled at scrape time)."""
    NATS_CONNECTED.set_function(lambda: 1.0 if nc.is_connected else 0.0)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of this process's metrics."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def routes(ready: Callable[[], bool], detail: Callable[[], dict[str, Any]] | None = None) -> list[web.RouteDef]:
    """/metrics, /healthz and /readyz (200 when ``ready()``, else 503; ``detail()`` joins its body)."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        extra = detail() if detail is not None else {}
        if ready():
            return web.json_response({"status": "ready", **extra})
        return web.json_response({"status": "not_ready", **extra}, status=503)

    return [
        web.get("/metrics", metrics, allow_head=False),
        web.get("/healthz", healthz, allow_head=False),
        web.get("/readyz", readyz, allow_head=False),
    ]


@contextlib.asynccontextmanager
async def serve(
    listen: str, *, ready: Callable[[], bool], detail: Callable[[], dict[str, Any]] | None = None
) -> AsyncIterator[None]:
    """Serve the ops endpoints on ``listen`` for the duration of the block ("" = do nothing)."""
    if not listen:
        yield
        return
    host, port = split_host_port(listen, default_port=9100)
    app = web.Application()
    app.add_routes(routes(ready, detail))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=True).start()
        log.info("ops_listening", listen=f"{host}:{port}")
        yield
    finally:
        await runner.cleanup()
