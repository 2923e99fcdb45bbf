"""UDP and TCP DNS listeners around a Responder (SO_REUSEPORT, UDP rate limiting; TCP in :mod:`.tcp`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any

import structlog

from services.edge.responder import Responder
from services.edge.rrl import DROP, Limiter, truncated
from services.edge.stats import ANSWER_SECONDS, LATENCY_SAMPLE
from services.edge.tcp import MAX_TCP_CONNECTIONS, TCP_IDLE_S, TCP_STALL_S, TcpConnections, TcpProtocol, limit_buffers

log = structlog.get_logger(__name__)

UDP_RCVBUF = 4 * 1024 * 1024
TCP_BACKLOG = 1024
RRL_TICK_S = 0.02  # how often the loop moves the rate limiter's coarse clock (it counts whole seconds)


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
                if verdict == DROP:
                    return
                reply = truncated(reply)  # SLIP: a real client retries over TCP, which is never limited
        try:
            self._sendto(reply, addr)
        except BlockingIOError:
            if self._transport is not None:
                self._transport.sendto(reply, addr)  # queued by the loop
        except OSError:
            pass  # e.g. ICMP-induced errors: the client is gone

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from clients that left


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
    ) -> None:
        self.responder = responder
        self.limiter = limiter
        self.host, self.port = host, port
        self.tcp_idle_s, self.tcp_stall_s = tcp_idle_s, tcp_stall_s
        self.conns = TcpConnections(max_tcp)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Bind UDP and TCP and start answering."""
        loop = asyncio.get_running_loop()
        usock = bind_socket(self.host, self.port, socket.SOCK_DGRAM)
        tsock = bind_socket(self.host, self.port, socket.SOCK_STREAM)
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(self.responder, usock, self.limiter), sock=usock
        )
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
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            self.conns.close_all()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)

    def _tick(self) -> None:
        """Move the limiter's clock, and again in a moment."""
        if self.limiter is None:
            return
        self.limiter.tick(time.monotonic())
        self._ticker = asyncio.get_running_loop().call_later(RRL_TICK_S, self._tick)
