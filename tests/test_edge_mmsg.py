"""The batch UDP path (recvmmsg/sendmmsg through ctypes) and the transport path it falls back to.

Real sockets on 127.0.0.1 and ::1: bursts answered whole and each reply to its own sender,
malformed packets and failing answers among good ones, the rate limiter, a full send buffer,
the sender's address as the Responder sees it, and the fallback when the calls are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from services.edge import mmsg, server
from services.edge.responder import Responder
from services.edge.rrl import Limiter
from services.edge.server import BatchUdp, DnsListener
from services.edge.table import AnswerTable
from tests.support import answer_addresses, free_port
from tests.test_edge_core import answer_set, group

NAMES = 50
PATHS = ["batch", "transport"]


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_mmsg = pytest.mark.skipif(mmsg.load() is None, reason="recvmmsg/sendmmsg unavailable here")
needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no ::1")


def _table() -> AnswerTable:
    """n0 .. n49.example.com, each with its own address 10.0.0.<i>."""
    table = AnswerTable()
    for i in range(NAMES):
        table.apply(answer_set(f"n{i}.example.com", "A", group(f"10.0.0.{i}")))
    return table


class Recording(Responder):
    """A Responder that remembers each client address it was given, and fails on one name."""

    __slots__ = ("clients",)

    def __init__(self, table: AnswerTable) -> None:
        super().__init__(table)
        self.clients: list[object] = []

    def answer(self, data: bytes, tcp: bool = False, client: object = None) -> bytes | None:
        self.clients.append(client)
        if b"\x04boom" in data:
            raise RuntimeError("boom")
        return super().answer(data, tcp, client)


@contextlib.asynccontextmanager
async def _listening(host: str, *, batch: bool, **kw: Any) -> AsyncIterator[tuple[DnsListener, int]]:
    port = free_port()
    responder = kw.pop("responder", None) or Responder(_table())
    listener = DnsListener(responder, host, port, batch=batch, **kw)
    await listener.start()
    try:
        yield listener, port
    finally:
        await listener.stop()


@contextlib.contextmanager
def _clients(family: int, n: int) -> Iterator[list[socket.socket]]:
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
            s.setblocking(False)
        yield socks
    finally:
        for s in socks:
            s.close()


async def _collect(socks: list[socket.socket], want: int, timeout: float = 5.0) -> dict[int, list[bytes]]:
    """The datagrams each socket (by index) received, until ``want`` in all or ``timeout``."""
    got: dict[int, list[bytes]] = {i: [] for i in range(len(socks))}
    deadline = time.monotonic() + timeout
    while sum(map(len, got.values())) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        for i, s in enumerate(socks):
            with contextlib.suppress(BlockingIOError):
                while True:
                    got[i].append(s.recv(4096))
    return got


def _query(qid: int, name: str, *, edns: int = 0) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=edns)
    q.id = qid
    return q.to_wire()


async def _burst(host: str, family: int, *, batch: bool, clients: int = 20, each: int = 25) -> str:
    """Send clients * each distinct queries at once; check every reply; return the UDP path that served."""
    async with _listening(host, batch=batch) as (listener, port):
        with _clients(family, clients) as socks:
            sent: dict[tuple[int, int], str] = {}
            for j in range(each):
                for c, s in enumerate(socks):
                    qid = c * each + j
                    name = f"n{qid % NAMES}.example.com"
                    sent[(c, qid)] = name
                    s.sendto(_query(qid, name, edns=0 if qid % 2 else -1), (host, port))
            got = await _collect(socks, len(sent))
        seen = {}
        for c, packets in got.items():
            for packet in packets:
                msg = dns.message.from_wire(packet)
                assert (c, msg.id) in sent, f"reply {msg.id} reached client {c}, not its sender"
                name = sent[(c, msg.id)]
                assert msg.question[0].name.to_text() == name + "."
                assert answer_addresses(msg) == [f"10.0.0.{int(name[1:].split('.')[0])}"]
                seen[(c, msg.id)] = name
        assert len(seen) == len(sent) == clients * each, f"{len(sent) - len(seen)} queries unanswered"
        return listener.udp_path


@needs_mmsg
async def test_the_batch_path_is_chosen_by_itself() -> None:
    async with _listening("127.0.0.1", batch=True) as (listener, _):
        assert listener.udp_path == "batch"


@pytest.mark.parametrize("path", PATHS)
async def test_a_burst_of_500_distinct_queries_all_get_their_replies_each_to_its_sender(path: str) -> None:
    if path == "batch" and mmsg.load() is None:
        pytest.skip("recvmmsg/sendmmsg unavailable here")
    assert await _burst("127.0.0.1", socket.AF_INET, batch=path == "batch") == path


@needs_ipv6
@pytest.mark.parametrize("path", PATHS)
async def test_ipv6_bursts_are_answered_too(path: str) -> None:
    if path == "batch" and mmsg.load() is None:
        pytest.skip("recvmmsg/sendmmsg unavailable here")
    assert await _burst("::1", socket.AF_INET6, batch=path == "batch") == path


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
async def test_the_responder_sees_the_sender_as_the_socket_module_shows_it(path: str, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    responder = Recording(_table())
    async with _listening(host, batch=path == "batch", responder=responder) as (_, port):
        with _clients(family, 2) as socks:
            for i, s in enumerate(socks):
                s.sendto(_query(1, f"n{i}.example.com"), (host, port))  # distinct: neither is a cached reply
            await _collect(socks, 2)
    assert [c[0] for c in responder.clients] == [host, host]  # type: ignore[index]
    assert all(type(c) is tuple for c in responder.clients)


@pytest.mark.parametrize("path", PATHS)
async def test_malformed_packets_and_failing_answers_among_good_ones_lose_nothing_else(path: str) -> None:
    responder = Recording(_table())
    async with _listening("127.0.0.1", batch=path == "batch", responder=responder) as (_, port):
        with _clients(socket.AF_INET, 1) as (s,):
            bad_question = b"\x13\x88\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example"  # name runs off the end
            packets = []
            for i in range(30):
                packets.append(_query(i, f"n{i}.example.com"))
                if i % 3 == 0:
                    packets += [bad_question, b"\x00\x01garbage", _query(1000 + i, "boom.example.com")]
            for p in packets:
                s.sendto(p, ("127.0.0.1", port))
            got = await _collect([s], 30 + 10, timeout=2.0)
    replies = [dns.message.from_wire(p, question_only=True) if p[:2] != b"\x13\x88" else p for p in got[0]]
    good = sorted(m.id for m in replies if isinstance(m, dns.message.Message))
    assert good == list(range(30))  # the failing answers got nothing, the others everything
    formerr = [p for p in replies if isinstance(p, bytes)]
    assert len(formerr) == 10 and all(p[3] & 0xF == dns.rcode.FORMERR for p in formerr)
    assert len(responder.clients) == len(packets)


@pytest.mark.parametrize("path", PATHS)
async def test_the_rate_limiter_still_drops_and_slips(path: str) -> None:
    limiter = Limiter(rate=5, slip=2, now=time.monotonic())
    async with _listening("127.0.0.1", batch=path == "batch", limiter=limiter) as (listener, port):
        assert listener.udp_path == path or mmsg.load() is None
        with _clients(socket.AF_INET, 1) as (s,):
            for i in range(40):
                s.sendto(_query(i, "n1.example.com"), ("127.0.0.1", port))
            got = await _collect([s], 40, timeout=1.0)
    replies = [dns.message.from_wire(p) for p in got[0]]
    full = [m for m in replies if not m.flags & dns.flags.TC]
    slipped = [m for m in replies if m.flags & dns.flags.TC]
    assert len(full) == 5 and all(answer_addresses(m) == ["10.0.0.1"] for m in full)
    assert all(not m.answer for m in slipped)
    assert len(slipped) == limiter.counts.slip == 35 // 2
    assert limiter.counts.drop == 35 - 35 // 2


@needs_mmsg
async def test_replies_that_cannot_go_now_wait_for_the_socket_and_then_go(monkeypatch: pytest.MonkeyPatch) -> None:
    async with _listening("127.0.0.1", batch=True) as (listener, port):
        batch = listener._batch
        assert batch is not None
        ring = batch._ring
        real, calls = ring.send, []

        def full_once(fd: int, start: int, count: int) -> int:
            calls.append((start, count))
            if len(calls) == 1:
                return real(fd, start, min(count, start + 1))  # one goes out, then the buffer is "full"
            if len(calls) == 2:
                raise BlockingIOError(11, "full")
            return real(fd, start, count)

        monkeypatch.setattr(ring, "send", full_once)
        with _clients(socket.AF_INET, 1) as (s,):
            for i in range(10):
                s.sendto(_query(i, f"n{i}.example.com"), ("127.0.0.1", port))
            got = await _collect([s], 10)
        assert sorted(dns.message.from_wire(p).id for p in got[0]) == list(range(10))
        assert not batch._pending and batch.dropped == 0 and batch.sent == 10


@needs_mmsg
async def test_a_send_that_fails_skips_only_that_reply() -> None:
    async with _listening("127.0.0.1", batch=True) as (listener, port):
        batch = listener._batch
        assert batch is not None
        ring = batch._ring
        real, calls = ring.send, []

        def fail_first(fd: int, start: int, count: int) -> int:
            calls.append(start)
            if len(calls) == 1:
                raise ConnectionRefusedError(111, "refused")
            return real(fd, start, count)

        ring.send = fail_first  # type: ignore[method-assign]
        with _clients(socket.AF_INET, 1) as (s,):
            s.sendto(_query(7, "n7.example.com"), ("127.0.0.1", port))
            assert not (await _collect([s], 1, timeout=0.3))[0]
            s.sendto(_query(8, "n8.example.com"), ("127.0.0.1", port))
            got = await _collect([s], 1)
        assert [dns.message.from_wire(p).id for p in got[0]] == [8]
        assert batch.send_failed == 1


@needs_mmsg
async def test_stop_closes_the_socket_and_stops_reading() -> None:
    async with _listening("127.0.0.1", batch=True) as (listener, port):
        batch = listener._batch
        assert batch is not None
    assert batch._sock.fileno() == -1
    with _clients(socket.AF_INET, 1) as (s,):
        s.sendto(_query(1, "n1.example.com"), ("127.0.0.1", port))
        assert not (await _collect([s], 1, timeout=0.2))[0]


async def test_without_recvmmsg_the_transport_path_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmsg, "load", lambda: None)
    async with _listening("127.0.0.1", batch=True) as (listener, port):
        assert listener.udp_path == "transport"
        with _clients(socket.AF_INET, 1) as (s,):
            s.sendto(_query(3, "n3.example.com"), ("127.0.0.1", port))
            got = await _collect([s], 1)
    assert answer_addresses(dns.message.from_wire(got[0][0])) == ["10.0.0.3"]


@needs_mmsg
async def test_a_failing_probe_falls_back_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def no(self: mmsg.Ring, fd: int) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(mmsg.Ring, "probe", no)
    async with _listening("127.0.0.1", batch=True) as (listener, _):
        assert listener.udp_path == "transport"


@needs_mmsg
async def test_the_latency_metric_samples_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    observed: list[float] = []
    monkeypatch.setattr(server, "UDP_SECONDS", type("H", (), {"observe": staticmethod(observed.append)})())
    async with _listening("127.0.0.1", batch=True) as (_, port):
        with _clients(socket.AF_INET, 4) as socks:
            for i in range(200):
                socks[i % 4].sendto(_query(i, "n1.example.com"), ("127.0.0.1", port))
            await _collect(socks, 200)
    assert observed and all(0 < s < 0.1 for s in observed)


@needs_mmsg
def test_raw_addresses_convert_as_the_socket_module_shows_them() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.sendto(b"x", a.getsockname())
        a.settimeout(2)
        _, addr = a.recvfrom(10)
    raw = socket.AF_INET.to_bytes(2, sys.byteorder) + addr[1].to_bytes(2, "big") + socket.inet_aton(addr[0]) + bytes(8)
    assert mmsg.sockaddr(raw) == addr
    raw6 = socket.AF_INET6.to_bytes(2, sys.byteorder) + (53).to_bytes(2, "big") + bytes(4)
    raw6 += socket.inet_pton(socket.AF_INET6, "2001:db8::1") + bytes(4)
    assert mmsg.sockaddr(raw6) == ("2001:db8::1", 53, 0, 0)
    assert isinstance(BatchUdp, type)


@needs_mmsg
def test_the_batch_path_serves_on_uvloop_as_the_edge_runs_it() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert uvloop.run(_burst("127.0.0.1", socket.AF_INET, batch=True)) == "batch"
