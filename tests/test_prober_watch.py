"""Crash detection without waiting: the watched connection of an HTTP or TCP check, against real processes
killed with SIGKILL; servers that close idle connections cause no alarm and no probe storm."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.prober.watch import ConnectionWatch, RecheckBudget, watchable
from shared.resources import HealthCheck
from tests.support import ServiceStack, free_port, wait_until

HTTP = HealthCheck(protocol="http", port=80, interval_s=1, timeout_s=0.5)


class WebProcess:
    """``python -m http.server`` in its own process: a backend that really dies on SIGKILL."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WebProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", self.host],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: socket.create_connection((self.host, self.port), timeout=0.2).close() or True, timeout=10)
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def web() -> Iterator[WebProcess]:
    w = WebProcess().start()
    yield w
    w.kill()


async def test_a_killed_backend_is_noticed_within_milliseconds(web: WebProcess) -> None:
    pokes: list[float] = []
    watch = ConnectionWatch(web.host, web.port, HTTP, lambda: pokes.append(time.perf_counter()))
    task = asyncio.ensure_future(watch.run())
    try:
        await asyncio.sleep(0.3)  # connected, idle
        assert pokes == []
        killed = time.perf_counter()
        await asyncio.to_thread(web.kill)
        for _ in range(100):
            if pokes:
                break
            await asyncio.sleep(0.005)
        assert pokes, "the watch did not notice the kill"
        assert pokes[0] - killed < 0.1
        await asyncio.sleep(0.5)
        assert len(pokes) == 1  # nothing listens: no connection, no more pokes (the checks take over)
    finally:
        task.cancel()


async def test_a_server_closing_idle_connections_costs_at_most_one_poke_per_interval() -> None:
    async def close_soon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(close_soon, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pokes: list[float] = []
    watch = ConnectionWatch("127.0.0.1", port, HTTP, lambda: pokes.append(time.monotonic()))
    task = asyncio.ensure_future(watch.run())
    try:
        await asyncio.sleep(2.5)
    finally:
        task.cancel()
        server.close()
    assert 2 <= len(pokes) <= 3  # one per interval of 1 s, not one per 50 ms
    budget = RecheckBudget(1.0)
    assert [budget.allow(t) for t in (0.0, 0.1, 0.2, 1.05, 1.2)] == [True, True, False, True, True]


def test_only_connection_checks_are_watched() -> None:
    assert watchable(HTTP) and watchable(HealthCheck(protocol="tcp", port=22))
    assert not watchable(HealthCheck(protocol="ping"))


@pytest.mark.e2e
def test_with_a_5_s_interval_a_kill_9_still_fails_over_in_well_under_a_second(
    nats_url: str, log_dir: Path
) -> None:
    primary = WebProcess(host="127.0.0.2").start()
    backup = WebProcess(host="127.0.0.3", port=primary.port).start()
    stack = ServiceStack(nats_url, log_dir).start()
    try:
        check = {"protocol": "http", "port": primary.port, "interval_s": 5, "timeout_s": 1, "failures": 1}
        for name, ip in (("Primary", "127.0.0.2"), ("Backup", "127.0.0.3")):
            status, body = stack.api.put(f"/pools/{name}", {"type": "ipv4", "addresses": [
                {"name": f"{name.lower()}1", "address": ip, "health_check": check}]})
            assert status == 201, body
        status, body = stack.api.put("/domains/www.example.com", {
            "record_type": "A", "ttl": 5, "enabled": True,
            "pools": [{"pool": "Primary", "sequence": 1}, {"pool": "Backup", "sequence": 2}]})
        assert status == 201, body
        answers = lambda: stack.answers("www.example.com")  # noqa: E731
        wait_until(lambda: answers() == ["127.0.0.2"], timeout=20)
        time.sleep(1.5)  # the watch is connected and idle
        killed = time.perf_counter()
        primary.kill()
        wait_until(lambda: answers() == ["127.0.0.3"], timeout=5, step=0.005)
        took = time.perf_counter() - killed
        assert took < 1.0, f"failover took {took:.3f} s at interval_s 5"
    finally:
        stack.stop()
        primary.kill()
        backup.kill()
