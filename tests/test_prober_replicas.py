"""Vantage points and replicas as real processes: every region checks every address,
the replicas of one region split them, and a dead replica's share is taken over."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from services.prober.membership import owner
from shared import messages, subjects
from shared.messages import ProbeResult, ProberHeartbeat
from shared.resources import Address, HealthCheck
from tests.support import HttpBackend, Service, until
from tests.test_prober_service import Results, http_backend, kv, put_pool, results  # noqa: F401

pytestmark = pytest.mark.timeout(90)

INTERVAL_S = 2.0
NAMES = [f"a{i}" for i in range(12)]
KEYS = [subjects.address_key("p", n) for n in NAMES]
R1 = ("r1-a", "r1-b")


def _owners(live: tuple[str, ...]) -> dict[str, str | None]:
    return {k: owner(k, live) for k in KEYS}


class Fleet:
    """Probers started as real processes, stopped whatever happens."""

    def __init__(self, nats_url: str, log_dir: Path) -> None:
        self._url, self._dir = nats_url, log_dir
        self.procs: dict[str, Service] = {}

    def start(self, region: str, prober: str) -> Service:
        env = {"NATS_URL": self._url, "GTM_PROBER_REGION": region, "GTM_PROBER_ID": prober}
        self.procs[prober] = svc = Service("prober", env, self._dir).start()
        return svc

    async def ready(self) -> None:
        await asyncio.gather(*(asyncio.to_thread(s.wait_for_event, "service_ready") for s in self.procs.values()))

    def stop_all(self) -> None:
        for svc in self.procs.values():
            svc.stop()


@pytest.fixture
async def fleet(nats_url: str, log_dir: Path) -> AsyncIterator[Fleet]:
    f = Fleet(nats_url, log_dir)
    yield f
    await asyncio.to_thread(f.stop_all)


async def _config(kv: KeyValue, port: int) -> None:  # noqa: F811
    check = HealthCheck(protocol="http", port=port, interval_s=INTERVAL_S, timeout_s=0.5)
    await put_pool(kv, "p", *[Address(name=n, address="127.0.0.1", health_check=check) for n in NAMES])


def _probed_by(items: list[ProbeResult], region: str) -> dict[str, collections.Counter[str]]:
    out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in items:
        if r.region == region:
            out[r.key][r.prober] += 1
    return out




async def test_each_region_checks_every_address_and_r1_replicas_split_them_then_take_over(
    fleet: Fleet, kv: KeyValue, results: Results, http_backend: HttpBackend  # noqa: F811
) -> None:
    await _config(kv, http_backend.port)
    for region, prober in (("r1", R1[0]), ("r1", R1[1]), ("r2", "r2-a")):
        fleet.start(region, prober)
    await fleet.ready()
    # Steady state: wait until every address has been checked in both regions, plus one interval.
    await until(lambda: all(len(_probed_by(results.items, r)) == len(KEYS) for r in ("r1", "r2")), timeout=10)
    await asyncio.sleep(INTERVAL_S)

    mark = results.mark()
    await asyncio.sleep(3 * INTERVAL_S)
    window = results.since(mark)
    expected = _owners(R1)
    assert set(expected.values()) == set(R1)  # both replicas own some addresses
    r1, r2 = _probed_by(window, "r1"), _probed_by(window, "r2")
    for key in KEYS:
        assert set(r1[key]) == {expected[key]}, (key, r1[key])  # exactly one r1 prober, the owner
        assert 2 <= r1[key].total() <= 4, (key, r1[key])  # once per interval, never twice
        assert set(r2[key]) == {"r2-a"} and 2 <= r2[key].total() <= 4, (key, r2[key])

    victim = fleet.procs[R1[0]]
    killed_at = time.time()
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    orphans = [k for k in KEYS if expected[k] == R1[0]]

    def taken_over() -> bool:
        after = [r for r in results.items if r.at > killed_at and r.region == "r1"]
        return all(any(r.key == k and r.prober == R1[1] for r in after) for k in orphans)

    await until(taken_over, timeout=2 * INTERVAL_S)  # within two check intervals of the kill
    await asyncio.sleep(INTERVAL_S)
    mark = results.mark()
    await asyncio.sleep(2 * INTERVAL_S)
    r1 = _probed_by(results.since(mark), "r1")
    for key in KEYS:
        assert set(r1[key]) == {R1[1]} and 1 <= r1[key].total() <= 3, (key, r1[key])


async def test_a_replica_that_stops_cleanly_hands_over_and_a_new_one_takes_its_share_back(
    fleet: Fleet, kv: KeyValue, results: Results, nc: NatsClient, http_backend: HttpBackend  # noqa: F811
) -> None:
    beats: list[ProberHeartbeat] = []

    async def on_beat(msg: object) -> None:
        beats.append(messages.heartbeat_decoder.decode(msg.data))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.prober_members("r1"), cb=on_beat)
    await _config(kv, http_backend.port)
    fleet.start("r1", R1[0])
    fleet.start("r1", R1[1])
    await fleet.ready()
    await until(lambda: len(_probed_by(results.items, "r1")) == len(KEYS), timeout=10)

    stopped_at = time.time()
    assert await asyncio.to_thread(fleet.procs[R1[1]].stop) == 0
    assert any(b.prober == R1[1] and b.stopping for b in beats)
    # The stopping heartbeat hands its share over at once: the survivor checks it within one interval.
    orphans = [k for k, o in _owners(R1).items() if o == R1[1]]
    await until(
        lambda: all(any(r.key == k and r.prober == R1[0] and r.at > stopped_at for r in results.items) for k in orphans),
        timeout=INTERVAL_S + 1.5,
    )

    fleet.start("r1", "r1-c")
    await fleet.ready()
    ready_at = time.time()
    await asyncio.sleep(INTERVAL_S)
    mark = results.mark()
    await asyncio.sleep(2 * INTERVAL_S)
    expected = _owners((R1[0], "r1-c"))
    r1 = _probed_by(results.since(mark), "r1")
    for key in KEYS:
        assert set(r1[key]) == {expected[key]} and 1 <= r1[key].total() <= 3, (key, r1[key])
    live = [b for b in beats if b.at > ready_at and not b.stopping]
    assert {b.prober for b in live} == {R1[0], "r1-c"}
    assert all(b.region == "r1" and b.interval_s == pytest.approx(0.5) for b in live)
