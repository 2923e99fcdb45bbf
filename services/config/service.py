"""The config service: refuse an open non-loopback listener, listen, wait for NATS, serve until stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from services.config.app import BACKEND, AccessLogger, create_app
from services.config.security import check_listen
from shared.settings import Settings

log = structlog.get_logger(__name__)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the API on ``settings.api.listen`` until ``stop`` is set; log ``service_ready`` once all is up."""
    listen = check_listen(settings)
    if listen.refuse:
        log.error("api_token_required", listen=f"{listen.host}:{listen.port}", reason=listen.error)
        raise SystemExit(2)
    if listen.warning:
        log.warning("api_unauthenticated", listen=f"{listen.host}:{listen.port}", reason=listen.warning)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen.host, listen.port)
        try:
            await site.start()
        except OSError as exc:
            log.error("listen_failed", listen=f"{listen.host}:{listen.port}", error=str(exc))
            raise SystemExit(1) from None
        host, port = runner.addresses[0][:2]
        log.info("api_listening", listen=f"{host}:{port}")
        if await _first(app[BACKEND].ready.wait(), stop.wait()) == 0:
            log.info("service_ready", listen=f"{host}:{port}")
        await stop.wait()
    finally:
        await runner.cleanup()


async def _first(*aws: Coroutine[Any, Any, Any]) -> int:
    """Index of the first of ``aws`` to finish; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(i for i, t in enumerate(tasks) if t in done)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
