"""The NATS side of the config service: connection, store, event and probe caches."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from services.config import apply
from services.config.audit import NATS_ACTOR, Actor, acting
from services.config.codec import DOMAIN, POOL
from services.config.errors import Unavailable, error_body
from services.config.mirror import ConfigView
from services.config.store import ConfigStore
from services.config.views import DomainStatus, EventLog, EventsQuery, ProbeTable, render_event, render_status
from shared import bus, subjects
from shared.messages import (
    Event,
    OperationEvent,
    answer_set_decoder,
    event_decoder,
    pool_state_decoder,
    probe_result_decoder,
)
from shared.resources import Domain, Pool, domain_pools
from shared.settings import Settings

log = structlog.get_logger(__name__)

T = TypeVar("T")

JS_TIMEOUT_S = 3.0
BACKLOG_TIMEOUT_S = 10.0
READY_PROBE_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 2.0
REQUEST_INFO_HEADER = "Nats-Request-Info"  # set by nats-server on requests that cross accounts (JSON)


class Backend:
    """Everything the HTTP handlers need from NATS; ``ready`` is set once it is all up."""

    def __init__(self, settings: Settings, *, event_capacity: int = 10_000) -> None:
        self.settings = settings
        self.events = EventLog(event_capacity)
        self.probes = ProbeTable()
        self.ready = asyncio.Event()
        self.session = bus.Session(settings.nats, js_timeout_s=JS_TIMEOUT_S, close_timeout_s=DRAIN_TIMEOUT_S)
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self._store: ConfigStore | None = None
        self.view: ConfigView | None = None

    async def start(self) -> None:
        """Connect (waiting for NATS as long as it takes), declare streams, fill the caches."""
        await self.session.open()
        self.nc, self.js, self.kv = self.session.nc, self.session.js, self.session.config
        self.view = ConfigView(self.js)
        await self.view.start()
        self._store = ConfigStore(self.kv, self.js, view=self.view, on_event=self._on_own_event)
        await self.nc.subscribe(subjects.PROBE_RESULT_ALL, cb=self._on_probe_result)
        await self._follow_events()
        await self.nc.subscribe(subjects.CONFIG_APPLY, queue=apply.QUEUE_GROUP, cb=self._on_apply)
        self.ready.set()

    async def close(self) -> None:
        """Drain the NATS connection (close it if draining does not finish quickly)."""
        self.nc = None
        self.ready.clear()
        await self.session.close()

    @property
    def connected(self) -> bool:
        """Whether NATS is connected right now."""
        return self.nc is not None and self.nc.is_connected

    def require_available(self) -> None:
        """Raise ``unavailable`` unless NATS is up and the service started."""
        if self._store is None or not self.ready.is_set() or not self.connected:
            raise Unavailable("NATS is not reachable; the config store is unavailable")

    @property
    def store(self) -> ConfigStore:
        """The config store; raise ``unavailable`` while NATS is away."""
        self.require_available()
        assert self._store is not None
        return self._store

    async def not_ready_reason(self) -> str:
        """Why the service is not ready ("" when it is)."""
        if not self.ready.is_set() or self.kv is None:
            return "starting: waiting for NATS" if self.nc is None else "starting"
        if not self.connected:
            return "NATS is not connected"
        try:
            await asyncio.wait_for(self.kv.status(), READY_PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"KV bucket {subjects.CONFIG_BUCKET} does not answer: {exc!r}"
        return ""

    async def last_msg(self, stream: str, subject: str, decoder: msgspec.json.Decoder[T]) -> T | None:
        """The last message on ``subject`` of ``stream``, decoded; None if there is none."""
        assert self.js is not None
        try:
            raw = await self.js.get_last_msg(stream, subject, direct=True)
        except NotFoundError:
            return None
        if not raw.data:
            return None
        try:
            return decoder.decode(raw.data)
        except msgspec.DecodeError as exc:
            log.warning("bad_message", stream=stream, subject=subject, error=str(exc))
            return None

    async def domain_status(self, fqdn: str) -> DomainStatus:
        """``GET /domains/{fqdn}/status``: config, published answer, pool states, probe results."""
        store = self.store
        domain = (await store.get(DOMAIN, fqdn)).resource
        assert isinstance(domain, Domain) and domain.name is not None
        answer = await self.last_msg(subjects.STREAM_ANSWERS, subjects.answers(domain.name), answer_set_decoder)
        pools = []
        for name in domain_pools(domain):  # its pools, then its fallback pool
            found = await store.find(POOL, name)
            pool = found.resource if found and isinstance(found.resource, Pool) else None
            state = await self.last_msg(subjects.STREAM_POOL_STATE, subjects.pool_state(name), pool_state_decoder)
            pools.append((name, pool, state))
        return render_status(domain, answer, pools, self.probes)

    async def _follow_events(self) -> None:
        """Fill the event cache from the EVENTS stream's tail, then keep following it."""
        assert self.js is not None
        info = await self.js.stream_info(subjects.STREAM_EVENTS)
        last = info.state.last_seq
        start = max(1, last - self.events.capacity + 1, info.state.first_seq)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        await self.js.subscribe(
            subjects.EVENTS_ALL,
            stream=subjects.STREAM_EVENTS,
            cb=self._on_event,
            ordered_consumer=True,
            config=config,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BACKLOG_TIMEOUT_S
        while self.events.high_seq < last and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.events.high_seq < last:
            log.warning("event_backlog_incomplete", loaded=len(self.events), last_seq=last)

    async def _on_event(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            self.events.add(seq, event_decoder.decode(msg.data))
        except Exception as exc:  # noqa: BLE001 - a callback never dies on a bad message
            self.events.seen(seq)
            log.warning("bad_event", subject=msg.subject, seq=seq, error=str(exc))

    def _on_own_event(self, seq: int, event: OperationEvent) -> None:
        self.events.add(seq, event)

    async def query_events(self, q: EventsQuery) -> list[dict[str, Any]]:
        """``GET /events``: from the cache, or, for one resource whose log reaches back further than the
        cache does, from the EVENTS stream itself (kept 90 days), newest first."""
        self.require_available()
        assert self.js is not None
        if not (q.resource and q.name) or q.kind == "switch":
            return self.events.query(q)
        subject = subjects.operation_event(q.resource, q.name)
        info = await self.js.stream_info(subjects.STREAM_EVENTS, subjects_filter=subject)
        if self.events.low_seq and info.state.first_seq >= self.events.low_seq:
            return self.events.query(q)  # the cache holds all the stream has
        if not (info.state.subjects or {}).get(subject):
            return []
        kept: collections.deque[Event] = collections.deque(maxlen=q.limit)
        sub = await self.js.subscribe(
            subject,
            stream=subjects.STREAM_EVENTS,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=JS_TIMEOUT_S)
                with contextlib.suppress(msgspec.DecodeError):
                    event = event_decoder.decode(msg.data)
                    if q.matches(event):
                        kept.append(event)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await bus.unsubscribe(sub)
        return [render_event(e) for e in reversed(kept)]

    async def _on_apply(self, msg: Msg) -> None:
        try:
            with acting(nats_actor(msg.headers)):
                reply = await apply.handle(self.store, msg.data)
        except Exception as exc:  # noqa: BLE001 - a callback never dies on a bad message
            log.warning("config_apply_failed", error=repr(exc))
            reply = msgspec.json.encode({"status": 503, "body": error_body("unavailable", str(exc))})
        if msg.reply:
            with contextlib.suppress(Exception):  # the requester is gone or NATS is away
                await msg.respond(reply)

    async def _on_probe_result(self, msg: Msg) -> None:
        try:
            self.probes.add(probe_result_decoder.decode(msg.data))
        except Exception as exc:  # noqa: BLE001 - a callback never dies on a bad message
            log.warning("bad_probe_result", subject=msg.subject, error=str(exc))


def nats_actor(headers: Mapping[str, str] | None) -> Actor:
    """Who sent a ``config.apply`` request: the NATS user when the server says (``Nats-Request-Info``), else "nats"."""
    who = ""
    with contextlib.suppress(msgspec.DecodeError, AttributeError, TypeError):
        info = msgspec.json.decode((headers or {}).get(REQUEST_INFO_HEADER, "") or "{}")
        who = str(info.get("user") or info.get("name") or "")
    return Actor(who=who or NATS_ACTOR, via="config.apply")


async def run_backend(backend: Backend, *, retry_s: float = 1.0) -> None:
    """Start ``backend``, retrying after a failure (the API answers 503 meanwhile)."""
    while True:
        try:
            await backend.start()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; /readyz stays 503 until a retry works
            log.error("backend_start_failed", error=repr(exc))
            with contextlib.suppress(Exception):
                await backend.close()
            await asyncio.sleep(retry_s)
