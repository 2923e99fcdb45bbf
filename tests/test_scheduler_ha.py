"""Scheduler high availability: the lease in KV gtm_leases, standby takeover, memory kept across it."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from services.scheduler.lease import Lease, StaleWatch
from shared import bus, subjects
from shared.bus import leases_bucket
from tests.support import Service
from tests.test_scheduler_engine import DOMAIN, World, dom, result
from tests.test_scheduler_service import Probe, domain

LEASE_S = 2.0

# -- pure pieces -----------------------------------------------------------------------------------


def test_stale_watch_measures_how_long_a_revision_stood_still() -> None:
    w = StaleWatch()
    assert w.see(5, 10.0) == 0.0
    assert w.see(5, 11.5) == 1.5
    assert w.see(6, 12.0) == 0.0  # renewed: start again
    assert w.see(6, 14.0) == 2.0


def test_takeover_keeps_non_preemptive_memory_and_publishes_nothing_new() -> None:
    leader = World(domain=dom(sequence_mode="non_preemptive"))
    leader.healthy()
    leader.feed(result("Primary-DC", 1, False))
    leader.feed(result("Primary-DC", 1, True))  # non-preemptive: stays on Backup-DC
    assert leader.engine.answers[DOMAIN].pool == "Backup-DC"
    standby = World(domain=dom(sequence_mode="non_preemptive"))
    standby.engine.pause()
    standby.healthy()  # it saw the same results, but never the failure: only the published answer tells
    out = standby.engine.take_over(
        list(leader.engine.answers.values()),
        list(leader.engine.pool_states.values()),
        now=standby.now,
        at=standby.now,
    )
    assert out.answers == [] and standby.engine.answers[DOMAIN].pool == "Backup-DC"
    out = standby.feed(result("Backup-DC", 1, False))
    assert [(s.from_pool, s.to_pool) for s in out.switches] == [("Backup-DC", "Primary-DC")]


def test_takeover_publishes_what_health_changed_since_the_last_publication() -> None:
    leader = World()
    leader.healthy()
    standby = World()
    standby.engine.pause()
    standby.feed(result("Primary-DC", 1, True), result("Backup-DC", 1, True), result("Primary-DC", 1, False))
    out = standby.engine.take_over(
        list(leader.engine.answers.values()),
        list(leader.engine.pool_states.values()),
        now=standby.now,
        at=standby.now,
    )
    assert [(a.pool, a.config_revision) for a in out.answers] == [("Backup-DC", 11)]
    assert [s.reason for s in out.switches] == [
        "Primary-DC unavailable: Primary-DC-1 http connection refused"
    ]


# -- the lease against a real NATS -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def leases(nc: Client) -> AsyncIterator[list[tuple[Lease, Clock]]]:
    kv = await leases_bucket(nc.jetstream())
    out = []
    for name in ("s1", "s2", "s3"):
        clock = Clock()
        out.append((Lease(kv, holder=name, lease_s=LEASE_S, clock=clock), clock))
    yield out


async def test_first_scheduler_takes_a_missing_lease_and_the_others_wait(
    leases: list[tuple[Lease, Clock]],
) -> None:
    (a, _), (b, b_clock), _ = leases
    assert await a.step() is True
    assert await b.step() is False
    b_clock.now += LEASE_S - 0.1
    assert await a.step() is True  # renewed
    assert await b.step() is False
    b_clock.now += LEASE_S - 0.1
    assert await b.step() is False  # the renewal restarted its wait


async def test_a_standby_takes_over_a_lease_not_renewed_for_lease_s_and_the_old_holder_learns_it(
    leases: list[tuple[Lease, Clock]],
) -> None:
    (a, _), (b, b_clock), (c, c_clock) = leases
    assert await a.step()
    assert not await b.step() and not await c.step()
    b_clock.now += LEASE_S
    c_clock.now += LEASE_S
    assert [await b.step(), await c.step()] == [True, False]  # revision-checked: one winner
    assert b.previous_holder == "s1"
    assert await a.step() is False and a.last_error == "taken over"
    assert await b.step() is True


async def test_a_released_lease_is_taken_at_once(leases: list[tuple[Lease, Clock]]) -> None:
    (a, _), (b, _), _ = leases
    assert await a.step() and not await b.step()
    await a.release()
    assert await b.step() is True and b.previous_holder == ""


async def test_a_holder_that_lost_its_lease_to_an_outage_takes_it_back_at_once_if_nobody_else_did(
    leases: list[tuple[Lease, Clock]],
) -> None:
    (a, a_clock), (b, b_clock), _ = leases
    assert await a.step() and not await b.step()
    a.held = False  # what a renewal timing out while NATS was away leaves behind
    assert await a.step() is True and a.previous_holder == "s1"  # its own revision: no wait
    b_clock.now += LEASE_S
    assert await b.step() is False  # renewed by the take-back


async def test_a_holder_whose_lease_was_taken_meanwhile_waits_like_any_standby(
    leases: list[tuple[Lease, Clock]],
) -> None:
    (a, a_clock), (b, b_clock), _ = leases
    assert await a.step() and not await b.step()
    a.held = False
    b_clock.now += LEASE_S
    assert await b.step() is True  # the standby took over while the holder was cut off
    assert await a.step() is False
    a_clock.now += LEASE_S - 0.1
    assert await a.step() is False


# -- two scheduler processes ---------------------------------------------------------------------------


@pytest.fixture
async def probe(nc: Client) -> Probe:
    js = nc.jetstream()
    await bus.ensure_streams(js)
    p = Probe(nc, await bus.config_bucket(js))
    await p.listen()
    return p


async def start_scheduler(nats_url: str, log_dir: Path, sid: str) -> Service:
    env = {"NATS_URL": nats_url, "GTM_SCHEDULER_ID": sid, "GTM_SCHEDULER_LEASE_S": str(LEASE_S)}
    proc = Service("scheduler", env, log_dir).start()
    await asyncio.to_thread(proc.wait_for_event, "service_ready")
    return proc


async def test_killed_leader_is_replaced_within_three_seconds_with_its_memory(
    probe: Probe, nats_url: str, log_dir: Path
) -> None:
    await probe.configure(domain(sequence_mode="non_preemptive"))
    first = await start_scheduler(nats_url, log_dir, "sched-a")
    second = await start_scheduler(nats_url, log_dir, "sched-b")
    try:
        roles = [
            next(e["role"] for e in p.events() if e["event"] == "service_ready") for p in (first, second)
        ]
        assert roles == ["leader", "standby"]
        await probe.healthy()
        assert (await probe.answer()).pool == "Primary-DC"
        await probe.result("Primary-DC", "Primary-Server-01", False)
        assert (await probe.answer()).pool == "Backup-DC"
        await probe.result("Primary-DC", "Primary-Server-01", True)  # non-preemptive: stays on Backup-DC
        await asyncio.sleep(0.3)
        while not probe.pool_states.empty():
            probe.pool_states.get_nowait()
        assert probe.answers.empty()

        first.stop(signal.SIGKILL)
        killed = time.monotonic()
        await probe.result("Primary-DC", "Primary-Server-01", False, "timeout")
        state = await probe.pool_state()
        took_s = time.monotonic() - killed
        assert (state.pool, state.available) == ("Primary-DC", False)
        assert took_s < 3.0, f"standby published {took_s:.2f} s after the leader was killed"
        await asyncio.to_thread(second.wait_for_event, "leader_acquired")
        assert probe.answers.empty()  # nothing to change for the answer: still Backup-DC, not republished

        await probe.result("Primary-DC", "Primary-Server-01", True)
        assert (await probe.pool_state()).available
        await probe.result("Backup-DC", "Backup-Server-01", False)  # marker: only now may it move
        moved = await probe.answer()
        assert moved.pool == "Primary-DC"
        switch = await probe.switch()
        switch = await probe.switch() if switch.to_pool == "Backup-DC" else switch  # the pre-kill one
        assert (switch.from_pool, switch.to_pool) == ("Backup-DC", "Primary-DC")
    finally:
        first.stop()
        second.stop()


async def test_graceful_stop_hands_the_lease_over_at_once(probe: Probe, nats_url: str, log_dir: Path) -> None:
    await probe.configure()
    first = await start_scheduler(nats_url, log_dir, "sched-a")
    second = await start_scheduler(nats_url, log_dir, "sched-b")
    try:
        await probe.healthy()
        assert (await probe.answer()).pool == "Primary-DC"
        assert await asyncio.to_thread(first.stop) == 0
        stopped = time.monotonic()
        event = await asyncio.to_thread(second.wait_for_event, "leader_acquired")
        assert event["previous"] == ""  # released, not taken over
        assert time.monotonic() - stopped < LEASE_S
        assert any(e["event"] == "leader_lost" for e in first.events())
        kv = await leases_bucket(probe.nc.jetstream())
        entry = await kv.get(subjects.SCHEDULER_LEASE_KEY)
        assert msgspec.json.decode(entry.value or b"")["holder"] == "sched-b"
    finally:
        first.stop()
        second.stop()
