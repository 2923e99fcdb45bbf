"""Request-source lines: edge q/s with lines on and off, with and without ECS, beside gdnsd.

``make bench`` (``python -m tests.bench.run lines``) prints:

1. one edge process queried by dnsperf (UDP on loopback, ``-c 4``): a domain without lines
   and a domain with lines (country:CN, continent:EU, default), each without ECS (the
   resolver's own address decides) and with an ECS option of a Chinese and a European
   subnet; gdnsd (simplefo, no geo) in the same run for the ratio;
2. in-process, one core: ``Responder.answer`` for the same shapes, so the cost of a line
   lookup is seen without the kernel and dnsperf;
3. the edge's RSS with the GeoIP data loaded.
"""

from __future__ import annotations

import asyncio
import time

import dns.edns
import dns.message

from services.edge.responder import Responder
from services.edge.table import AnswerTable
from shared import geo
from shared.messages import AnswerGroup, AnswerSet, LineAnswer
from tests.bench import gdnsd
from tests.bench.common import Lab, answer, publish, rss_mb
from tests.bench.slowpath import _rate, dnsperf, line
from tests.support import HttpBackend

SECONDS = 10
PLAIN = "plain.bench.example.com"
LINED = "lined.bench.example.com"
# dnsperf -E: option 8 (ECS), IPv4, source /24, scope 0, then the subnet's first three octets
CN_ECS = "8:00011800010204"  # 1.2.4.0/24 (China)
EU_ECS = "8:00011800510245"  # 81.2.69.0/24 (Britain: continent EU)
CLIENT = ("127.0.0.1", 40000)


def lined(domain: str = LINED) -> AnswerSet:
    """An answer set with a country:CN and a continent:EU line beside the default pool."""
    return AnswerSet(
        domain=domain,
        enabled=True,
        record_type="A",
        ttl=30,
        groups=[AnswerGroup(pool="US-DC", records=["10.0.0.3"])],
        pool="US-DC",
        records=["10.0.0.3"],
        lines=[
            LineAnswer(line="country:CN", groups=[AnswerGroup(pool="CN-DC", records=["10.0.0.1"])], pool="CN-DC",
                       records=["10.0.0.1"]),
            LineAnswer(line="continent:EU", groups=[AnswerGroup(pool="EU-DC", records=["10.0.0.2"])],
                       pool="EU-DC", records=["10.0.0.2"]),
        ],
        published_at=time.time(),
    )


def bench_process(seconds: int = SECONDS) -> None:
    print(f"\n== request-source lines: one edge process, dnsperf -c 4, loopback, {seconds} s each")
    backend = HttpBackend(host="127.0.0.2").start()
    try:
        results: dict[str, float] = {}
        with Lab() as lab:
            asyncio.run(publish(lab.nats.url, [answer(PLAIN, ["10.0.0.9"]), lined()]))
            svc, port = lab.edge()
            runs: list[tuple[str, str, tuple[str, ...]]] = [
                ("lines off, no ECS", PLAIN, ("-e",)),
                ("lines off, ECS (CN /24)", PLAIN, ("-E", CN_ECS)),
                ("lines on, no ECS (resolver address decides)", LINED, ("-e",)),
                ("lines on, ECS CN /24 (country:CN)", LINED, ("-E", CN_ECS)),
                ("lines on, ECS EU /24 (continent:EU)", LINED, ("-E", EU_ECS)),
            ]
            for label, name, options in runs:
                results[label] = dnsperf(port, [f"{name} A"], options=options, seconds=seconds)
                line(label, f"{results[label]:>9,.0f} q/s")
            line("edge RSS with the GeoIP data loaded", f"{rss_mb(svc.proc.pid):.1f} MB")
        base = results["lines off, no ECS"]
        for label in list(results)[1:]:
            line(f"ratio {label} / lines off, no ECS", f"{results[label] / base:.2f}")
        if not gdnsd.available():
            line("gdnsd", "not installed (apt-get install gdnsd dnsperf)")
            return
        with gdnsd.Gdnsd(check_port=backend.port, primary="127.0.0.2", secondary="127.0.0.3") as g:
            ref = dnsperf(g.port, ["bench.example.com A"], options=("-e",), seconds=seconds)
        line("gdnsd simplefo, no ECS (same run)", f"{ref:>9,.0f} q/s")
        for label, qps in results.items():
            line(f"ratio {label} / gdnsd", f"{qps / ref:.2f}")
    finally:
        backend.stop()


def _query(name: str, ecs: tuple[str, int] | None) -> bytes:
    options = [dns.edns.ECSOption(*ecs)] if ecs else []
    return dns.message.make_query(name, "A", use_edns=0, options=options).to_wire()


def bench_inprocess() -> None:
    print("\n== request-source lines in-process, one core: Responder.answer calls/s")
    table = AnswerTable(keep_encoded=False, geo=geo.open_database)
    table.apply(answer(PLAIN, ["10.0.0.9"]))
    table.apply(lined())
    r = Responder(table)
    shapes = [
        ("lines off, no ECS", _query(PLAIN, None), CLIENT),
        ("lines off, ECS CN /24", _query(PLAIN, ("1.2.4.0", 24)), CLIENT),
        ("lines on, no ECS, resolver 1.2.4.8 (CN)", _query(LINED, None), ("1.2.4.8", 40000)),
        ("lines on, ECS CN /24", _query(LINED, ("1.2.4.0", 24)), CLIENT),
        ("lines on, ECS EU /24", _query(LINED, ("81.2.69.0", 24)), CLIENT),
    ]
    first = 0.0
    for label, data, client in shapes:
        rate = _rate(lambda d=data, c=client: r.answer(d, False, c))  # type: ignore[misc]
        first = first or rate
        line(label, f"{rate:>11,.0f} /s  ({1e6 / rate:.2f} us, x{rate / first:.2f})")


def bench_lines() -> None:
    """Every figure of this module."""
    bench_inprocess()
    bench_process()


if __name__ == "__main__":
    bench_lines()
