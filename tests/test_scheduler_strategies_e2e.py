"""Strategies end to end: config, prober, scheduler and edge as real processes, real backends, real DNS."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import HttpBackend, ServiceStack, dns_query, free_port, wait_until

pytestmark = pytest.mark.e2e

CHECK = {"protocol": "http", "path": "/", "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}
IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture
def stack(nats_url: str, log_dir: Path) -> Iterator[ServiceStack]:
    s = ServiceStack(nats_url, log_dir).start()
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
    stack: ServiceStack, backends: list[HttpBackend]
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


def test_round_robin_pool_stops_answering_a_killed_backend(stack: ServiceStack, backends: list[HttpBackend]) -> None:
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


def test_cname_domain_answers_one_host_name_and_fails_over_and_open(stack: ServiceStack) -> None:
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
