"""The scheduler's I/O shell: config watch, probe results, ticks, publications over NATS."""

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

from shared import bus, subjects
from shared.messages import AnswerSet, PoolState, encoder, pool_state_decoder, probe_result_decoder
from shared.messages import answer_set_decoder
from shared.resources import domain_decoder, pool_decoder
from shared.settings import Settings

from .engine import Engine, Outputs

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

    async def load_config(self, watcher: KeyValue.KeyWatcher) -> None:
        """Apply the bucket's initial values, up to the end-of-initial-values marker."""
        async for entry in watcher:
            if entry is None:
                return
            self.apply_entry(entry)

    async def load_previous(self) -> None:
        """Load the last published answer of every domain and view of every pool."""
        for answer in await load_last_per_subject(
            self.js, subjects.STREAM_ANSWERS, subjects.ANSWERS_ALL, answer_set_decoder.decode
        ):
            self.engine.load_answer(answer)
        for state in await load_last_per_subject(
            self.js, subjects.STREAM_POOL_STATE, subjects.POOL_STATE_ALL, pool_state_decoder.decode
        ):
            self.engine.load_pool_state(state)

    async def start(self) -> None:
        """Make the first decisions and publish what differs from the loaded ones."""
        async with self.lock:
            await self.publish(self.engine.start(now=time.monotonic(), at=time.time()))

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
        try:
            result = probe_result_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bad_probe_result", subject=msg.subject, error=str(exc))
            return
        try:
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
    """The scheduler process: load, decide, publish, until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        nc: Client = await bus.connect(settings.nats)
        stack.push_async_callback(bus.close, nc)
        js = nc.jetstream()
        await bus.ensure_streams(js)
        kv = await bus.config_bucket(js)
        scheduler = Scheduler(js)
        watcher = await kv.watchall()
        stack.push_async_callback(_stop_watcher, watcher)
        await scheduler.load_config(watcher)
        await scheduler.load_previous()
        await nc.subscribe(subjects.PROBE_RESULT_ALL, cb=scheduler.on_probe_result)
        await scheduler.start()
        log.info(
            "service_ready",
            pools=len(scheduler.engine.pools),
            domains=len(scheduler.engine.domains),
            answers=len(scheduler.engine.answers),
        )
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(scheduler.watch_config(watcher))
            tg.create_task(scheduler.tick(settings.scheduler_tick_s, stop))
            await stop.wait()
            watch.cancel()


async def _stop_watcher(watcher: KeyValue.KeyWatcher) -> None:
    with contextlib.suppress(Exception):
        await watcher.stop()  # type: ignore[no-untyped-call]
