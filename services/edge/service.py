"""The edge process: connect to NATS, load the answer snapshot, then serve DNS until stopped.

Started while NATS is away, it answers from its last snapshot on disk until NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog

from services.edge import rrl, store
from services.edge.feed import AnswerFeed, TopologyFeed
from services.edge.responder import Responder
from services.edge.server import DnsListener
from services.edge.stats import QueryCounts, RrlCounts, Serving, register_collector
from services.edge.table import AnswerTable
from services.edge.zone import Zone
from shared import bus, geo, ops
from shared.settings import GeoipSettings, RrlSettings, Settings, split_host_port

log = structlog.get_logger(__name__)

DNS_PORT = 53
NATS_PORT = 4222
RETRY_S = 1.0
# How long a start waits for NATS before it answers from the disk snapshot, unless NATS refuses
# the connection outright: nats-py's first connect retries for ever inside and says nothing.
NATS_GRACE_S = 1.0

T = TypeVar("T")


async def _until_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await ``aw`` unless ``stop`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(aw)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return None


async def _retry(what: str, make: Callable[[], Awaitable[T]], stop: asyncio.Event) -> T | None:
    """Run ``make()`` until it succeeds or ``stop`` is set (nats-py may retry for ever inside)."""
    while not stop.is_set():
        try:
            return await _until_stopped(make(), stop)
        except Exception as exc:  # noqa: BLE001 - NATS not reachable yet: try again
            log.warning(f"{what}_failed", error=str(exc) or type(exc).__name__)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_S)
    return None


def _log_ready(listen: str, source: str) -> None:
    log.info("service_ready", listen=listen, source=source)


def _limiter(rrl_settings: RrlSettings, counts: RrlCounts) -> rrl.Limiter | None:
    """The UDP response rate limiter of ``rrl_settings`` (None when off), logged once."""
    limiter = rrl.from_settings(rrl_settings, counts)
    if limiter is None:
        log.info("rrl_disabled")
    else:
        log.info(
            "rrl_enabled",
            responses_per_s=rrl_settings.responses_per_s,
            window_s=rrl_settings.window_s,
            slip=rrl_settings.slip,
            subnet=f"/{rrl_settings.ipv4_prefix} /{rrl_settings.ipv6_prefix}",
            exempt=",".join(rrl_settings.exempt),
        )
    return limiter


async def _refused(url: str) -> bool:
    """Whether every server of a NATS URL list refuses a TCP connection right now (False: don't know)."""
    for server in (u.strip() for u in url.split(",") if u.strip()):
        parts = urllib.parse.urlsplit(server if "://" in server else f"nats://{server}")
        try:
            host, port = parts.hostname, parts.port or NATS_PORT
        except ValueError:  # a bad port: nats-py will say so
            return False
        if parts.scheme not in ("nats", "tls") or not host:
            return False  # websockets and the like: leave it to the grace period
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            continue
        writer.close()
        return False
    return True


async def _nats_away(connecting: asyncio.Future[Any], url: str) -> bool:
    """True when the first connect has not finished and NATS refuses us or :data:`NATS_GRACE_S` is over."""
    probe = asyncio.ensure_future(_refused(url))
    waiters: set[asyncio.Future[Any]] = {connecting, probe}
    try:
        await asyncio.wait(waiters, timeout=NATS_GRACE_S, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done() and probe.done() and not probe.result():
            await asyncio.wait({connecting}, timeout=NATS_GRACE_S)  # it is there: give the connect its time
    finally:
        probe.cancel()
    return not connecting.done()


async def _load_disk(path: Path, table: AnswerTable, serving: Serving) -> bool:
    """Fill ``table`` from the snapshot file at ``path``; False when there is none fit to serve."""
    started = time.monotonic()
    snap = await asyncio.to_thread(store.read, path)
    if snap is None:
        return False
    gc.disable()  # as for the stream's snapshot: many objects built, none freed, nothing to scan for
    try:
        store.restore(table, snap)
    finally:
        gc.freeze()
        gc.enable()
    serving.written_at = snap.written_at
    log.info(
        "snapshot_served_from_disk",
        path=str(path),
        domains=len(table),
        age_s=round(max(0.0, time.time() - snap.written_at), 1),
        stream_sequence=snap.stream_sequence,
        seconds=round(time.monotonic() - started, 3),
    )
    return True


async def _follow(
    session: bus.Session, table: AnswerTable, stack: contextlib.AsyncExitStack, stop: asyncio.Event, *, resync: bool
) -> AnswerFeed | None:
    """Follow the topology and the ANSWERS stream into ``table``; the feed once its snapshot is in (None: stopped)."""
    feed = AnswerFeed(session.js, table, resync=resync)
    topology: list[TopologyFeed] = []

    async def subscribe() -> bool:
        if not topology:  # started once: a retry must not subscribe twice
            follower = TopologyFeed(session.js, session.config, table)
            await follower.start()
            topology.append(follower)
            stack.push_async_callback(follower.stop)
        await feed.start()
        return True

    started = time.monotonic()
    if not await _retry("answers_subscribe", subscribe, stop):
        return None
    stack.push_async_callback(feed.stop)
    if not await feed.wait_loaded(stop):
        return None
    log.info("snapshot_loaded", domains=len(table), seconds=round(time.monotonic() - started, 3), source="live")
    return feed


def load_geo(settings: GeoipSettings) -> geo.GeoDatabase | None:
    """The GeoIP database of request-source lines (loaded when a client is first located); None if unreadable."""
    started = time.monotonic()
    try:
        db = geo.open_database(settings.db, settings.asn_db)
    except geo.GeoError as exc:
        log.error("geoip_unavailable", error=str(exc), effect="clients match only region and default lines")
        return None
    log.info("geoip_loaded", source=db.source, asn_source=db.asn_source or "none",
             seconds=round(time.monotonic() - started, 3))
    return db


async def run(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[str, str], None] = _log_ready,
    persist: bool = True,
) -> None:
    """Run one edge: bind UDP+TCP on ``settings.edge.listen`` once it has answers, answer until ``stop``.

    The answers come from the ANSWERS stream; when NATS does not answer within
    :data:`NATS_GRACE_S`, from the disk snapshot until it does.  ``persist``: this
    process keeps the snapshot file current (one worker per listen address does).
    """
    edge = settings.edge
    host, port = split_host_port(edge.listen, default_port=DNS_PORT)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = store.path_for(edge.state_dir, host, port)
    zone = Zone(edge.zone, list(edge.ns)) if edge.zone else None
    table = AnswerTable(  # only a writer needs the encoded answers
        zone=zone, keep_encoded=path is not None and persist, geo=functools.partial(load_geo, settings.geoip)
    )
    if table.zone is not None:
        log.info("zone_served", zone=table.zone.text)
    serving = Serving()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(ops.serve(settings.metrics_listen, ready=serving.ready, detail=serving.detail))
        counts, limited = QueryCounts(), RrlCounts()
        register_collector(counts, table, limited, serving)
        listener = DnsListener(
            Responder(table, counts), host, port, limiter=_limiter(edge.rrl, limited), gso=edge.udp_gso
        )

        async def answer_from(source: str) -> None:
            await listener.start()
            stack.push_async_callback(listener.stop)
            serving.source = source
            on_ready(listen, source)

        session = bus.Session(settings.nats)
        stack.push_async_callback(session.close)
        connecting = asyncio.ensure_future(_retry("nats_connect", session.open, stop))
        stack.callback(connecting.cancel)
        away = path is not None and await _nats_away(connecting, settings.nats.url)
        if away and path is not None and await _load_disk(path, table, serving):
            await answer_from("disk")
        if await connecting is None:
            return
        feed = await _follow(session, table, stack, stop, resync=bool(serving.source))
        if feed is None:
            return
        if path is not None and table.keep_encoded:
            await stack.enter_async_context(store.SnapshotWriter(path, table, lambda: feed.sequence).running())
        if serving.source:
            serving.source = "live"
            log.info("answers_source_changed", source="live", domains=len(table))
        else:
            await answer_from("live")
        await stop.wait()
