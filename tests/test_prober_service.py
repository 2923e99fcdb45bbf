"""The prober as a real process against real backends, over a real NATS server."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.kv import KeyValue

from shared import bus, messages, subjects
from shared.messages import ProbeResult
from shared.resources import Address, HealthCheck, Pool, validate_pool
from tests.support import HttpBackend, Service, free_port

REGION = "test-region"
PROBER_ID = "prober-under-test"

pytestmark = pytest.mark.timeout(60)


# --- backends we control -----------------------------------------------------------------


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class RecordingBackend:
    """An HTTP(S) backend that records the Host header (and TLS SNI name) of each request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.sni: list[str | None] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _RecordingHandler)
        self._server.hosts = []  # type: ignore[attr-defined]
        self._server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def hosts(self) -> list[str]:
        return list(self._server.hosts)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SilentListener:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._sock.accept()
                self.accepted += 1
                self._held.append(conn)

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def http_backend() -> Iterator[HttpBackend]:
    backend = HttpBackend().start()
    yield backend
    backend.stop()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


# --- NATS side ---------------------------------------------------------------------------


class Results:
    """Every ProbeResult seen on probe.result.>, in arrival order."""

    def __init__(self) -> None:
        self.items: list[ProbeResult] = []
        self.subjects: list[str] = []

    async def on_msg(self, msg: Any) -> None:
        self.items.append(messages.probe_result_decoder.decode(msg.data))
        self.subjects.append(msg.subject)

    def mark(self) -> int:
        return len(self.items)

    def since(self, mark: int, key: str | None = None) -> list[ProbeResult]:
        return [r for r in self.items[mark:] if key is None or r.key == key]

    async def wait(
        self,
        key: str,
        pred: Callable[[ProbeResult], bool] = lambda r: True,
        *,
        after: int = 0,
        timeout: float = 8.0,
    ) -> ProbeResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((r for r in self.since(after, key) if pred(r)), None)
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        seen = [(r.ok, r.error) for r in self.since(after, key)]
        raise AssertionError(f"no matching result for {key} (seen {seen})")


@pytest.fixture
async def kv(nc: NatsClient) -> KeyValue:
    js = nc.jetstream()
    await bus.ensure_streams(js)
    return await bus.config_bucket(js)


@pytest.fixture
async def results(nc: NatsClient) -> AsyncIterator[Results]:
    res = Results()
    sub = await nc.subscribe(subjects.PROBE_RESULT_ALL, cb=res.on_msg)
    yield res
    await sub.unsubscribe()


@pytest.fixture
async def prober(nats_url: str, log_dir: Path, kv: KeyValue) -> AsyncIterator[Service]:
    svc = Service(
        "prober",
        {"NATS_URL": nats_url, "GTM_PROBER_REGION": REGION, "GTM_PROBER_ID": PROBER_ID},
        log_dir,
    ).start()
    try:
        await asyncio.to_thread(svc.wait_for_event, "service_ready")
        yield svc
    finally:
        code = await asyncio.to_thread(svc.stop)
    assert code == 0, svc.output()


def hc(protocol: str = "http", **kw: Any) -> HealthCheck:
    return HealthCheck(protocol=protocol, interval_s=1, timeout_s=0.5, **kw)  # type: ignore[arg-type]


async def put_pool(kv: KeyValue, name: str, *addresses: Address, enabled: bool = True) -> None:
    pool = validate_pool(Pool(type="ipv4", enabled=enabled, addresses=list(addresses)), name)
    await kv.put(subjects.pool_key(name), msgspec.json.encode(pool))


def events_named(svc: Service, name: str) -> list[dict[str, Any]]:
    return [e for e in svc.events() if e.get("event") == name]


async def wait_event(
    svc: Service, name: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 8
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(pred(e) for e in events_named(svc, name)):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name} event matching:\n{svc.output()}")


# --- tests -------------------------------------------------------------------------------


async def test_http_result_follows_backend_ok_503_refused_and_back(
    prober: Service, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    await put_pool(
        kv, "web.pool", Address(name="a.1", address="127.0.0.1", health_check=hc(port=http_backend.port))
    )
    key = subjects.address_key("web.pool", "a.1")

    ok = await results.wait(key, lambda r: r.ok)
    assert ok.rtt_ms is not None and ok.rtt_ms > 0
    assert (ok.region, ok.prober, ok.pool, ok.address, ok.target, ok.protocol, ok.error) == (
        REGION,
        PROBER_ID,
        "web.pool",
        "a.1",
        "127.0.0.1",
        "http",
        "",
    )
    assert results.subjects[results.items.index(ok)] == subjects.probe_result(REGION, key)
    assert abs(ok.at - time.time()) < 30

    mark = results.mark()
    http_backend.set_status(503)
    bad = await results.wait(key, lambda r: not r.ok, after=mark)
    assert bad.error == "status 503"
    assert bad.rtt_ms is not None

    mark = results.mark()
    http_backend.stop()
    refused = await results.wait(key, lambda r: r.error != "status 503", after=mark)
    assert (refused.ok, refused.error, refused.rtt_ms) == (False, "connection refused", None)

    mark = results.mark()
    http_backend.set_status(200)
    http_backend.start()
    await results.wait(key, lambda r: r.ok, after=mark)

    failed = events_named(prober, "check_failed")
    recovered = events_named(prober, "check_recovered")
    assert [e["error"] for e in failed] == ["status 503"]  # not on every check, nor on 503 -> refused
    assert len(recovered) == 1
    assert (failed[0]["pool"], failed[0]["address"]) == ("web.pool", "a.1")


async def test_expected_5xx_accepts_503_and_host_header_is_sent(
    prober: Service, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    http_backend.set_status(503)
    recorder = RecordingBackend()
    try:
        await put_pool(
            kv,
            "p",
            Address(
                name="maint",
                address="127.0.0.1",
                health_check=hc(port=http_backend.port, expected_codes=["5xx"]),
            ),
            Address(
                name="vhost",
                address="127.0.0.1",
                health_check=hc(port=recorder.port, path="/health", host="www.example.test"),
            ),
        )
        maint = await results.wait(subjects.address_key("p", "maint"))
        assert (maint.ok, maint.error) == (True, "")
        assert (await results.wait(subjects.address_key("p", "vhost"))).ok
        assert recorder.hosts and set(recorder.hosts) == {"www.example.test"}
    finally:
        recorder.stop()


def _self_signed(tmp: Path) -> ssl.SSLContext:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=backend.test",
            "-days",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


async def test_https_ignores_self_signed_cert_and_sends_host_as_sni(
    prober: Service, kv: KeyValue, results: Results, tmp_path: Path
) -> None:
    backend = RecordingBackend(tls=_self_signed(tmp_path))
    try:
        await put_pool(
            kv,
            "tls",
            Address(
                name="a",
                address="127.0.0.1",
                health_check=hc("https", port=backend.port, host="www.example.test"),
            ),
        )
        result = await results.wait(subjects.address_key("tls", "a"))
        assert (result.ok, result.error, result.protocol) == (True, "", "https")
        assert "www.example.test" in backend.sni
        assert set(backend.hosts) == {"www.example.test"}
    finally:
        backend.stop()


async def test_tcp_check_reports_connected_refused_and_silent_http_times_out(
    prober: Service, kv: KeyValue, results: Results, silent: SilentListener
) -> None:
    closed = free_port()
    await put_pool(
        kv,
        "t",
        Address(name="open", address="127.0.0.1", health_check=hc("tcp", port=silent.port)),
        Address(name="closed", address="127.0.0.1", health_check=hc("tcp", port=closed)),
        Address(name="hang", address="127.0.0.1", health_check=hc("http", port=silent.port)),
    )
    opened = await results.wait(subjects.address_key("t", "open"))
    assert (opened.ok, opened.error, opened.protocol) == (True, "", "tcp")
    assert opened.rtt_ms is not None
    refused = await results.wait(subjects.address_key("t", "closed"))
    assert (refused.ok, refused.error) == (False, "connection refused")
    hung = await results.wait(subjects.address_key("t", "hang"))
    assert (hung.ok, hung.error) == (False, "timeout")


async def test_ping_reports_alive_or_not_permitted(prober: Service, kv: KeyValue, results: Results) -> None:
    await put_pool(kv, "icmp", Address(name="lo", address="127.0.0.1", health_check=hc("ping")))
    result = await results.wait(subjects.address_key("icmp", "lo"))
    assert result.protocol == "ping"
    assert (result.ok and result.error == "") or (not result.ok and result.error == "ping not permitted")


async def test_initial_config_is_probed_and_unprobed_addresses_are_skipped(
    nats_url: str, log_dir: Path, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    check = hc(port=http_backend.port)
    await put_pool(
        kv,
        "p",
        Address(name="checked", address="127.0.0.1", health_check=check),
        Address(name="manual", address="127.0.0.1", mode="manual_unavailable", health_check=check),
        Address(name="nocheck", address="127.0.0.1"),
        Address(name="off", address="127.0.0.1", enabled=False, health_check=check),
    )
    await put_pool(kv, "disabled", Address(name="a", address="127.0.0.1", health_check=check), enabled=False)
    await kv.put(subjects.domain_key("www.example.test"), b'{"record_type":"A"}')
    svc = Service("prober", {"NATS_URL": nats_url, "GTM_PROBER_REGION": REGION}, log_dir).start()
    try:
        ready = await asyncio.to_thread(svc.wait_for_event, "service_ready")
        assert ready["targets"] == 2
        await results.wait(subjects.address_key("p", "checked"), lambda r: r.ok)
        await results.wait(subjects.address_key("p", "manual"), lambda r: r.ok)
        await asyncio.sleep(1.2)
        assert {r.key for r in results.items} == {"p/checked", "p/manual"}
    finally:
        assert await asyncio.to_thread(svc.stop) == 0


def assert_not_restarted(prober: Service, pid: int | None) -> None:
    assert prober.proc is not None and prober.proc.pid == pid and prober.proc.poll() is None
    assert len(events_named(prober, "service_ready")) == 1


async def test_port_change_and_address_removal_apply_without_restart(
    prober: Service, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    pid = prober.proc.pid if prober.proc else None
    a, b = subjects.address_key("p", "a"), subjects.address_key("p", "b")
    await put_pool(
        kv,
        "p",
        Address(name="a", address="127.0.0.1", health_check=hc(port=free_port())),
        Address(name="b", address="127.0.0.1", health_check=hc(port=http_backend.port)),
    )
    await results.wait(a, lambda r: r.error == "connection refused")
    await results.wait(b, lambda r: r.ok)

    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=hc(port=http_backend.port)))
    await results.wait(a, lambda r: r.ok)
    mark = results.mark()
    await asyncio.sleep(2.2)
    assert results.since(mark, b) == []
    assert len(results.since(mark, a)) >= 2
    assert_not_restarted(prober, pid)


async def test_interval_change_applies_without_restart(
    prober: Service, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    pid = prober.proc.pid if prober.proc else None
    a = subjects.address_key("p", "a")
    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=hc(port=http_backend.port)))
    await results.wait(a, lambda r: r.ok)

    every_2s = HealthCheck(port=http_backend.port, interval_s=2, timeout_s=0.5)
    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=every_2s))
    await wait_event(prober, "targets_changed", lambda e: e["restarted"] == 1)
    first = await results.wait(a, after=results.mark())
    mark = results.mark()
    await asyncio.sleep(4.5)
    later = results.since(mark, a)
    assert 1 <= len(later) <= 3
    assert all(y.at - x.at > 1.5 for x, y in itertools.pairwise([first, *later]))
    assert_not_restarted(prober, pid)


async def test_disabled_or_deleted_pool_stops_probing_without_restart(
    prober: Service, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    pid = prober.proc.pid if prober.proc else None
    a = subjects.address_key("p", "a")
    address = Address(name="a", address="127.0.0.1", health_check=hc(port=http_backend.port))
    await put_pool(kv, "p", address)
    await results.wait(a, lambda r: r.ok)

    await put_pool(kv, "p", address, enabled=False)
    await wait_event(prober, "targets_changed", lambda e: e["targets"] == 0)
    mark = results.mark()
    await asyncio.sleep(1.5)
    assert results.since(mark) == []

    await put_pool(kv, "p", address)
    await results.wait(a, lambda r: r.ok, after=mark)
    await kv.delete(subjects.pool_key("p"))
    await wait_event(prober, "targets_changed", lambda e: e["stopped"] == 1 and e["targets"] == 0)
    mark = results.mark()
    await asyncio.sleep(1.5)
    assert results.since(mark) == []
    assert_not_restarted(prober, pid)


async def test_one_result_per_interval_per_address(
    prober: Service, kv: KeyValue, results: Results, http_backend: HttpBackend
) -> None:
    names = ["a", "b", "c"]
    addresses = [Address(name=n, address="127.0.0.1", health_check=hc(port=http_backend.port)) for n in names]
    await put_pool(kv, "p", *addresses)
    for n in names:
        await results.wait(subjects.address_key("p", n))
    changes = len(events_named(prober, "targets_changed"))
    # Rewriting the pool with an unrelated change must not restart (or double) any check.
    await put_pool(kv, "p", *[msgspec.structs.replace(x, weight=7) for x in addresses])
    mark = results.mark()
    start = time.time()
    await asyncio.sleep(3.5)
    window = time.time() - start
    for n in names:
        got = results.since(mark, subjects.address_key("p", n))
        assert 2 <= len(got) <= int(window) + 1, [r.at for r in got]
        assert all(y.at - x.at > 0.5 for x, y in itertools.pairwise(got)), [r.at for r in got]
    assert len(events_named(prober, "targets_changed")) == changes


async def test_sigint_stops_the_prober_cleanly(nats_url: str, log_dir: Path, kv: KeyValue) -> None:
    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=hc("tcp", port=free_port())))
    svc = Service("prober", {"NATS_URL": nats_url}, log_dir).start()
    await asyncio.to_thread(svc.wait_for_event, "service_ready")
    assert await asyncio.to_thread(svc.stop, signal.SIGINT) == 0
    assert events_named(svc, "service_stopped")
