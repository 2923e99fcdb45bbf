"""The scheduler's I/O shell: config watch, probe results, ticks, lease, publications over NATS.

Every scheduler follows config, probe results and what is published; only the
lease holder decides and publishes.  A standby that takes over re-reads the
last published answers and pool views first, so it continues exactly where
the previous leader stopped (non-preemptive memory included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from services.scheduler import metrics
from shared import bus, ops, subjects
from shared.messages import (
    AnswerSet,
    PoolState,
    answer_set_decoder,
    encoder,
    pool_state_decoder,
    probe_result_decoder,
)
from shared.resources import domain_decoder, pool_decoder
from shared.settings import Settings

from .engine import Engine, Outputs
from .lease import Lease

log = structlog.get_logger("scheduler")

T = TypeVar("T")
_DELETE_OPS = ("DEL", "PURGE")
_LOAD_TIMEOUT_S = 5.0


async def load_last_per_subject(
    js: JetStreamContext, stream: str, subject: str, decode: Callable[[bytes], T]
) -> list[T]:
    """The last message of every subject in ``stream``, decoded (bad ones are logged and skipped)."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT
    )
    out: list[T] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=_LOAD_TIMEOUT_S)
            try:
                out.append(decode(msg.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("bad_stored_message", stream=stream, subject=msg.subject, error=str(exc))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


class Scheduler:
    """Feeds the engine from NATS and publishes what it decides, one step at a time."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.engine = Engine(now=time.monotonic())
        # One step (engine call + its publications) at a time keeps publications in decision order.
        self.lock = asyncio.Lock()
        self.leader = False

    async def load_config(self, watcher: KeyValue.KeyWatcher) -> None:
        """Apply the bucket's initial values, up to the end-of-initial-values marker."""
        async for entry in watcher:
            if entry is None:
                return
            self.apply_entry(entry)

    async def read_published(self) -> tuple[list[AnswerSet], list[PoolState]]:
        """The last published answer of every domain and view of every pool."""
        answers = await load_last_per_subject(
            self.js, subjects.STREAM_ANSWERS, subjects.ANSWERS_ALL, answer_set_decoder.decode
        )
        states = await load_last_per_subject(
            self.js, subjects.STREAM_POOL_STATE, subjects.POOL_STATE_ALL, pool_state_decoder.decode
        )
        return answers, states

    async def load_previous(self) -> None:
        """Follow what is published: load the last answers and pool views (standby)."""
        answers, states = await self.read_published()
        for answer in answers:
            self.engine.load_answer(answer)
        for state in states:
            self.engine.load_pool_state(state)

    async def become_leader(self, lease: Lease) -> None:
        """Take over: re-read what was last published, then decide and publish what differs."""
        async with self.lock:
            answers, states = await self.read_published()
            out = self.engine.take_over(answers, states, now=time.monotonic(), at=time.time())
            self.leader = True
            metrics.LEADER.set(1)
            log.info(
                "leader_acquired",
                scheduler_id=lease.holder,
                previous=lease.previous_holder,
                revision=lease.revision,
                answers=len(answers),
            )
            await self.publish(out)

    async def step_down(self, lease: Lease) -> None:
        """Stop deciding and publishing; keep following."""
        async with self.lock:
            if self.leader:
                self.leader = False
                metrics.LEADER.set(0)
                self.engine.pause()
                log.warning("leader_lost", scheduler_id=lease.holder, reason=lease.last_error or "released")

    async def keep_lease(self, lease: Lease, stop: asyncio.Event) -> None:
        """Renew or take the lease for ever; switch between leader and standby as it goes."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), lease.next_step_s())
            if stop.is_set():
                return
            try:
                held = await lease.step()
                if held and not self.leader:
                    await self.become_leader(lease)
                elif not held and self.leader:
                    await self.step_down(lease)
            except Exception:  # noqa: BLE001 - never leave a lease held by a scheduler that cannot lead
                log.exception("lease_step_failed")
                await lease.release()
                await self.step_down(lease)

    async def resign(self, lease: Lease) -> None:
        """On shutdown: stop publishing, then release the lease so that a standby takes over at once."""
        await self.step_down(lease)
        await lease.release()

    def on_answer(self, msg: Msg) -> None:
        """Standby: remember a published answer (the leader's memory, for a takeover)."""
        if self.leader:
            return
        try:
            self.engine.load_answer(answer_set_decoder.decode(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bad_answer_set", subject=msg.subject, error=str(exc))

    def on_pool_state(self, msg: Msg) -> None:
        """Standby: remember a published pool view and its non-preemptive memory."""
        if self.leader:
            return
        try:
            self.engine.load_pool_state(pool_state_decoder.decode(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bad_pool_state", subject=msg.subject, error=str(exc))

    def apply_entry(self, entry: KeyValue.Entry) -> Outputs:
        """Apply one config bucket entry to the engine."""
        kind, name = subjects.parse_config_key(entry.key)
        deleted = entry.operation in _DELETE_OPS
        try:
            if kind == "pool":
                pool = None if deleted else pool_decoder.decode(entry.value or b"")
                return self.engine.set_pool(name, pool, now=time.monotonic(), at=time.time())
            if kind == "domain":
                domain = None if deleted else domain_decoder.decode(entry.value or b"")
                return self.engine.set_domain(name, domain, entry.revision or 0, at=time.time())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bad_config_entry", key=entry.key, revision=entry.revision, error=str(exc))
        return Outputs()

    async def watch_config(self, watcher: KeyValue.KeyWatcher) -> None:
        """Apply live config changes for ever."""
        async for entry in watcher:
            if entry is None:
                continue
            async with self.lock:
                await self.publish(self.apply_entry(entry))

    async def on_probe_result(self, msg: Msg) -> None:
        """Core NATS callback: one probe result."""
        metrics.RESULTS.inc()
        try:
            result = probe_result_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bad_probe_result", subject=msg.subject, error=str(exc))
            return
        try:
            # Decide under the lock: a decision made before a config step but published after it
            # would overwrite the newer answer (ANSWERS keeps only the last one per domain).
            async with self.lock:
                await self.publish(self.engine.observe(result, now=time.monotonic(), at=time.time()))
        except Exception:  # noqa: BLE001 - a callback never dies on one message
            log.exception("probe_result_failed", key=result.key, region=result.region)

    async def tick(self, interval_s: float, stop: asyncio.Event) -> None:
        """Interval deadlines (unknown addresses, warming) and retries of failed publications."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            try:
                async with self.lock:
                    await self.publish(self.engine.tick(now=time.monotonic(), at=time.time()))
            except Exception:  # noqa: BLE001 - keep ticking
                log.exception("tick_failed")

    async def publish(self, out: Outputs) -> None:
        """Publish answers, switches and pool views; failed ones are retried on a tick."""
        if not out:
            return
        started = time.perf_counter()
        sends: list[tuple[str, Any]] = []
        sends += [(subjects.answers(a.domain), a) for a in out.answers]
        sends += [(subjects.switch_event(s.domain), s) for s in out.switches]
        sends += [(subjects.pool_state(p.pool), p) for p in out.pool_states]
        results = await asyncio.gather(
            *(self.js.publish(subj, encoder.encode(m)) for subj, m in sends), return_exceptions=True
        )
        failed_domains, failed_pools = [], []
        for (subj, m), res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("publish_failed", subject=subj, error=repr(res))
                if isinstance(m, AnswerSet):
                    failed_domains.append(m.domain)
                elif isinstance(m, PoolState):
                    failed_pools.append(m.pool)
            else:
                _log_published(m)
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        metrics.DECISIONS.labels("answer").inc(len(out.answers))
        metrics.DECISIONS.labels("pool_state").inc(len(out.pool_states))
        metrics.SWITCHES.inc(len(out.switches))
        for name in out.removed_pools:
            await self._purge_pool_state(name)
        if failed_domains or failed_pools:
            self.engine.publish_failed(domains=failed_domains, pools=failed_pools)

    async def _purge_pool_state(self, name: str) -> None:
        try:
            await self.js.purge_stream(subjects.STREAM_POOL_STATE, subject=subjects.pool_state(name))
            log.info("pool_state_removed", pool=name)
        except Exception as exc:  # noqa: BLE001 - a stale view is harmless
            log.warning("pool_state_purge_failed", pool=name, error=repr(exc))


def _log_published(m: Any) -> None:
    if isinstance(m, AnswerSet):
        log.info(
            "answer_published",
            domain=m.domain,
            pool=m.pool,
            records=m.records,
            fallback=m.fallback,
            enabled=m.enabled,
            deleted=m.deleted,
        )
    elif isinstance(m, PoolState):
        log.info("pool_state_changed", pool=m.pool, available=m.available, current=m.current)
    else:
        log.info(
            "domain_switched", domain=m.domain, from_pool=m.from_pool, to_pool=m.to_pool, reason=m.reason
        )


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The scheduler process: follow, lead when it holds the lease, until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        nc: Client = await bus.connect(settings.nats)
        stack.push_async_callback(bus.close, nc)
        js = nc.jetstream()
        replicas = bus.replicas(nc, settings.nats)
        await bus.ensure_streams(js, replicas=replicas)
        kv = await bus.config_bucket(js, replicas=replicas)
        leases = await bus.leases_bucket(js, replicas=replicas)
        lease = Lease(leases, holder=settings.scheduler_id, lease_s=settings.scheduler_lease_s)
        scheduler = Scheduler(js)
        ops.watch_nats(nc)
        ready = asyncio.Event()
        await stack.enter_async_context(ops.serve(settings.metrics_listen, ready=ready.is_set))
        watcher = await kv.watchall()
        stack.push_async_callback(_stop_watcher, watcher)
        await scheduler.load_config(watcher)
        scheduler.engine.mark_config_loaded()
        await nc.subscribe(subjects.PROBE_RESULT_ALL, cb=scheduler.on_probe_result)
        await nc.subscribe(subjects.ANSWERS_ALL, cb=_sync(scheduler.on_answer))
        await nc.subscribe(subjects.POOL_STATE_ALL, cb=_sync(scheduler.on_pool_state))
        stack.push_async_callback(scheduler.resign, lease)
        if await lease.step():
            await scheduler.become_leader(lease)
        else:
            await scheduler.load_previous()
        ready.set()
        log.info(
            "service_ready",
            role="leader" if scheduler.leader else "standby",
            scheduler_id=settings.scheduler_id,
            pools=len(scheduler.engine.pools),
            domains=len(scheduler.engine.domains),
            answers=len(scheduler.engine.answers),
        )
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(scheduler.watch_config(watcher))
            tg.create_task(scheduler.tick(settings.scheduler_tick_s, stop))
            tg.create_task(scheduler.keep_lease(lease, stop))
            await stop.wait()
            watch.cancel()


def _sync(handler: Callable[[Msg], None]) -> Callable[[Msg], Awaitable[None]]:
    async def cb(msg: Msg) -> None:
        handler(msg)

    return cb


async def _stop_watcher(watcher: KeyValue.KeyWatcher) -> None:
    with contextlib.suppress(Exception):
        await watcher.stop()  # type: ignore[no-untyped-call]
