"""`make bench`: the edge beside gdnsd, publish-to-serve latency, and a 100,000-domain snapshot.

Prints figures; asserts nothing. One run on one machine: compare within a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable

import dns.message
import nats

from shared import subjects
from shared.messages import encoder
from tests.bench import gdnsd
from tests.bench.common import BENCH_NAME, Lab, answer, dnsperf, event, publish, rss_mb
from tests.support import HttpBackend

SECONDS = 10


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}", flush=True)


def bench_qps(rounds: int = 3) -> None:
    """One edge process beside gdnsd and PowerDNS, in alternating rounds (the load of the machine changes)."""
    from tests.bench import failover

    print(
        f"\n== DNS queries/s: one edge process vs gdnsd and PowerDNS (dnsperf -c 4, loopback, {rounds} alternating rounds)"
    )
    backend = HttpBackend(host="127.0.0.2").start()
    try:
        with contextlib.ExitStack() as stack:
            lab = stack.enter_context(Lab())
            asyncio.run(publish(lab.nats.url, [answer(BENCH_NAME, ["127.0.0.2"])]))
            svc, port = lab.edge()
            assert svc.proc is not None
            line("gtm edge UDP path", event(svc, "udp_path").get("path", "?"))
            others: dict[str, int] = {}
            if gdnsd.available():
                ref = stack.enter_context(
                    gdnsd.Gdnsd(check_port=backend.port, primary="127.0.0.2", secondary="127.0.0.3")
                )
                others["gdnsd 3 simplefo + http_status"] = ref.port
            else:
                line("gdnsd", "not installed (apt-get install gdnsd dnsperf)")
            if failover.pdns_available():
                others["PowerDNS 4 LUA ifurlup, caches on"] = stack.enter_context(
                    failover.pdns(backend.port, caches=True)
                )
            else:
                line("PowerDNS", "not installed (apt-get install pdns-server pdns-backend-bind)")
            edges: list[float] = []
            ratios: dict[str, list[float]] = {name: [] for name in others}
            for i in range(1, rounds + 1):
                edge = dnsperf(port, [BENCH_NAME], seconds=SECONDS)
                edges.append(edge["qps"])
                line(f"round {i}: gtm edge", _fmt(edge))
                for name, other_port in others.items():
                    other = dnsperf(other_port, [BENCH_NAME], seconds=SECONDS)
                    line(f"round {i}: {name}", _fmt(other))
                    ratios[name].append(edge["qps"] / other["qps"])
                    line(f"round {i}: ratio gtm / {name.split()[0]}", f"{ratios[name][-1]:.2f}")
            best = max(edges)
            at80 = dnsperf(port, [BENCH_NAME], seconds=SECONDS, max_qps=int(best * 0.8))
            line("gtm edge at 80% of its best", _fmt(at80))
            line("gtm edge RSS after load", f"{rss_mb(svc.proc.pid):.1f} MB")
            for name, each in ratios.items():
                short = name.split()[0]
                line(f"ratio gtm / {short}, each round", " ".join(f"{r:.2f}" for r in each))
                line(f"ratio gtm / {short}, median", f"{statistics.median(each):.2f}")
    finally:
        backend.stop()


def _fmt(r: dict[str, float]) -> str:
    return (
        f"{r['qps']:>9,.0f} q/s  lost {r['lost']:.0f} ({r['loss_pct']:.2f}%)  "
        f"latency avg {r['avg_ms']:.3f} ms, max {r['max_ms']:.2f} ms"
    )


def _ip_bytes(i: int) -> tuple[str, bytes]:
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    return ip, socket.inet_aton(ip)


async def _publish_to_serve(url: str, ports: list[int], rounds: int) -> dict[str, list[float]]:
    """Per publish (ms from its start): JetStream's ack, the first edge serving the new answer, the last.

    Every round asks all edges still serving the old answer at once, then reads their replies.
    """
    nc = await nats.connect(url)
    js = nc.jetstream()
    query = dns.message.make_query(BENCH_NAME, "A").to_wire()
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        s.settimeout(0.2)
        socks.append(s)
    samples: dict[str, list[float]] = {"ack": [], "first": [], "all": []}
    for i in range(1, rounds + 1):
        ip, raw = _ip_bytes(i)
        start = time.perf_counter()
        await js.publish(subjects.answers(BENCH_NAME), encoder.encode(answer(BENCH_NAME, [ip])))
        samples["ack"].append((time.perf_counter() - start) * 1000)
        pending = set(range(len(socks)))
        while pending:
            asked = list(pending)
            for k in asked:
                socks[k].send(query)
            for k in asked:
                if socks[k].recv(512).endswith(raw):
                    if len(pending) == len(socks):
                        samples["first"].append((time.perf_counter() - start) * 1000)
                    pending.discard(k)
            if time.perf_counter() - start > 5:
                raise RuntimeError("an edge did not serve a new answer within 5 s")
        samples["all"].append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(0.01)
    for s in socks:
        s.close()
    await nc.close()
    return samples


def bench_publish_latency(rounds: int = 300) -> None:
    print(f"\n== publish -> all 4 edges serving the new answer ({rounds} publishes)")
    with Lab() as lab:
        asyncio.run(publish(lab.nats.url, [answer(BENCH_NAME, ["10.0.0.0"])]))
        ports = [lab.edge()[1] for _ in range(4)]
        runs = asyncio.run(_publish_to_serve(lab.nats.url, ports, rounds))
    for key, label in (("all", "p50 / p90 / p99 / max"), ("ack", "  publish -> JetStream ack"), ("first", "  publish -> first edge serving")):
        samples = sorted(runs[key])
        p = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
        line(label, f"{p(0.5):.2f} / {p(0.9):.2f} / {p(0.99):.2f} / {samples[-1]:.2f} ms")
    line("mean", f"{statistics.mean(runs['all']):.2f} ms")


def bench_snapshot(domains: int = 100_000) -> None:
    print(f"\n== snapshot of {domains:,} domains")
    with Lab() as lab:
        sets = [answer(f"d{i}.bench.example.com", [_ip_bytes(i)[0]]) for i in range(domains)]
        t0 = time.perf_counter()
        asyncio.run(publish(lab.nats.url, sets))
        line("published to the ANSWERS stream in", f"{time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        svc, port = lab.edge(timeout=120)
        ready_s = time.perf_counter() - t0
        loaded = svc.wait_for_event("snapshot_loaded")
        line("edge: subscribe -> snapshot loaded", f"{loaded['seconds']:.2f} s ({loaded['domains']:,} domains)")
        line("edge: process start -> serving", f"{ready_s:.2f} s")
        line("edge RSS", f"{rss_mb(svc.proc.pid):.1f} MB")


def _later(module: str, func: str) -> Callable[[], None]:
    def run() -> None:
        getattr(importlib.import_module(module), func)()

    return run


BENCHES: dict[str, Callable[[], None]] = {
    "qps": bench_qps,
    "publish": bench_publish_latency,
    "snapshot": bench_snapshot,
    "failover": _later("tests.bench.failover", "bench_failover"),
    "prober": _later("tests.bench.prober", "bench_prober"),
    "scheduler": _later("tests.bench.scheduler", "bench_scheduler"),
    "fairness": _later("tests.bench.fairness", "bench_fairness"),
    "api": _later("tests.bench.api", "bench_api"),
    "slowpath": _later("tests.bench.slowpath", "bench_slowpath"),
    "lines": _later("tests.bench.lines", "bench_lines"),
}


def main() -> None:
    """Run the benchmarks named on the command line (default: all of them)."""
    which = sys.argv[1:] or list(BENCHES)
    print(f"GTM benchmarks, {time.strftime('%Y-%m-%d %H:%M:%S')}, {len(os.sched_getaffinity(0))} CPUs")
    for name in which:
        BENCHES[name]()


if __name__ == "__main__":
    main()
