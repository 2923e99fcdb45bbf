"""The process shell every service shares: event loop, signals, stop event."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Make the first SIGINT or SIGTERM set ``stop``; ignore any later one.

    A Ctrl-C reaches a whole process group and a supervisor may then send its own
    SIGTERM: that second signal must not kill a process that is already draining
    (nor one that has left its event loop and is tearing down).
    """
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)


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
