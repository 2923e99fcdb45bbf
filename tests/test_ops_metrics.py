"""Every service exposes /metrics, /healthz and /readyz; the metrics count what a user watches."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.support import HttpBackend, Service, free_port, wait_until


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.parametrize("name", ["scheduler", "prober"])
def test_service_serves_ops_endpoints_when_asked(name: str, nats_url: str, log_dir: Path) -> None:
    port = free_port()
    svc = Service(name, {"NATS_URL": nats_url, "GTM_METRICS_LISTEN": f"127.0.0.1:{port}"}, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        assert _get(port, "/healthz")[0] == 200
        assert wait_until(lambda: _get(port, "/readyz")[0] == 200)
        status, text = _get(port, "/metrics")
        assert status == 200
        assert "gtm_nats_connected 1.0" in text
    finally:
        svc.stop()


def test_prober_counts_checks_and_failures_by_region(nats_url: str, log_dir: Path) -> None:
    import asyncio

    import msgspec
    import nats

    from shared import bus, subjects
    from shared.resources import Address, HealthCheck, Pool

    backend = HttpBackend().start()
    dead = free_port()
    pool = Pool(
        type="ipv4",
        name="P",
        addresses=[
            Address(name="up", address="127.0.0.1",
                    health_check=HealthCheck(port=backend.port, interval_s=1, timeout_s=0.5)),
            Address(name="down", address="127.0.0.1",
                    health_check=HealthCheck(protocol="tcp", port=dead, interval_s=1, timeout_s=0.5)),
        ],
    )

    async def put() -> None:
        nc = await nats.connect(nats_url)
        kv = await bus.config_bucket(nc.jetstream())
        await kv.put(subjects.pool_key("P"), msgspec.json.encode(pool))
        await nc.close()

    asyncio.run(put())
    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_METRICS_LISTEN": f"127.0.0.1:{port}", "GTM_PROBER_REGION": "eu"}
    svc = Service("prober", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        wanted = [
            'gtm_prober_checks_total{protocol="http",region="eu",result="ok"}',
            'gtm_prober_failures_total{error="connection refused",protocol="tcp",region="eu"}',
            'gtm_prober_rtt_seconds_count{protocol="http",region="eu"}',
        ]
        text = wait_until(lambda: (t := _get(port, "/metrics")[1]) and all(w in t for w in wanted) and t, timeout=10)
        assert text
    finally:
        svc.stop()
        backend.stop()


def test_config_counts_requests_by_route_and_status(nats_url: str, log_dir: Path) -> None:
    port = free_port()
    svc = Service("config", {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}"}, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        assert _get(port, "/api/v1/pools/nope")[0] == 404
        status, text = _get(port, "/metrics")
        assert status == 200
        assert 'gtm_api_requests_total{method="GET",route="/api/v1/pools/{name}",status="404"} 1.0' in text
        assert "gtm_nats_connected 1.0" in text
    finally:
        svc.stop()


def test_edge_counts_queries_by_domain_type_and_rcode(nats_url: str, log_dir: Path) -> None:
    import asyncio

    from tests.bench.common import answer, publish
    from tests.support import dns_query

    asyncio.run(publish(nats_url, [answer("www.example.com", ["192.0.2.1"])]))
    dns_port, port = free_port(), free_port()
    env = {"NATS_URL": nats_url, "GTM_DNS_LISTEN": f"127.0.0.1:{dns_port}", "GTM_METRICS_LISTEN": f"127.0.0.1:{port}"}
    svc = Service("edge", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        for _ in range(3):
            dns_query(dns_port, "WWW.example.com")
        dns_query(dns_port, "www.example.com", "TXT")
        dns_query(dns_port, "unknown.example.org")
        status, text = _get(port, "/metrics")
        assert status == 200
        assert 'gtm_edge_queries_total{domain="www.example.com",rcode="NOERROR",type="A"} 3.0' in text
        assert 'gtm_edge_queries_total{domain="www.example.com",rcode="NOERROR",type="TXT"} 1.0' in text
        assert 'gtm_edge_queries_total{domain="other",rcode="REFUSED",type="A"} 1.0' in text
        assert _get(port, "/readyz")[0] == 200
    finally:
        svc.stop()
