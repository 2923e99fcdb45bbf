"""A real 3-node NATS cluster on loopback: kill -9 the leader of each stream and bucket.

Writes come back once NATS has elected a new leader, no acknowledged write is lost, the edges
answer throughout, and a domain created after the fault is served.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import nats
import pytest

from shared import bus, subjects
from shared.messages import AnswerSet, OperationEvent, PoolState, encoder
from shared.settings import NatsSettings
from tests.support import ROOT, Api, NatsCluster, Service, dns_query, free_port, wait_until

pytestmark = pytest.mark.e2e

ASSETS = [
    subjects.kv_stream(subjects.CONFIG_BUCKET),
    subjects.kv_stream(subjects.LEASES_BUCKET),
    subjects.STREAM_ANSWERS,
    subjects.STREAM_POOL_STATE,
    subjects.STREAM_EVENTS,
]
# nats-server elects a new stream leader after a randomised 4-9 s without the old one's heartbeats
# (server/raft.go, not configurable): one election, and a second round if the first splits.
WRITE_BACK_S = 20.0
PROBE_DOMAIN = "fault-probe.invalid"


def _probe_write(stream: str) -> tuple[str, bytes]:
    """A harmless message for ``stream`` (its readers accept it and change nothing they serve)."""
    if stream == subjects.STREAM_ANSWERS:  # a tombstone for a name nobody serves
        msg: object = AnswerSet(domain=PROBE_DOMAIN, enabled=False, record_type="A", deleted=True)
        return subjects.answers(PROBE_DOMAIN), encoder.encode(msg)
    if stream == subjects.STREAM_POOL_STATE:
        return subjects.pool_state("fault-probe"), encoder.encode(PoolState(pool="fault-probe", available=False))
    if stream == subjects.STREAM_EVENTS:
        return subjects.operation_event("pool", "fault-probe"), encoder.encode(
            OperationEvent(at=time.time(), method="PUT", path="-", resource="pool", name="fault-probe", revision=0)
        )
    bucket = subjects.LEASES_BUCKET if stream == subjects.kv_stream(subjects.LEASES_BUCKET) else subjects.CONFIG_BUCKET
    return f"$KV.{bucket}.fault-probe", b"1"


async def _write_back_after(url: str, stream: str, killed: float) -> float:
    """Publish to ``stream`` until it acknowledges; seconds from ``killed`` to the first ack."""
    subject, data = _probe_write(stream)
    nc = await nats.connect(url.split(","), reconnect_time_wait=0.1)
    try:
        js = nc.jetstream(timeout=1)
        deadline = time.monotonic() + WRITE_BACK_S
        while time.monotonic() < deadline:
            try:
                await js.publish(subject, data, stream=stream)
                return time.monotonic() - killed
            except Exception:  # noqa: BLE001 - no leader yet
                await asyncio.sleep(0.05)
        raise AssertionError(f"{stream} took no write for {WRITE_BACK_S} s")
    finally:
        await nc.close()


async def _declare(url: str, replicas: int) -> None:
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream(timeout=5)
        await bus.ensure_streams(js, replicas=replicas)
        await bus.config_bucket(js, replicas=replicas)
        await bus.leases_bucket(js, replicas=replicas)
    finally:
        await nc.close()


class Cluster:
    """Three NATS nodes, config, two schedulers and two edges, all on the cluster."""

    def __init__(self, tmp: Path) -> None:
        self.nats = NatsCluster(tmp / "nats")
        self.api_port, self.edge_ports = free_port(), [free_port(), free_port()]
        self.api = Api(f"http://127.0.0.1:{self.api_port}/api/v1")
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir()
        self.procs: list[Service] = []

    def start(self) -> None:
        self.nats.start()
        # as nats-init does in the deployments: declare the streams once the cluster has formed
        wait_until(lambda: asyncio.run(_declare(self.nats.url, 3)) is None, timeout=60, step=0.5)
        env = {"NATS_URL": self.nats.url, "GTM_API_LISTEN": f"127.0.0.1:{self.api_port}", "GTM_SCHEDULER_LEASE_S": "2"}
        self.procs = [
            Service("config", env, self.log_dir),
            Service("scheduler", {**env, "GTM_SCHEDULER_ID": "s1"}, self.log_dir),
            Service("scheduler", {**env, "GTM_SCHEDULER_ID": "s2"}, self.log_dir),
            *(Service("edge", {**env, "GTM_DNS_LISTEN": f"127.0.0.1:{p}"}, self.log_dir) for p in self.edge_ports),
        ]
        for proc in self.procs:
            proc.start()
        for proc in self.procs:
            proc.wait_for_event("service_ready", timeout=60)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.nats.stop()

    def served(self, name: str) -> bool:
        return all(dns_query(p, name).rcode() == dns.rcode.NOERROR for p in self.edge_ports)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


async def _leaders(url: str) -> dict[str, tuple[str, int]]:
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream(timeout=3)
        out = {}
        for stream in ASSETS:
            info = await js.stream_info(stream)
            assert info.cluster is not None
            out[stream] = (info.cluster.leader or "", info.config.num_replicas or 1)
        return out
    finally:
        await nc.close()


def _leaders_sync(url: str) -> dict[str, tuple[str, int]]:
    return asyncio.run(_leaders(url))


class Resolver(threading.Thread):
    """Asks both edges for a domain over and over; counts the queries that got no answer."""

    def __init__(self, ports: list[int], name: str) -> None:
        super().__init__(daemon=True)
        self.ports, self.name = ports, name
        self.sent = self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for port in self.ports:
                self.sent += 1
                try:
                    if dns_query(port, self.name, timeout=0.5).rcode() != dns.rcode.NOERROR:
                        self.failed += 1
                except Exception:  # noqa: BLE001 - a timeout is a lost query
                    self.failed += 1
            time.sleep(0.005)


def _pool(i: int) -> dict:
    return {"type": "ipv4", "addresses": [{"name": "a", "address": f"192.0.2.{i + 1}"}]}


def test_killing_the_leader_of_each_stream_and_bucket_loses_nothing(cluster: Cluster, record_property) -> None:
    api = cluster.api
    written = []
    for i in range(20):
        assert api.put(f"/pools/P{i}", _pool(i))[0] == 201
        written.append(f"P{i}")
    assert api.put("/domains/www.example.com", {"record_type": "A", "enabled": True, "pools": [{"pool": "P0"}]})[0] == 201
    wait_until(lambda: cluster.served("www.example.com"), timeout=20)
    leaders = _leaders_sync(cluster.nats.url)
    assert all(replicas == 3 for _, replicas in leaders.values()), leaders

    resolver = Resolver(cluster.edge_ports, "www.example.com")
    resolver.start()
    try:
        for n, stream in enumerate(ASSETS):
            leader = _leaders_sync(cluster.nats.url)[stream][0]
            killed = time.monotonic()
            cluster.nats.kill(leader)
            unavailable = asyncio.run(_write_back_after(cluster.nats.url, stream, killed))
            name = f"P-after-{n}"

            def write() -> bool:
                return api.put(f"/pools/{name}", _pool(n))[0] in (200, 201)

            wait_until(write, timeout=WRITE_BACK_S, step=0.05)
            api_back = time.monotonic() - killed
            written.append(name)
            print(f"\n{stream}: leader {leader} killed; the stream takes writes after {unavailable:.2f} s, "
                  f"the config API after {api_back:.2f} s")
            record_property(f"write_unavailable_s_{stream}", round(unavailable, 2))

            # nothing acknowledged is lost (a list may need a moment more: it opens a consumer)
            listed = wait_until(lambda: (r := api.get("/pools"))[0] == 200 and r[1], timeout=WRITE_BACK_S)
            assert sorted(p["name"] for p in listed["pools"]) == sorted(written)

            domain = f"d{n}.example.com"
            assert api.put(f"/domains/{domain}", {"record_type": "A", "enabled": True, "pools": [{"pool": name}]})[0] == 201
            wait_until(lambda: cluster.served(domain), timeout=30)

            cluster.nats.start(leader)  # heal before the next fault: every stream back to 3 current peers
            wait_until(lambda: all(_leaders_sync(cluster.nats.url)[s][0] for s in ASSETS), timeout=30, step=0.5)
            time.sleep(1.0)
    finally:
        resolver.stopping.set()
        resolver.join(5)
    print(f"\nedges: {resolver.failed} of {resolver.sent} queries unanswered during the faults")
    record_property("queries_lost", resolver.failed)
    assert resolver.failed == 0


def test_init_raises_existing_single_replica_streams_and_buckets_to_three(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        wait_until(lambda: asyncio.run(_declare(cluster.url, 1)) is None, timeout=30, step=0.5)
        assert {r for _, r in _leaders_sync(cluster.url).values()} == {1}
        init = subprocess.run(
            [sys.executable, "-m", "shared.bus", "--init"],
            env={**os.environ, "NATS_URL": cluster.url, "GTM_LOG_FORMAT": "json"},
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert init.returncode == 0, init.stderr
        assert '"replicas": 3' in init.stdout + init.stderr
        assert {r for _, r in _leaders_sync(cluster.url).values()} == {3}
    finally:
        cluster.stop()


def test_one_server_gets_one_replica_and_the_setting_overrides_it(nats_url: str) -> None:
    async def check() -> tuple[int, int]:
        nc = await nats.connect(nats_url)
        try:
            return bus.replicas(nc, NatsSettings()), bus.replicas(nc, NatsSettings(replicas=3))
        finally:
            await nc.close()

    assert asyncio.run(check()) == (1, 3)
