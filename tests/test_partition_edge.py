"""Partition (issue 9, a): an edge cut off from NATS keeps answering, and serves the new answers after the heal.

The edge's NATS link is cut silently (no reset, no ICMP: nobody notices but by timers) while
a client that can still reach the edge keeps asking; the config changes during the cut; the
edge must answer its last answers throughout and the new one within 1 s of the heal.

Run once with nats.py's own keep-alive (PING every 120 s: the edge cannot tell that the link
is dead, and gets the new answer only when TCP's backed-off retransmission gets through), and
once with the keep-alive proposed for ``shared.bus.connect`` (``PROPOSED_NATS_KWARGS``),
passed in by the harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.netns import (
    Bus,
    Net,
    dns_answer,
    gtm_env,
    http_pool,
    net,  # noqa: F401 - the fixture
    sequence_domain,
    start_http,
    start_nats,
    start_service,
)
from tests.support import wait_until

pytestmark = pytest.mark.e2e

DOMAIN = "www.example.com"
CUT_S = 8.0  # long enough for TCP's retransmission backoff to pass one second
HEAL_SERVES_S = 1.0
def test_edge_cut_off_from_nats_keeps_answering_and_serves_the_new_answer_after_the_heal(
    net: Net, record_property: Callable[[str, object], None]
) -> None:
    nats_host, core, edge, client = net.host("nats"), net.host("core"), net.host("edge"), net.host("client")
    dc1, dc2 = net.host("dc1"), net.host("dc2")
    node = start_nats(nats_host)
    start_http(dc1)
    start_http(dc2)
    ctl = Bus(client, node.url)
    ctl.prepare()
    pools = {"DC1": http_pool("DC1", (dc1.ip, 80)), "DC2": http_pool("DC2", (dc2.ip, 80))}
    ctl.configure(pools=pools, domains={DOMAIN: sequence_domain(DOMAIN, "DC1", "DC2")})
    env = gtm_env(node.url)
    scheduler = start_service(core, "scheduler", env)
    prober = start_service(core, "prober", env)
    dns = start_service(edge, "edge", {**env, "GTM_DNS_LISTEN": "0.0.0.0:53"})
    for proc in (scheduler, prober, dns):
        proc.wait_for_event("service_ready", timeout=60)
    wait_until(lambda: dns_answer(client, edge.ip, DOMAIN) == [dc1.ip], timeout=30, step=0.1)

    net.cut(edge, nats_host)
    cut_at = time.monotonic()
    ctl.configure(domains={DOMAIN: sequence_domain(DOMAIN, "DC2", "DC1")})  # the current answer is now DC2
    scheduler.wait_for_event("answer_published", where=lambda e: e.get("records") == [dc2.ip], timeout=10)
    answers = []
    while time.monotonic() < cut_at + CUT_S:
        answers.append(dns_answer(client, edge.ip, DOMAIN, timeout=0.5))
        time.sleep(0.1)
    noticed = [e for e in dns.events() if e.get("event") == "nats_disconnected"]

    net.heal(edge, nats_host)
    healed = time.monotonic()
    wait_until(lambda: dns_answer(client, edge.ip, DOMAIN, timeout=0.5) == [dc2.ip], timeout=60, step=0.01)
    took = time.monotonic() - healed

    print(
        f"\n[partition a] edge cut off {CUT_S:.0f} s: {sum(a == [dc1.ip] for a in answers)} of "
        f"{len(answers)} queries answered the last answer; dead link noticed by the edge: "
        f"{'yes' if noticed else 'no'}; heal -> edge serves the new answer: {took:.2f} s"
    )
    record_property("heal_to_new_answer_s", round(took, 2))
    assert answers and all(a == [dc1.ip] for a in answers), answers
    assert took <= HEAL_SERVES_S, f"the edge served the new answer {took:.2f} s after the heal"
