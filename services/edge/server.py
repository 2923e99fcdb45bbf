"""UDP and TCP DNS listeners around a Responder (SO_REUSEPORT, UDP rate limiting; TCP in :mod:`.tcp`).

UDP takes one of two paths, chosen at start: :class:`BatchUdp` (Linux: ``recvmmsg``/``sendmmsg`` through
:mod:`.mmsg`, up to 64 datagrams per system call, driven by ``loop.add_reader``; replies of one size to
one sender go as one segmented message where the kernel has UDP GSO), or, where those calls cannot be
had, :class:`UdpProtocol` on the loop's datagram transport (one datagram per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections import deque
from typing import Any

import structlog

from services.edge import mmsg
from services.edge.responder import Responder
from services.edge.rrl import Limiter, limited
from services.edge.stats import ANSWER_SECONDS, LATENCY_SAMPLE
from services.edge.tcp import MAX_TCP_CONNECTIONS, TCP_IDLE_S, TCP_STALL_S, TcpConnections, TcpProtocol, limit_buffers

log = structlog.get_logger(__name__)

UDP_RCVBUF = 4 * 1024 * 1024
TCP_BACKLOG = 1024
RRL_TICK_S = 0.02  # how often the loop moves the rate limiter's coarse clock (it counts whole seconds)
BATCH = 64  # datagrams per recvmmsg/sendmmsg
BATCH_ROUNDS = 8  # full batches read per readiness callback before the loop's other work gets a turn
MAX_PENDING = 4096  # replies held while the socket's send buffer is full; beyond, dropped (counted)
MAX_CLIENTS = 65536  # cached sender addresses (raw sockaddr -> tuple); cleared when full
# Errors of a segmented send that mean this kernel or route will not segment (checksums off, IPsec, MTU):
# the replies go one by one, and the listener stops segmenting.
GSO_REFUSED = frozenset((errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP))


def bind_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A non-blocking socket bound with SO_REUSEPORT (so worker processes share the port)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=kind)[0]
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            limit_buffers(sock)  # before listen(): accepted connections inherit them
        else:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind(addr)
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


UDP_SECONDS = ANSWER_SECONDS.labels("udp")


class UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram at once, sending straight on the socket (unless the rate limit says no)."""

    def __init__(self, responder: Responder, sock: socket.socket, limiter: Limiter | None = None) -> None:
        self._answer = responder.answer
        self._limit = limiter.check if limiter is not None else None
        self._sendto = sock.sendto
        self._transport: asyncio.DatagramTransport | None = None
        self._n = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._n += 1
        if not self._n % LATENCY_SAMPLE:
            started = time.perf_counter()
            self._reply(data, addr)
            UDP_SECONDS.observe(time.perf_counter() - started)
            return
        self._reply(data, addr)

    def _reply(self, data: bytes, addr: Any) -> None:
        try:
            reply = self._answer(data, False, addr)
        except Exception:  # never let one packet hurt the listener
            log.exception("dns_answer_failed", size=len(data))
            return
        if reply is None:
            return
        limit = self._limit
        if limit is not None:
            verdict = limit(addr[0])
            if verdict:
                reply = limited(verdict, reply)
                if reply is None:
                    return
        try:
            self._sendto(reply, addr)
        except BlockingIOError:
            if self._transport is not None:
                self._transport.sendto(reply, addr)  # queued by the loop
        except OSError:
            pass  # e.g. ICMP-induced errors: the client is gone

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from clients that left


_SLOT = mmsg.SLOT


class BatchUdp:
    """Answers datagrams in batches: one ``recvmmsg`` for up to :data:`BATCH` queries, one ``sendmmsg`` for the replies.

    Per datagram it does what :class:`UdpProtocol` does (answer, rate limit, send); a reply that cannot go
    now (EAGAIN) waits in a bounded queue sent when the socket is writable; one that fails otherwise (an
    ICMP-induced error: the client left) is skipped. ``sent``, ``send_failed`` and ``dropped`` count them.

    With ``gso`` (and a kernel that has it), replies of one size to one sender (address and port) in a
    batch go as one ``UDP_SEGMENT`` message, cut into datagrams by the kernel: a resolver that sends
    many queries from one port costs one pass through the network stack per batch, not per reply.
    ``coalesced`` counts the replies sent so. If the kernel refuses (:data:`GSO_REFUSED`), those replies
    go one by one and the listener stops segmenting (logged ``udp_gso_refused``).
    """

    def __init__(
        self,
        responder: Responder,
        sock: socket.socket,
        limiter: Limiter | None = None,
        *,
        slots: int = BATCH,
        gso: bool = True,
    ) -> None:
        self._answer = responder.answer
        self._limiter = limiter
        self._sock = sock
        self._fd = sock.fileno()
        self._ring = mmsg.Ring(sock.family, slots)
        self._ring.probe(self._fd)
        self._replies = responder.reply_cache()
        # Sender address (without its port) -> (the sender as the responder sees it, its rate-limit subnet or None).
        self._clients: dict[Any, tuple[tuple[Any, ...], Any]] = {}
        self._pending: deque[tuple[bytes, tuple[Any, ...]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._n = 0
        self.gso = gso and mmsg.gso_supported(sock)
        self._messages: list[list[int]] | None = None  # while a packed batch is sent: each message's send slots
        self.sent = self.send_failed = self.dropped = self.coalesced = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer whatever arrives, from now on."""
        self._loop = loop
        loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        """Stop reading and writing; close the socket."""
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._loop = None
        self._pending.clear()
        self._sock.close()
        self._ring.close()

    def _on_readable(self) -> None:
        """Receive, answer and reply, batch after batch, while full batches keep coming (a few at most)."""
        ring = self._ring
        for _ in range(BATCH_ROUNDS):
            try:
                n = ring.recv(self._fd)
            except OSError as exc:  # e.g. a queued ICMP error: nothing lost but that notice
                log.debug("dns_recv_failed", error=str(exc))
                return
            if not n:
                return
            self._n += n
            if self._n >= LATENCY_SAMPLE:  # one batch in about LATENCY_SAMPLE queries: its time per reply
                self._n = 0
                started = time.perf_counter()
                self._serve(n)
                UDP_SECONDS.observe((time.perf_counter() - started) / n)
            else:
                self._serve(n)
            if n < ring.slots:
                return

    def _serve(self, n: int) -> None:
        """Answer received slots ``0 .. n-1`` and send the replies (the hot loop: every step here is per query).

        A query whose bytes after the ID are in the reply cache is answered from there (its ID copied
        into the cached reply in the send buffer); any other is parsed and answered by the responder.
        With :attr:`gso`, replies are grouped by sender and size as they are made, and a batch with a
        group of more than one goes out packed (:meth:`mmsg.Ring.pack`).
        """
        ring = self._ring
        data, words, out = ring.recv_view, ring.recv_words, ring.send_view
        ids_in, ids_out = ring.recv_ids, ring.send_ids
        names, names_q, addr_mask = ring.names_view, ring.names_q, ring.addr_mask
        send_ptrs, iov_ptrs = ring.send_ptrs, ring.send_iov_ptrs
        hdr_ptrs, name_ptr, iov_words, iovlen_ptr = ring.hdr_ptrs, ring.name_ptr, ring.iov_ptrs, ring.iovlen_ptr
        v4 = ring.family == socket.AF_INET
        clients, replies = self._clients, self._replies.current()
        answer, limiter = self._answer, self._limiter
        groups: dict[Any, list[int]] | None = {} if self.gso else None  # (sender, size) -> [sockaddr, size, slots]
        w = 0
        k = 0
        moved = False  # whether a send header points at another slot's sender than its own
        for i, o, length, key_at, name in ring.plan[:n]:
            end = o + words[length]
            hit = replies.get(data[o + 2 : end].tobytes())
            if v4:
                w = names_q[key_at]  # family, port and address
                key: Any = w & addr_mask
            else:
                key = names[key_at + 8 : key_at + 28].tobytes()
            peer = clients.get(key)
            if peer is None:
                peer = self._peer(i, key)
            client, subnet = peer
            so = k * _SLOT
            if hit is not None and subnet is None:  # the common case: cached, and no limit to apply
                hit.hits += 1
                size = hit.size
                ids_out[so >> 1] = ids_in[o >> 1]
                out[so + 2 : so + size] = hit.tail
            else:
                try:
                    if hit is not None:
                        hit.hits += 1
                        reply: bytes | None = data[o : o + 2].tobytes() + hit.tail
                    else:
                        reply = answer(data[o:end].tobytes(), False, client)
                    if reply is None:
                        continue
                    if subnet is not None and limiter is not None:
                        verdict = limiter.check_subnet(subnet, client[0])
                        if verdict:
                            reply = limited(verdict, reply)
                            if reply is None:
                                continue
                except Exception:  # never let one packet hurt the listener, nor the rest of its batch
                    log.exception("dns_answer_failed", size=end - o)
                    continue
                size = len(reply)
                if size > _SLOT:  # not from this edge over UDP; sent alone all the same
                    self._send_one(reply, ring.address(i))
                    continue
                out[so : so + size] = reply
            iov_ptrs[k * iov_words + iovlen_ptr] = size
            if k != i:  # an earlier query got no reply: this reply goes out from an earlier send slot
                send_ptrs[k * hdr_ptrs + name_ptr] = name
                moved = True
            if groups is not None:
                g: Any = w << 13 | size if v4 else (names[key_at + 2 : key_at + 4].tobytes(), key, size)
                group = groups.get(g)
                if group is None:
                    groups[g] = [name, size, k]
                else:
                    group.append(k)
            k += 1
        if k:
            if groups is not None and len(groups) < k:
                count = self._flush_packed(groups)
                ring.reset_names(k if moved else count)  # pack pointed headers at other slots' senders
                return
            if ring.packed:
                ring.unpack()
            self._flush(k)
        if moved:
            ring.reset_names(k)

    def _peer(self, i: int, key: Any) -> tuple[tuple[Any, ...], Any]:
        """The sender of slot ``i`` (its address, as the socket module shows it) and its rate-limit subnet,
        worked out once per address (the cache is cleared when full)."""
        clients = self._clients
        if len(clients) >= MAX_CLIENTS:
            clients.clear()
        client = self._ring.address(i)[:1]
        subnet = self._limiter.subnet(client[0]) if self._limiter is not None else None
        peer = clients[key] = (client, subnet)
        return peer

    def _flush_packed(self, groups: dict[Any, list[int]]) -> int:
        """Send the batch's replies as messages of one group each (segmented where more than one); how many."""
        messages = self._messages = self._ring.pack(groups.values())
        try:
            self._flush(len(messages))
        finally:
            self._messages = None
        return len(messages)

    def _flush(self, k: int) -> None:
        """Send prepared send headers ``0 .. k-1``: what cannot go now waits, failures are skipped and counted."""
        ring, fd, messages = self._ring, self._fd, self._messages
        start = 0
        while start < k:
            try:
                went = ring.send(fd, start, k)
            except BlockingIOError:
                self._hold(start, k)
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if messages is not None and len(messages[start]) > 1:
                    self._unsegment(start, exc)
                else:  # this one reply (e.g. an ICMP-induced error): skip it
                    self.send_failed += 1
                start += 1
                continue
            if messages is None:
                self.sent += went
            else:
                replies = segmented = 0
                for message in messages[start : start + went]:
                    replies += len(message)
                    if len(message) > 1:
                        segmented += len(message)
                self.sent += replies
                self.coalesced += segmented
            start += went

    def _unsegment(self, j: int, exc: OSError) -> None:
        """Send the replies of segmented message ``j``, which failed, one by one; stop segmenting if the
        kernel refused to segment."""
        if exc.errno in GSO_REFUSED and self.gso:
            self.gso = False
            log.warning("udp_gso_refused", error=str(exc), listen=self._sock.getsockname())
        client, replies = self._replies_of(j)
        for reply in replies:
            self._send_one(reply, client)

    def _replies_of(self, j: int) -> tuple[tuple[Any, ...], list[bytes]]:
        """The receiver and the reply or replies of send header ``j``."""
        ring = self._ring
        i = (ring.send_ptrs[j * ring.hdr_ptrs + ring.name_ptr] - ring.names_base) // ring.name_stride
        replies = []
        for s in self._messages[j] if self._messages is not None else (j,):
            size = ring.send_iov_ptrs[s * ring.iov_ptrs + ring.iovlen_ptr]
            replies.append(bytes(ring.send_data[s * _SLOT : s * _SLOT + size]))
        return ring.address(i), replies

    def _hold(self, start: int, k: int) -> None:
        """Queue the replies of send headers ``start .. k-1`` as (reply, address) until the socket is writable."""
        for j in range(start, k):
            client, replies = self._replies_of(j)
            for reply in replies:
                self._queue(reply, client)

    def _send_one(self, reply: bytes, client: tuple[Any, ...]) -> None:
        """Send one reply with ``sendto`` (queued if the socket is full, skipped on other errors)."""
        if self._pending:
            self._queue(reply, client)
            return
        try:
            self._sock.sendto(reply, client)
            self.sent += 1
        except BlockingIOError:
            self._queue(reply, client)
        except OSError:
            self.send_failed += 1

    def _queue(self, reply: bytes, client: tuple[Any, ...]) -> None:
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        if not self._pending and self._loop is not None:
            self._loop.add_writer(self._fd, self._on_writable)
        self._pending.append((reply, client))

    def _on_writable(self) -> None:
        """Send the queued replies until the socket is full again."""
        pending, sendto = self._pending, self._sock.sendto
        while pending:
            reply, client = pending[0]
            try:
                sendto(reply, client)
                self.sent += 1
            except BlockingIOError:
                return
            except OSError:
                self.send_failed += 1
            pending.popleft()
        if self._loop is not None:
            self._loop.remove_writer(self._fd)


class DnsListener:
    """One UDP endpoint and one TCP server on the same address."""

    def __init__(
        self,
        responder: Responder,
        host: str,
        port: int,
        *,
        tcp_idle_s: float = TCP_IDLE_S,
        tcp_stall_s: float = TCP_STALL_S,
        max_tcp: int = MAX_TCP_CONNECTIONS,
        limiter: Limiter | None = None,
        batch: bool = True,
        gso: bool = True,
    ) -> None:
        """``batch``: use :class:`BatchUdp` where the system has recvmmsg/sendmmsg (False: always the transport);
        ``gso``: let it send segmented replies where the kernel can."""
        self.responder = responder
        self.limiter = limiter
        self.host, self.port = host, port
        self.tcp_idle_s, self.tcp_stall_s = tcp_idle_s, tcp_stall_s
        self.conns = TcpConnections(max_tcp)
        self.batch, self.gso = batch, gso
        self._udp: asyncio.DatagramTransport | None = None
        self._batch: BatchUdp | None = None
        self._tcp: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Bind UDP and TCP and start answering."""
        loop = asyncio.get_running_loop()
        usock = bind_socket(self.host, self.port, socket.SOCK_DGRAM)
        tsock = bind_socket(self.host, self.port, socket.SOCK_STREAM)
        if self.batch:
            self._batch = self._batch_udp(usock)
        if self._batch is not None:
            self._batch.start(loop)
        else:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: UdpProtocol(self.responder, usock, self.limiter), sock=usock
            )
        gso = self._batch is not None and self._batch.gso
        log.info("udp_path", path=self.udp_path, gso=gso, listen=f"{self.host}:{self.port}")
        if self.limiter is not None:
            self._tick()
        self._tcp = await loop.create_server(
            lambda: TcpProtocol(self.responder, self.conns, self.tcp_idle_s, self.tcp_stall_s),
            sock=tsock,
            backlog=TCP_BACKLOG,  # create_server listens again, with 100 unless told: SYNs dropped in bursts
        )

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._ticker is not None:
            self._ticker.cancel()
        if self._batch is not None:
            self._batch.close()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            self.conns.close_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)

    @property
    def udp_path(self) -> str:
        """Which UDP path serves: "batch", "transport", or "" before start."""
        return "batch" if self._batch is not None else "transport" if self._udp is not None else ""

    def _batch_udp(self, sock: socket.socket) -> BatchUdp | None:
        """The batch path on ``sock``, or None where recvmmsg/sendmmsg cannot be used (logged)."""
        try:
            return BatchUdp(self.responder, sock, self.limiter, gso=self.gso)
        except OSError as exc:
            log.info("udp_batch_unavailable", error=str(exc))
            return None

    def _tick(self) -> None:
        """Move the limiter's clock, and again in a moment."""
        if self.limiter is None:
            return
        self.limiter.tick(time.monotonic())
        self._ticker = asyncio.get_running_loop().call_later(RRL_TICK_S, self._tick)
