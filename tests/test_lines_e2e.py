"""Request-source lines end to end: config, scheduler, prober and two edges as real processes, real HTTP
backends, real DNS queries carrying ECS subnets of China, Europe and the US."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import pytest

from tests.support import HttpBackend, ServiceStack, answer_addresses, free_port, wait_until

pytestmark = pytest.mark.e2e

CHECK = {"protocol": "http", "path": "/", "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}
CN_IP, EU_IP, US_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
NAME = "app.example.com"
SUBNETS = {"cn": ("1.2.4.0", 24), "eu": ("81.2.69.0", 24), "us": ("8.8.4.0", 24)}


class Stack(ServiceStack):
    """config, scheduler, prober and two edges; queries carrying ECS subnets."""

    def __init__(self, nats_url: str, log_dir: Path) -> None:
        super().__init__(nats_url, log_dir, edges=2)

    def ask(self, port: int, where: str, qtype: str = "A") -> tuple[list[str], int]:
        """(records, ECS scope) answered to a resolver sending the ECS subnet of ``where``."""
        address, source = SUBNETS[where]
        q = dns.message.make_query(NAME, qtype, use_edns=0, options=[dns.edns.ECSOption(address, source)])
        reply = dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)
        (opt,) = [o for o in reply.options if o.otype == dns.edns.ECS]
        assert isinstance(opt, dns.edns.ECSOption)
        return answer_addresses(reply), opt.scopelen

    def everywhere(self, where: str, qtype: str = "A") -> list[list[str]]:  # type: ignore[override]
        """The records every edge answers ``where``'s clients."""
        return [self.ask(port, where)[0] for port in self.dns_ports]


@pytest.fixture
def stack(nats_url: str, log_dir: Path) -> Iterator[Stack]:
    s = Stack(nats_url, log_dir).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def backends() -> Iterator[dict[str, HttpBackend]]:
    port = free_port()
    started = {ip: HttpBackend(port=port, host=ip).start() for ip in (CN_IP, EU_IP, US_IP)}
    yield started
    for b in started.values():
        b.stop()


def pool(name: str, ip: str, port: int) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [{"name": name, "address": ip, "health_check": {**CHECK, "port": port}}]}


def test_each_client_is_answered_by_its_line_and_falls_back_when_its_pool_fails(
    stack: Stack, backends: dict[str, HttpBackend]
) -> None:
    port = backends[CN_IP].port
    stack.put("/pools/CN-DC", pool("cn1", CN_IP, port))
    stack.put("/pools/EU-DC", pool("eu1", EU_IP, port))
    stack.put("/pools/US-DC", pool("us1", US_IP, port))
    stack.put(f"/domains/{NAME}", {
        "record_type": "A", "ttl": 5, "enabled": True,
        "pools": [
            {"pool": "CN-DC", "sequence": 1, "lines": ["country:CN"]},
            {"pool": "EU-DC", "sequence": 1, "lines": ["continent:EU"]},
            {"pool": "US-DC", "sequence": 2, "lines": ["default"]},
        ],
    })
    expected = {"cn": [CN_IP], "eu": [EU_IP], "us": [US_IP]}
    wait_until(lambda: all(stack.everywhere(w) == [r, r] for w, r in expected.items()), timeout=20)
    assert stack.ask(stack.dns_ports[0], "cn")[1] == 22  # the scope: the database entry that decided
    assert stack.ask(stack.dns_ports[0], "eu")[1] == 18
    assert stack.ask(stack.dns_ports[1], "us")[1] == 15

    # the status shows each pool's lines and each line's answer
    status, st = stack.api.get(f"/domains/{NAME}/status")
    assert status == 200
    assert {p["name"]: p["lines"] for p in st["pools"]} == {
        "CN-DC": ["country:CN"], "EU-DC": ["continent:EU"], "US-DC": ["default"]}
    assert {a["line"]: a["records"] for a in st["answer"]["lines"]} == {"country:CN": [CN_IP],
                                                                       "continent:EU": [EU_IP]}

    # gtmctl explains the line a client subnet matches
    out = subprocess.run(
        [sys.executable, "-m", "services.gtmctl", "--api", f"http://127.0.0.1:{stack.api_port}",
         "explain", NAME, "--client-subnet", "1.2.4.0/24"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "country CN China" in out.stdout and "line country:CN: answered by CN-DC" in out.stdout

    # CN-DC's backend is killed: Chinese clients fall to the default line, the others are untouched
    backends[CN_IP].stop()
    wait_until(lambda: stack.everywhere("cn") == [[US_IP], [US_IP]], timeout=15)
    assert stack.everywhere("eu") == [[EU_IP], [EU_IP]]
    backends[CN_IP].start()
    wait_until(lambda: stack.everywhere("cn") == [[CN_IP], [CN_IP]], timeout=15)

    # every pool down, fail_closed: an empty NOERROR for the default line
    status, _ = stack.api.patch(f"/domains/{NAME}", {"all_down": "fail_closed"})
    assert status == 200
    backends[US_IP].stop()
    wait_until(lambda: stack.everywhere("us") == [[], []], timeout=15)
    assert stack.everywhere("cn") == [[CN_IP], [CN_IP]]  # a line with a pool up still answers


def test_lines_api_lists_looks_up_and_refuses_bad_lines(stack: Stack) -> None:
    status, catalog = stack.api.get("/lines")
    assert status == 200
    assert catalog["kinds"] == ["region", "asn", "country", "continent", "default"]
    assert {"code": "AS", "name": "Asia", "line": "continent:AS"} in catalog["continents"]
    assert {"code": "CN", "name": "China", "continent": "AS", "line": "country:CN"} in catalog["countries"]
    stack.put("/topology", {"entries": [{"cidr": "1.2.4.0/24", "region": "cn-lab"}]})
    status, found = stack.api.get("/lines/lookup?address=1.2.4.8")
    assert status == 200
    assert (found["country"], found["continent"], found["country_prefix"]) == ("CN", "AS", 22)
    assert (found["region"], found["region_cidr"]) == ("cn-lab", "1.2.4.0/24")
    assert found["lines"] == ["region:cn-lab", "country:CN", "continent:AS", "default"]
    assert stack.api.get("/lines")[1]["regions"] == ["cn-lab"]
    for bad in ("/lines/lookup", "/lines/lookup?address=not-an-ip"):
        status, body = stack.api.get(bad)
        assert status == 400 and body["error"]["field"] == "address", body

    stack.put("/pools/P", {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1"}]})
    status, body = stack.api.put("/pools/Q", {"type": "ipv4", "addresses": [
        {"name": "a", "address": "192.0.2.1", "lines": ["country:cn"]}]})
    assert status == 400 and body["error"]["field"] == "addresses[0].lines[0]", body
    assert "country:CN" in body["error"]["message"]
    status, body = stack.api.put(f"/domains/{NAME}", {
        "record_type": "A", "pools": [{"pool": "P", "lines": ["default", "continent:XX"]}]})
    assert status == 400 and body["error"]["field"] == "pools[0].lines[1]", body
    assert stack.api.get(f"/domains/{NAME}")[0] == 404  # nothing was written
    status, body = stack.api.put(f"/domains/{NAME}", {"record_type": "A", "pools": [{"pool": "P"}],
                                                       "all_down": "fallback_pool", "fallback_pool": "NOPE"})
    assert status == 400 and body["error"]["field"] == "fallback_pool", body
    stack.put("/pools/SORRY", {"type": "ipv4", "addresses": [{"name": "s", "address": "192.0.2.9"}]})
    stack.put(f"/domains/{NAME}", {"record_type": "A", "pools": [{"pool": "P"}], "all_down": "fallback_pool",
                                   "fallback_pool": "SORRY"})
    status, body = stack.api.delete("/pools/SORRY")
    assert status == 409 and NAME in body["error"]["message"], body
