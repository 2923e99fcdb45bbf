"""The primary/backup walkthrough of the README, end to end, with every service as a real process."""

from __future__ import annotations

import time

import dns.flags
import dns.rcode
import pytest

from tests.support import BACKUP_IP, DOMAIN, PRIMARY_IP, HttpBackend, Stack, dns_query, wait_until

pytestmark = pytest.mark.e2e

CHECK = {"protocol": "http", "path": "/", "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}


def _pool(name: str, server: str, ip: str, port: int) -> dict:
    return {
        "type": "ipv4",
        "addresses": [{"name": server, "address": ip, "health_check": {**CHECK, "port": port}}],
    }


def test_primary_backup_walkthrough_both_modes_and_full_restart(
    stack: Stack, backends: tuple[HttpBackend, HttpBackend], record_property
) -> None:
    primary, _backup = backends
    stack.start()
    api = stack.api

    # 1. Two pools with HTTP-checked addresses.
    assert api.put("/pools/Primary-DC", _pool("Primary-DC", "Primary-Server-01", PRIMARY_IP, primary.port))[0] == 201
    assert api.put("/pools/Backup-DC", _pool("Backup-DC", "Backup-Server-01", BACKUP_IP, primary.port))[0] == 201

    # 2. The access domain is created disabled: edges refuse it.
    status, body = api.put(
        f"/domains/{DOMAIN}",
        {
            "record_type": "A",
            "ttl": 60,
            "lb_strategy": "sequence",
            "sequence_mode": "preemptive",
            "pools": [{"pool": "Primary-DC", "sequence": 1}, {"pool": "Backup-DC", "sequence": 2}],
        },
    )
    assert status == 201, body
    assert body["enabled"] is False
    wait_until(lambda: all(dns_query(p, DOMAIN).rcode() == dns.rcode.REFUSED for p in stack.edge_ports))

    # 3. Enabled: both edges answer the primary, authoritatively, with the configured TTL.
    assert api.patch(f"/domains/{DOMAIN}", {"enabled": True})[0] == 200
    stack.wait_all_answer(PRIMARY_IP)
    reply = dns_query(stack.edge_ports[0], DOMAIN)
    assert reply.flags & dns.flags.AA
    assert reply.answer[0].ttl == 60

    # 4. The primary dies: both edges answer the backup; the switch log says why.
    primary.stop()
    killed = time.monotonic()
    failover_s = stack.wait_all_answer(BACKUP_IP) - killed
    _, events = api.get(f"/events?domain={DOMAIN}&kind=switch&limit=1")
    switch = events["events"][0]
    assert switch["from_pool"] == "Primary-DC" and switch["to_pool"] == "Backup-DC"
    assert switch["reason"] == "Primary-DC unavailable: Primary-Server-01 http connection refused"
    assert switch["before"] == [PRIMARY_IP] and switch["after"] == [BACKUP_IP]
    _, st = api.get(f"/domains/{DOMAIN}/status")
    assert st["answer"]["pool"] == "Backup-DC"
    assert [p["available"] for p in st["pools"]] == [False, True]

    # 5. Preemptive: the primary recovers and traffic goes back.
    primary.start()
    revived = time.monotonic()
    failback_s = stack.wait_all_answer(PRIMARY_IP) - revived

    # 6. Non-preemptive: after a failover the answer stays on the backup when the primary recovers.
    assert api.patch(f"/domains/{DOMAIN}", {"sequence_mode": "non_preemptive"})[0] == 200
    primary.stop()
    stack.wait_all_answer(BACKUP_IP)
    primary.start()
    wait_until(
        lambda: api.get(f"/domains/{DOMAIN}/status")[1]["pools"][0]["available"] is True, timeout=10
    )
    time.sleep(2.5)  # several check intervals with a healthy primary
    assert stack.answers() == [[BACKUP_IP], [BACKUP_IP]]

    # 7. Full restart: config survives, non-preemptive state survives, edges answer at once.
    _, before = api.get(f"/domains/{DOMAIN}")
    assert all(code == 0 for code in stack.stop())
    ready_at = stack.start()
    assert stack.answers() == [[BACKUP_IP], [BACKUP_IP]]
    answered_s = time.monotonic() - ready_at
    assert api.get(f"/domains/{DOMAIN}")[1] == before
    assert {p["name"] for p in api.get("/pools")[1]["pools"]} == {"Primary-DC", "Backup-DC"}
    time.sleep(2.5)
    assert stack.answers() == [[BACKUP_IP], [BACKUP_IP]]

    # 8. Back to preemptive: the healthy primary takes over again.
    assert api.patch(f"/domains/{DOMAIN}", {"sequence_mode": "preemptive"})[0] == 200
    stack.wait_all_answer(PRIMARY_IP)

    record_property("failover_s", round(failover_s, 3))
    record_property("failback_s", round(failback_s, 3))
    print(f"\nE2E failover {failover_s:.3f}s, fail-back {failback_s:.3f}s, first answer {answered_s:.3f}s after ready")
