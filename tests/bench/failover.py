"""Failover and fail-back: from a killed backend to every server answering the backup, and back.

GTM (interval 1 s, failures 1, both edges) beside gdnsd 3 (interval 2, down_thresh 2: its
minimum) and PowerDNS 4 LUA ``ifurlup`` (health checks every 1 s, minimumFailures 1), in one run.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.bench import gdnsd
from tests.support import Stack, answer_addresses, dns_query, free_port, wait_until

PRIMARY, BACKUP = "127.0.0.2", "127.0.0.3"
NAME = "bench.example.com"
ROUNDS = 10


# http.server answering HTTP/1.1 with keep-alive (its default is HTTP/1.0, one request per connection)
KEEPALIVE_SERVER = (
    "import http.server, sys\n"
    "http.server.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'\n"
    "http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), http.server.SimpleHTTPRequestHandler)"
    ".serve_forever()\n"
)


class ProcessBackend:
    """A web server (HTTP/1.1, keep-alive) in its own process, killed with SIGKILL: a backend that really dies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessBackend:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", KEEPALIVE_SERVER, str(self.port), self.host],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: socket.create_connection((self.host, self.port), timeout=0.2).close() or True)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _answers(port: int) -> list[str]:
    try:
        return answer_addresses(dns_query(port, NAME, timeout=0.2))
    except Exception:  # noqa: BLE001 - a timeout counts as "not yet"
        return []


def _measure(ports: list[int], primary: ProcessBackend, rounds: int) -> tuple[list[float], list[float]]:
    """Kill and revive the primary ``rounds`` times; time until every port answers the other pool."""

    def until_all(ip: str, start: float) -> float:
        wait_until(lambda: all(_answers(p) == [ip] for p in ports), timeout=30, step=0.005)
        return time.monotonic() - start

    down, up = [], []
    until_all(PRIMARY, time.monotonic())
    for _ in range(rounds):
        time.sleep(random.uniform(0.0, 1.0))  # a random phase against the check schedule
        primary.stop()
        down.append(until_all(BACKUP, time.monotonic()))
        time.sleep(random.uniform(0.5, 1.5))
        primary.start()
        up.append(until_all(PRIMARY, time.monotonic()))
        time.sleep(random.uniform(0.5, 1.5))
    return down, up


def _gtm(port: int, primary: ProcessBackend) -> tuple[list[float], list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix="gtm-failover-"))
    stack = Stack(tmp, domain=NAME)
    try:
        stack.start()
        check = {"protocol": "http", "port": port, "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}
        for pool, server, ip in (("Primary-DC", "primary", PRIMARY), ("Backup-DC", "backup", BACKUP)):
            stack.api.put(
                f"/pools/{pool}",
                {"type": "ipv4", "addresses": [{"name": server, "address": ip, "health_check": check}]},
            )
        stack.api.put(
            f"/domains/{NAME}",
            {
                "record_type": "A",
                "enabled": True,
                "pools": [{"pool": "Primary-DC", "sequence": 1}, {"pool": "Backup-DC", "sequence": 2}],
            },
        )
        return _measure(stack.edge_ports, primary, ROUNDS)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _gdnsd(port: int, primary: ProcessBackend) -> tuple[list[float], list[float]]:
    with gdnsd.Gdnsd(check_port=port, primary=PRIMARY, secondary=BACKUP, interval=2, down=2) as g:
        return _measure([g.port], primary, ROUNDS)


PDNS_CONF = """launch=bind
bind-config={dir}/named.conf
local-address=127.0.0.1
local-port={port}
enable-lua-records=yes
lua-health-checks-interval=1
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
socket-dir={dir}
daemon=no
guardian=no
disable-syslog=yes
"""

PDNS_ZONE = """$TTL 30
@ IN SOA ns1 hostmaster 1 7200 1800 259200 60
@ IN NS ns1
ns1 IN A 127.0.0.1
bench IN LUA A "ifurlup('http://{name}:{check}/', {{{{'{primary}'}}, {{'{backup}'}}}}, {{minimumFailures=1, interval=1, timeout=1}})"
"""


@contextlib.contextmanager
def pdns(check_port: int, *, caches: bool = False) -> Iterator[int]:
    """A PowerDNS server with the LUA ``ifurlup`` name, health-checking ``check_port``; yields its DNS port.

    ``caches``: keep PowerDNS's packet and query caches at their defaults (for q/s); off, every
    answer reflects the latest health check (for failover).
    """
    d = Path(tempfile.mkdtemp(prefix="gtm-pdns-"))
    dns_port = free_port()
    conf = PDNS_CONF.format(dir=d, port=dns_port)
    if caches:
        conf = "".join(line + "\n" for line in conf.splitlines() if "cache-ttl" not in line)
    (d / "pdns.conf").write_text(conf)
    (d / "named.conf").write_text(f'zone "example.com" {{ type master; file "{d}/example.com.zone"; }};\n')
    (d / "example.com.zone").write_text(PDNS_ZONE.format(name=NAME, check=check_port, primary=PRIMARY, backup=BACKUP))
    proc = subprocess.Popen(
        [shutil.which("pdns_server") or "/usr/sbin/pdns_server", f"--config-dir={d}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _answers(dns_port), timeout=20)
        yield dns_port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def pdns_available() -> bool:
    """Whether pdns_server is installed."""
    return bool(shutil.which("pdns_server") or Path("/usr/sbin/pdns_server").exists())


def _pdns(port: int, primary: ProcessBackend) -> tuple[list[float], list[float]]:
    with pdns(port) as dns_port:
        return _measure([dns_port], primary, ROUNDS)


def bench_failover() -> None:
    """Print failover and fail-back p50/max for GTM, gdnsd and PowerDNS on this machine."""
    print(
        f"\n== failover / fail-back: backend killed (kill -9, HTTP/1.1 keep-alive) -> every server answers the "
        f"backup ({ROUNDS} rounds)"
    )
    contenders: list[tuple[str, Callable[[int, ProcessBackend], tuple[list[float], list[float]]], bool]] = [
        ("gtm (interval 1 s, failures 1, 2 edges)", _gtm, True),
        ("gdnsd 3.8 (interval 2 s, down_thresh 2)", _gdnsd, gdnsd.available()),
        ("powerdns 4 LUA ifurlup (1 s, minFailures 1)", _pdns, bool(shutil.which("pdns_server"))),
    ]
    medians: dict[str, float] = {}
    for label, run, ok in contenders:
        if not ok:
            print(f"  {label:<44} not installed")
            continue
        port = free_port()
        primary = ProcessBackend(PRIMARY, port).start()
        backup = ProcessBackend(BACKUP, port).start()
        try:
            down, up = run(port, primary)
        finally:
            primary.stop()
            backup.stop()
        medians[label] = statistics.median(down)
        print(
            f"  {label:<44} failover p50 {statistics.median(down) * 1000:.0f} ms (max {max(down) * 1000:.0f}), "
            f"fail-back p50 {statistics.median(up):.2f} s (max {max(up):.2f})",
            flush=True,
        )
    ours = medians.get(contenders[0][0])
    for label, median in medians.items():
        if ours and label != contenders[0][0]:
            print(f"  {'ratio ' + label.split(' (')[0] + ' / gtm failover p50':<44} {median / ours:.1f}x slower")


if __name__ == "__main__":
    bench_failover()
