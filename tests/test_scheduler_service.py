"""The scheduler as a real process against a real NATS: config in KV, probe results in, answers out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from shared import bus, subjects
from shared.messages import (
    AnswerSet,
    PoolState,
    ProbeResult,
    SwitchEvent,
    answer_set_decoder,
    encoder,
    event_decoder,
    pool_state_decoder,
)
from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef
from tests.support import Service

DOMAIN = "www.example.com"
WAIT_S = 10.0
CHECK = HealthCheck(protocol="http", interval_s=60, failures=1, successes=1)


def pools() -> dict[str, Pool]:
    return {
        "Primary-DC": Pool(
            type="ipv4",
            name="Primary-DC",
            addresses=[Address(name="Primary-Server-01", address="10.0.0.1", health_check=CHECK)],
        ),
        "Backup-DC": Pool(
            type="ipv4",
            name="Backup-DC",
            addresses=[Address(name="Backup-Server-01", address="10.0.1.1", health_check=CHECK)],
        ),
    }


def domain(**kw: Any) -> Domain:
    refs = [PoolRef(pool="Primary-DC", sequence=1), PoolRef(pool="Backup-DC", sequence=2)]
    return Domain(**{"name": DOMAIN, "record_type": "A", "enabled": True, "pools": refs, **kw})


class Probe:
    """What a test sees on NATS, and what it plays as prober and config service."""

    def __init__(self, nc: Client, kv: KeyValue) -> None:
        self.nc, self.kv = nc, kv
        self.answers: asyncio.Queue[AnswerSet] = asyncio.Queue()
        self.switches: asyncio.Queue[SwitchEvent] = asyncio.Queue()
        self.pool_states: asyncio.Queue[PoolState] = asyncio.Queue()

    async def listen(self) -> None:
        async def on_answer(msg: Any) -> None:
            await self.answers.put(answer_set_decoder.decode(msg.data))

        async def on_switch(msg: Any) -> None:
            event = event_decoder.decode(msg.data)
            assert isinstance(event, SwitchEvent)
            await self.switches.put(event)

        async def on_pool(msg: Any) -> None:
            await self.pool_states.put(pool_state_decoder.decode(msg.data))

        await self.nc.subscribe(subjects.ANSWERS_ALL, cb=on_answer)
        await self.nc.subscribe(subjects.SWITCH_EVENTS_ALL, cb=on_switch)
        await self.nc.subscribe(subjects.POOL_STATE_ALL, cb=on_pool)
        await self.nc.flush()

    async def configure(self, domain_obj: Domain | None = None, fqdn: str = DOMAIN) -> int:
        """Write both pools and the domain; return the domain's revision."""
        for name, pool in pools().items():
            await self.kv.put(subjects.pool_key(name), msgspec.json.encode(pool))
        return await self.kv.put(subjects.domain_key(fqdn), msgspec.json.encode(domain_obj or domain()))

    async def result(self, pool: str, address: str, ok: bool, error: str = "connection refused") -> None:
        key = subjects.address_key(pool, address)
        msg = ProbeResult(
            region="local",
            prober="test",
            key=key,
            pool=pool,
            address=address,
            target="x",
            protocol="http",
            ok=ok,
            error="" if ok else error,
            rtt_ms=1.0 if ok else None,
            at=asyncio.get_running_loop().time(),
        )
        await self.nc.publish(subjects.probe_result("local", key), encoder.encode(msg))

    async def healthy(self) -> None:
        await self.result("Primary-DC", "Primary-Server-01", True)
        await self.result("Backup-DC", "Backup-Server-01", True)

    async def answer(self) -> AnswerSet:
        return await asyncio.wait_for(self.answers.get(), WAIT_S)

    async def switch(self) -> SwitchEvent:
        return await asyncio.wait_for(self.switches.get(), WAIT_S)

    async def pool_state(self) -> PoolState:
        return await asyncio.wait_for(self.pool_states.get(), WAIT_S)


@pytest.fixture
async def probe(nc: Client) -> AsyncIterator[Probe]:
    js = nc.jetstream()
    await bus.ensure_streams(js)
    p = Probe(nc, await bus.config_bucket(js))
    await p.listen()
    yield p


class Scheduler:
    """Start and stop the real scheduler process."""

    def __init__(self, nats_url: str, log_dir: Path) -> None:
        self.nats_url, self.log_dir = nats_url, log_dir
        self.proc: Service | None = None

    async def start(self) -> Service:
        self.proc = Service("scheduler", {"NATS_URL": self.nats_url}, self.log_dir).start()
        await asyncio.to_thread(self.proc.wait_for_event, "service_ready")
        return self.proc

    async def stop(self) -> int:
        assert self.proc is not None
        code = await asyncio.to_thread(self.proc.stop)
        self.proc = None
        return code


@pytest.fixture
async def scheduler(nats_url: str, log_dir: Path) -> AsyncIterator[Scheduler]:
    s = Scheduler(nats_url, log_dir)
    yield s
    if s.proc is not None:
        await s.stop()


async def test_primary_failure_moves_answer_to_backup_with_reason(probe: Probe, scheduler: Scheduler) -> None:
    await probe.configure()
    await scheduler.start()
    await probe.healthy()
    first = await probe.answer()
    assert (first.pool, first.records, first.enabled, first.fallback) == (
        "Primary-DC",
        ["10.0.0.1"],
        True,
        False,
    )

    await probe.result("Primary-DC", "Primary-Server-01", False)
    moved = await probe.answer()
    assert (moved.pool, moved.records) == ("Backup-DC", ["10.0.1.1"])
    switch = await probe.switch()
    assert (switch.domain, switch.from_pool, switch.to_pool) == (DOMAIN, "Primary-DC", "Backup-DC")
    assert switch.reason == "Primary-DC unavailable: Primary-Server-01 http connection refused"
    assert (switch.before, switch.after) == (["10.0.0.1"], ["10.0.1.1"])
    # both pools say they are warming, then are healthy, then the primary goes down
    states = [await probe.pool_state() for _ in range(5)]
    assert [s.warming for s in states] == [True, True, False, False, False]
    assert (states[-1].pool, states[-1].available) == ("Primary-DC", False)
    assert states[-1].addresses[0].reason == "Primary-Server-01 http connection refused"
    assert states[-1].addresses[0].waiting == "successes 0/1"


async def test_preemptive_domain_fails_back_to_primary(probe: Probe, scheduler: Scheduler) -> None:
    await probe.configure()
    await scheduler.start()
    await probe.healthy()
    await probe.answer()
    await probe.result("Primary-DC", "Primary-Server-01", False)
    assert (await probe.answer()).pool == "Backup-DC"
    await probe.result("Primary-DC", "Primary-Server-01", True)
    assert (await probe.answer()).pool == "Primary-DC"
    await probe.switch()
    back = await probe.switch()
    assert (back.from_pool, back.to_pool, back.reason) == (
        "Backup-DC",
        "Primary-DC",
        "Primary-DC available again",
    )


async def test_non_preemptive_stays_on_backup_even_across_a_restart(
    probe: Probe, scheduler: Scheduler
) -> None:
    await probe.configure(domain(sequence_mode="non_preemptive"))
    await scheduler.start()
    await probe.healthy()
    assert (await probe.answer()).pool == "Primary-DC"
    await probe.result("Primary-DC", "Primary-Server-01", False)
    assert (await probe.answer()).pool == "Backup-DC"
    await probe.result("Primary-DC", "Primary-Server-01", True)  # primary healthy again: stay
    await probe.result("Backup-DC", "Backup-Server-01", False, "timeout")  # marker: now it must move
    marker = await probe.answer()
    assert marker.pool == "Primary-DC"
    assert (await probe.switch()).to_pool == "Backup-DC"
    assert (await probe.switch()).reason == "Backup-DC unavailable: Backup-Server-01 http timeout"

    await probe.result("Backup-DC", "Backup-Server-01", True)
    await probe.result("Primary-DC", "Primary-Server-01", False)
    assert (await probe.answer()).pool == "Backup-DC"
    assert await scheduler.stop() == 0
    await scheduler.start()
    await probe.healthy()  # both healthy after the restart: the memory says Backup-DC
    await probe.result("Backup-DC", "Backup-Server-01", False, "timeout")  # marker
    after_restart = await probe.answer()
    assert (after_restart.pool, after_restart.records) == ("Primary-DC", ["10.0.0.1"])


async def test_unchanged_answer_is_not_republished_after_restart(probe: Probe, scheduler: Scheduler) -> None:
    await probe.configure()
    await scheduler.start()
    await probe.healthy()
    published = await probe.answer()
    states = [await probe.pool_state() for _ in range(4)]  # two warming views, two healthy ones
    assert {s.pool for s in states if not s.warming} == {"Primary-DC", "Backup-DC"}
    await scheduler.stop()

    await scheduler.start()
    await probe.healthy()
    await probe.result("Primary-DC", "Primary-Server-01", False)  # marker: the first change after restart
    first = await probe.answer()
    assert first.pool == "Backup-DC" and first.published_at > published.published_at
    assert (await probe.pool_state()).pool == "Primary-DC"  # Backup-DC's unchanged view was not republished


async def test_disabled_domain_gets_a_disabled_answer(probe: Probe, scheduler: Scheduler) -> None:
    await probe.configure(domain(enabled=False))
    await scheduler.start()
    got = await probe.answer()
    assert (got.domain, got.enabled, got.deleted, got.records) == (DOMAIN, False, False, [])


async def test_deleted_domain_gets_a_tombstone(probe: Probe, scheduler: Scheduler) -> None:
    await probe.configure()
    await scheduler.start()
    await probe.healthy()
    assert (await probe.answer()).enabled
    await probe.kv.delete(subjects.domain_key(DOMAIN))
    tomb = await probe.answer()
    assert (tomb.domain, tomb.deleted, tomb.enabled) == (DOMAIN, True, False)


async def test_domain_deleted_while_scheduler_was_down_is_tombstoned_at_start(
    probe: Probe, scheduler: Scheduler
) -> None:
    await probe.configure()
    await scheduler.start()
    await probe.healthy()
    await probe.answer()
    await scheduler.stop()
    await probe.kv.purge(subjects.domain_key(DOMAIN))
    await scheduler.start()
    tomb = await probe.answer()
    assert (tomb.domain, tomb.deleted) == (DOMAIN, True)


async def test_scheduler_logs_ready_and_exits_cleanly_on_sigterm(probe: Probe, scheduler: Scheduler) -> None:
    proc = await scheduler.start()
    assert any(e.get("event") == "service_ready" for e in proc.events())
    assert await scheduler.stop() == 0


async def test_published_answers_are_in_the_answers_stream(probe: Probe, scheduler: Scheduler) -> None:
    revision = await probe.configure()
    await scheduler.start()
    await probe.healthy()
    await probe.answer()
    # core subscribers may see a JetStream publication a moment before the stream has stored it
    for _ in range(100):
        with contextlib.suppress(NotFoundError):
            msg = await probe.nc.jetstream().get_last_msg(subjects.STREAM_ANSWERS, subjects.answers(DOMAIN))
            break
        await asyncio.sleep(0.05)
    stored = answer_set_decoder.decode(msg.data or b"")
    assert (stored.pool, stored.config_revision) == ("Primary-DC", revision)
