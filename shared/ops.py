"""The operations endpoint every service can expose: /metrics, /healthz, /readyz.

The config service serves these on its API port; the others on ``GTM_METRICS_LISTEN``
(off when empty).  Metrics are prometheus-client objects in each service's own module;
the NATS connection state and the build info are common and live here.

One listen address is one process: the listener never shares its port (no SO_REUSEPORT),
so Prometheus never gets its scrapes answered by one process and then another.  A port
already taken stops the service with an error naming ``GTM_METRICS_LISTEN``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from aiohttp import web
from nats.aio.client import Client
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from shared.settings import split_host_port

log = structlog.get_logger(__name__)

NATS_CONNECTED = Gauge("gtm_nats_connected", "1 while the service's NATS connection is up")
BUILD_INFO = Gauge(
    "gtm_build_info",
    "Always 1: what runs in this process (instance_id: GTM_INSTANCE, as in its log lines)",
    ["service", "instance_id", "version", "python"],
)
LISTEN_VAR = "GTM_METRICS_LISTEN"
LISTEN_FAILED_EXIT = 1

# Listen address -> a socket bound for it by a parent process (the edge's worker supervisor).
_adopted: dict[str, socket.socket] = {}


def version() -> str:
    """This GTM's package version ("unknown" when run from a tree that was never installed)."""
    try:
        return importlib.metadata.version("gtm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def set_identity(service: str, instance: str) -> None:
    """Export ``gtm_build_info{service,instance_id,version,python} 1`` for this process."""
    BUILD_INFO.clear()
    BUILD_INFO.labels(service, instance, version(), platform.python_version()).set(1)


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


def listen_failed(listen: str, exc: OSError) -> SystemExit:
    """Log why the metrics listener cannot bind ``listen``; the exit to raise."""
    log.error(
        "metrics_listen_failed",
        listen=listen,
        error=exc.strerror or str(exc),
        hint=f"{LISTEN_VAR}={listen} cannot be bound: another process listens there? "
        "Give every process its own metrics port (never one port for several)",
    )
    return SystemExit(LISTEN_FAILED_EXIT)


def bind(listen: str, *, default_port: int = 9100) -> socket.socket:
    """A listening TCP socket on ``listen``, not shared with any other (no SO_REUSEPORT); OSError if taken."""
    host, port = split_host_port(listen, default_port=default_port)
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR only lets a restart bind over connections in TIME_WAIT: Linux still
        # refuses a second listener on the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def adopt(listen: str, sock: socket.socket) -> None:
    """Make :func:`serve` use ``sock`` (bound by a parent process) when asked for ``listen``."""
    _adopted[listen] = sock


@contextlib.asynccontextmanager
async def serve(
    listen: str, *, ready: Callable[[], bool], detail: Callable[[], dict[str, Any]] | None = None
) -> AsyncIterator[None]:
    """Serve the ops endpoints on ``listen`` for the duration of the block ("" = do nothing).

    A ``listen`` that cannot be bound (another process has it) logs ``metrics_listen_failed``
    and raises SystemExit.
    """
    if not listen:
        yield
        return
    sock = _adopted.pop(listen, None)
    if sock is None:
        try:
            sock = bind(listen)
        except OSError as exc:
            raise listen_failed(listen, exc) from None
    app = web.Application()
    app.add_routes(routes(ready, detail))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        log.info("ops_listening", listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        yield
    finally:
        await runner.cleanup()
        sock.close()
