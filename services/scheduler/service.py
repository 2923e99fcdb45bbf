"""The scheduler's I/O shell: config watch, probe results, ticks, lease, publications over NATS.

Every scheduler follows config, probe results and what is published; only the
lease holder decides and publishes.  A standby that takes over re-reads the
last published answers and pool views first, so it continues exactly where
the previous leader stopped (non-preemptive memory included).

Fencing (see :mod:`services.scheduler.fencing`): nothing is handed to nats.py
unless the lease is valid and the connection is up at that very moment (a
publication that may not go out is dropped and retried on a tick, never
buffered for a reconnect); every publication carries the leader's term; the
leader follows ANSWERS and POOL_STATE and publishes its own over anything of a
lower term that lands after it, and stops when it sees a higher one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from services.scheduler import fencing, metrics
from shared import bus, ops, subjects
from shared.messages import (
    AnswerSet,
    HealthLogEntry,
    PoolState,
    SwitchEvent,
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
            except msgspec.DecodeError as exc:
                log.warning("bad_stored_message", stream=stream, subject=msg.subject, error=str(exc))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


class _Dropped(Exception):
    """A publication not handed to NATS: the lease is not valid or the connection is down."""


class Scheduler:
    """Feeds the engine from NATS and publishes what it decides, one step at a time.

    With ``lease`` and ``nc``, each publication is handed to NATS only while the lease is
    valid and ``nc`` is connected (without them: always, as in tests of the shell alone).
    """

    def __init__(self, js: JetStreamContext, *, lease: Lease | None = None, nc: Client | None = None) -> None:
        self.js = js
        self.lease = lease
        self.nc = nc
        self.engine = Engine(now=time.monotonic())
        # One step (engine call + its publications) at a time keeps publications in decision order.
        self.lock = asyncio.Lock()
        self.leader = False
        self.seen_term = 0  # the highest term seen on the bus
        self._dropping = ""  # why publications are being dropped ("" = they are not)
        # What lands on the bus while a take-over reads the streams: it may be missing from
        # what was read, so it is fenced once the take-over is done.
        self._arrived: list[AnswerSet | PoolState] | None = None
        self.config_revision = 0  # the highest config bucket revision applied (a gauge)
        self.region_seen: dict[str, float] = {}  # prober region -> unix time of its last result (a gauge)

    def may_publish(self) -> str:
        """Why nothing may be handed to NATS right now ("" when it may)."""
        if self.lease is not None and not (self.leader and self.lease.valid()):
            return "lease not valid"
        if self.nc is not None and not self.nc.is_connected:
            return "not connected"
        return ""

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
        self._see_terms(answers, states)

    def _see_terms(self, answers: list[AnswerSet], states: list[PoolState]) -> None:
        self.seen_term = max([self.seen_term, *(a.term for a in answers), *(s.term for s in states)])

    async def become_leader(self, lease: Lease) -> None:
        """Take over: re-read what was last published, then decide and publish what differs.

        Then publish over whatever a previous leader's publication landed meanwhile.
        """
        self._arrived = []
        try:
            await self._take_over(lease)
        finally:
            self._arrived = None

    async def _take_over(self, lease: Lease) -> None:
        async with self.lock:
            answers, states = await self.read_published()
            self._see_terms(answers, states)
            term = fencing.leader_term(lease.term, [self.seen_term])
            now, at = time.monotonic(), time.time()
            out = self.engine.take_over(answers, states, now=now, at=at, term=term)
            self.leader = True  # from now on what lands is fenced as it comes
            arrived, self._arrived = self._arrived or [], None
            metrics.LEADER.set(1)
            log.info(
                "leader_acquired",
                scheduler_id=lease.holder,
                previous=lease.previous_holder,
                revision=lease.revision,
                term=term,
                answers=len(answers),
            )
            await self.publish(out)
            read = {_identity(a) for a in answers} | {_identity(s) for s in states}
            await self.publish(self._repair_all([m for m in arrived if _identity(m) not in read], at=time.time()))

    async def step_down(self, lease: Lease) -> None:
        """Stop deciding and publishing at once; keep following.

        Not under the lock: a step in progress may be waiting for NATS to acknowledge what it
        handed over (up to the JetStream timeout), and the lease ends when it ends.  That
        step hands nothing more over (:meth:`may_publish`) and retries nothing.
        """
        if self.leader:
            self.leader = False
            metrics.LEADER.set(0)
            self.engine.pause()
            log.warning(
                "leader_lost",
                scheduler_id=lease.holder,
                term=self.engine.term,
                reason=lease.last_error or "released",
            )

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

    async def on_answer(self, msg: Msg) -> None:
        """A published answer: a standby remembers it (for a takeover); the leader fences it."""
        try:
            answer = answer_set_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad_answer_set", subject=msg.subject, error=str(exc))
            return
        self.seen_term = max(self.seen_term, answer.term)
        if self._arrived is not None:
            self._arrived.append(answer)
        if not self.leader:
            self.engine.load_answer(answer)
            return
        await self._fence(answer.term, answer.domain, lambda at: self.engine.repair(answer, at=at))

    async def on_pool_state(self, msg: Msg) -> None:
        """A published pool view: a standby remembers it and its memory; the leader fences it."""
        try:
            state = pool_state_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("bad_pool_state", subject=msg.subject, error=str(exc))
            return
        self.seen_term = max(self.seen_term, state.term)
        if self._arrived is not None:
            self._arrived.append(state)
        if not self.leader:
            self.engine.load_pool_state(state)
            return
        await self._fence(state.term, state.pool, lambda at: self.engine.repair_pool(state, at=at))

    def _repair_all(self, arrived: list[AnswerSet | PoolState], *, at: float) -> Outputs:
        """Repairs for the lower-term publications among ``arrived`` (the last one per name counts).

        ``arrived``: what landed during a take-over and is not in what it read.
        """
        last = {(type(m), m.domain if isinstance(m, AnswerSet) else m.pool): m for m in arrived}
        out = Outputs()
        for m in last.values():
            if not fencing.is_stale(m.term, self.engine.term):
                continue
            one = self.engine.repair(m, at=at) if isinstance(m, AnswerSet) else self.engine.repair_pool(m, at=at)
            out.answers += one.answers
            out.pool_states += one.pool_states
            out.removed_pools += one.removed_pools
        return out

    async def _fence(self, term: int, name: str, repair: Callable[[float], Outputs]) -> None:
        """The leader's answer to a publication of ``term``: step down, publish over it, or nothing."""
        own = self.engine.term
        if fencing.is_deposed(term, own) and self.lease is not None:
            log.warning("higher_term_seen", name=name, term=term, own=own)
            self.lease.lose(f"term {term} published by another leader")
            await self.step_down(self.lease)
        elif fencing.is_stale(term, own):
            try:
                async with self.lock:
                    if self.leader and fencing.is_stale(term, self.engine.term):
                        log.warning("stale_term_repaired", name=name, term=term, own=self.engine.term)
                        await self.publish(repair(time.time()))
            except Exception:  # noqa: BLE001 - a callback never dies on one message
                log.exception("stale_term_repair_failed", name=name)

    def apply_entry(self, entry: KeyValue.Entry) -> Outputs:
        """Apply one config bucket entry to the engine."""
        kind, name = subjects.parse_config_key(entry.key)
        deleted = entry.operation in bus.DELETE_OPS
        self.config_revision = max(self.config_revision, entry.revision or 0)
        try:
            if kind == "pool":
                pool = None if deleted else pool_decoder.decode(entry.value or b"")
                return self.engine.set_pool(name, pool, now=time.monotonic(), at=time.time())
            if kind == "domain":
                domain = None if deleted else domain_decoder.decode(entry.value or b"")
                return self.engine.set_domain(name, domain, entry.revision or 0, at=time.time())
        except msgspec.DecodeError as exc:
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
        except msgspec.DecodeError as exc:
            log.warning("bad_probe_result", subject=msg.subject, error=str(exc))
            return
        metrics.result_from(self, result.region, time.time())
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
        """Publish answers, switches and pool views; failed ones are retried on a tick.

        Each one is handed to NATS only if :meth:`may_publish` allows it right then; else it
        is dropped (and retried on a tick while this scheduler leads).
        """
        if not out:
            return
        started = time.perf_counter()
        sends: list[tuple[str, Any]] = []
        sends += [(subjects.answers(a.domain), a) for a in out.answers]
        sends += [(subjects.switch_event(s.domain), s) for s in out.switches]
        sends += [(subjects.pool_state(p.pool), p) for p in out.pool_states]
        sends += [(subjects.health_log(e.pool, e.address), e) for e in out.health_logs]  # not retried
        results = await asyncio.gather(*(self._send(subj, m) for subj, m in sends), return_exceptions=True)
        failed_domains, failed_pools = [], []
        dropped: dict[str, int] = {}
        for (subj, m), res in zip(sends, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, _Dropped):
                    dropped[str(res)] = dropped.get(str(res), 0) + 1
                else:
                    log.warning("publish_failed", subject=subj, error=repr(res))
                if isinstance(m, AnswerSet):
                    failed_domains.append(m.domain)
                elif isinstance(m, PoolState):
                    failed_pools.append(m.pool)
            else:
                _log_published(m)
        self._log_drops(dropped, sent=len(sends) - sum(dropped.values()))
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        metrics.DECISIONS.labels("answer").inc(len(out.answers))
        metrics.DECISIONS.labels("pool_state").inc(len(out.pool_states))
        for switch in out.switches:
            metrics.SWITCHES.labels(switch.domain).inc()
        for name in out.removed_pools:
            await self._purge_pool_state(name)
        if (failed_domains or failed_pools) and self.engine.started:
            # (not once we have stepped down: the next leader decides again anyway)
            self.engine.publish_failed(domains=failed_domains, pools=failed_pools)

    def _log_drops(self, dropped: dict[str, int], *, sent: int) -> None:
        """Say when publications start being dropped (once per reason) and when they go out again."""
        for reason, count in dropped.items():
            if reason != self._dropping:
                log.warning("publish_dropped", reason=reason, messages=count, term=self.engine.term)
                self._dropping = reason
        if sent and not dropped and self._dropping:
            log.info("publish_resumed", after=self._dropping)
            self._dropping = ""

    async def _send(self, subject: str, message: Any) -> Any:
        """Hand one publication to NATS, unless :meth:`may_publish` forbids it at this very moment."""
        why = self.may_publish()
        if why:
            raise _Dropped(why)
        return await self.js.publish(subject, encoder.encode(message))

    async def _purge_pool_state(self, name: str) -> None:
        if self.may_publish():
            return  # not ours to change now; whoever leads purges it at its take-over
        try:
            await self.js.purge_stream(subjects.STREAM_POOL_STATE, subject=subjects.pool_state(name))
            log.info("pool_state_removed", pool=name)
        except Exception as exc:  # noqa: BLE001 - a stale view is harmless
            log.warning("pool_state_purge_failed", pool=name, error=repr(exc))


def _identity(m: AnswerSet | PoolState) -> tuple[str, str, float, int]:
    """What tells one publication from another of the same name."""
    if isinstance(m, AnswerSet):
        return ("answer", m.domain, m.revision, m.term)
    return ("pool", m.pool, m.at, m.term)


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
            revision=m.revision,
            term=m.term,
        )
    elif isinstance(m, PoolState):
        log.info("pool_state_changed", pool=m.pool, available=m.available, current=m.current)
    elif isinstance(m, SwitchEvent):
        log.info(
            "domain_switched", domain=m.domain, line=m.line or None, from_pool=m.from_pool, to_pool=m.to_pool,
            reason=m.reason,
        )
    elif isinstance(m, HealthLogEntry) and m.kind == "address_changed":
        log.info("address_health_logged", pool=m.pool, address=m.address, message=m.message)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """The scheduler process: follow, lead when it holds the lease, until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(bus.Session(settings.nats))
        nc, kv = session.nc, session.config
        lease = Lease(await session.leases(), holder=settings.scheduler.id, lease_s=settings.scheduler.lease_s)
        scheduler = Scheduler(session.js, lease=lease, nc=nc)
        metrics.follow(scheduler)
        ready = asyncio.Event()
        await stack.enter_async_context(ops.serve(settings.metrics_listen, ready=ready.is_set))
        watcher = await kv.watchall()
        stack.push_async_callback(_stop_watcher, watcher)
        await scheduler.load_config(watcher)
        scheduler.engine.mark_config_loaded()
        await nc.subscribe(subjects.PROBE_RESULT_ALL, cb=scheduler.on_probe_result)
        await nc.subscribe(subjects.ANSWERS_ALL, cb=scheduler.on_answer)
        await nc.subscribe(subjects.POOL_STATE_ALL, cb=scheduler.on_pool_state)
        stack.push_async_callback(scheduler.resign, lease)
        if await lease.step():
            await scheduler.become_leader(lease)
        else:
            await scheduler.load_previous()
        ready.set()
        log.info(
            "service_ready",
            role="leader" if scheduler.leader else "standby",
            scheduler_id=settings.scheduler.id,
            pools=len(scheduler.engine.pools),
            domains=len(scheduler.engine.domains),
            answers=len(scheduler.engine.answers),
        )
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(scheduler.watch_config(watcher))
            tg.create_task(scheduler.tick(settings.scheduler.tick_s, stop))
            tg.create_task(scheduler.keep_lease(lease, stop))
            await stop.wait()
            watch.cancel()


async def _stop_watcher(watcher: KeyValue.KeyWatcher) -> None:
    with contextlib.suppress(Exception):
        await watcher.stop()  # type: ignore[no-untyped-call]
