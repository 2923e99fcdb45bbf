"""The process shell every service shares: event loop, signals, stop event."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Make SIGINT and SIGTERM set ``stop`` instead of raising."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop where available; signals set ``stop``."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await main(stop)
        log.info("service_stopped")

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(wrapper())
    else:
        uvloop.run(wrapper())
