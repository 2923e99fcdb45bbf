"""The edge as a real process with its disk snapshot: restarted during a NATS outage it answers from
disk at once, then follows live data when NATS is back; a damaged file is never served."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.rcode
import msgspec
import nats
import pytest

from services.edge import snapshot, store
from services.edge.snapshot import Snapshot
from services.edge.table import AnswerTable
from shared import subjects
from shared.messages import AnswerGroup, AnswerSet
from tests.support import NatsServer, Service, answer_addresses, dns_query, free_port, wait_until
from tests.test_edge_service import a_set, edge, from_subnet, publish, put_topology, rcode, served

R = 1_700_000_000_000  # a scheduler revision: milliseconds since the epoch


def rev(aset: AnswerSet, revision: int) -> AnswerSet:
    """``aset`` with ``revision``."""
    return msgspec.structs.replace(aset, revision=revision)


def geo_set() -> AnswerSet:
    """A source_nearest answer: eu clients get 10.0.0.2, everyone else 10.0.0.1."""
    return AnswerSet(
        domain="geo.example.com",
        enabled=True,
        record_type="A",
        select="nearest",
        revision=R,
        groups=[
            AnswerGroup(pool="us", records=["10.0.0.1"], region="us"),
            AnswerGroup(pool="eu", records=["10.0.0.2"], region="eu"),
        ],
    )


def purge(url: str, domain: str) -> None:
    """Remove every message of ``domain`` from the ANSWERS stream (as if it had never been published)."""

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().purge_stream(subjects.STREAM_ANSWERS, subject=subjects.answers(domain))
        finally:
            await nc.close()

    asyncio.run(go())


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def source_gauge(metrics_port: int, source: str) -> float:
    """The value of ``gtm_edge_answers_source{source=...}``."""
    _, text = http_get(metrics_port, "/metrics")
    line = next(ln for ln in text.splitlines() if ln.startswith(f'gtm_edge_answers_source{{source="{source}"}}'))
    return float(line.split()[-1])


def quick(port: int, name: str) -> list[str]:
    """The addresses answered for ``name``, asked with a short timeout (a query sent before the edge binds is lost)."""
    return answer_addresses(dns_query(port, name, timeout=0.02))


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def run_once_against(server: NatsServer, log_dir: Path, port: int, **env: str) -> None:
    """Run an edge against ``server`` until it has written its snapshot file, then stop it."""
    svc = edge(server.url, log_dir, port, **env).start()
    try:
        assert svc.wait_for_event("service_ready")["source"] == "live"
        svc.wait_for_event("snapshot_written")
    finally:
        assert svc.stop() == 0


def test_an_edge_restarted_during_a_nats_outage_answers_from_disk_then_follows_live_data(
    tmp_path: Path, log_dir: Path, port: int
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    metrics = free_port()
    env = {"GTM_EDGE_STATE_DIR": str(tmp_path / "state"), "GTM_METRICS_LISTEN": f"127.0.0.1:{metrics}"}
    try:
        put_topology(server.url, {"192.0.2.0/24": "eu"})
        publish(
            server.url,
            rev(a_set("www.example.com", "192.0.2.1", "192.0.2.2"), R),
            *(rev(a_set(f"{n}.example.com", "192.0.2.3"), R) for n in ("change", "doomed", "purged")),
            geo_set(),
        )
        run_once_against(server, log_dir, port, **env)
        purge(server.url, "purged.example.com")  # gone from the stream while the edge is away
        server.stop()

        svc = edge(server.url, log_dir, port, **env)
        started = time.monotonic()
        svc.start()
        try:
            wait_until(lambda: quick(port, "www.example.com") == ["192.0.2.1", "192.0.2.2"], timeout=10, step=0.005)
            elapsed = time.monotonic() - started
            print(f"\nedge started during a NATS outage: first DNS answer {elapsed:.2f} s after process start")
            assert svc.wait_for_event("service_ready")["source"] == "disk"
            disk = svc.wait_for_event("snapshot_served_from_disk")
            assert disk["domains"] == 5 and disk["age_s"] >= 0
            assert served(port, "purged.example.com", tcp=True) == ["192.0.2.3"]  # the disk still says so
            assert from_subnet(port, "geo.example.com", "192.0.2.0", 24) == (["10.0.0.2"], 24)  # topology too
            ready = http_get(metrics, "/readyz")
            assert ready[0] == 200  # a load balancer keeps sending it queries ...
            assert json.loads(ready[1]) == {"status": "ready", "source": "disk"}  # ... and an operator sees why
            assert (source_gauge(metrics, "disk"), source_gauge(metrics, "live")) == (1.0, 0.0)

            server = NatsServer(tmp_path / "nats", port=server.port)
            server.start()
            svc.wait_for_event("answers_source_changed", timeout=30)
            assert rcode(port, "purged.example.com") == dns.rcode.REFUSED  # live data wins
            assert (source_gauge(metrics, "disk"), source_gauge(metrics, "live")) == (0.0, 1.0)
            assert json.loads(http_get(metrics, "/readyz")[1])["source"] == "live"
            publish(
                server.url,
                rev(a_set("change.example.com", "198.51.100.7"), R + 1),
                rev(a_set("doomed.example.com", deleted=True), R + 1),
            )
            wait_until(lambda: served(port, "change.example.com") == ["198.51.100.7"], timeout=20)
            wait_until(lambda: rcode(port, "doomed.example.com") == dns.rcode.REFUSED, timeout=20)
            publish(server.url, rev(a_set("www.example.com", "203.0.113.9"), R - 1))  # a late, older decision
            ignored = svc.wait_for_event("answer_ignored_older")
            assert (ignored["domain"], ignored["revision"], ignored["installed"]) == ("www.example.com", R - 1, R)
            assert served(port, "www.example.com") == ["192.0.2.1", "192.0.2.2"]
        finally:
            assert svc.stop() == 0
    finally:
        server.stop()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_snapshot_is_rejected_and_the_edge_waits_for_nats(
    tmp_path: Path, log_dir: Path, port: int, damage: str
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    state = tmp_path / "state"
    try:
        publish(server.url, a_set("www.example.com", "192.0.2.1"))
        run_once_against(server, log_dir, port, GTM_EDGE_STATE_DIR=str(state))
        server.stop()
        path = state / f"answers-127.0.0.1-{port}.json"
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            del data[len(data) - 10 :]
        else:
            data[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(data))

        svc = edge(server.url, log_dir, port, GTM_EDGE_STATE_DIR=str(state)).start()
        try:
            rejected = svc.wait_for_event("snapshot_rejected")
            assert rejected["reason"] == {"truncate": "truncated", "flip": "checksum_mismatch"}[damage]
            svc.wait_for_event("nats_error")
            assert not listening(port)  # nothing served: as without a snapshot
            assert not [e for e in svc.events() if e.get("event") == "service_ready"]
            server = NatsServer(tmp_path / "nats", port=server.port)
            server.start()
            assert svc.wait_for_event("service_ready", timeout=30)["source"] == "live"
            assert served(port, "www.example.com") == ["192.0.2.1"]
        finally:
            assert svc.stop() == 0
    finally:
        server.stop()


def stale_file(state: Path, port: int, *sets: AnswerSet) -> Path:
    """Write a snapshot file holding ``sets`` for the edge on ``port``."""
    table = AnswerTable()
    for s in sets:
        table.apply(s)
    path = store.path_for(str(state), "127.0.0.1", port)
    assert path is not None
    store.write_atomic(path, list(snapshot.body_parts(Snapshot(written_at=time.time() - 60), table.encoded())))
    return path


def test_with_nats_reachable_it_serves_live_data_and_rewrites_the_file(
    nats_url: str, tmp_path: Path, log_dir: Path, port: int
) -> None:
    state = tmp_path / "state"
    path = stale_file(state, port, a_set("old.example.com", "192.0.2.1"), a_set("www.example.com", "192.0.2.1"))
    publish(nats_url, a_set("www.example.com", "198.51.100.1"))
    svc = edge(nats_url, log_dir, port, GTM_EDGE_STATE_DIR=str(state)).start()
    try:
        assert svc.wait_for_event("service_ready")["source"] == "live"
        assert served(port, "www.example.com") == ["198.51.100.1"]
        assert rcode(port, "old.example.com") == dns.rcode.REFUSED
        assert not [e for e in svc.events() if e.get("event") == "snapshot_served_from_disk"]
        svc.wait_for_event("snapshot_written")
        assert [a.domain for a in snapshot.decode(path.read_bytes()).answers] == ["www.example.com"]
    finally:
        assert svc.stop() == 0


def test_reuseport_workers_all_answer_from_disk(tmp_path: Path, log_dir: Path, port: int) -> None:
    state = tmp_path / "state"
    stale_file(state, port, a_set("wk.example.com", "192.0.2.5"))
    unreachable = f"nats://127.0.0.1:{free_port()}"
    svc = Service(
        "edge",
        {
            "NATS_URL": unreachable,
            "GTM_DNS_LISTEN": f"127.0.0.1:{port}",
            "GTM_EDGE_WORKERS": "2",
            "GTM_EDGE_STATE_DIR": str(state),
        },
        log_dir,
    ).start()
    try:
        ready = svc.wait_for_event("service_ready", timeout=30)
        assert (ready["workers"], ready["source"]) == (2, "disk")
        assert [e["source"] for e in svc.events() if e.get("event") == "worker_ready"] == ["disk", "disk"]
        assert served(port, "wk.example.com") == ["192.0.2.5"]
    finally:
        assert svc.stop() == 0
    assert [p.name for p in state.iterdir()] == [f"answers-127.0.0.1-{port}.json"]  # read, never rewritten


@pytest.fixture
def port() -> int:
    return free_port()
