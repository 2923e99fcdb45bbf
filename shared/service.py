"""The process shell every service shares: event loop, signals, stop event."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_DEADLINE_S = 5.0


def _force_exit() -> None:
    # A library task that swallows its cancellation (nats-py's first connect can, while NATS
    # is unreachable) must not keep a stopped service alive: it has stopped serving already.
    log.warning("stop_deadline_exceeded", seconds=STOP_DEADLINE_S)
    sys.stderr.flush()
    os._exit(0)


def install_stop_signals(stop: asyncio.Event) -> None:
    """Make the first SIGINT or SIGTERM set ``stop``; ignore any later one.

    A Ctrl-C reaches a whole process group and a supervisor may then send its own
    SIGTERM: that second signal must not kill a process that is already draining
    (nor one that has left its event loop and is tearing down).
    """
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        deadline = threading.Timer(STOP_DEADLINE_S, _force_exit)
        deadline.daemon = True
        deadline.start()
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
