"""The prober's I/O shell: watch the config, run one task per target, publish results."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client
from nats.js.kv import KeyValue

from services.prober.checks import Checker, make_session
from services.prober.core import (
    Outcome,
    Target,
    derive_targets,
    diff_targets,
    first_delay,
    next_due,
    transition_event,
)
from shared import bus, messages, subjects
from shared.resources import Pool, pool_decoder
from shared.settings import Settings

log = structlog.get_logger(__name__)

_DELETE_OPS = ("DEL", "PURGE")


class Prober:
    """Keeps one running check task per target, in step with the pools in config."""

    def __init__(
        self,
        *,
        settings: Settings,
        nc: Client,
        checker: Checker,
        tg: asyncio.TaskGroup,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._checker = checker
        self._tg = tg
        self._draw = draw
        self._sem = asyncio.Semaphore(settings.prober_concurrency)
        self._pools: dict[str, Pool] = {}
        self._targets: dict[str, Target] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_ok: dict[str, bool] = {}

    @property
    def targets(self) -> dict[str, Target]:
        """The targets being checked now, by address key."""
        return dict(self._targets)

    async def watch(self, kv: KeyValue, on_ready: Callable[[], None]) -> None:
        """Follow ``gtm_config``: load the initial pools, then apply every change."""
        watcher = await kv.watchall()
        ready = False
        try:
            async for entry in watcher:
                if entry is None:
                    if not ready:
                        ready = True
                        self.reconcile()
                        on_ready()
                    continue
                if self.apply_entry(entry.key, entry.value, entry.operation) and ready:
                    self.reconcile()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def apply_entry(self, key: str, value: bytes | None, operation: str | None) -> bool:
        """Update the known pools from one KV entry; True when they changed."""
        kind, name = subjects.parse_config_key(key)
        if kind != "pool":
            return False
        if operation in _DELETE_OPS:
            return self._pools.pop(name, None) is not None
        try:
            pool = pool_decoder.decode(value or b"")
        except msgspec.DecodeError as exc:
            log.warning("config_decode_failed", key=key, error=str(exc))
            return False
        self._pools[name] = pool
        return True

    def reconcile(self) -> None:
        """Start, stop and restart only the tasks whose targets changed."""
        new = derive_targets(self._pools)
        diff = diff_targets(self._targets, new)
        if diff.empty:
            return
        for key in diff.stop:
            self._cancel(key)
            self._last_ok.pop(key, None)
        for key in diff.restart:
            self._cancel(key)
        for key in diff.start + diff.restart:
            target = new[key]
            delay = first_delay(target.check.interval_s, self._draw())
            self._tasks[key] = self._tg.create_task(self._run(target, delay), name=f"probe {key}")
        self._targets = new
        log.info(
            "targets_changed",
            started=len(diff.start),
            stopped=len(diff.stop),
            restarted=len(diff.restart),
            targets=len(new),
        )

    def stop_all(self) -> None:
        """Cancel every check task."""
        for key in list(self._tasks):
            self._cancel(key)
        self._targets = {}

    def _cancel(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def _run(self, target: Target, delay: float) -> None:
        """Check ``target`` at its first slot, then every interval from the schedule."""
        loop = asyncio.get_running_loop()
        interval = target.check.interval_s
        due = loop.time() + delay
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            async with self._sem:
                outcome = await self._checker.check(target)
            await self._publish(target, outcome)
            due = next_due(due, interval, loop.time())

    async def _publish(self, target: Target, outcome: Outcome) -> None:
        result = messages.ProbeResult(
            region=self._settings.prober_region,
            prober=self._settings.prober_id,
            key=target.key,
            pool=target.pool,
            address=target.address,
            target=target.target,
            protocol=target.check.protocol,
            ok=outcome.ok,
            rtt_ms=outcome.rtt_ms,
            error=outcome.error,
            at=time.time(),
        )
        self._log_transition(target, outcome)
        subject = subjects.probe_result(self._settings.prober_region, target.key)
        try:
            await self._nc.publish(subject, messages.encoder.encode(result))
        except Exception as exc:  # noqa: BLE001 - NATS away: the next interval tries again
            log.warning("publish_failed", key=target.key, error=str(exc))

    def _log_transition(self, target: Target, outcome: Outcome) -> None:
        event = transition_event(self._last_ok.get(target.key), outcome.ok)
        self._last_ok[target.key] = outcome.ok
        if event is None:
            return
        level = log.warning if event == "check_failed" else log.info
        level(
            event,
            pool=target.pool,
            address=target.address,
            target=target.target,
            protocol=target.check.protocol,
            error=outcome.error,
        )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    """Run the prober until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        nc = await bus.connect(settings.nats)
        stack.push_async_callback(bus.close, nc)
        js = nc.jetstream()
        await bus.ensure_streams(js)
        kv = await bus.config_bucket(js)
        session = make_session(concurrency=settings.prober_concurrency)
        stack.push_async_callback(session.close)
        async with asyncio.TaskGroup() as tg:
            prober = Prober(settings=settings, nc=nc, checker=Checker(session), tg=tg)

            def ready() -> None:
                log.info(
                    "service_ready",
                    region=settings.prober_region,
                    prober=settings.prober_id,
                    targets=len(prober.targets),
                )

            watch = tg.create_task(prober.watch(kv, ready), name="config watch")
            await stop.wait()
            log.info("service_stopping")
            watch.cancel()
            prober.stop_all()
