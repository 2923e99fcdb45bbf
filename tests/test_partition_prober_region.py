"""Partition (issue 9, b): a prober region cut off from one data centre is outvoted by ``failure_rate``.

Two prober regions check both data centres.  Region r1 loses its path to DC1 (silently: its
checks time out) while r2 still reaches it: with ``failure_rate`` 80 one region of two (50 %)
is not enough, so the answer stays on DC1.  Then DC1 really fails (its server is killed):
both regions see it, and the answer switches to DC2.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from shared import subjects
from shared.messages import SwitchEvent, event_decoder, pool_state_decoder, probe_result_decoder
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
FAILURE_RATE = 80  # % of regions that must see an address down: 1 of 2 (50 %) is not enough
OUTVOTED_S = 4.0  # how long the one-region view must leave the answer alone


def test_a_region_cut_off_from_one_data_centre_is_outvoted_and_a_real_outage_switches(
    net: Net, record_property: Callable[[str, object], None]
) -> None:
    nats_host, core, client = net.host("nats"), net.host("core"), net.host("client")
    r1, r2, dc1, dc2 = net.host("r1"), net.host("r2"), net.host("dc1"), net.host("dc2")
    node = start_nats(nats_host)
    dc1_server = start_http(dc1)
    start_http(dc2)
    ctl = Bus(client, node.url)
    ctl.prepare()
    results = ctl.record(subjects.PROBE_RESULT_ALL)
    views = ctl.record(subjects.POOL_STATE_ALL)
    switches = ctl.record(subjects.SWITCH_EVENTS_ALL)
    check = {"failure_rate": FAILURE_RATE}
    pools = {"DC1": http_pool("DC1", (dc1.ip, 80), **check), "DC2": http_pool("DC2", (dc2.ip, 80), **check)}
    ctl.configure(pools=pools, domains={DOMAIN: sequence_domain(DOMAIN, "DC1", "DC2")})
    env = gtm_env(node.url)
    procs = [
        start_service(core, "scheduler", env),
        start_service(core, "edge", {**env, "GTM_DNS_LISTEN": "0.0.0.0:53"}),
        start_service(r1, "prober", {**env, "GTM_PROBER_REGION": "r1", "GTM_PROBER_ID": "p-r1"}),
        start_service(r2, "prober", {**env, "GTM_PROBER_REGION": "r2", "GTM_PROBER_ID": "p-r2"}),
    ]
    for proc in procs:
        proc.wait_for_event("service_ready", timeout=60)
    wait_until(lambda: dns_answer(client, core.ip, DOMAIN) == [dc1.ip], timeout=30, step=0.1)

    def dc1_results(region: str, ok: bool, since: float) -> list[float]:
        out = []
        for arrival in list(results):
            r = probe_result_decoder.decode(arrival.data)
            if arrival.t >= since and r.pool == "DC1" and r.region == region and r.ok is ok:
                out.append(arrival.t)
        return out

    start = time.monotonic()
    wait_until(lambda: dc1_results("r1", True, start) and dc1_results("r2", True, start), timeout=10)

    net.cut(r1, dc1)
    cut_at = time.monotonic()
    seen_down = wait_until(lambda: dc1_results("r1", False, cut_at), timeout=10)[0] - cut_at
    answers = []
    while time.monotonic() < cut_at + seen_down + OUTVOTED_S:
        answers.append(dns_answer(client, core.ip, DOMAIN, timeout=0.5))
        time.sleep(0.1)
    dc1_views = [pool_state_decoder.decode(a.data) for a in list(views) if a.t > cut_at]
    vantages = [v.addresses[0].vantages for v in dc1_views if v.pool == "DC1" and v.addresses]
    assert not list(switches), [event_decoder.decode(a.data) for a in switches]
    assert answers and all(a == [dc1.ip] for a in answers), answers
    assert {"r1": "down", "r2": "up"} in vantages, vantages  # the scheduler did see r1's view, and outvoted it

    dc1_server.kill()
    killed = time.monotonic()
    wait_until(lambda: dns_answer(client, core.ip, DOMAIN, timeout=0.5) == [dc2.ip], timeout=20, step=0.02)
    switched = time.monotonic() - killed
    reasons = [e for a in list(switches) if isinstance(e := event_decoder.decode(a.data), SwitchEvent)]
    print(
        f"\n[partition b] r1 cut off from DC1: r1 reports DC1 down after {seen_down:.2f} s; with failure_rate "
        f"{FAILURE_RATE} the answer stayed DC1 for {OUTVOTED_S:.0f} s more ({len(answers)} queries, no switch); "
        f"DC1 killed (both regions see it): edge answers DC2 after {switched:.2f} s "
        f"({reasons[0].reason if reasons else 'no switch event'!r})"
    )
    record_property("real_outage_switch_s", round(switched, 2))
    assert len(reasons) == 1 and reasons[0].to_pool == "DC2", reasons
    assert switched < 5.0
