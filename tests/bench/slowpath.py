"""The edge's slow path: ECS queries for a source_nearest domain, the zone's SOA, NS and NXDOMAIN.

``make bench`` (``python -m tests.bench.run slowpath``) prints three sets of figures:

1. an edge process queried by dnsperf (UDP on loopback, ``-c 4``): the fast path for
   reference, then every slow-path shape, ECS queries first;
2. in-process, one core: the hand-written slow path (``Responder.answer``) beside the
   same work done by dnslib (``DNSRecord.parse``, then the precompiled reply or a reply
   packed by dnslib) on one ECS query;
3. in-process, one core: compiling answer sets and the zone, where dnslib builds the
   records (once per answer set, off the query path).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
import dnslib
import msgspec
import nats

from services.edge import wire
from services.edge.compile import compile_answer_set
from services.edge.responder import Responder
from services.edge.table import AnswerTable
from services.edge.topology import RegionMap
from services.edge.zone import Zone
from shared import bus, subjects
from shared.messages import AnswerGroup, AnswerSet
from shared.resources import Topology, TopologyEntry
from tests.bench.common import Lab, answer, publish
from tests.support import Service, free_port

SECONDS = 10
ZONE = "example.com"
NAMESERVERS = "ns1.example.com,ns2.example.com"
TOPOLOGY = {"192.0.2.0/24": "eu", "198.51.100.0/24": "us"}
EU_ECS = "8:00011800c00002"  # dnsperf -E: option 8 (ECS), IPv4, source /24, scope 0, 192.0.2
EU_CLIENT = ("192.0.2.0", 24)
CLIENT = ("127.0.0.1", 40000)


def geo(domain: str = "geo.example.com") -> AnswerSet:
    """A source_nearest answer set: one pool per region, the us pool first (the default)."""
    return AnswerSet(
        domain=domain,
        enabled=True,
        record_type="A",
        ttl=30,
        select="nearest",
        groups=[
            AnswerGroup(pool="us", records=["10.0.0.1", "10.0.0.3"], region="us"),
            AnswerGroup(pool="eu", records=["10.0.0.2", "10.0.0.4"], region="eu"),
        ],
    )


def line(label: str, value: str) -> None:
    print(f"  {label:<52} {value}", flush=True)


# -- 1. an edge process and dnsperf ----------------------------------------------------------


async def _put_topology(url: str) -> None:
    nc = await nats.connect(url)
    try:
        kv = await bus.config_bucket(nc.jetstream())
        table = Topology(entries=[TopologyEntry(cidr=c, region=r) for c, r in TOPOLOGY.items()])
        await kv.put(subjects.TOPOLOGY_KEY, msgspec.json.encode(table))
    finally:
        await nc.close()


def _zone_edge(lab: Lab) -> int:
    """Start one edge authoritative for ZONE, serving once it has the topology; return its port."""
    port = free_port()
    env = {
        "NATS_URL": lab.nats.url,
        "GTM_DNS_LISTEN": f"127.0.0.1:{port}",
        "GTM_EDGE_ZONE": ZONE,
        "GTM_EDGE_NS": NAMESERVERS,
        "GTM_LOG_LEVEL": "info",
    }
    svc = Service("edge", env, lab.dir).start()
    svc.wait_for_event("service_ready", timeout=60)
    svc.wait_for_event("topology_applied", timeout=30)
    lab.edges.append((svc, port))
    return port


def dnsperf(port: int, queries: list[str], *, options: tuple[str, ...] = (), seconds: int = SECONDS) -> float:
    """Queries per second of dnsperf ``-c 4`` sending ``queries`` ("name TYPE" lines), with ``options``."""
    qfile = Path(tempfile.mktemp(prefix="gtm-q-"))
    qfile.write_text("".join(f"{q}\n" for q in queries))
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-c", "4", "-l", str(seconds), *options]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        qfile.unlink()
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if qps is None or lost is None:
        raise RuntimeError(f"dnsperf said:\n{out}")
    if int(lost.group(1)):
        print(f"    ({lost.group(1)} queries lost)")
    return float(qps.group(1))


def bench_process(seconds: int = SECONDS) -> None:
    print(f"\n== slow path: one edge process, dnsperf -c 4, loopback, {seconds} s each (zone {ZONE})")
    with Lab() as lab:
        asyncio.run(_put_topology(lab.nats.url))
        asyncio.run(publish(lab.nats.url, [geo(), answer(f"www.{ZONE}", ["192.0.2.1"])]))
        port = _zone_edge(lab)
        runs: list[tuple[str, list[str], tuple[str, ...]]] = [
            ("fast path: www A, EDNS, no option (reference)", [f"www.{ZONE} A"], ("-e",)),
            ("ECS: source_nearest geo A, client in eu (/24)", [f"geo.{ZONE} A"], ("-E", EU_ECS)),
            ("ECS: plain www A (scope 0)", [f"www.{ZONE} A"], ("-E", EU_ECS)),
            ("no ECS: source_nearest geo A, by source address", [f"geo.{ZONE} A"], ("-e",)),
            ("zone apex SOA and NS (EDNS)", [f"{ZONE} SOA", f"{ZONE} NS"], ("-e",)),
            ("zone NXDOMAIN with SOA (EDNS)", [f"missing.{ZONE} A"], ("-e",)),
        ]
        for label, queries, options in runs:
            line(label, f"{dnsperf(port, queries, options=options, seconds=seconds):>9,.0f} q/s")


# -- 2. in-process: the hand-written slow path beside dnslib ---------------------------------


def _rate(fn: Callable[[], object], *, seconds: float = 1.0) -> float:
    """Calls of ``fn`` per second on this core (best of three runs of ``seconds``/3)."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(200):
                fn()
            n += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def _table() -> AnswerTable:
    table = AnswerTable(Zone(ZONE, NAMESERVERS.split(",")), keep_encoded=False)
    table.apply(geo())
    table.apply(answer(f"www.{ZONE}", ["192.0.2.1"]))
    table.set_topology(None, RegionMap(list(TOPOLOGY.items())))
    return table


class DnslibSlowPath:
    """The candidate: dnslib parses the query (and, with ``pack``, builds the reply too).

    It does what the hand-written slow path does for a well-formed ECS query of a
    source_nearest name: find the ECS option, locate the client, pick the answer, echo the
    option with a scope.  Validation of the option is reused from ``wire.parse_ecs``.
    """

    def __init__(self, table: AnswerTable, *, pack: bool) -> None:
        self.table, self.pack = table, pack
        self._records: dict[int, list[dnslib.RR]] = {}  # id(variant body) -> its RRs, parsed once

    def answer(self, data: bytes, client: object) -> bytes:
        query = dnslib.DNSRecord.parse(data)
        ecs: wire.ClientSubnet | None = None
        for rr in query.ar:
            if rr.rtype == dnslib.QTYPE.OPT:
                for option in rr.rdata:
                    if option.code == wire.OPTION_ECS:
                        ecs = wire.parse_ecs(option.data)
        name = wire.name_to_wire(str(query.q.qname))
        answer, compiled = self.table.lookup(name, query.q.qtype)
        scope = 0
        if compiled is not None and compiled.by_region is not None and answer is compiled.answer:
            answer = compiled.by_region.get(self.table.regions.locate(ecs, client), answer)
            scope = ecs.source if ecs is not None else 0
        v = answer.pick()
        opt = wire.opt_rr(0, ecs.option(scope) if ecs is not None else b"")
        if not self.pack:
            question = data[wire.HEADER_LEN : wire.HEADER_LEN + len(name) + 4]
            return data[:2] + v[3 + (data[2] & 1)] + question + v[2] + opt
        reply = query.reply()
        reply.rr = self._rrs(v, data[wire.HEADER_LEN : wire.HEADER_LEN + len(name) + 4])
        edns_options = [dnslib.EDNSOption(wire.OPTION_ECS, ecs.option(scope)[4:])] if ecs is not None else []
        reply.ar = [dnslib.EDNS0(udp_len=wire.EDNS_PAYLOAD, opts=edns_options)]
        return bytes(reply.pack())

    def _rrs(self, v: tuple[bytes, ...], question: bytes) -> list[dnslib.RR]:
        """The answer RRs of a precompiled reply as dnslib objects (parsed once per reply)."""
        rrs = self._records.get(id(v[2]))
        if rrs is None:
            rrs = self._records[id(v[2])] = dnslib.DNSRecord.parse(b"\x00\x00" + v[3] + question + v[5]).rr
        return rrs


def bench_in_process() -> None:
    print("\n== slow path in-process, one core: one ECS query of the source_nearest name (client in eu)")
    table = _table()
    ecs = dns.edns.ECSOption(*EU_CLIENT)
    packet = dns.message.make_query(f"geo.{ZONE}", "A", use_edns=0, options=[ecs]).to_wire()
    responder = Responder(table)
    hand = responder.answer(packet, False, CLIENT)
    assert hand is not None and dns.message.from_wire(hand).answer
    candidates: list[tuple[str, Callable[[], object]]] = [
        ("hand-written (Responder.answer, as served)", lambda: responder.answer(packet, False, CLIENT)),
    ]
    for pack in (False, True):
        alt = DnslibSlowPath(table, pack=pack)
        reply = dns.message.from_wire(alt.answer(packet, CLIENT))
        assert (
            reply.answer == dns.message.from_wire(hand).answer and reply.options == dns.message.from_wire(hand).options
        )
        label = "dnslib parses and packs the reply" if pack else "dnslib parses, precompiled reply bytes"
        candidates.append((label, lambda alt=alt: alt.answer(packet, CLIENT)))
    base = 0.0
    for label, fn in candidates:
        rate = _rate(fn)
        base = base or rate
        line(label, f"{rate:>9,.0f} q/s  ({1e6 / rate:6.1f} us, x{rate / base:.2f})")


# -- 3. in-process: compiling, where dnslib builds the records --------------------------------


def bench_compile() -> None:
    print("\n== compiling answer sets and the zone, in-process, one core (records built once per set)")
    one = answer(f"www.{ZONE}", ["192.0.2.1"])
    four_v6 = AnswerSet(
        domain=f"v6.{ZONE}",
        enabled=True,
        record_type="AAAA",
        groups=[AnswerGroup(pool="p", records=[f"2001:db8::{i}" for i in range(1, 5)])],
    )
    cname = AnswerSet(
        domain=f"alias.{ZONE}",
        enabled=True,
        record_type="CNAME",
        groups=[AnswerGroup(pool="p", records=["cdn.example.net"])],
    )
    nearest = geo()
    for label, aset in (
        ("A, one record", one),
        ("AAAA, four records", four_v6),
        ("CNAME", cname),
        ("source_nearest A, two pools", nearest),
    ):
        rate = _rate(lambda aset=aset: compile_answer_set(aset))
        line(f"compile_answer_set: {label}", f"{rate:>9,.0f} /s  ({1e6 / rate:6.1f} us)")
    rate = _rate(lambda: Zone(ZONE, NAMESERVERS.split(",")))
    line("Zone(example.com, two NS): SOA, NS, negative answers", f"{rate:>9,.0f} /s  ({1e6 / rate:6.1f} us)")


def bench_slowpath() -> None:
    """Every figure of this module."""
    bench_process()
    bench_in_process()
    bench_compile()


if __name__ == "__main__":
    bench_slowpath()
