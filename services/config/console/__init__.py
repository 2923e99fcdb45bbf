"""The web console: its HTTP shell (the page, its static files, the live SSE stream fed from NATS).

The page and its static files sit beside this module; :mod:`.live` is the pure core of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.config.backend import Backend
from services.config.codec import DOMAIN
from services.config.console.live import (
    KEEPALIVE_FRAME,
    RETRY_MS,
    CheckChanges,
    LiveEvent,
    LiveHub,
    changes_pools,
    sse_frame,
    summarize,
    wanted,
)
from services.config.security import CONSOLE_INDEX, CONSOLE_STATIC, STREAM_PATH
from shared import subjects
from shared.messages import (
    ProbeResult,
    answer_set_decoder,
    event_decoder,
    pool_state_decoder,
    probe_result_decoder,
)
from shared.resources import Domain

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).parent
STATIC_FILES = {  # the only files served, with their content types
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
KEEPALIVE_S = 15.0
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# NATS subjects the console follows, each with the decoder of its messages.
LIVE_SOURCES: tuple[tuple[str, msgspec.json.Decoder[Any]], ...] = (
    (subjects.POOL_STATE_ALL, pool_state_decoder),
    (subjects.SWITCH_EVENTS_ALL, event_decoder),
    (subjects.ANSWERS_ALL, answer_set_decoder),
    (subjects.OPERATION_EVENTS_ALL, event_decoder),
    (subjects.PROBE_RESULT_ALL, probe_result_decoder),  # pushed only when an outcome changes
)


@dataclass
class Console:
    """The console's state: the config backend and the fan-out of live events."""

    backend: Backend
    hub: LiveHub = field(default_factory=LiveHub)
    checks: CheckChanges = field(default_factory=CheckChanges)
    following: asyncio.Event = field(default_factory=asyncio.Event)  # set once subscribed to NATS


CONSOLE = web.AppKey("console", Console)


async def index(request: web.Request) -> web.FileResponse:
    """``GET /``: the console page."""
    headers = {**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"}
    return web.FileResponse(STATIC_DIR / "index.html", headers=headers)


async def static_file(request: web.Request) -> web.FileResponse:
    """``GET /console/{name}``: one of the console's static files."""
    name = request.match_info["name"]
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC_DIR / name, headers={**SECURITY_HEADERS, "Content-Type": content_type})


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/stream?domain=``: Server-Sent Events telling the page when to re-fetch."""
    console = request.app[CONSOLE]
    console.backend.require_available()
    raw = request.query.get("domain", "").strip()
    domain = DOMAIN.canonical(raw) if raw else ""
    queue = console.hub.subscribe()
    try:
        pools = await _domain_pools(console.backend, domain)
        response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        await response.write(sse_frame({"type": "hello", "domain": domain}, retry_ms=RETRY_MS))
        with contextlib.suppress(ConnectionError):
            while (event := await _next(queue, response)) is not None:
                if not wanted(event, domain, pools):
                    continue
                if changes_pools(event, domain):
                    pools = await _domain_pools(console.backend, domain)
                await response.write(sse_frame(event))
        return response
    finally:
        console.hub.unsubscribe(queue)


async def _next(queue: asyncio.Queue[LiveEvent | None], response: web.StreamResponse) -> LiveEvent | None:
    """The next event of ``queue``, writing a keepalive comment every ``KEEPALIVE_S`` meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(queue.get(), KEEPALIVE_S)
        except TimeoutError:
            await response.write(KEEPALIVE_FRAME)  # also how a gone browser is noticed


async def _domain_pools(backend: Backend, domain: str) -> frozenset[str]:
    """Names of the pools ``domain`` uses (none when there is no domain or it does not exist)."""
    if not domain:
        return frozenset()
    found = await backend.store.find(DOMAIN, domain)
    if found is None or not isinstance(found.resource, Domain):
        return frozenset()
    return frozenset(ref.pool for ref in found.resource.pools)


def _on_message(console: Console, decoder: msgspec.json.Decoder[Any]) -> Callable[[Msg], Awaitable[None]]:
    async def callback(msg: Msg) -> None:
        try:
            message = decoder.decode(msg.data)
            if not isinstance(message, ProbeResult) or console.checks.changed(message):
                console.hub.publish(summarize(message))
        except Exception as exc:  # noqa: BLE001 - a callback never dies on a bad message
            log.warning("bad_live_message", subject=msg.subject, error=str(exc))

    return callback


async def follow(console: Console) -> list[Subscription]:
    """Once NATS is up, subscribe (core NATS) to the subjects the console follows."""
    backend = console.backend
    await backend.ready.wait()
    assert backend.nc is not None
    subs = [
        await backend.nc.subscribe(subject, cb=_on_message(console, decoder)) for subject, decoder in LIVE_SOURCES
    ]
    await backend.nc.flush()
    console.following.set()
    return subs


async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    """Follow NATS for the live stream while the app runs; drop the subscriptions before NATS closes."""
    console = app[CONSOLE]
    task = asyncio.create_task(follow(console), name="config-console-live")
    yield
    console.hub.close()
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        for sub in await task:
            await sub.unsubscribe()


async def _end_streams(app: web.Application) -> None:
    """At shutdown, end open streams so the server need not wait for them."""
    app[CONSOLE].hub.close()


def setup_console(app: web.Application, backend: Backend) -> None:
    """Serve the console at ``/`` and the live stream; call after the backend's cleanup context is added."""
    app[CONSOLE] = Console(backend)
    app.cleanup_ctx.append(_live_ctx)
    app.on_shutdown.append(_end_streams)
    app.add_routes(
        [
            web.get(CONSOLE_INDEX, index),
            web.get(CONSOLE_STATIC + "{name}", static_file),
            web.get(STREAM_PATH, stream, allow_head=False),
        ]
    )
