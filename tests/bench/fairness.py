"""Fair edges: UDP latency with and without TCP clients that pipeline queries and never read.

``make bench`` (``python -m tests.bench.run fairness``) prints the figures; the load
generator (:class:`HostileTcp`) and the probes serve ``tests/test_edge_fairness.py`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import struct
import threading
import time

import dns.message

from services.edge.tcp import TCP_IDLE_S
from tests.bench.common import BENCH_NAME, Lab, answer, publish

CHUNK = 64 * 1024  # bytes one send() offers: big enough to keep a loopback socket full
SCENARIOS = ((200, 700), (1000, 70))  # (connections, KiB each): the figures of issue 9
TCP_ESTABLISHED = 1  # tcpi_state in Linux's struct tcp_info
PROBES = 200  # UDP queries per phase
PROBE_INTERVAL_S = 0.01  # under load they leave on this schedule from the moment the load starts
PROBE_TIMEOUT_S = 1.0
CLOSE_WAIT_S = TCP_IDLE_S + 5  # how long to watch for the edge closing the hostile connections


def framed_query(name: str, qtype: str = "A") -> bytes:
    """One DNS query with the 2-byte length prefix of DNS over TCP."""
    wire = dns.message.make_query(name, qtype).to_wire()
    return struct.pack("!H", len(wire)) + wire


class HostileTcp:
    """``connections`` TCP clients that each send ``kib`` KiB of pipelined queries and never read.

    A thread pushes the bytes as fast as the kernel takes them (much may sit in the
    clients' own send buffers); the sockets close on exit.
    """

    def __init__(self, port: int, *, connections: int, kib: int, name: str = BENCH_NAME) -> None:
        query = framed_query(name)
        self.port = port
        self.payload = memoryview(query * (kib * 1024 // len(query)))
        self.refused = 0  # connections that failed or were reset while still sending
        self._socks = [self._open() for _ in range(connections)]
        self._at = {sock: 0 for sock in self._socks if sock is not None}  # bytes of the payload sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="hostile-tcp", daemon=True)

    def __enter__(self) -> HostileTcp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self._socks:
            if sock is not None:
                sock.close()

    def closed_by_edge(self) -> int:
        """How many connections the edge refused, reset or closed so far."""
        return self.refused + sum(not _established(s) for s in self._at)

    def _open(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(("127.0.0.1", self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            self.refused += 1
            return None
        return sock

    def _pump(self) -> None:
        """Write to every connection whenever it can take more, until all is sent or we are stopped."""
        with selectors.DefaultSelector() as sel:
            for sock in self._at:
                sel.register(sock, selectors.EVENT_WRITE)
            while not self._stop.is_set() and sel.get_map():
                for key, _ in sel.select(0.1):
                    if not self._send(key.fileobj):  # type: ignore[arg-type]
                        sel.unregister(key.fileobj)  # all sent (now it just sits there) or reset

    def _send(self, sock: socket.socket) -> bool:
        """Send the next chunk; False when this connection has no more to send."""
        at = self._at[sock]
        try:
            n = sock.send(self.payload[at : at + CHUNK])
        except BlockingIOError:
            return True
        except OSError:  # reset by the edge
            self.refused += 1
            del self._at[sock]
            return False
        self._at[sock] = at + n
        return at + n < len(self.payload)


def _established(sock: socket.socket) -> bool:
    """Whether the kernel still has ``sock`` in state ESTABLISHED (not reset, no FIN from the edge)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


def udp_latencies(
    port: int, count: int, *, interval_s: float = 0.0, name: str = BENCH_NAME, timeout: float = PROBE_TIMEOUT_S
) -> list[float]:
    """Latency in seconds of ``count`` UDP queries (inf: no answer within ``timeout``).

    With ``interval_s`` the queries leave on a fixed schedule whatever the answers do (open
    loop, so a stalled edge shows in every query it stalls); without, one after the other.
    """
    wire = bytearray(dns.message.make_query(name, "A").to_wire())
    sent: dict[int, float] = {}
    out = [float("inf")] * count
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        start = time.perf_counter()
        for i in range(count):
            if interval_s:
                _collect(sock, sent, out, until=start + i * interval_s, limit=timeout, early=False)
            wire[:2] = struct.pack("!H", i)
            sent[i] = time.perf_counter()
            sock.send(wire)
            if not interval_s:
                _collect(sock, sent, out, until=sent[i] + timeout, limit=timeout)
                sent.pop(i, None)  # unanswered in time: an answer arriving later is not counted
        _collect(sock, sent, out, until=time.perf_counter() + timeout, limit=timeout)
    return out


def _collect(
    sock: socket.socket, sent: dict[int, float], out: list[float], *, until: float, limit: float, early: bool = True
) -> None:
    """Record answers (slower than ``limit``: none) until ``until``, or until none is outstanding when ``early``."""
    while (left := until - time.perf_counter()) > 0:
        if not sent:
            if not early:
                time.sleep(left)
            return
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            return
        (qid,) = struct.unpack("!H", data[:2])
        if qid in sent:
            took = time.perf_counter() - sent.pop(qid)
            out[qid] = took if took <= limit else float("inf")


def tcp_latency(port: int, *, name: str = BENCH_NAME, timeout: float = PROBE_TIMEOUT_S) -> float:
    """Seconds for a fresh, well-behaved TCP client to connect, ask once and read its answer (inf: none)."""
    started = time.perf_counter()
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        query = dns.message.make_query(name, "A")
        wire = query.to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        head = _exactly(sock, 2)
        reply = _exactly(sock, struct.unpack("!H", head)[0])
        if reply[:2] == wire[:2]:
            return time.perf_counter() - started
    return float("inf")


def _exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}", flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms" if seconds != float("inf") else "    lost   "


def _summary(samples: list[float]) -> str:
    answered = sum(s != float("inf") for s in samples)
    within = sum(s <= 0.5 for s in samples)
    return (
        f"p50 {_ms(pct(samples, 0.5))}  p99 {_ms(pct(samples, 0.99))}  "
        f"answered {answered}/{len(samples)}, {within} within 0.5 s"
    )


def _ratio(loaded: float, quiet: float) -> str:
    return f"{loaded / quiet:.1f}" if loaded != float("inf") else "inf"


def _under_load(port: int, quiet: list[float], connections: int, kib: int) -> None:
    """Print UDP latencies and a well-behaved TCP client's while hostile clients push, and what the edge closed."""
    with HostileTcp(port, connections=connections, kib=kib) as load:
        started = time.monotonic()
        loaded = udp_latencies(port, PROBES, interval_s=PROBE_INTERVAL_S)
        tcp = tcp_latency(port)
        while load.closed_by_edge() < connections and time.monotonic() < started + CLOSE_WAIT_S:
            time.sleep(0.1)
        closed, closed_after = load.closed_by_edge(), time.monotonic() - started
    ratios = [_ratio(pct(loaded, q), pct(quiet, q)) for q in (0.5, 0.99)]
    _line(f"UDP, {connections} TCP x {kib} KiB unread", _summary(loaded))
    _line("  ratio loaded / quiet p50, p99", ", ".join(ratios))
    _line("  well-behaved TCP query meanwhile", _ms(tcp).strip())
    _line("  hostile connections closed by the edge", f"{closed}/{connections} after {closed_after:.1f} s")


def bench_fairness() -> None:
    """Print UDP p50/p99 with no load and under each hostile TCP scenario, and their ratios."""
    print(
        f"\n== fair edges: UDP latency ({PROBES} queries, one every {PROBE_INTERVAL_S * 1000:.0f} ms)"
        " beside TCP clients that pipeline and never read"
    )
    with Lab() as lab:
        asyncio.run(publish(lab.nats.url, [answer(BENCH_NAME, ["127.0.0.2"])]))
        _, port = lab.edge()
        udp_latencies(port, 20)  # warm up
        quiet = udp_latencies(port, PROBES, interval_s=PROBE_INTERVAL_S)
        _line("UDP, no TCP load", _summary(quiet))
        for connections, kib in SCENARIOS:
            _under_load(port, quiet, connections, kib)
