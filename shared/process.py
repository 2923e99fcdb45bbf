"""The process shell every service shares: settings, logging, event loop, signals, stop event.

A service is ``run(settings, stop)``: a coroutine that serves until ``stop`` is set.  Its
``__main__`` is one call, ``process.main(name, run)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any, NoReturn

import structlog

from shared import logs, ops
from shared.settings import Settings, SettingsError, load

log = structlog.get_logger(__name__)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_DEADLINE_S = 5.0
_SIG_IGN = 1  # C's SIG_IGN, (void (*)(int)) 1


def _force_exit(seconds: float) -> None:
    # A library task that swallows its cancellation (nats-py's first connect can, while NATS
    # is unreachable) must not keep a stopped service alive: it has stopped serving already.
    log.warning("stop_deadline_exceeded", seconds=seconds)
    sys.stderr.flush()
    os._exit(0)


def _os_ignore(sig: int) -> None:
    """Set the kernel's disposition of ``sig`` to SIG_IGN, leaving Python's handler table alone."""
    setsig = ctypes.pythonapi.PyOS_setsig
    setsig.argtypes, setsig.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
    setsig(sig, _SIG_IGN)


def _ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on, never passing through SIG_DFL.

    Call it outside any signal handler. First the kernel only: from then on no signal can
    trip Python's flag. Then ``signal.signal``, which runs the handler of any signal tripped
    before (ours: a no-op by then) and records SIG_IGN, so interpreter shutdown leaves the
    disposition alone (it resets Python-level handlers to SIG_DFL).
    """
    for sig in STOP_SIGNALS:
        _os_ignore(sig)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _start_deadline(seconds: float) -> None:
    # The timer thread blocks the stop signals, so they keep reaching the main thread only.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        deadline = threading.Timer(seconds, _force_exit, args=(seconds,))
        deadline.daemon = True
        deadline.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def install_stop_signals(stop: asyncio.Event, *, deadline_s: float = STOP_DEADLINE_S) -> None:
    """Make the first SIGINT or SIGTERM set ``stop``; ignore any later one.

    A Ctrl-C reaches a whole process group and a supervisor may then send its own
    SIGTERM: that second signal must not kill a process that is already draining
    (nor one that has left its event loop and is tearing down). So the handlers are
    plain ``signal`` handlers, installed once and never removed while the loop runs:
    ``loop.remove_signal_handler`` would pass through SIG_DFL, and a handler that
    changed dispositions itself could find a second signal already tripped and have
    CPython report it "ignored due to race condition". uvloop wakes up for them as
    asyncio does. ``run`` ignores them once the loop has closed.
    The first signal also starts a ``deadline_s`` timer that ends the process.
    """
    loop = asyncio.get_running_loop()
    fired = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        _start_deadline(deadline_s)
        with contextlib.suppress(RuntimeError):  # the loop has closed already: nothing to stop
            loop.call_soon_threadsafe(stop.set)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)


def run(main: Callable[[asyncio.Event], Awaitable[None]], *, stop_deadline_s: float = STOP_DEADLINE_S) -> None:
    """Run ``main(stop)`` on uvloop where available; signals set ``stop``.

    A process that got a stop signal exits at the latest ``stop_deadline_s`` after it.
    """

    async def wrapper() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop, deadline_s=stop_deadline_s)
        await main(stop)
        log.info("service_stopped")

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(wrapper())
    finally:
        _ignore_stop_signals()


Service = Callable[[Settings, asyncio.Event], Awaitable[None]]


def main(name: str, service: Service, *, before: Callable[[Settings], int | None] | None = None) -> NoReturn:
    """Be service ``name``: read its settings, configure logging, run ``service(settings, stop)``, exit.

    A bad setting stops it before anything starts, with exit code 2 and a message naming the
    variable.  Every log line names the service and its instance (``GTM_INSTANCE``), as does
    ``gtm_build_info``.  ``before(settings)`` runs first, outside any event loop; when it returns an exit
    code the process exits with it instead (the edge forks its workers there).
    """
    try:
        settings = load(name)
    except SettingsError as exc:
        print(f"gtm-{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    instance = settings.instance or logs.default_instance()
    logs.configure(service=name, instance=instance, level=settings.log.level, fmt=settings.log.format)
    ops.set_identity(name, instance)
    if before is not None and (code := before(settings)) is not None:
        sys.exit(code)
    run(functools.partial(service, settings))
    sys.exit(0)
