"""Segmented sends (UDP GSO) on the batch UDP path: many replies to one sender in one system call.

Real sockets on 127.0.0.1 and ::1, the kernel doing the cutting: every reply must still reach its
own sender as a datagram of its own, byte for byte what the responder makes, whatever the mix of
senders, sizes, failures and full buffers in a batch; and where the kernel refuses to segment,
the replies go one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import pytest

from services.edge import mmsg
from services.edge.responder import Responder
from services.edge.server import BatchUdp, DnsListener
from tests.bench.common import answer, publish
from tests.support import Service, answer_addresses, dns_query, free_port
from tests.test_edge_mmsg import Recording, _table

pytestmark = pytest.mark.skipif(mmsg.load() is None, reason="recvmmsg/sendmmsg unavailable here")
SO_NO_CHECK = 11  # Linux: no UDP checksums on send, which the kernel's segmentation refuses


def _gso_here() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return mmsg.gso_supported(s)


needs_gso = pytest.mark.skipif(not _gso_here(), reason="no UDP GSO in this kernel")


def _query(qid: int, name: str) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=False)
    q.id = qid
    return q.to_wire()


@contextlib.contextmanager
def _batch(host: str = "127.0.0.1", responder: Responder | None = None, **kw: Any) -> Iterator[BatchUdp]:
    """A BatchUdp on its own socket, not reading by itself: the test calls ``_on_readable`` (one batch)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    batch = BatchUdp(responder or Responder(_table()), sock, **kw)
    try:
        yield batch
    finally:
        batch.close()


@contextlib.contextmanager
def _clients(host: str, n: int) -> Iterator[list[socket.socket]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
            s.settimeout(2)
        yield socks
    finally:
        for s in socks:
            s.close()


def _serve_once(batch: BatchUdp) -> None:
    time.sleep(0.05)  # loopback delivers at once; this is margin
    batch._on_readable()


def _receive(s: socket.socket, want: int) -> list[bytes]:
    got: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        while len(got) < want:
            got.append(s.recv(4096))
    s.settimeout(0.05)
    with contextlib.suppress(TimeoutError):  # and nothing more
        got.append(s.recv(4096))
    return got


def _sends(batch: BatchUdp) -> list[int]:
    """Record how many messages each sendmmsg was given."""
    ring, calls = batch._ring, []
    real = ring.send

    def counting(fd: int, start: int, count: int) -> int:
        calls.append(count - start)
        return real(fd, start, count)

    ring.send = counting  # type: ignore[method-assign]
    return calls


@needs_gso
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_replies_of_one_size_to_one_sender_go_in_one_send_and_arrive_one_by_one(host: str) -> None:
    expected = Responder(_table())
    with _batch(host) as batch, _clients(host, 1) as (c,):
        calls = _sends(batch)
        queries = [_query(i, "n1.example.com") for i in range(60)]
        for q in queries:
            c.sendto(q, batch._sock.getsockname())
        _serve_once(batch)
        got = _receive(c, 60)
        assert calls == [1] and batch.coalesced == batch.sent == 60
    assert got == [expected.answer(q) for q in queries]  # each its own datagram, in order, with its own ID


@needs_gso
def test_a_mixed_batch_reaches_every_sender_with_exactly_its_own_replies() -> None:
    expected = Responder(_table())
    responder = Recording(_table())  # "boom" fails: that query gets no reply, and the slots behind it move up
    names = ["n1.example.com", "n22.example.com", "boom.example.com", "missing.example.org", "n3.example.com"]
    with _batch(responder=responder) as batch, _clients("127.0.0.1", 3) as socks:
        calls = _sends(batch)
        sent: dict[int, list[bytes]] = {c: [] for c in range(3)}
        for j in range(20):
            c = j % 3
            q = _query(j, names[(j * 7 + c) % len(names)])
            socks[c].sendto(q, batch._sock.getsockname())
            if b"\x04boom" not in q:
                sent[c].append(q)
        _serve_once(batch)
        for c, s in enumerate(socks):
            want = sorted(expected.answer(q) or b"" for q in sent[c])
            assert sorted(_receive(s, len(sent[c]))) == want, f"client {c}"
        assert len(calls) == 1 and calls[0] < 17 and 0 < batch.coalesced <= batch.sent == 17


@needs_gso
def test_a_batch_sent_plain_after_a_packed_one_goes_where_it_should() -> None:
    """The headers a packed batch pointed at other slots' senders are all put back before the next batch."""
    responder = Recording(_table())
    with _batch(responder=responder) as batch, _clients("127.0.0.1", 8) as socks:
        to = batch._sock.getsockname()
        # "boom" gets no reply: every reply behind it moves up a slot. Then 5 messages: (1 2) (3 4) (5) (6) (7).
        socks[7].sendto(_query(0, "boom.example.com"), to)
        for c, qid in ((0, 1), (0, 2), (1, 3), (1, 4), (2, 5), (3, 6), (4, 7)):
            socks[c].sendto(_query(qid, "n1.example.com"), to)
        _serve_once(batch)
        for c, ids in enumerate(([1, 2], [3, 4], [5], [6], [7])):
            assert sorted(dns.message.from_wire(p).id for p in _receive(socks[c], len(ids))) == ids
        assert batch._ring.packed == 5 and batch.coalesced == 4
        for c in range(8):  # one each: sent plain, every header with its own slot's sender
            socks[c].sendto(_query(100 + c, f"n{c}.example.com"), to)
        _serve_once(batch)
        for c in range(8):
            (reply,) = _receive(socks[c], 1)
            assert dns.message.from_wire(reply).id == 100 + c
        assert batch._ring.packed == 0 and batch.coalesced == 4 and batch.sent == 15


@needs_gso
def test_where_the_kernel_refuses_to_segment_the_replies_go_one_by_one_from_then_on() -> None:
    with _batch() as batch, _clients("127.0.0.1", 1) as (c,):
        batch._sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        to = batch._sock.getsockname()
        for round_ in range(2):
            for i in range(20):
                c.sendto(_query(round_ * 100 + i, "n1.example.com"), to)
            _serve_once(batch)
            got = _receive(c, 20)
            assert sorted(dns.message.from_wire(p).id for p in got) == [round_ * 100 + i for i in range(20)]
            assert not batch.gso and batch.coalesced == 0 and batch.send_failed == 0
        assert batch.sent == 40


@needs_gso
def test_a_packed_batch_that_cannot_go_now_waits_and_goes_whole() -> None:
    with _batch() as batch, _clients("127.0.0.1", 2) as socks:
        ring, real, calls = batch._ring, batch._ring.send, []

        def full_once(fd: int, start: int, count: int) -> int:
            calls.append(start)
            if len(calls) == 1:
                raise BlockingIOError(11, "full")
            return real(fd, start, count)

        ring.send = full_once  # type: ignore[method-assign]
        to = batch._sock.getsockname()
        for i in range(40):
            socks[i % 2].sendto(_query(i, "n1.example.com"), to)
        _serve_once(batch)
        assert len(batch._pending) == 40  # as (reply, address), one each
        batch._on_writable()
        for c, s in enumerate(socks):
            assert sorted(dns.message.from_wire(p).id for p in _receive(s, 20)) == list(range(c, 40, 2))
        assert not batch._pending and batch.sent == 40 and batch.dropped == 0


def test_without_gso_every_reply_is_a_message_of_its_own() -> None:
    with _batch(gso=False) as batch, _clients("127.0.0.1", 1) as (c,):
        calls = _sends(batch)
        for i in range(30):
            c.sendto(_query(i, "n1.example.com"), batch._sock.getsockname())
        _serve_once(batch)
        assert len(_receive(c, 30)) == 30
        assert not batch.gso and calls == [30] and batch.coalesced == 0


@needs_gso
def test_pack_keeps_to_the_kernels_limits_and_the_kernel_takes_them() -> None:
    """64 segments at most, 60,000 bytes at most, replies above 1232 bytes alone: each a datagram on arrival."""
    with contextlib.ExitStack() as stack:
        tx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        rx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.settimeout(2)
        ring = mmsg.Ring(socket.AF_INET, 200)
        stack.callback(ring.close)
        ring.names[:16] = mmsg_sockaddr(rx.getsockname())
        name = ring.names_base
        plan = [(100, 70), (1000, 61), (1300, 3), (7, 1)]  # (size, replies)
        groups, slot = [], 0
        for size, count in plan:
            group = [name, size]
            for _ in range(count):
                ring.send_data[slot * mmsg.SLOT : slot * mmsg.SLOT + size] = bytes([slot % 251]) * size
                ring.send_iov_ptrs[slot * ring.iov_ptrs + ring.iovlen_ptr] = size
                group.append(slot)
                slot += 1
            groups.append(group)
        messages = ring.pack(groups)
        assert [len(m) for m in messages] == [64, 6, 60, 1, 1, 1, 1, 1]
        assert ring.send(tx.fileno(), 0, len(messages)) == len(messages)
        got = [rx.recv(65536) for _ in range(slot)]
    want = [bytes([s % 251]) * size for s, size in enumerate(size for size, n in plan for _ in range(n))]
    assert got == want


def mmsg_sockaddr(addr: tuple[str, int]) -> bytes:
    """A raw sockaddr_in for ``addr``."""
    raw = socket.AF_INET.to_bytes(2, sys.byteorder) + addr[1].to_bytes(2, "big") + socket.inet_aton(addr[0])
    return raw + bytes(8)


@needs_gso
@pytest.mark.parametrize("gso", [True, False])
async def test_the_listener_segments_unless_told_not_to(gso: bool) -> None:
    """``GTM_EDGE_UDP_GSO`` reaches the batch path as the listener's ``gso``."""
    listener = DnsListener(Responder(_table()), "127.0.0.1", free_port(), gso=gso)
    await listener.start()
    try:
        assert listener._batch is not None and listener._batch.gso is gso
    finally:
        await listener.stop()


@needs_gso
@pytest.mark.parametrize(("value", "gso"), [(None, True), ("false", False)])
def test_a_real_edge_takes_gtm_edge_udp_gso_and_answers_either_way(
    nats_url: str, log_dir: Path, value: str | None, gso: bool
) -> None:
    asyncio.run(publish(nats_url, [answer("gso.example.com", ["192.0.2.7"])]))
    dns_port = free_port()
    env = {"NATS_URL": nats_url, "GTM_DNS_LISTEN": f"127.0.0.1:{dns_port}"}
    if value is not None:
        env["GTM_EDGE_UDP_GSO"] = value
    svc = Service("edge", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        assert (svc.wait_for_event("udp_path")["path"], svc.wait_for_event("udp_path")["gso"]) == ("batch", gso)
        assert answer_addresses(dns_query(dns_port, "gso.example.com")) == ["192.0.2.7"]
    finally:
        svc.stop()
