"""Prober protocol options against real backends: TLS verification, body match, templates."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js.kv import KeyValue

from shared import subjects
from shared.resources import Address
from tests.support import HttpBackend, Service, free_port
from tests.test_prober_service import (  # noqa: F401 - fixtures are used by name
    REGION,
    RecordingBackend,
    Results,
    events_named,
    hc,
    http_backend,
    kv,
    prober,
    put_pool,
    results,
)

pytestmark = pytest.mark.timeout(60)


def _cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for backend.test and 127.0.0.1 (it is its own CA)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=backend.test", "-days", "1",
            "-addext", "subjectAltName=DNS:backend.test,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_backend(tmp_path: Path) -> Iterator[tuple[RecordingBackend, Path]]:
    cert, key = _cert(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    backend = RecordingBackend(tls=ctx)
    yield backend, cert
    backend.stop()


class _BodyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body: bytes = self.server.body  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class BodyBackend:
    """An HTTP backend answering every GET with a fixed status and body."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BodyHandler)
        self._server.body = body  # type: ignore[attr-defined]
        self._server.status = status  # type: ignore[attr-defined]
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
async def trusting_prober(
    nats_url: str, log_dir: Path, kv: KeyValue, tls_backend: tuple[RecordingBackend, Path]  # noqa: F811
) -> AsyncIterator[Service]:
    """A prober whose CA store is the test certificate (OpenSSL reads SSL_CERT_FILE)."""
    env = {"NATS_URL": nats_url, "GTM_PROBER_REGION": REGION, "SSL_CERT_FILE": str(tls_backend[1])}
    svc = Service("prober", env, log_dir).start()
    try:
        await asyncio.to_thread(svc.wait_for_event, "service_ready")
        yield svc
    finally:
        assert await asyncio.to_thread(svc.stop) == 0, svc.output()


async def test_verify_tls_fails_an_untrusted_certificate_that_the_default_accepts(
    prober: Service,  # noqa: F811
    kv: KeyValue,  # noqa: F811
    results: Results,  # noqa: F811
    tls_backend: tuple[RecordingBackend, Path],
) -> None:
    backend, _ = tls_backend
    await put_pool(
        kv,
        "tls",
        Address(name="lax", address="127.0.0.1", health_check=hc("https", port=backend.port, host="backend.test")),
        Address(
            name="strict",
            address="127.0.0.1",
            health_check=hc("https", port=backend.port, host="backend.test", verify_tls=True),
        ),
    )
    lax = await results.wait(subjects.address_key("tls", "lax"))
    strict = await results.wait(subjects.address_key("tls", "strict"))
    assert (lax.ok, lax.error) == (True, "")
    assert (strict.ok, strict.error, strict.rtt_ms) == (False, "tls error", None)


async def test_verify_tls_checks_the_name_against_host_or_the_address(
    trusting_prober: Service,
    kv: KeyValue,  # noqa: F811
    results: Results,  # noqa: F811
    tls_backend: tuple[RecordingBackend, Path],
) -> None:
    backend, _ = tls_backend

    def strict(name: str, host: str) -> Address:
        check = hc("https", port=backend.port, host=host, verify_tls=True)
        return Address(name=name, address="127.0.0.1", health_check=check)

    await put_pool(kv, "tls", strict("by-host", "backend.test"), strict("wrong-host", "other.test"), strict("by-ip", ""))
    by_host = await results.wait(subjects.address_key("tls", "by-host"))
    wrong = await results.wait(subjects.address_key("tls", "wrong-host"))
    by_ip = await results.wait(subjects.address_key("tls", "by-ip"))
    assert (by_host.ok, by_host.error) == (True, "")
    assert (wrong.ok, wrong.error) == (False, "tls error")
    assert (by_ip.ok, by_ip.error) == (True, "")
    assert "backend.test" in backend.sni


async def test_body_match_needs_the_string_within_the_first_64_kib(
    prober: Service,  # noqa: F811
    kv: KeyValue,  # noqa: F811
    results: Results,  # noqa: F811
    http_backend: HttpBackend,  # noqa: F811 - its body is "ok\n"
) -> None:
    near = BodyBackend(b"x" * 60_000 + b"NEEDLE")
    far = BodyBackend(b"x" * 70_000 + b"NEEDLE")
    failing = BodyBackend(b"NEEDLE", status=503)
    try:

        def body(name: str, port: int, needle: str) -> Address:
            return Address(name=name, address="127.0.0.1", health_check=hc(port=port, body_match=needle))

        await put_pool(
            kv,
            "b",
            body("ok", http_backend.port, "ok"),
            body("missing", http_backend.port, "healthy"),
            body("near", near.port, "NEEDLE"),
            body("far", far.port, "NEEDLE"),
            body("status-first", failing.port, "NEEDLE"),
        )
        got = {n: await results.wait(subjects.address_key("b", n)) for n in ("ok", "missing", "near", "far", "status-first")}
        assert {n: (r.ok, r.error) for n, r in got.items()} == {
            "ok": (True, ""),
            "missing": (False, "body mismatch"),
            "near": (True, ""),
            "far": (False, "body mismatch"),
            "status-first": (False, "status 503"),
        }
        assert got["missing"].rtt_ms is not None  # the backend did answer
    finally:
        for backend in (near, far, failing):
            backend.stop()


async def test_changing_only_the_template_fields_does_not_restart_a_check(
    prober: Service,  # noqa: F811
    kv: KeyValue,  # noqa: F811
    results: Results,  # noqa: F811
    http_backend: HttpBackend,  # noqa: F811
) -> None:
    key = subjects.address_key("p", "a")
    check = hc(port=http_backend.port, template="web")
    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=check))
    await results.wait(key, lambda r: r.ok)
    changes = len(events_named(prober, "targets_changed"))

    renamed = msgspec.structs.replace(check, template="web-v2", overrides=["port"])
    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=renamed))
    mark = results.mark()
    started = time.time()
    await asyncio.sleep(2.5)
    got = results.since(mark, key)
    assert 1 <= len(got) <= int(time.time() - started) + 1
    assert len(events_named(prober, "targets_changed")) == changes

    moved = msgspec.structs.replace(renamed, port=free_port())  # a real change does restart it
    await put_pool(kv, "p", Address(name="a", address="127.0.0.1", health_check=moved))
    await results.wait(key, lambda r: r.error == "connection refused", after=mark)
    assert len(events_named(prober, "targets_changed")) == changes + 1
