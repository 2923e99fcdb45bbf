"""Metrics Prometheus can trust: one target per process, edge workers added up, fixed labels, instances.

Real processes on a real nats-server: ``make run`` gives each child its own metrics port and
refuses a shared one; a second bind of a metrics port fails loudly; ``GTM_EDGE_WORKERS`` workers
are one target whose counters are the sum of theirs; the scheduler exports pool, address,
domain and prober region gauges; every log line and ``gtm_build_info`` name the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.edge import aggregate
from services.prober import errors
from services.stack import preflight
from services.stack.plan import DEFAULT_METRICS_BASE_PORT, PlanError, build_plan
from tests.support import ROOT, HttpBackend, Service, dns_query, free_port, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _build_info(samples: Samples) -> list[dict[str, str]]:
    return [dict(labels) for (name, labels) in samples if name == "gtm_build_info"]


def _free_block(n: int) -> int:
    """A base port with ``n`` consecutive free TCP ports on 127.0.0.1."""
    for base in range(20000 + os.getpid() % 20000, 65000, 97):
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports")


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                out.append(event)
    return out


# -- make run: one target per child ---------------------------------------------------------


def test_make_run_gives_each_child_its_own_metrics_port_and_instance(tmp_path: Path) -> None:
    plan = build_plan({}, data_dir=tmp_path)
    env = {p.name: p.env for p in plan.services}
    base = DEFAULT_METRICS_BASE_PORT
    assert {n: e.get("GTM_METRICS_LISTEN") for n, e in env.items()} == {
        "config": None,  # on its API port
        "scheduler": f"127.0.0.1:{base}",
        "prober": f"127.0.0.1:{base + 1}",
        "edge1": f"127.0.0.1:{base + 2}",
        "edge2": f"127.0.0.1:{base + 3}",
    }
    assert {n: e["GTM_INSTANCE"] for n, e in env.items()} == {n: n for n in env}
    assert plan.metrics == [(n, "127.0.0.1", base + i) for i, n in enumerate(["scheduler", "prober", "edge1", "edge2"])]
    prefixed = build_plan({"GTM_INSTANCE": "lab", "GTM_METRICS_BASE_PORT": "0"}, data_dir=tmp_path)
    assert [p.env["GTM_INSTANCE"] for p in prefixed.services] == [f"lab-{p.name}" for p in prefixed.services]
    assert prefixed.metrics == [] and not any("GTM_METRICS_LISTEN" in p.env for p in prefixed.services)


@pytest.mark.parametrize("value", ["127.0.0.1:9100", "0.0.0.0:9200"])
def test_make_run_refuses_one_metrics_listen_for_every_child(tmp_path: Path, value: str) -> None:
    with pytest.raises(PlanError, match="GTM_METRICS_LISTEN.*one metrics port for scheduler, prober, edge1, edge2"):
        build_plan({"GTM_METRICS_LISTEN": value}, data_dir=tmp_path)
    env = {
        **{k: v for k, v in os.environ.items() if k != "NATS_URL"},
        "GTM_LOG_FORMAT": "json",
        "GTM_DATA_DIR": str(tmp_path / "data"),
        "GTM_METRICS_LISTEN": value,
    }
    done = subprocess.run([sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, capture_output=True, timeout=30)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 2, out
    errors_ = [e for e in _json_lines(out) if e.get("level") == "error"]
    assert [e["event"] for e in errors_] == ["stack_refused"], out
    assert "GTM_METRICS_LISTEN" in errors_[0]["reason"] and "GTM_METRICS_BASE_PORT" in errors_[0]["reason"]
    assert "process_started" not in out and not (tmp_path / "data").exists()


def test_a_bad_metrics_base_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="GTM_METRICS_BASE_PORT='x'"):
        build_plan({"GTM_METRICS_BASE_PORT": "x"}, data_dir=tmp_path)
    with pytest.raises(PlanError, match="leaves no port for edge1"):
        build_plan({"GTM_METRICS_BASE_PORT": "65534"}, data_dir=tmp_path)


def test_preflight_names_a_taken_metrics_port(tmp_path: Path) -> None:
    base = _free_block(4)
    env = {
        "GTM_NATS_PORT": str(free_port()),
        "GTM_API_LISTEN": f"127.0.0.1:{free_port()}",
        "GTM_EDGES": f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
        "GTM_METRICS_BASE_PORT": str(base),
    }
    plan = build_plan(env, data_dir=tmp_path)
    owners = [str(e) for e in preflight.endpoints(plan) if "metrics" in e.owner]
    assert owners == [f"{n} metrics tcp 127.0.0.1:{base + i}" for i, n in enumerate(["scheduler", "prober", "edge1", "edge2"])]
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen()
        assert preflight.taken(plan) == [f"prober metrics tcp 127.0.0.1:{base + 1} (Address already in use)"]


@pytest.fixture
def running_stack(tmp_path: Path) -> Iterator[tuple[dict[str, Any], Path, subprocess.Popen[bytes]]]:
    base = _free_block(4)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("NATS_URL", "GTM_INSTANCE")},
        "GTM_LOG_FORMAT": "json",
        "GTM_NATS_PORT": str(free_port()),
        "GTM_DATA_DIR": str(tmp_path / "data"),
        "GTM_API_LISTEN": f"127.0.0.1:{free_port()}",
        "GTM_EDGES": f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
        "GTM_METRICS_BASE_PORT": str(base),
        "GTM_EDGE_WORKERS": "2",  # each edge: a supervisor and two workers, one target
    }
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        ready = wait_until(
            lambda: next((e for e in _json_lines(log.read_text()) if e.get("event") == "stack_ready"), None)
            or (proc.poll() is not None and {"exited": proc.returncode}),
            timeout=60,
        )
        assert "exited" not in ready, log.read_text()[-3000:]
        yield ready, log, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def test_make_run_scrapes_are_each_answered_by_one_process(
    running_stack: tuple[dict[str, Any], Path, subprocess.Popen[bytes]],
) -> None:
    ready, log, _ = running_stack
    targets = ready["metrics"]
    assert len(targets) == 5 and targets[0] == ready["api"].replace("/api/v1", "/metrics")
    expected = ["config", "scheduler", "prober", "edge1", "edge2"]
    for url, name in zip(targets, expected, strict=True):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        # stack_ready waits for the API and the edges; the others' listeners may come a moment later.
        wait_until(lambda: _get(port)[0] == 200, timeout=20)  # noqa: B023 - called at once
        seen = []
        for _ in range(8):
            status, text = _get(port)
            assert status == 200, text
            seen.append([(i["service"], i["instance_id"]) for i in _build_info(_samples(text))])
        assert seen == [[(name.rstrip("12"), name)]] * 8, (url, seen)
    # Every line of every child names its instance; the two edges apart.
    events = [e for e in _json_lines(log.read_text()) if e.get("service") != "stack"]
    assert events and all("instance" in e for e in events), [e for e in events if "instance" not in e][:3]
    assert {e["instance"] for e in events if e.get("service") == "edge"} == {"edge1", "edge2"}
    assert {e["instance"] for e in events if e.get("service") == "scheduler"} == {"scheduler"}


# -- one port, one process ---------------------------------------------------------------------


def test_a_second_process_on_a_metrics_port_exits_naming_the_variable(nats_url: str, log_dir: Path) -> None:
    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_METRICS_LISTEN": f"127.0.0.1:{port}"}
    first = Service("prober", {**env, "GTM_INSTANCE": "first"}, log_dir).start()
    try:
        first.wait_for_event("service_ready")
        for name, extra in [("prober", {}), ("scheduler", {}), ("edge", {"GTM_EDGE_WORKERS": "2"})]:
            second = Service(name, {**env, **extra, "GTM_DNS_LISTEN": f"127.0.0.1:{free_port()}"}, log_dir).start()
            assert second.proc is not None
            code = second.proc.wait(20)
            out = second.output()
            second.stop()
            assert code == 1, out
            failed = [e for e in second.events() if e.get("event") == "metrics_listen_failed"]
            assert len(failed) == 1 and f"GTM_METRICS_LISTEN=127.0.0.1:{port}" in failed[0]["hint"], out
            assert failed[0]["error"] == "Address already in use", out
            assert "workers_started" not in out, out  # the edge refused before forking anything
        infos = [_build_info(_samples(_get(port)[1])) for _ in range(8)]
        assert all(i == [infos[0][0]] and i[0]["instance_id"] == "first" for i in infos), infos
    finally:
        first.stop()


# -- edge workers: one target ------------------------------------------------------------------


def test_edge_workers_are_one_target_adding_up_their_counters(nats_url: str, log_dir: Path) -> None:
    from tests.bench.common import answer, publish

    asyncio.run(publish(nats_url, [answer("www.example.com", ["192.0.2.1"])]))
    dns, port = free_port(), free_port()
    env = {
        "NATS_URL": nats_url,
        "GTM_DNS_LISTEN": f"127.0.0.1:{dns}",
        "GTM_METRICS_LISTEN": f"127.0.0.1:{port}",
        "GTM_EDGE_WORKERS": "3",
        "GTM_INSTANCE": "edge-a",
    }
    svc = Service("edge", env, log_dir).start()
    code = None
    try:
        svc.wait_for_event("service_ready", timeout=30)
        status, body = _get(port, "/readyz")
        assert status == 200 and json.loads(body) == {
            "status": "ready", "source": "live", "workers": 3, "workers_ready": 3
        }
        queries = 60
        for _ in range(queries):  # a new socket each: source ports spread them over the workers
            dns_query(dns, "www.example.com")
        key = {"domain": "www.example.com", "rcode": "NOERROR", "type": "A"}
        scrapes = [_samples(_get(port)[1]) for _ in range(8)]
        assert [_value(s, "gtm_edge_queries_total", **key) for s in scrapes] == [float(queries)] * 8
        assert all(_value(s, "gtm_edge_workers") == 3.0 for s in scrapes)
        assert all(_value(s, "gtm_nats_connected") == 1.0 for s in scrapes)
        assert all(_build_info(s) == [_build_info(scrapes[0])[0]] for s in scrapes)
        assert _build_info(scrapes[0])[0]["instance_id"] == "edge-a"
        # The sum is the workers' own counts, and more than one worker answered.
        private = [e["listen"] for e in svc.events() if e.get("event") == "ops_listening" and "worker" in e]
        assert len(private) == 3
        own = [_value(_samples(_get(int(p.rsplit(":", 1)[1]))[1]), "gtm_edge_queries_total", **key) or 0 for p in private]
        assert sum(own) == queries and sum(1 for n in own if n) >= 2, own
        # Histograms add up bucket by bucket; every line of the workers names the instance.
        counts = _value(scrapes[0], "gtm_edge_answer_seconds_count", transport="udp")
        assert counts is not None and counts <= queries
        lines = svc.events()
        assert all(e.get("instance") == "edge-a" for e in lines), [e for e in lines if e.get("instance") != "edge-a"]
        assert {e["worker"] for e in lines if "worker" in e} == {0, 1, 2}
    finally:
        code = svc.stop()
    assert code == 0, svc.output()


# -- instance ids ---------------------------------------------------------------------------


def test_every_log_line_and_the_build_info_name_the_instance(nats_url: str, log_dir: Path) -> None:
    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_METRICS_LISTEN": f"127.0.0.1:{port}", "GTM_INSTANCE": "prober-eu-1"}
    svc = Service("prober", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        info = _build_info(_samples(_get(port)[1]))
        assert len(info) == 1 and info[0]["service"] == "prober" and info[0]["instance_id"] == "prober-eu-1"
        assert info[0]["version"] and info[0]["python"]
    finally:
        svc.stop()
    lines = svc.events()
    assert lines and all(e.get("instance") == "prober-eu-1" and e.get("service") == "prober" for e in lines)
    default = Service("scheduler", {"NATS_URL": nats_url}, log_dir).start()
    try:
        default.wait_for_event("service_ready")
    finally:
        default.stop()
    assert default.proc is None
    instances = {e.get("instance") for e in default.events()}
    assert len(instances) == 1 and str(instances.pop()).startswith(f"{socket.gethostname()}-")


# -- scheduler: pool, address, domain and region gauges ------------------------------------------


def _put_config(nats_url: str, pools: dict[str, Any], domains: dict[str, Any]) -> None:
    import nats

    from shared import bus, subjects

    async def put() -> None:
        nc = await nats.connect(nats_url)
        kv = await bus.config_bucket(nc.jetstream())
        for name, pool in pools.items():
            await kv.put(subjects.pool_key(name), msgspec.json.encode(pool))
        for name, domain in domains.items():
            await kv.put(subjects.domain_key(name), msgspec.json.encode(domain))
        await nc.close()

    asyncio.run(put())


def test_scheduler_exports_pool_address_domain_and_region_availability(nats_url: str, log_dir: Path) -> None:
    from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef

    primary, backup = HttpBackend().start(), HttpBackend().start()
    dead = free_port()

    def check(port: int, protocol: str = "http") -> HealthCheck:
        return HealthCheck(protocol=protocol, port=port, interval_s=1, timeout_s=0.5, failures=1)

    pools = {
        "Primary": Pool(type="ipv4", addresses=[Address(name="p1", address="127.0.0.1", health_check=check(primary.port))]),
        "Backup": Pool(
            type="ipv4",
            addresses=[
                Address(name="b1", address="127.0.0.1", region="eu-west", health_check=check(backup.port)),
                Address(name="gone", address="127.0.0.1", health_check=check(dead, "tcp")),
            ],
        ),
    }
    domain = Domain(
        record_type="A", enabled=True, pools=[PoolRef(pool="Primary", sequence=1), PoolRef(pool="Backup", sequence=2)]
    )
    _put_config(nats_url, pools, {"www.example.com": domain})
    sched_port, prober_port = free_port(), free_port()
    scheduler = Service("scheduler", {"NATS_URL": nats_url, "GTM_METRICS_LISTEN": f"127.0.0.1:{sched_port}"}, log_dir)
    prober = Service(
        "prober",
        {"NATS_URL": nats_url, "GTM_METRICS_LISTEN": f"127.0.0.1:{prober_port}", "GTM_PROBER_REGION": "eu"},
        log_dir,
    )
    scheduler.start()
    prober.start()
    try:
        scheduler.wait_for_event("service_ready")

        def scrape() -> Samples:
            return _samples(_get(sched_port)[1])

        def settled() -> Samples | None:
            s = scrape()
            ok = (
                _value(s, "gtm_pool_available", pool="Primary") == 1.0
                and _value(s, "gtm_pool_warming", pool="Backup") == 0.0
                and _value(s, "gtm_address_available", pool="Backup", address="gone", region="") == 0.0
                and _value(s, "gtm_address_vantage_up", pool="Primary", address="p1", vantage="eu") == 1.0
                and _value(s, "gtm_address_vantage_up", pool="Backup", address="b1", vantage="eu") == 1.0
            )
            return s if ok else None

        try:
            s = wait_until(settled, timeout=20)
        except TimeoutError:
            raise AssertionError(_get(sched_port)[1] + scheduler.output()) from None
        assert _value(s, "gtm_pool_available", pool="Backup") == 1.0
        assert _value(s, "gtm_pool_enabled", pool="Primary") == 1.0
        assert _value(s, "gtm_address_available", pool="Primary", address="p1", region="") == 1.0
        assert _value(s, "gtm_address_available", pool="Backup", address="b1", region="eu-west") == 1.0
        assert _value(s, "gtm_address_vantage_up", pool="Backup", address="gone", vantage="eu") == 0.0
        assert _value(s, "gtm_address_vantage_up", pool="Primary", address="p1", vantage="eu") == 1.0
        assert _value(s, "gtm_domain_pools", domain="www.example.com") == 2.0
        assert _value(s, "gtm_domain_pools_available", domain="www.example.com") == 2.0
        assert _value(s, "gtm_domain_enabled", domain="www.example.com") == 1.0
        assert _value(s, "gtm_domain_fallback", domain="www.example.com") == 0.0
        assert _value(s, "gtm_scheduler_region_addresses", region="eu") == 3.0
        seen = _value(s, "gtm_scheduler_region_last_result_timestamp_seconds", region="eu")
        assert seen is not None and abs(seen - time.time()) < 10
        revision = _value(s, "gtm_scheduler_config_revision")
        assert revision is not None and revision >= 3
        # The primary fails: its pool goes down, the domain switches (counted by domain).
        primary.set_status(503)

        def switched() -> Samples | None:
            s = scrape()
            return s if _value(s, "gtm_scheduler_switches_total", domain="www.example.com") == 1.0 else None

        try:
            s = wait_until(switched, timeout=20)
        except TimeoutError:
            raise AssertionError(scheduler.output()[-6000:]) from None
        assert _value(s, "gtm_pool_available", pool="Primary") == 0.0
        assert _value(s, "gtm_domain_pools_available", domain="www.example.com") == 1.0
        failures = _samples(_get(prober_port)[1])
        errors_seen = {dict(labels)["error"] for name, labels in failures if name == "gtm_prober_failures_total"}
        assert errors_seen <= set(errors.ERROR_LABELS) and {"status 5xx", "connection refused"} <= errors_seen
    finally:
        prober.stop()
        scheduler.stop()
        primary.stop()
        backup.stop()


# -- pure pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "label"),
    [
        ("connection refused", "connection refused"),
        ("timeout", "timeout"),
        ("tls error", "tls error"),
        ("body mismatch", "body mismatch"),
        ("status 503", "status 5xx"),
        ("status 404", "status 4xx"),
        ("status 200", "status 2xx"),
        ("status 999", "other"),
        ("status abc", "other"),
        ("error: [Errno 113] No route to host", "other"),
        ("error: unknown protocol gopher", "other"),
        ("", "other"),
    ],
)
def test_the_error_label_is_one_of_a_fixed_set(error: str, label: str) -> None:
    assert errors.error_label(error) == label
    assert label in errors.ERROR_LABELS


def test_every_classified_exception_has_a_fixed_label() -> None:
    samples: list[BaseException] = [
        ConnectionRefusedError(),
        TimeoutError(),
        ConnectionResetError(),
        OSError(113, "No route to host"),
        ValueError("anything at all"),
        socket.gaierror(-2, "Name or service not known"),
    ]
    assert all(errors.error_label(errors.classify_error(e)) in errors.ERROR_LABELS for e in samples)


def test_worker_metrics_fold_into_one_exposition() -> None:
    def worker(queries: float, connected: float, age: float, created: float) -> str:
        return "\n".join(
            [
                "# HELP gtm_edge_queries_total DNS queries answered",
                "# TYPE gtm_edge_queries_total counter",
                f'gtm_edge_queries_total{{domain="a",rcode="NOERROR",type="A"}} {queries}',
                "# HELP gtm_edge_answer_seconds t",
                "# TYPE gtm_edge_answer_seconds histogram",
                f'gtm_edge_answer_seconds_bucket{{le="0.001",transport="udp"}} {queries}',
                f'gtm_edge_answer_seconds_bucket{{le="+Inf",transport="udp"}} {queries}',
                f'gtm_edge_answer_seconds_count{{transport="udp"}} {queries}',
                f'gtm_edge_answer_seconds_sum{{transport="udp"}} {queries / 1000}',
                "# HELP gtm_edge_answer_seconds_created t",
                "# TYPE gtm_edge_answer_seconds_created gauge",
                f'gtm_edge_answer_seconds_created{{transport="udp"}} {created}',
                "# HELP gtm_nats_connected c",
                "# TYPE gtm_nats_connected gauge",
                f"gtm_nats_connected {connected}",
                "# HELP gtm_edge_snapshot_age_seconds a",
                "# TYPE gtm_edge_snapshot_age_seconds gauge",
                f"gtm_edge_snapshot_age_seconds {age}",
                "# HELP process_resident_memory_bytes m",
                "# TYPE process_resident_memory_bytes gauge",
                "process_resident_memory_bytes 100.0",
                "",
            ]
        )

    merged = _samples(
        aggregate.merge([worker(3, 1, 0, 20), worker(4, 0, 7, 10)], extra=[aggregate.workers_gauge(2)]).decode()
    )
    assert _value(merged, "gtm_edge_queries_total", domain="a", rcode="NOERROR", type="A") == 7.0
    assert _value(merged, "gtm_edge_answer_seconds_bucket", le="+Inf", transport="udp") == 7.0
    assert _value(merged, "gtm_edge_answer_seconds_count", transport="udp") == 7.0
    assert _value(merged, "gtm_edge_answer_seconds_created", transport="udp") == 10.0
    assert _value(merged, "gtm_nats_connected") == 0.0  # one worker without NATS: the target says so
    assert _value(merged, "gtm_edge_snapshot_age_seconds") == 7.0
    assert _value(merged, "process_resident_memory_bytes") == 200.0
    assert _value(merged, "gtm_edge_workers") == 2.0
