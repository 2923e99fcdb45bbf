"""Health in depth end to end: config, scheduler, prober and an edge as real processes, real HTTP and TCP
backends stopped and started; what dig would get, the status, and the health log."""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import HttpBackend, ServiceStack, wait_until

pytestmark = pytest.mark.e2e

NAME = "svc.example.com"
PRIMARY, BACKUP = "127.0.0.2", "127.0.0.3"


class Stack(ServiceStack):
    def records(self) -> list[list[str]]:
        """What every edge answers for the test's name."""
        return self.everywhere(NAME)


@pytest.fixture
def stack(nats_url: str, log_dir: Path) -> Iterator[Stack]:
    s = Stack(nats_url, log_dir, edges=2).start()
    try:
        yield s
    finally:
        s.stop()


def checks(http_port: int, tcp_port: int) -> list[dict[str, Any]]:
    base = {"interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}
    return [{"protocol": "http", "port": http_port, **base}, {"protocol": "tcp", "port": tcp_port, **base}]


def logs(stack: Stack, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, body = stack.api.get(f"/health-logs?{query}")
    assert status == 200, body
    return list(body["logs"])


def test_two_checks_all_ok_a_dead_one_fails_the_address_and_the_log_says_why(stack: Stack) -> None:
    web, other = HttpBackend(host=PRIMARY).start(), HttpBackend(host=PRIMARY).start()  # http + "tcp" ports
    backup = HttpBackend(host=BACKUP, port=web.port).start()
    try:
        stack.put("/pools/Main", {"type": "ipv4", "addresses": [
            {"name": "m1", "address": PRIMARY, "health_checks": checks(web.port, other.port), "judgement": "all_ok"}]})
        stack.put("/pools/Spare", {"type": "ipv4", "addresses": [
            {"name": "s1", "address": BACKUP, "health_check": checks(web.port, web.port)[0]}]})
        stack.put(f"/domains/{NAME}", {"record_type": "A", "ttl": 5, "enabled": True,
                                       "pools": [{"pool": "Main", "sequence": 1}, {"pool": "Spare", "sequence": 2}]})
        wait_until(lambda: stack.records() == [[PRIMARY], [PRIMARY]], timeout=20)
        status, st = stack.api.get(f"/domains/{NAME}/status")
        m1 = st["pools"][0]["addresses"][0]
        assert m1["judgement"] == "all_ok" and {c["check"] for c in m1["checks"]} == {0, 1}
        assert {c["protocol"] for c in m1["checks"]} == {"http", "tcp"}

        other.stop()  # only the second check's port dies: all_ok fails the address
        wait_until(lambda: stack.records() == [[BACKUP], [BACKUP]], timeout=15)
        wait_until(lambda: any(e["kind"] == "address_changed" for e in logs(stack, pool="Main", address="m1")),
                   timeout=10)
        entries = logs(stack, pool="Main", address="m1")
        failed = [e for e in entries if e["kind"] == "check_failed"]
        assert failed and failed[0]["check"] == 1 and failed[0]["protocol"] == "tcp"
        assert failed[0]["region"] == "local" and failed[0]["prober"] and failed[0]["error"]
        changed = next(e for e in entries if e["kind"] == "address_changed")
        assert changed["available"] is False and "1 of 2 checks failing" in changed["message"]
        assert entries == sorted(entries, key=lambda e: e["at"], reverse=True)  # newest first
        assert logs(stack, pool="Main", address="m1", region="elsewhere") == []
        assert len(logs(stack, pool="Main", address="m1", limit="1")) == 1

        # manual_available: answered although the check fails; the log says the answer was kept
        status, _ = stack.api.patch("/pools/Main", {"addresses": [
            {"name": "m1", "address": PRIMARY, "health_checks": checks(web.port, other.port),
             "mode": "manual_available"}]})
        assert status == 200
        wait_until(lambda: stack.records() == [[PRIMARY], [PRIMARY]], timeout=15)
        other.start()
        wait_until(lambda: any("the answer was not changed" in e["message"]
                               for e in logs(stack, pool="Main", address="m1")), timeout=15)
        status, st = stack.api.get(f"/domains/{NAME}/status")
        m1 = st["pools"][0]["addresses"][0]
        assert (m1["mode"], m1["mode_in_force"], m1["healthy"]) == ("manual_available", "manual_available", True)

        out = subprocess.run(
            [sys.executable, "-m", "services.gtmctl", "--api", f"http://127.0.0.1:{stack.api_port}",
             "health-logs", "--pool", "Main", "--address", "m1", "--limit", "5"],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert "address_changed" in out.stdout and "Main/m1" in out.stdout
    finally:
        for b in (web, other, backup):
            b.stop()


def test_a_maintenance_window_takes_the_address_out_and_brings_it_back_by_itself(stack: Stack) -> None:
    web = HttpBackend(host=PRIMARY).start()
    backup = HttpBackend(host=BACKUP, port=web.port).start()
    try:
        check = checks(web.port, web.port)[0]
        stack.put("/pools/Spare", {"type": "ipv4", "addresses": [{"name": "s1", "address": BACKUP,
                                                                   "health_check": check}]})
        stack.put("/pools/Main", {"type": "ipv4", "addresses": [{"name": "m1", "address": PRIMARY,
                                                                  "health_check": check}]})
        stack.put(f"/domains/{NAME}", {"record_type": "A", "ttl": 5, "enabled": True,
                                       "pools": [{"pool": "Main", "sequence": 1}, {"pool": "Spare", "sequence": 2}]})
        wait_until(lambda: stack.records() == [[PRIMARY], [PRIMARY]], timeout=20)
        now = datetime.datetime.now(datetime.UTC)
        start, until = now + datetime.timedelta(seconds=2), now + datetime.timedelta(seconds=6)
        window = {"from": start.isoformat(), "until": until.isoformat(), "mode": "manual_unavailable"}
        status, body = stack.api.patch("/pools/Main", {"addresses": [
            {"name": "m1", "address": PRIMARY, "health_check": check, "maintenance": [window]}]})
        assert status == 200, body
        wait_until(lambda: stack.records() == [[BACKUP], [BACKUP]], timeout=10)
        assert datetime.datetime.now(datetime.UTC) >= start - datetime.timedelta(seconds=0.5)
        status, st = stack.api.get(f"/domains/{NAME}/status")
        m1 = st["pools"][0]["addresses"][0]
        assert m1["mode"] == "auto" and m1["mode_in_force"] == "manual_unavailable" and m1["maintenance_until"]
        wait_until(lambda: stack.records() == [[PRIMARY], [PRIMARY]], timeout=10)  # over by itself
        assert datetime.datetime.now(datetime.UTC) >= until - datetime.timedelta(seconds=0.5)
        messages = [e["message"] for e in logs(stack, pool="Main", address="m1") if e["kind"] == "address_changed"]
        assert any("maintenance window: manual_unavailable until" in m for m in messages)
        assert any("maintenance window over" in m for m in messages)

        # inverted and overlapping windows are refused and change nothing
        bad = [
            [{"from": until.isoformat(), "until": start.isoformat()}],
            [window, {"from": start.isoformat(), "until": (until + datetime.timedelta(hours=1)).isoformat()}],
        ]
        for windows in bad:
            status, body = stack.api.patch("/pools/Main", {"addresses": [
                {"name": "m1", "address": PRIMARY, "health_check": check, "maintenance": windows}]})
            assert status == 400 and body["error"]["field"].startswith("addresses[0].maintenance["), body
    finally:
        web.stop()
        backup.stop()


def test_health_logs_refuses_bad_filters(stack: Stack) -> None:
    for query, field in (("since=yesterday", "since"), ("limit=0", "limit"), ("address=m1", "address"),
                         ("since=2026-12-01T00:00:00", "since"), ("pool=a%20b", "pool")):
        status, body = stack.api.get(f"/health-logs?{query}")
        assert status == 400 and body["error"]["field"] == field, (query, body)
    assert stack.api.get("/health-logs")[1] == {"logs": []}



