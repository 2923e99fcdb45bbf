"""The edge as a real process: snapshot, live updates, TCP, garbage, NATS restarts, workers,
the topology followed live from KV with ECS answers, the zone apex."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import msgspec
import nats
import pytest

from services.edge.responder import Responder
from services.edge.server import DnsListener
from services.edge.table import AnswerTable
from shared import bus, messages, subjects
from shared.messages import AnswerGroup, AnswerSet
from shared.resources import Topology, TopologyEntry
from tests.support import NatsServer, Service, answer_addresses, dns_query, free_port, wait_until


def a_set(domain: str, *records: str, enabled: bool = True, deleted: bool = False) -> AnswerSet:
    """An A-record AnswerSet with one group."""
    groups = [AnswerGroup(pool="p", records=list(records))] if records else []
    return AnswerSet(
        domain=domain, enabled=enabled, record_type="A", groups=groups, records=list(records), deleted=deleted
    )


def publish(url: str, *sets: AnswerSet) -> None:
    """Publish AnswerSets with JetStream, as the scheduler does."""

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js)
            for s in sets:
                await js.publish(subjects.answers(s.domain), messages.encoder.encode(s))
        finally:
            await nc.close()

    asyncio.run(go())


@pytest.fixture
def port() -> int:
    return free_port()


def edge(url: str, log_dir: Path, port: int, **env: str) -> Service:
    """An edge process (not started) listening on 127.0.0.1:port."""
    return Service(
        "edge", {"NATS_URL": url, "GTM_DNS_LISTEN": f"127.0.0.1:{port}", "GTM_LOG_LEVEL": "debug", **env}, log_dir
    )


@pytest.fixture
def running(nats_url: str, log_dir: Path, port: int) -> Iterator[Service]:
    """An edge started on an empty ANSWERS stream and ready."""
    svc = edge(nats_url, log_dir, port).start()
    try:
        svc.wait_for_event("service_ready")
        yield svc
    finally:
        svc.stop()


def served(port: int, name: str, *, tcp: bool = False) -> list[str]:
    return answer_addresses(dns_query(port, name, tcp=tcp))


def rcode(port: int, name: str) -> int:
    return dns_query(port, name).rcode()


def test_snapshot_is_served_as_soon_as_ready_and_sigterm_exits_zero(nats_url: str, log_dir: Path, port: int) -> None:
    publish(
        nats_url,
        a_set("www.example.com", "192.0.2.1", "192.0.2.2"),
        a_set("off.example.com", "192.0.2.3", enabled=False),
        a_set("gone.example.com", "192.0.2.4"),
        a_set("gone.example.com", deleted=True),
    )
    svc = edge(nats_url, log_dir, port).start()
    try:
        ready = svc.wait_for_event("service_ready")
        assert ready["listen"] == f"127.0.0.1:{port}"
        assert served(port, "www.example.com") == ["192.0.2.1", "192.0.2.2"]
        assert served(port, "WWW.Example.Com", tcp=True) == ["192.0.2.1", "192.0.2.2"]
        assert rcode(port, "off.example.com") == dns.rcode.REFUSED
        assert rcode(port, "gone.example.com") == dns.rcode.REFUSED
        applied = {e["domain"] for e in svc.events() if e.get("event") == "answer_applied"}
        assert applied == {"www.example.com", "off.example.com"}
    finally:
        assert svc.stop() == 0


def test_live_updates_change_the_answer_and_tombstones_refuse(nats_url: str, running: Service, port: int) -> None:
    assert rcode(port, "live.example.com") == dns.rcode.REFUSED
    publish(nats_url, a_set("live.example.com", "192.0.2.10"))
    wait_until(lambda: served(port, "live.example.com") == ["192.0.2.10"])
    publish(nats_url, a_set("live.example.com", "198.51.100.20"))
    wait_until(lambda: served(port, "live.example.com") == ["198.51.100.20"])
    publish(nats_url, a_set("live.example.com", deleted=True))
    wait_until(lambda: rcode(port, "live.example.com") == dns.rcode.REFUSED)


def _framed(msg: dns.message.Message) -> bytes:
    data = msg.to_wire()
    return struct.pack("!H", len(data)) + data


def _read_framed(sock: socket.socket) -> dns.message.Message:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf

    (size,) = struct.unpack("!H", exactly(2))
    return dns.message.from_wire(exactly(size))


def test_tcp_answers_pipelined_queries_on_one_connection(nats_url: str, running: Service, port: int) -> None:
    publish(nats_url, a_set("t.example.com", "192.0.2.7"))
    wait_until(lambda: served(port, "t.example.com") == ["192.0.2.7"])
    q1 = dns.message.make_query("t.example.com", "A")
    q2 = dns.message.make_query("nope.example.com", "A")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(_framed(q1) + _framed(q2))
        r1, r2 = _read_framed(sock), _read_framed(sock)
        assert (r1.id, answer_addresses(r1)) == (q1.id, ["192.0.2.7"])
        assert (r2.id, r2.rcode()) == (q2.id, dns.rcode.REFUSED)
        q3 = dns.message.make_query("t.example.com", "AAAA")
        sock.sendall(_framed(q3))
        r3 = _read_framed(sock)
        assert r3.id == q3.id and r3.rcode() == dns.rcode.NOERROR and not r3.answer


def test_malformed_packets_do_not_kill_it(nats_url: str, running: Service, port: int) -> None:
    publish(nats_url, a_set("m.example.com", "192.0.2.8"))
    wait_until(lambda: served(port, "m.example.com") == ["192.0.2.8"])
    garbage = [b"", b"\x00", b"\xff" * 11, b"\xff" * 12, os.urandom(40), b"\x12\x34\x81\x00" + b"\x00" * 8]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for packet in garbage * 5:
            udp.sendto(packet, ("127.0.0.1", port))
    for packet in garbage:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack("!H", len(packet)) + packet + b"\x00\x05ab")
    assert served(port, "m.example.com") == ["192.0.2.8"]
    assert running.proc is not None and running.proc.poll() is None


def test_keeps_answering_while_nats_is_down_and_catches_up_after_restart(
    tmp_path: Path, log_dir: Path, port: int
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    svc = edge(server.url, log_dir, port)
    try:
        publish(server.url, a_set("r.example.com", "192.0.2.1"))
        svc.start().wait_for_event("service_ready")
        assert served(port, "r.example.com") == ["192.0.2.1"]
        server.stop()
        svc.wait_for_event("nats_disconnected")
        assert served(port, "r.example.com") == ["192.0.2.1"]
        server = NatsServer(tmp_path / "nats", port=server.port)
        server.start()
        publish(server.url, a_set("r.example.com", "192.0.2.2"), a_set("new.example.com", "192.0.2.3"))
        wait_until(lambda: served(port, "r.example.com") == ["192.0.2.2"], timeout=20)
        assert served(port, "new.example.com") == ["192.0.2.3"]
    finally:
        assert svc.stop() == 0
        server.stop()


def _answered_sources(port: int, tries: int = 16) -> int:
    """How many fresh UDP sockets (so different source ports) got an answer."""
    answered = 0
    for _ in range(tries):
        try:
            dns_query(port, "wk.example.com", timeout=0.25)
            answered += 1
        except dns.exception.Timeout:
            pass
    return answered


def test_reuseport_workers_both_answer(nats_url: str, log_dir: Path, port: int) -> None:
    publish(nats_url, a_set("wk.example.com", "192.0.2.5"))
    svc = edge(nats_url, log_dir, port, GTM_EDGE_WORKERS="2").start()
    try:
        ready = svc.wait_for_event("service_ready")
        assert ready["workers"] == 2
        pids = [e["pid"] for e in svc.events() if e.get("event") == "worker_ready"]
        assert len(set(pids)) == 2
        assert served(port, "wk.example.com") == ["192.0.2.5"]
        for paused in pids:  # with one worker frozen, the other still answers its share
            os.kill(paused, signal.SIGSTOP)
            try:
                assert 0 < _answered_sources(port) < 16
            finally:
                os.kill(paused, signal.SIGCONT)
    finally:
        assert svc.stop() == 0
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_tcp_idle_connections_are_closed_and_connections_are_capped(port: int) -> None:
    listener = DnsListener(Responder(AnswerTable()), "127.0.0.1", port, tcp_idle_s=0.3, max_tcp=1)
    await listener.start()
    try:
        first_r, first_w = await asyncio.open_connection("127.0.0.1", port)
        second_r, second_w = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(second_r.read(), 2) == b""  # over the cap: closed at once
        q = dns.message.make_query("x.example.com", "A")
        first_w.write(_framed(q))
        size = struct.unpack("!H", await first_r.readexactly(2))[0]
        assert dns.message.from_wire(await first_r.readexactly(size)).rcode() == dns.rcode.REFUSED
        assert await asyncio.wait_for(first_r.read(), 2) == b""  # idle: closed by the server
        for w in (first_w, second_w):
            w.close()
    finally:
        await listener.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_it_while_nats_is_unreachable(log_dir: Path, port: int, workers: str) -> None:
    svc = edge(f"nats://127.0.0.1:{free_port()}", log_dir, port, GTM_EDGE_WORKERS=workers).start()
    try:
        svc.wait_for_event("nats_error")
    finally:
        code = svc.stop()
        assert code == 0, svc.output()


# -- source_nearest: topology from KV, ECS; the zone apex ----------------------------------------


def put_topology(url: str, entries: dict[str, str] | None, *, raw: bytes | None = None) -> None:
    """Write (None: delete) the topology table in KV ``gtm_config``, as the config service stores it."""

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            kv = await bus.config_bucket(nc.jetstream())
            if raw is not None:
                await kv.put(subjects.TOPOLOGY_KEY, raw)
            elif entries is None:
                await kv.delete(subjects.TOPOLOGY_KEY)
            else:
                table = Topology(entries=[TopologyEntry(cidr=c, region=r) for c, r in entries.items()])
                await kv.put(subjects.TOPOLOGY_KEY, msgspec.json.encode(table))
            await kv.put(subjects.domain_key("unrelated.example.com"), b"{not the edge's business")
        finally:
            await nc.close()

    asyncio.run(go())


def from_subnet(port: int, name: str, subnet: str, source: int) -> tuple[list[str], int]:
    """(addresses, ECS scope) answered to a query carrying the ECS option ``subnet/source``."""
    q = dns.message.make_query(name, "A", use_edns=0, options=[dns.edns.ECSOption(subnet, source)])
    reply = dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)
    (ecs,) = [o for o in reply.options if o.otype == dns.edns.ECS]
    assert (ecs.address, ecs.srclen) == (subnet, source)
    return answer_addresses(reply), ecs.scopelen


def test_topology_from_kv_applies_live_and_ecs_picks_the_nearest_pool(
    nats_url: str, log_dir: Path, port: int
) -> None:
    put_topology(nats_url, {"192.0.2.0/24": "eu", "198.51.100.0/24": "us"})
    geo = AnswerSet(
        domain="geo.example.com",
        enabled=True,
        record_type="A",
        select="nearest",
        groups=[
            AnswerGroup(pool="us", records=["10.0.0.1"], region="us"),
            AnswerGroup(pool="eu", records=["10.0.0.2"], region="eu"),
        ],
    )
    publish(nats_url, geo, a_set("www.example.com", "10.9.9.9"))
    svc = edge(nats_url, log_dir, port).start()
    try:
        svc.wait_for_event("service_ready")
        assert from_subnet(port, "geo.example.com", "192.0.2.0", 24) == (["10.0.0.2"], 24)
        assert from_subnet(port, "geo.example.com", "198.51.100.0", 24) == (["10.0.0.1"], 24)
        assert from_subnet(port, "www.example.com", "192.0.2.0", 24) == (["10.9.9.9"], 0)
        assert served(port, "geo.example.com") == ["10.0.0.1"]  # 127.0.0.1: no region, first group

        put_topology(nats_url, {"127.0.0.0/8": "eu", "192.0.2.0/24": "us"})
        wait_until(lambda: served(port, "geo.example.com") == ["10.0.0.2"])  # by source address now
        assert from_subnet(port, "geo.example.com", "192.0.2.0", 24) == (["10.0.0.1"], 24)

        put_topology(nats_url, None, raw=b"not json")  # a bad value: the last good table stays
        svc.wait_for_event("topology_rejected")
        assert served(port, "geo.example.com") == ["10.0.0.2"]

        put_topology(nats_url, None)
        wait_until(lambda: served(port, "geo.example.com") == ["10.0.0.1"])
        assert from_subnet(port, "geo.example.com", "192.0.2.0", 24) == (["10.0.0.1"], 24)
    finally:
        assert svc.stop() == 0


def test_edge_zone_makes_it_authoritative_for_its_zone(nats_url: str, log_dir: Path, port: int) -> None:
    publish(nats_url, a_set("www.example.com", "192.0.2.1"))
    svc = edge(nats_url, log_dir, port, GTM_EDGE_ZONE="Example.com.", GTM_EDGE_NS="ns1.example.com,ns2.example.com")
    svc.start()
    try:
        assert svc.wait_for_event("zone_served")["zone"] == "example.com"
        svc.wait_for_event("service_ready")
        soa = dns_query(port, "example.com", "SOA", tcp=True)
        assert [rd.to_text().split()[:2] for rrset in soa.answer for rd in rrset] == [
            ["ns1.example.com.", "hostmaster.example.com."]
        ]
        nameservers = answer_addresses(dns_query(port, "example.com", "NS"))
        assert sorted(nameservers) == ["ns1.example.com.", "ns2.example.com."]
        missing = dns_query(port, "missing.example.com")
        assert missing.rcode() == dns.rcode.NXDOMAIN and missing.authority[0].ttl == 60
        nodata = dns_query(port, "www.example.com", "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and len(nodata.authority) == 1
        assert served(port, "www.example.com") == ["192.0.2.1"]
        assert rcode(port, "www.example.org") == dns.rcode.REFUSED
    finally:
        assert svc.stop() == 0


def test_a_bad_zone_or_nameserver_name_stops_it_at_start() -> None:
    for env in ({"GTM_EDGE_ZONE": "bad..zone"}, {"GTM_EDGE_ZONE": "example.com", "GTM_EDGE_NS": "ns1..example.com"}):
        done = subprocess.run(
            [sys.executable, "-m", "services.edge"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2 and "bad label" in done.stderr
