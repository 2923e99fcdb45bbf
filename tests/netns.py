"""A fault harness on real sockets: Linux network namespaces joined by one bridge.

Every host is a network namespace with one veth (``eth0``, 10.77.0.N/24) into a
"switch" namespace that bridges them all; each host has its own loopback and
its own ports, so every NATS node listens on 4222 and every edge on 53.  A cut
is silent, like a real partition: each side drops (nftables, input hook) what
comes from the other, so nobody gets a reset or an ICMP error, and TCP just
retransmits into the void until the heal.

    net = Net(tmp_path)                          # or the ``net`` fixture (skips unless root with ip, nft)
    nats, edge, client = net.host("nats"), net.host("edge"), net.host("client")
    node = start_nats(nats)                      # nats-server -js on 10.77.0.1:4222
    svc = start_service(edge, "edge", {"NATS_URL": node.url})
    dns_query(client, edge.ip, "www.example.com")    # asked from inside the client namespace
    net.cut(edge, nats)                          # both ways; oneway=True: only edge -> nats is lost
    net.heal(edge, nats)                         # or net.isolate(host) / net.rejoin(host)
    net.close()                                  # kills every process, deletes every namespace

``host.run(argv, env)`` starts any process in a namespace (its output in a log
file); ``host.call(fn, ...)`` runs a function in a thread that lives in the
namespace (its sockets are the namespace's); ``host.arun(coro)`` runs a
coroutine on an event loop of its own inside the namespace (NATS clients).

``python -m tests.netns service <name>`` runs ``services.<name>`` with the
keyword arguments in ``GTM_TEST_NATS_KWARGS`` (JSON) added to every
``shared.bus.connect`` call: how a test measures a proposed NATS client setting
before it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.support import ROOT, Api, answer_addresses, nats_server_binary, wait_until

T = TypeVar("T")

SUBNET = "10.77.0"  # each run has a switch of its own, so runs side by side never meet
NATS_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222
_CLONE_NEWNET = 0x40000000
_TABLE = "gtmfault"
_libc = ctypes.CDLL(None, use_errno=True)


@functools.cache
def unavailable() -> str:
    """Why this machine cannot run the harness ("" when it can); asked once per session."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    probe = f"gtmprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        nft = subprocess.run(
            ["ip", "netns", "exec", probe, "nft", "add", "table", "inet", _TABLE], capture_output=True, text=True
        )
        if nft.returncode != 0:
            return f"nftables unusable in a namespace: {nft.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _sh(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _enter(ns: str) -> None:
    """Move the calling thread (only it) into network namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NsProcess:
    """A process started in a namespace, with its output in ``log_path`` (JSON lines for GTM services)."""

    def __init__(self, host: Host, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.host, self.name, self.argv, self.log_path = host, name, list(argv), log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NsProcess:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host.ns, *self.argv],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest is not theirs; close() stops them
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:] if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        out = []
        for line in self.output(tail=10**9).splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def wait_for_event(
        self, event: str, *, timeout: float = 30.0, where: Callable[[dict[str, Any]], bool] = bool
    ) -> dict[str, Any]:
        """The first log line whose ``event`` is ``event`` (and that ``where`` accepts)."""

        def found() -> dict[str, Any] | None:
            if not self.alive:
                raise AssertionError(f"{self.name} on {self.host.name} exited:\n{self.output()}")
            return next((e for e in self.events() if e.get("event") == event and where(e)), None)

        try:
            result: dict[str, Any] = wait_until(found, timeout=timeout, step=0.05)
        except TimeoutError:
            raise AssertionError(f"{self.name} on {self.host.name} never logged {event!r}:\n{self.output()}") from None
        return result

    def send_signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 8.0) -> int | None:
        """Stop it (SIGTERM, then SIGKILL after ``timeout``); its exit code."""
        if self.proc is None:
            return None
        self.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """``kill -9``: gone at once (a listening socket refuses from then on)."""
        self.stop(signal.SIGKILL)


class _Loop:
    """An event loop on a thread of its own inside a namespace."""

    def __init__(self, ns: str) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def body() -> None:
            try:
                _enter(ns)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                failure.append(exc)
                started.set()
                return
            asyncio.set_event_loop(self.loop)
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=body, daemon=True, name=f"loop {ns}")
        self.thread.start()
        started.wait(10)
        if failure:
            raise failure[0]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


class Host:
    """One namespace on the switch: a name, an address, its processes."""

    def __init__(self, net: Net, name: str, index: int) -> None:
        self.net, self.name, self.index = net, name, index
        self.ns = f"{net.prefix}-{name}"
        self.ip = f"{SUBNET}.{index}"
        self.cut_from: set[str] = set()  # addresses whose packets this host drops
        self._loop: _Loop | None = None

    def __repr__(self) -> str:
        return f"Host({self.name} {self.ip})"

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None, *, name: str | None = None) -> NsProcess:
        """Start ``argv`` in this namespace with ``env`` added to ours; its output goes to a log file."""
        label = name or Path(argv[0]).name
        log_path = self.net.log_dir / f"{self.name}-{label}-{next(self.net.serial)}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = NsProcess(self, label, argv, full_env, log_path).start()
        self.net.processes.append(proc)
        return proc

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on a thread inside this namespace: the sockets it opens are this host's."""
        box: dict[str, Any] = {}

        def body() -> None:
            try:
                _enter(self.ns)
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc

        thread = threading.Thread(target=body, daemon=True, name=f"call {self.ns}")
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} on {self.name} took over {timeout} s")
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def arun(self, coro: Coroutine[Any, Any, T], *, timeout: float = 30.0) -> T:
        """Run ``coro`` on this host's own event loop (its connections stay open between calls)."""
        if self._loop is None:
            self._loop = _Loop(self.ns)
        return self._loop.run(coro, timeout)

    def reachable(self, ip: str, port: int, timeout: float = 0.3) -> bool:
        """Whether a TCP connection from this host to ``ip:port`` succeeds now."""
        return self.call(_tcp_open, ip, port, timeout)

    def wait_listening(self, port: int, *, timeout: float = 20.0, proc: NsProcess | None = None) -> None:
        """Wait until this host accepts TCP on ``port`` (fail early if ``proc`` died)."""

        def up() -> bool:
            if proc is not None and not proc.alive:
                raise AssertionError(f"{proc.name} on {self.name} exited:\n{proc.output()}")
            return self.reachable(self.ip, port)

        try:
            wait_until(up, timeout=timeout, step=0.05)
        except TimeoutError:
            raise AssertionError(f"{self.name}:{port} never listened:\n{proc.output() if proc else ''}") from None

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _tcp_open(ip: str, port: int, timeout: float) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=timeout):
        return True
    return False


class Net:
    """The switch and its hosts; cuts and heals between them; everything removed by :meth:`close`."""

    def __init__(self, tmp: Path) -> None:
        self.prefix = f"gtm{secrets.token_hex(3)}"
        self.log_dir = tmp / "netns-logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, Host] = {}
        self.processes: list[NsProcess] = []
        self.serial = iter(range(1, 10**6))
        self.switch = f"{self.prefix}-sw"
        self._namespaces: list[str] = []
        self._on_close: list[Callable[[], Any]] = []
        try:
            self._add_ns(self.switch)
            _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
            _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        _sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)

    def host(self, name: str) -> Host:
        """The host called ``name``, created (and plugged into the switch) on first use."""
        if name in self.hosts:
            return self.hosts[name]
        if len(self.hosts) >= 250:
            raise RuntimeError("one /24 is enough for any test")
        host = Host(self, name, len(self.hosts) + 1)
        port = f"p{host.index}"
        self._add_ns(host.ns)
        _sh("ip", "link", "add", "eth0", "netns", host.ns, "type", "veth", "peer", "name", port, "netns", self.switch)
        _sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        _sh("ip", "-n", host.ns, "link", "set", "lo", "up")
        _sh("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _sh("ip", "-n", host.ns, "link", "set", "eth0", "up")
        # The cut set: packets from these addresses are dropped on arrival (ARP stays: a cut is
        # silence, not an unreachable neighbour).
        _sh(
            "ip", "netns", "exec", host.ns, "nft", "-f", "-",
            stdin=(
                f"table inet {_TABLE} {{\n"
                "  set cut { type ipv4_addr; }\n"
                "  chain input { type filter hook input priority -10; policy accept; ip saddr @cut drop; }\n"
                "}\n"
            ),
        )
        self.hosts[name] = host
        return host

    def _drop(self, at: Host, source: Host, *, on: bool) -> None:
        verb = "add" if on else "delete"
        if on == (source.ip in at.cut_from):
            return
        _sh("ip", "netns", "exec", at.ns, "nft", verb, "element", "inet", _TABLE, "cut", f"{{ {source.ip} }}")
        (at.cut_from.add if on else at.cut_from.discard)(source.ip)

    def cut(self, a: Host, b: Host, *, oneway: bool = False) -> None:
        """Lose every packet between ``a`` and ``b`` (with ``oneway``: only those from ``a`` to ``b``)."""
        self._drop(b, a, on=True)
        if not oneway:
            self._drop(a, b, on=True)

    def heal(self, a: Host, b: Host) -> None:
        """Undo :meth:`cut` between ``a`` and ``b`` (both directions)."""
        self._drop(b, a, on=False)
        self._drop(a, b, on=False)

    def isolate(self, host: Host, *, from_: Sequence[Host] | None = None) -> None:
        """Cut ``host`` from every other host (or from those of ``from_``)."""
        for other in from_ if from_ is not None else list(self.hosts.values()):
            if other is not host:
                self.cut(host, other)

    def rejoin(self, host: Host) -> None:
        """Heal every cut of ``host``."""
        for other in self.hosts.values():
            if other is not host:
                self.heal(host, other)

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Call ``fn`` first thing in :meth:`close` (the test's own threads and clients)."""
        self._on_close.append(fn)

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), then delete every namespace. Never raises."""
        for fn in reversed(self._on_close):
            with contextlib.suppress(Exception):
                fn()
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host._close_loop()
        for proc in self.processes:
            with contextlib.suppress(Exception):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8
        for proc in self.processes:
            if proc.proc is None:
                continue
            try:
                proc.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(Exception):
                    proc.proc.kill()
                    proc.proc.wait(5)
        for ns in reversed(self._namespaces):
            # Anything left in a namespace of ours was started by this harness (a child of one of
            # its processes): end it by its id before the namespace goes.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._namespaces.clear()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    """A fresh switch for one test; skipped (with the reason) where namespaces cannot be made."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    n = Net(tmp_path)
    try:
        yield n
    finally:
        n.close()


# -- what runs on the hosts --------------------------------------------------------------------------------------


class NatsNode:
    """One nats-server with JetStream on a host (clustered when it has peers)."""

    def __init__(self, host: Host, proc: NsProcess) -> None:
        self.host, self.proc = host, proc

    @property
    def url(self) -> str:
        return f"nats://{self.host.ip}:{NATS_PORT}"

    def healthy(self) -> bool:
        """Whether the node's /healthz says it (and its JetStream) is ready."""
        return self.host.call(_http_ok, f"http://{self.host.ip}:{MONITOR_PORT}/healthz", timeout=5)


def start_nats(
    host: Host, data_dir: Path | None = None, *, peers: Sequence[Host] = (), config: str = ""
) -> NatsNode:
    """Start nats-server -js on ``host`` (port 4222, monitoring 8222); with ``peers``, clustered with them.

    ``config``: lines of a nats-server configuration file for what has no flag (``ping_interval``).
    """
    store = data_dir or host.net.log_dir / f"nats-{host.name}"
    store.mkdir(parents=True, exist_ok=True)
    argv = [nats_server_binary()]
    if config:
        path = host.net.log_dir / f"nats-{host.name}.conf"
        path.write_text(config + "\n")
        argv += ["-c", str(path)]
    argv += [
        "-js", "-sd", str(store), "-a", "0.0.0.0", "-p", str(NATS_PORT), "-m", str(MONITOR_PORT), "-n", host.name,
    ]
    if peers:
        routes = ",".join(f"nats://{p.ip}:{ROUTE_PORT}" for p in peers if p is not host)
        argv += ["--cluster_name", "gtm", "--cluster", f"nats://{host.ip}:{ROUTE_PORT}", "--routes", routes]
    proc = host.run(argv, name="nats-server")
    host.wait_listening(NATS_PORT, proc=proc)
    return NatsNode(host, proc)


def start_cluster(hosts: Sequence[Host], *, timeout: float = 30.0, config: str = "") -> list[NatsNode]:
    """A NATS cluster, one node per host; returns once every node's JetStream is ready."""
    nodes = [start_nats(h, peers=hosts, config=config) for h in hosts]
    for node in nodes:
        wait_until(node.healthy, timeout=timeout, step=0.2)
    return nodes


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            status: int = resp.status
            return status == 200
    except OSError:
        return False


def start_service(
    host: Host, name: str, env: dict[str, str], *, nats_kwargs: dict[str, Any] | None = None, label: str | None = None
) -> NsProcess:
    """``python -m services.<name>`` on ``host`` (JSON logs); ``nats_kwargs`` go to every bus.connect."""
    full = {
        "GTM_LOG_FORMAT": "json",
        "GTM_EDGE_STATE_DIR": str(host.net.log_dir / f"edge-state-{host.name}"),
        **env,
    }
    if nats_kwargs:
        full["GTM_TEST_NATS_KWARGS"] = json.dumps(nats_kwargs)
        argv = [sys.executable, "-m", "tests.netns", "service", name]
    else:
        argv = [sys.executable, "-m", f"services.{name}"]
    return host.run(argv, full, name=label or name)


_HTTP_SERVERS = """
import http.server, sys, threading

class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")

    def log_message(self, *args):
        pass

servers = [http.server.ThreadingHTTPServer(("0.0.0.0", int(p)), Ok) for p in sys.argv[1:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""


def start_http(host: Host, *ports: int) -> NsProcess:
    """One process answering 200 to every GET on each of ``ports`` of ``host`` (default 80).

    Kill it for a real outage: its sockets refuse at once.
    """
    ports = ports or (80,)
    proc = host.run([sys.executable, "-c", _HTTP_SERVERS, *map(str, ports)], name=f"http-{ports[0]}")
    for port in ports:
        host.wait_listening(port, proc=proc)
    return proc


def _dns(server: str, name: str, qtype: str, port: int, timeout: float) -> dns.message.Message:
    q = dns.message.make_query(name, dns.rdatatype.from_text(qtype))
    return dns.query.udp(q, server, port=port, timeout=timeout)


def dns_query(
    client: Host, server: str, name: str, qtype: str = "A", *, port: int = 53, timeout: float = 1.0
) -> dns.message.Message:
    """One UDP DNS query from inside ``client`` to ``server``:``port``."""
    return client.call(_dns, server, name, qtype, port, timeout, timeout=timeout + 5)


def dns_answer(client: Host, server: str, name: str, *, timeout: float = 1.0) -> list[str] | None:
    """The addresses ``server`` answers for ``name`` from ``client`` (None: no reply in ``timeout``)."""
    try:
        return answer_addresses(dns_query(client, server, name, timeout=timeout))
    except dns.exception.Timeout:
        return None


class NsApi:
    """The config service's REST API on ``host``'s loopback, called from inside that namespace."""

    def __init__(self, host: Host, port: int = 8080) -> None:
        self.host = host
        self.api = Api(f"http://127.0.0.1:{port}/api/v1")

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.host.call(self.api.request, method, path, body, timeout=15)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def put(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("PATCH", path, body)


class Arrival(NamedTuple):
    """One message a :class:`Bus` recording received."""

    t: float  # time.monotonic() of its arrival
    subject: str
    data: bytes


class Bus:
    """A NATS client of the test itself, living on ``host`` (so a cut of that host cuts it too).

    Its calls run on the host's event loop; recordings fill from that loop's thread.
    """

    def __init__(self, host: Host, url: str, *, timeout: float = 5.0, **kwargs: Any) -> None:
        import nats

        self.host = host
        opts: dict[str, Any] = {"reconnect_time_wait": 0.1, "max_reconnect_attempts": -1, "connect_timeout": 2}
        self.nc: Any = host.arun(nats.connect(url.split(","), **{**opts, **kwargs}))
        self.js: Any = self.nc.jetstream(timeout=timeout)
        host.net.on_close(self.close)

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float = 30.0) -> T:
        return self.host.arun(coro, timeout=timeout)

    def prepare(self) -> None:
        """Create the streams and the config bucket (as any GTM service would)."""
        from shared import bus

        async def go() -> None:
            await bus.ensure_streams(self.js)
            await bus.config_bucket(self.js)

        self.run(go())

    def put(self, bucket: str, key: str, value: bytes, *, timeout: float = 10.0) -> int:
        """``kv.put``; the revision."""

        async def go() -> int:
            kv = await self.js.key_value(bucket)
            revision: int = await kv.put(key, value)
            return revision

        return self.run(go(), timeout=timeout)

    def configure(self, pools: dict[str, Any] | None = None, domains: dict[str, Any] | None = None) -> None:
        """Write pools and domains (shared.resources Structs) to the config bucket, as the API would."""
        import msgspec

        from shared import subjects

        for name, pool in (pools or {}).items():
            self.put(subjects.CONFIG_BUCKET, subjects.pool_key(name), msgspec.json.encode(pool))
        for fqdn, domain in (domains or {}).items():
            self.put(subjects.CONFIG_BUCKET, subjects.domain_key(fqdn), msgspec.json.encode(domain))

    def publish(self, subject: str, data: bytes) -> None:
        async def go() -> None:
            await self.nc.publish(subject, data)
            await self.nc.flush(timeout=5)

        self.run(go())

    def record(self, subject: str) -> list[Arrival]:
        """Every message on ``subject`` from now on, appended as it arrives."""
        got: list[Arrival] = []

        async def on(msg: Any) -> None:
            got.append(Arrival(time.monotonic(), msg.subject, msg.data))

        async def go() -> None:
            await self.nc.subscribe(subject, cb=on)
            await self.nc.flush(timeout=5)

        self.run(go())
        return got

    def last(self, stream: str, subject: str) -> bytes | None:
        """The data of the last message of ``subject`` in ``stream`` (None: none)."""

        async def go() -> bytes | None:
            try:
                msg = await self.js.get_last_msg(stream, subject)
            except Exception:  # noqa: BLE001 - none (or not reachable): the caller polls
                return None
            data: bytes = msg.data
            return data

        return self.run(go())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.nc.close(), timeout=5)


def http_pool(name: str, *targets: tuple[str, int], interval_s: float = 1.0, **check: Any) -> Any:
    """A pool whose addresses (ip, port) are HTTP-checked every ``interval_s`` (fails at the first failure)."""
    from shared.resources import Address, HealthCheck, Pool

    hc = HealthCheck(
        protocol="http", port=None, interval_s=interval_s, timeout_s=0.5, failures=1, successes=1, **check
    )
    addresses = [
        Address(name=f"{name}-{i + 1}", address=ip, health_check=msgspec_replace(hc, port=port))
        for i, (ip, port) in enumerate(targets)
    ]
    return Pool(type="ipv4", name=name, addresses=addresses)


def msgspec_replace(struct: T, **changes: Any) -> T:
    import msgspec

    return msgspec.structs.replace(struct, **changes)  # type: ignore[type-var]


def sequence_domain(fqdn: str, *pools: str, **kw: Any) -> Any:
    """An enabled A domain answering the first available of ``pools``, in that order."""
    from shared.resources import Domain, PoolRef

    refs = [PoolRef(pool=p, sequence=i + 1) for i, p in enumerate(pools)]
    return Domain(**{"name": fqdn, "record_type": "A", "enabled": True, "ttl": 30, "pools": refs, **kw})


def gtm_env(nats: str, **extra: str) -> dict[str, str]:
    """The environment of a GTM service on the test network."""
    return {"NATS_URL": nats, "GTM_SCHEDULER_LEASE_S": "2", **extra}


def _service_main(name: str) -> None:
    """Run ``services.<name>`` with ``GTM_TEST_NATS_KWARGS`` added to every ``shared.bus.connect``."""
    import runpy

    from shared import bus

    extra: dict[str, Any] = json.loads(os.environ.get("GTM_TEST_NATS_KWARGS", "{}"))
    original = bus.connect

    async def connect(settings: Any, **kwargs: Any) -> Any:
        return await original(settings, **{**extra, **kwargs})

    bus.connect = connect
    sys.argv = [f"services.{name}"]
    runpy.run_module(f"services.{name}", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "service":
        _service_main(sys.argv[2])
    else:
        sys.exit("usage: python -m tests.netns service <name>")
