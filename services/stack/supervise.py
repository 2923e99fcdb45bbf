"""Start the planned processes, keep each one running, stop them all on a signal.

A child that exits is started again on its own, after a capped exponential backoff;
nothing else is touched (the services reconnect to a restarted NATS by themselves).
Only a crash loop (``RestartPolicy``) stops the whole stack, with a non-zero code.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import structlog

from services.stack import preflight
from services.stack.children import Named, spawn, terminate
from services.stack.plan import Plan, Proc
from services.stack.probes import tcp_open, wait_ready
from services.stack.restart import GiveUp, Restart, RestartPolicy, RestartTracker

log = structlog.get_logger(__name__)

NATS_START_S = 15.0
REFUSED = 2  # the exit code when the stack did not start anything


class Child:
    """One planned process and its current incarnation."""

    def __init__(self, proc: Proc, *, own_session: bool, policy: RestartPolicy) -> None:
        self.proc = proc
        self.own_session = own_session
        self.tracker = RestartTracker(policy)
        self.process: asyncio.subprocess.Process | None = None
        self.since = 0.0

    @property
    def name(self) -> str:
        """The process's name in the plan and in every log line."""
        return self.proc.name

    async def start(self) -> asyncio.subprocess.Process:
        """Start a new incarnation (one that fails to start counts as up for no time)."""
        self.process = None
        self.since = time.monotonic()
        self.process = await spawn(self.proc, own_session=self.own_session)
        return self.process

    def exited(self, code: int | None) -> Restart | GiveUp:
        """Log the exit and decide what comes next."""
        now = time.monotonic()
        up_s = now - self.since
        pid = self.process.pid if self.process else None
        log.warning("process_exited", process=self.name, pid=pid, code=code, up_s=round(up_s, 2))
        decision = self.tracker.exited(now=now, up_s=up_s)
        if isinstance(decision, GiveUp):
            log.error(
                "process_crash_loop",
                process=self.name,
                exits=decision.exits,
                window_s=decision.window_s,
                hint="it keeps exiting: see its log lines above; stopping the stack",
            )
        return decision


def _children(plan: Plan, policy: RestartPolicy) -> list[Child]:
    # NATS stays out of the terminal's process group: a Ctrl-C or a signal to
    # the group must not kill it before the services have drained.
    nats = [Child(plan.nats, own_session=True, policy=policy)] if plan.nats is not None else []
    return [*nats, *(Child(p, own_session=False, policy=policy) for p in plan.services)]


async def _start_all(plan: Plan, children: list[Child], stop: asyncio.Event) -> bool:
    """Start NATS, wait for its port, then the services (none once ``stop`` is set)."""
    for child in children:
        if stop.is_set():
            break
        try:
            process = await child.start()
        except OSError as exc:
            log.error("process_start_failed", process=child.name, argv=child.proc.argv, error=str(exc))
            return False
        log.info("process_started", process=child.name, pid=process.pid)
        if child.name == "nats":
            url = urlparse(plan.nats_url)
            port = url.port or 4222
            if not await tcp_open(url.hostname or "127.0.0.1", port, NATS_START_S):
                log.error("nats_not_listening", url=plan.nats_url, hint="see nats-server's lines above")
                return False
    return True


class _Watch:
    """The supervisor's loop: child exits, restart timers, readiness and the stop signal."""

    def __init__(self, plan: Plan, children: list[Child], stop: asyncio.Event, started: float) -> None:
        self.exits: dict[asyncio.Future[int], Child] = {}
        self.timers: dict[asyncio.Future[None], tuple[Child, Restart]] = {}
        for child in children:
            self._watch(child)
        self.ready: asyncio.Future[bool] | None = asyncio.ensure_future(wait_ready(plan, started))
        self.stopped = asyncio.ensure_future(stop.wait())

    def _watch(self, child: Child) -> None:
        assert child.process is not None
        self.exits[asyncio.ensure_future(child.process.wait())] = child

    def _pending(self) -> set[asyncio.Future[Any]]:
        ready = [self.ready] if self.ready is not None else []
        return {self.stopped, *ready, *self.exits, *self.timers}

    async def run(self) -> int:
        """Until the stop signal (0), a crash loop or a stack that never gets ready (1)."""
        try:
            while True:
                done = (await asyncio.wait(self._pending(), return_when=asyncio.FIRST_COMPLETED))[0]
                if self.stopped in done:
                    return 0
                if self.ready in done:
                    if not self.ready.result():
                        log.error("stack_not_ready", hint="see the services' log lines above")
                        return 1
                    self.ready = None
                if not self._on_exits(done) or not await self._on_timers(done):
                    return 1
        finally:
            for future in self._pending():
                future.cancel()

    def _on_exits(self, done: set[asyncio.Future[Any]]) -> bool:
        for future in [f for f in done if f in self.exits]:
            child = self.exits.pop(future)
            if self.stopped.done():
                continue  # a Ctrl-C reached the child first: not a crash
            decision = child.exited(future.result())
            if isinstance(decision, GiveUp):
                return False
            # The delay also lets our own SIGINT land first when a Ctrl-C hit the whole group.
            self.timers[asyncio.ensure_future(asyncio.sleep(decision.delay_s))] = (child, decision)
        return True

    async def _on_timers(self, done: set[asyncio.Future[Any]]) -> bool:
        for future in [f for f in done if f in self.timers]:
            child, decision = self.timers.pop(future)
            if self.stopped.done():
                return True
            try:
                process = await child.start()
            except OSError as exc:
                log.error("process_start_failed", process=child.name, error=str(exc))
                again = child.exited(None)
                if isinstance(again, GiveUp):
                    return False
                self.timers[asyncio.ensure_future(asyncio.sleep(again.delay_s))] = (child, again)
                continue
            log.info(
                "process_restarted",
                process=child.name,
                pid=process.pid,
                attempt=decision.attempt,
                delay_s=decision.delay_s,
            )
            self._watch(child)
        return True


def _claim(plan: Plan) -> tuple[bool, int | None]:
    """Take the data directory and check every port: (free, the lock), a refusal logged."""
    lock = preflight.lock_data_dir(Path(plan.data_dir)) if plan.data_dir else None
    if plan.data_dir and lock is None:
        log.error(
            "data_dir_in_use",
            data_dir=str(Path(plan.data_dir).resolve()),
            hint="another make run uses this directory: stop it, or set GTM_DATA_DIR",
        )
        return False, None
    busy = preflight.taken(plan)
    if busy:
        log.error(
            "ports_in_use",
            ports=busy,
            hint="another make run or program holds them: stop it, "
            "or set GTM_NATS_PORT, GTM_API_LISTEN, GTM_EDGES, GTM_METRICS_BASE_PORT",
        )
        preflight.release(lock)
        return False, None
    return True, lock


async def supervise(plan: Plan, stop: asyncio.Event, *, policy: RestartPolicy | None = None) -> int:
    """Run the stack until ``stop`` is set or a child keeps crashing; return an exit code."""
    started = time.monotonic()
    free, lock = _claim(plan)
    if not free:
        return REFUSED
    children = _children(plan, policy or RestartPolicy())
    try:
        if not await _start_all(plan, children, stop):
            return 1
        return await _Watch(plan, children, stop, started).run()
    finally:
        running: list[Named] = [(c.name, c.process) for c in children if c.process is not None]
        await terminate(running)
        preflight.release(lock)
