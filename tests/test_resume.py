"""NATS goes away and comes back: every watcher and consumer is live again at once."""

from __future__ import annotations

import time

import dns.rcode
import pytest

from tests.support import HttpBackend, Stack, dns_query, wait_until

pytestmark = pytest.mark.e2e

NEW_DOMAIN = "after.example.com"
OUTAGE_S = 4.0


def _nats_down(stack: Stack) -> None:
    assert stack.nats.proc is not None
    stack.nats.proc.kill()  # kill -9: no goodbye to the clients
    stack.nats.proc.wait()
    stack.nats.proc = None


def _write_when_back(stack: Stack, path: str, body: dict) -> float:
    """Retry the write until the config service is back on NATS; return when it was accepted."""

    def accepted() -> bool:
        status, _ = stack.api.put(path, body)
        return status in (200, 201)

    wait_until(accepted, timeout=30, step=0.05)
    return time.monotonic()


def test_a_write_made_right_after_nats_returns_is_served_by_every_edge_within_a_second(
    stack: Stack, record_property
) -> None:
    stack.start()
    pool = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.10"}]}
    assert stack.api.put("/pools/P", pool)[0] == 201
    for cycle in range(2):
        _nats_down(stack)
        time.sleep(OUTAGE_S)
        stack.nats.start()  # same port, same store
        name = f"c{cycle}.{NEW_DOMAIN}"
        body = {"record_type": "A", "enabled": True, "pools": [{"pool": "P"}]}
        written = _write_when_back(stack, f"/domains/{name}", body)

        def served() -> bool:
            return all(dns_query(p, name).rcode() == dns.rcode.NOERROR for p in stack.edge_ports)

        wait_until(served, timeout=30, step=0.01)
        seconds = time.monotonic() - written
        print(f"\nresume cycle {cycle}: write -> every edge serves it in {seconds:.3f} s")
        record_property(f"resume_seconds_{cycle}", round(seconds, 3))
        assert seconds < 1.0, f"served {seconds:.3f} s after the write"


def test_the_prober_checks_a_pool_created_right_after_nats_returns_within_a_second(
    stack: Stack, record_property
) -> None:
    backend = HttpBackend().start()
    try:
        stack.start()
        _nats_down(stack)
        time.sleep(OUTAGE_S)
        stack.nats.start()
        check = {"protocol": "http", "port": backend.port, "interval_s": 1, "timeout_s": 0.5}
        pool = {"type": "ipv4", "addresses": [{"name": "a", "address": "127.0.0.1", "health_check": check}]}
        written = _write_when_back(stack, "/pools/Checked", pool)
        name = "www.checked.example"  # the status of a domain shows its addresses' latest checks
        assert stack.api.put(f"/domains/{name}", {"record_type": "A", "pools": [{"pool": "Checked"}]})[0] == 201

        def checked() -> bool:
            status, doc = stack.api.get(f"/domains/{name}/status")
            return status == 200 and any(c["ok"] for c in doc["pools"][0]["addresses"][0]["checks"])

        wait_until(checked, timeout=30, step=0.05)
        seconds = time.monotonic() - written
        print(f"\nprober: pool written -> first check result in {seconds:.3f} s")
        record_property("prober_resume_seconds", round(seconds, 3))
        # the first check of a new address is spread over up to one second on purpose
        assert seconds < 2.0
    finally:
        backend.stop()
