"""Pieces every benchmark uses: a private NATS, edges as processes, dnsperf runs."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nats

from shared import bus, subjects
from shared.messages import AnswerGroup, AnswerSet, encoder
from tests.support import NatsServer, Service, free_port, wait_until

BENCH_NAME = "bench.example.com"


def answer(domain: str, records: list[str], *, ttl: int = 30) -> AnswerSet:
    """An enabled A answer set with one group."""
    return AnswerSet(
        domain=domain,
        enabled=True,
        record_type="A",
        ttl=ttl,
        groups=[AnswerGroup(pool="p", records=records)],
        pool="p",
        records=records,
        published_at=time.time(),
    )


async def publish(url: str, sets: list[AnswerSet]) -> None:
    """Publish answer sets to the ANSWERS stream, pipelined, and wait until all are stored."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await bus.config_bucket(js)
    for i in range(0, len(sets), 2000):
        chunk = sets[i : i + 2000]
        await asyncio.gather(*(js.publish(subjects.answers(s.domain), encoder.encode(s)) for s in chunk))
    await nc.close()


class Lab:
    """A temporary NATS server and the edges started against it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gtm-bench-"))
        self.nats = NatsServer(self.dir / "nats")
        self.edges: list[tuple[Service, int]] = []

    def __enter__(self) -> Lab:
        self.nats.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for svc, _ in self.edges:
            svc.stop()
        self.nats.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def edge(self, *, workers: int = 1, timeout: float = 60) -> tuple[Service, int]:
        """Start one edge and wait until it serves; return it and its port."""
        port = free_port()
        env = {
            "NATS_URL": self.nats.url,
            "GTM_DNS_LISTEN": f"127.0.0.1:{port}",
            "GTM_EDGE_WORKERS": str(workers),
            "GTM_LOG_LEVEL": "info",
        }
        svc = Service("edge", env, self.dir).start()
        svc.wait_for_event("service_ready", timeout=timeout)
        self.edges.append((svc, port))
        return svc, port


def dnsperf(port: int, names: list[str], *, seconds: int = 10, clients: int = 4, max_qps: int = 0) -> dict[str, float]:
    """Run dnsperf against 127.0.0.1:port; return qps, loss % and latency (ms)."""
    qfile = Path(tempfile.mktemp(prefix="gtm-q-"))
    qfile.write_text("".join(f"{n} A\n" for n in names))
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-c", str(clients), "-l", str(seconds)]
    if max_qps:
        cmd += ["-Q", str(max_qps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    qfile.unlink()

    def grab(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    return {
        "qps": grab(r"Queries per second:\s+([\d.]+)"),
        "sent": grab(r"Queries sent:\s+(\d+)"),
        "lost": grab(r"Queries lost:\s+(\d+)"),
        "loss_pct": grab(r"Queries lost:\s+\d+ \(([\d.]+)%\)"),
        "avg_ms": grab(r"Average Latency \(s\):\s+([\d.]+)") * 1000,
        "max_ms": grab(r"Average Latency \(s\):\s+[\d.]+ \(min [\d.]+, max ([\d.]+)\)") * 1000,
        "stddev_ms": grab(r"Latency StdDev \(s\):\s+([\d.]+)") * 1000,
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def event(svc: Service, name: str) -> dict:
    """The first log event ``name`` of a service."""
    return svc.wait_for_event(name)


__all__ = ["BENCH_NAME", "Lab", "answer", "dnsperf", "event", "json", "publish", "rss_mb", "wait_until"]
