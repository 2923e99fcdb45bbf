"""The prober's I/O shell: watch the config, run one task per owned target, publish results.

With several probers in one region, each checks only the addresses it owns
(rendezvous hashing over the live members, see :mod:`services.prober.membership`).
Every LAG_REPORT_S it logs ``schedule_lag``: how late checks started against
their schedule (p50/p99/max ms) and how many ran.
"""

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

from services.prober import membership, metrics
from services.prober.checks import Checker, make_session
from services.prober.core import (
    FIRST_RUN_WINDOW_S,
    TAKEOVER_WINDOW_S,
    Outcome,
    Target,
    derive_targets,
    diff_targets,
    first_delay,
    lag_summary,
    next_due,
    transition_event,
)
from services.prober.heartbeat import Membership
from services.prober.watch import ConnectionWatch, RecheckBudget, watchable
from shared import bus, messages, ops, subjects
from shared.resources import Pool, pool_decoder
from shared.settings import Settings

log = structlog.get_logger(__name__)

LAG_REPORT_S = 10.0


class Prober:
    """Keeps one running check task per target, in step with the pools in config."""

    def __init__(
        self,
        *,
        settings: Settings,
        nc: Client,
        checker: Checker,
        tg: asyncio.TaskGroup,
        members: Membership | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._checker = checker
        self._tg = tg
        self._members = members
        self._draw = draw
        self._sem = asyncio.Semaphore(settings.prober.concurrency)
        self._pools: dict[str, Pool] = {}
        self._targets: dict[str, Target] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_ok: dict[str, bool] = {}
        self._ready = False
        self._lags: list[float] = []  # seconds late, of the checks started since the last report
        self._region = settings.prober.region
        self._id = settings.prober.id
        if members is not None:
            members.set_on_change(lambda: self.reconcile(window_s=TAKEOVER_WINDOW_S))

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
                        if self._members is not None:
                            await self._members.joined.wait()  # know the peers before probing
                        self._ready = True
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
        if operation in bus.DELETE_OPS:
            return self._pools.pop(name, None) is not None
        try:
            pool = pool_decoder.decode(value or b"")
        except msgspec.DecodeError as exc:
            log.warning("config_decode_failed", key=key, error=str(exc))
            return False
        self._pools[name] = pool
        return True

    def reconcile(self, window_s: float = FIRST_RUN_WINDOW_S) -> None:
        """Start, stop and restart only the tasks whose owned targets changed.

        New tasks run their first check within ``window_s`` (jittered).
        """
        if not self._ready:
            return
        new = derive_targets(self._pools)
        if self._members is not None:
            mine = membership.owned_by(new, self._members.live, self._members.me)
            new = {k: t for k, t in new.items() if k in mine}
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
            delay = first_delay(target.check.interval_s, self._draw(), window_s)
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
        """Cancel every check task, and start none from now on."""
        self._ready = False  # a late config or membership change must not start new tasks
        for key in list(self._tasks):
            self._cancel(key)
        self._targets = {}

    def _cancel(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()

    async def report_lag(self, every_s: float = LAG_REPORT_S) -> None:
        """Log ``schedule_lag`` every ``every_s``: how late checks started, and how many."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            await asyncio.sleep(every_s)
            lags, self._lags = self._lags, []
            now = loop.time()
            if lags:
                log.info(
                    "schedule_lag",
                    checks=len(lags),
                    checks_per_s=round(len(lags) / (now - since), 1),
                    targets=len(self._targets),
                    **lag_summary(lags),
                )
            since = now

    async def _run(self, target: Target, delay: float) -> None:
        """Check ``target`` at its first slot, then every interval from the schedule, and at once
        when its watched connection ends (within the re-check budget)."""
        loop = asyncio.get_running_loop()
        interval = target.check.interval_s
        probe = self._checker.probe(target)
        subject = subjects.probe_result(self._region, target.key)
        due = loop.time() + delay
        wake = asyncio.Event()  # set by the schedule's timer, or by the watch (``poked``)
        poked: list[bool] = [False]
        budget = RecheckBudget(interval)
        watcher = None
        if watchable(target.check) and target.check.effective_port is not None:

            def poke() -> None:
                poked[0] = True
                wake.set()

            watch = ConnectionWatch(target.target, target.check.effective_port, target.check, poke)
            watcher = asyncio.ensure_future(watch.run())
        try:
            while True:
                timer = loop.call_at(due, wake.set)
                await wake.wait()
                wake.clear()
                timer.cancel()
                recheck = poked[0] and loop.time() < due
                poked[0] = False
                if recheck and not budget.allow(loop.time()):
                    continue
                async with self._sem:
                    if not recheck:
                        self._lags.append(loop.time() - due)
                    outcome = await probe()
                await self._publish(target, subject, outcome)
                if recheck:
                    metrics.RECHECKS.labels(self._region).inc()
                else:
                    due = next_due(due, interval, loop.time())
        finally:
            if watcher is not None:
                watcher.cancel()

    async def _publish(self, target: Target, subject: str, outcome: Outcome) -> None:
        result = messages.ProbeResult(
            region=self._region,
            prober=self._id,
            key=target.key,
            pool=target.pool,
            address=target.address,
            target=target.target,
            protocol=target.check.protocol,
            ok=outcome.ok,
            rtt_ms=outcome.rtt_ms,
            error=outcome.error,
            at=time.time(),
            check=target.index,
            loss_pct=outcome.loss_pct,
        )
        metrics.observe(self._region, target.check.protocol, outcome.ok, outcome.rtt_ms, outcome.error)
        if self._last_ok.get(target.id) is not outcome.ok:
            self._log_transition(target, outcome)
        try:
            await self._nc.publish(subject, messages.encoder.encode(result))
        except Exception as exc:  # noqa: BLE001 - NATS away: the next interval tries again
            log.warning("publish_failed", key=target.id, error=str(exc))

    def _log_transition(self, target: Target, outcome: Outcome) -> None:
        event = transition_event(self._last_ok.get(target.id), outcome.ok)
        self._last_ok[target.id] = outcome.ok
        if event is None:
            return
        level = log.warning if event == "check_failed" else log.info
        level(
            event,
            pool=target.pool,
            address=target.address,
            target=target.target,
            protocol=target.check.protocol,
            check=target.index,
            error=outcome.error,
        )


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the prober until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        nats = await stack.enter_async_context(bus.Session(settings.nats))
        nc, kv = nats.nc, nats.config
        session = make_session(concurrency=settings.prober.concurrency)
        stack.push_async_callback(session.close)
        ready_flag = asyncio.Event()
        await stack.enter_async_context(ops.serve(settings.metrics_listen, ready=ready_flag.is_set))
        members = Membership(nc=nc, region=settings.prober.region, prober=settings.prober.id)
        async with asyncio.TaskGroup() as tg:
            prober = Prober(settings=settings, nc=nc, checker=Checker(session), tg=tg, members=members)

            def ready() -> None:
                ready_flag.set()
                log.info(
                    "service_ready",
                    region=settings.prober.region,
                    prober=settings.prober.id,
                    targets=len(prober.targets),
                    members=sorted(members.live),
                )

            background = [
                tg.create_task(members.run(), name="membership"),
                tg.create_task(prober.watch(kv, ready), name="config watch"),
                tg.create_task(prober.report_lag(), name="lag report"),
            ]
            await stop.wait()
            log.info("service_stopping")
            for task in background:
                task.cancel()
            prober.stop_all()
            await members.leave()
