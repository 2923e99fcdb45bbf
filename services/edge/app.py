"""The edge process: connect to NATS, load the answer snapshot, then serve DNS until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from services.edge import rrl
from services.edge.feed import AnswerFeed, TopologyFeed
from services.edge.responder import Responder
from services.edge.server import DnsListener
from services.edge.stats import QueryCounts, RrlCounts, register_collector
from services.edge.table import AnswerTable
from services.edge.zone import Zone
from shared import bus, ops
from shared.settings import Settings, split_host_port

log = structlog.get_logger(__name__)

DNS_PORT = 53
RETRY_S = 1.0

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


def _log_ready(listen: str) -> None:
    log.info("service_ready", listen=listen)


def _limiter(settings: Settings, counts: RrlCounts) -> rrl.Limiter | None:
    """The UDP response rate limiter of ``settings`` (None when off), logged once."""
    limiter = rrl.from_settings(
        rate=settings.edge_rrl_responses_per_s,
        window_s=settings.edge_rrl_window_s,
        slip=settings.edge_rrl_slip,
        ipv4_prefix=settings.edge_rrl_ipv4_prefix,
        ipv6_prefix=settings.edge_rrl_ipv6_prefix,
        exempt=settings.edge_rrl_exempt,
        counts=counts,
    )
    if limiter is None:
        log.info("rrl_disabled")
    else:
        log.info(
            "rrl_enabled",
            responses_per_s=settings.edge_rrl_responses_per_s,
            window_s=settings.edge_rrl_window_s,
            slip=settings.edge_rrl_slip,
            subnet=f"/{settings.edge_rrl_ipv4_prefix} /{settings.edge_rrl_ipv6_prefix}",
            exempt=settings.edge_rrl_exempt,
        )
    return limiter


async def serve(stop: asyncio.Event, *, settings: Settings, on_ready: Callable[[str], None] = _log_ready) -> None:
    """Run one edge: snapshot, bind UDP+TCP on ``settings.dns_listen``, answer until ``stop``."""
    host, port = split_host_port(settings.dns_listen, default_port=DNS_PORT)
    table = AnswerTable(zone=Zone.from_settings(settings.edge_zone, settings.edge_ns))
    async with contextlib.AsyncExitStack() as stack:
        nc = await _retry("nats_connect", lambda: bus.connect(settings.nats), stop)
        if nc is None:
            return
        stack.push_async_callback(bus.close, nc)
        ops.watch_nats(nc)
        listening = asyncio.Event()
        await stack.enter_async_context(ops.serve(settings.metrics_listen, ready=listening.is_set))
        js = nc.jetstream()
        feed = AnswerFeed(js, table)
        topology: list[TopologyFeed] = []

        async def subscribe() -> bool:
            await bus.ensure_streams(js)
            kv = await bus.config_bucket(js)
            if not topology:  # started once: a retry must not subscribe twice
                follower = TopologyFeed(js, kv, table)
                await follower.start()
                topology.append(follower)
                stack.push_async_callback(follower.stop)
            await feed.start()
            return True

        started = time.monotonic()
        if not await _retry("answers_subscribe", subscribe, stop):
            return
        stack.push_async_callback(feed.stop)
        if not await feed.wait_loaded(stop):
            return
        log.info("snapshot_loaded", domains=len(table), seconds=round(time.monotonic() - started, 3))
        if table.zone is not None:
            log.info("zone_served", zone=table.zone.text)
        counts, limited = QueryCounts(), RrlCounts()
        register_collector(counts, table, limited)
        listener = DnsListener(Responder(table, counts), host, port, limiter=_limiter(settings, limited))
        await listener.start()
        stack.push_async_callback(listener.stop)
        listening.set()
        on_ready(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        await stop.wait()
