"""Strategies end to end: config, prober, scheduler and edge as real processes, real backends, real DNS."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Api, HttpBackend, Service, answer_addresses, dns_query, free_port, wait_until

pytestmark = pytest.mark.e2e

CHECK = {"protocol": "http", "path": "/", "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}
IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


class Stack:
    """config, scheduler, prober and one edge against the test's NATS."""

    def __init__(self, nats_url: str, log_dir: Path) -> None:
        api_port, self.dns_port = free_port(), free_port()
        env = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{api_port}"}
        self.procs = [
            Service("config", env, log_dir),
            Service("scheduler", env, log_dir),
            Service("prober", env, log_dir),
            Service("edge", {**env, "GTM_DNS_LISTEN": f"127.0.0.1:{self.dns_port}"}, log_dir),
        ]
        self.api = Api(f"http://127.0.0.1:{api_port}/api/v1")

    def start(self) -> Stack:
        for proc in self.procs:
            proc.start()
        for proc in self.procs:
            proc.wait_for_event("service_ready", timeout=30)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def put(self, path: str, body: dict[str, Any]) -> None:
        status, reply = self.api.put(path, body)
        assert status in (200, 201), reply

    def answers(self, name: str, qtype: str = "A") -> list[str]:
        return answer_addresses(dns_query(self.dns_port, name, qtype))


@pytest.fixture
def stack(nats_url: str, log_dir: Path) -> Iterator[Stack]:
    s = Stack(nats_url, log_dir).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def backends() -> Iterator[list[HttpBackend]]:
    port = free_port()
    started = [HttpBackend(port=port, host=ip).start() for ip in IPS]
    yield started
    for b in started:
        b.stop()


def address(name: str, ip: str, port: int, **kw: Any) -> dict[str, Any]:
    return {"name": name, "address": ip, "health_check": {**CHECK, "port": port}, **kw}


def test_weight_domain_answers_both_pools_the_heavier_more_often(
    stack: Stack, backends: list[HttpBackend]
) -> None:
    port = backends[0].port
    stack.put("/pools/Heavy", {"type": "ipv4", "addresses": [address("h1", IPS[0], port)]})
    stack.put("/pools/Light", {"type": "ipv4", "addresses": [address("l1", IPS[1], port)]})
    stack.put(
        "/domains/weighted.example.com",
        {
            "record_type": "A",
            "enabled": True,
            "lb_strategy": "weight",
            "pools": [{"pool": "Heavy", "weight": 4}, {"pool": "Light", "weight": 1}],
        },
    )
    wait_until(lambda: stack.answers("weighted.example.com"), timeout=15)
    seen = collections.Counter(tuple(stack.answers("weighted.example.com")) for _ in range(300))
    assert set(seen) == {(IPS[0],), (IPS[1],)}  # one pool per query, both pools answered
    assert seen[(IPS[0],)] > seen[(IPS[1],)]


def test_round_robin_pool_stops_answering_a_killed_backend(stack: Stack, backends: list[HttpBackend]) -> None:
    port = backends[0].port
    stack.put(
        "/pools/Web",
        {
            "type": "ipv4",
            "lb_strategy": "round_robin",
            "addresses": [address(f"w{i}", ip, port) for i, ip in enumerate(IPS)],
        },
    )
    stack.put("/domains/rr.example.com", {"record_type": "A", "enabled": True, "pools": [{"pool": "Web"}]})
    wait_until(lambda: sorted(stack.answers("rr.example.com")) == IPS, timeout=15)
    firsts = {stack.answers("rr.example.com")[0] for _ in range(12)}
    assert firsts == set(IPS)  # the order rotates per query

    backends[1].stop()
    wait_until(lambda: sorted(stack.answers("rr.example.com")) == [IPS[0], IPS[2]], timeout=10)
    _, status = stack.api.get("/domains/rr.example.com/status")
    [pool] = status["pools"]
    dead = next(a for a in pool["addresses"] if a["name"] == "w1")
    assert (pool["available"], dead["available"]) == (True, False)


def test_cname_domain_answers_one_host_name_and_fails_over_and_open(stack: Stack) -> None:
    # the primary's host name never resolves, so its check fails; the backup has no check
    stack.put(
        "/pools/Origin",
        {
            "type": "domain",
            "addresses": [{"name": "o1", "address": "web1.origin.invalid", "health_check": CHECK}],
        },
    )
    stack.put(
        "/pools/Cdn",
        {"type": "domain", "addresses": [{"name": "c1", "address": "edge.cdn.example.org"}]},
    )
    stack.put(
        "/domains/www.cname.example.com",
        {
            "record_type": "CNAME",
            "enabled": True,
            "pools": [{"pool": "Origin", "sequence": 1}, {"pool": "Cdn", "sequence": 2}],
        },
    )
    wait_until(lambda: stack.answers("www.cname.example.com") == ["edge.cdn.example.org."], timeout=15)
    reply = dns_query(stack.dns_port, "www.cname.example.com", "AAAA")  # whatever the qtype: one CNAME
    assert [rrset.rdtype.name for rrset in reply.answer] == ["CNAME"]

    # the backup goes manual_unavailable: no pool left, fail open to the first pool's host name
    status, body = stack.api.patch(
        "/pools/Cdn",
        {"addresses": [{"name": "c1", "address": "edge.cdn.example.org", "mode": "manual_unavailable"}]},
    )
    assert status == 200, body
    wait_until(lambda: stack.answers("www.cname.example.com") == ["web1.origin.invalid."], timeout=10)
