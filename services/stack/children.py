"""Start children that die with the stack, and stop them: services first, NATS last."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable

import structlog

from services.stack.plan import Proc

log = structlog.get_logger(__name__)

STOP_GRACE_S = 10.0
SELF_EXIT_S = 0.5
PARENT_DEATH_SIGNAL = signal.SIGTERM  # a child stops cleanly (a service drains) when the stack dies
_PR_SET_PDEATHSIG = 1
# Resolved here, in the parent: between fork and exec the child only calls it.
_prctl: Callable[..., int] | None = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)

Named = tuple[str, asyncio.subprocess.Process]


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` that makes Linux signal the child when this process dies.

    Linux sends the signal when the *thread* that forked the child ends, so spawn from the
    event loop's (main) thread; a ``kill -9`` of the stack then takes every child with it.
    """
    parent = os.getpid()

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
        if os.getppid() != parent:  # the stack died before the prctl took: nobody to serve
            os._exit(1)

    return preexec


async def spawn(proc: Proc, *, own_session: bool = False) -> asyncio.subprocess.Process:
    """Start ``proc`` as a child that dies with this process."""
    return await asyncio.create_subprocess_exec(
        *proc.argv, env=proc.env or None, start_new_session=own_session, preexec_fn=die_with_parent()
    )


async def stop_group(group: list[Named]) -> None:
    """Stop processes together: let those already signalled exit, SIGTERM the rest, then SIGKILL."""
    alive = [(n, c) for n, c in group if c.returncode is None]
    if alive:
        # A Ctrl-C reaches the whole process group: most children are already stopping.
        await asyncio.wait([asyncio.ensure_future(c.wait()) for _, c in alive], timeout=SELF_EXIT_S)
    for _, child in alive:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    for name, child in group:
        try:
            await asyncio.wait_for(child.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("process_killed", process=name)
            child.kill()
            await child.wait()
        log.info("process_stopped", process=name, code=child.returncode)


async def terminate(children: list[Named]) -> None:
    """Stop the services first, NATS last, so the services can drain."""
    await stop_group([(n, c) for n, c in children if n != "nats"])
    await stop_group([(n, c) for n, c in children if n == "nats"])


def stop_deadline_s() -> float:
    """How long the stack may take to stop: both groups at their worst, and a margin."""
    return 2 * (SELF_EXIT_S + STOP_GRACE_S) + 5.0
