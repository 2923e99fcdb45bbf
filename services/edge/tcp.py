"""DNS over TCP (RFC 7766) that cannot starve UDP: answers in slices, in turns, with bounded buffers.

A client may pipeline queries and never read the answers.  Answering everything a
read brings in one go let 200 such clients hold the event loop for seconds, and UDP
(what most resolvers use) waited behind them.  So a connection gets at most
:data:`TCP_SLICE` answers at a time; the rest of its backlog waits in a round-robin
queue that answers at most :data:`TCP_TURN` queries per event-loop turn, so the loop
polls its sockets (UDP among them) between turns.  A connection with a backlog or
with more unsent answers than :data:`TCP_WRITE_HIGH` is not read, so the kernel's
buffers (:data:`TCP_SOCKET_BUFFER`) push back on the client; one whose answers stay
unread for :data:`TCP_STALL_S` is aborted, and at the connection cap the longest
stalled one, or one idle for :data:`TCP_EVICT_IDLE_S`, makes room for a newcomer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import socket
import struct
import sys
import termios
from typing import Any

import structlog

from services.edge.responder import Responder

log = structlog.get_logger(__name__)

# Limits per edge process. TCP_IDLE_S, TCP_STALL_S and MAX_TCP_CONNECTIONS deserve GTM_EDGE_* settings.
TCP_IDLE_S = 10.0  # RFC 7766 6.2.3: close a connection with no query for this long
TCP_STALL_S = 2.0  # abort one whose unsent answers stay over TCP_WRITE_HIGH this long: it is not reading
MAX_TCP_CONNECTIONS = 1024  # at the cap a newcomer evicts the longest stalled or an idle connection, or is refused
TCP_EVICT_IDLE_S = 1.0  # ... idle at least this long (RFC 7766 6.2.3: under load, close idle connections)
TCP_SLICE = 32  # answers one connection gets before the next connection's turn
TCP_TURN = 256  # answers per event-loop turn across all connections with a backlog (well under 1 ms)
TCP_WRITE_HIGH = 64 * 1024  # unsent answer bytes at which a connection stops being read (asyncio's default)
TCP_WRITE_LOW = 16 * 1024  # ... and below which it is read again
TCP_SOCKET_BUFFER = 64 * 1024  # SO_RCVBUF/SO_SNDBUF of TCP sockets: what the kernel holds for a slow client
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops unsent data


class TcpConnections:
    """The open connections of one listener: the cap, the stalled ones, and the turns of those with a backlog."""

    def __init__(
        self,
        limit: int = MAX_TCP_CONNECTIONS,
        *,
        turn: int = TCP_TURN,
        slice_: int = TCP_SLICE,
        evict_idle_s: float = TCP_EVICT_IDLE_S,
    ) -> None:
        self.limit = limit
        self.turn, self.slice, self.evict_idle_s = turn, slice_, evict_idle_s
        self.open: collections.OrderedDict[TcpProtocol, None] = collections.OrderedDict()  # least recently active first
        self.stalled: dict[TcpProtocol, None] = {}  # insertion order: the longest stalled first
        self.waiting: collections.deque[TcpProtocol] = collections.deque()  # connections with a backlog
        self._next: asyncio.Handle | None = None

    def admit(self, conn: TcpProtocol, now: float) -> bool:
        """Count ``conn`` in; at the cap, evict :meth:`victim` first (False: no victim, refuse ``conn``)."""
        if len(self.open) >= self.limit:
            victim = self.victim(now)
            if victim is None:
                return False
            self.forget(victim)
            victim.reset()
            log.debug("tcp_connection_evicted", peer=str(victim.peer), stalled=victim.stalled)
        self.open[conn] = None
        return True

    def victim(self, now: float) -> TcpProtocol | None:
        """The longest stalled connection, else the least recently active one if idle long enough."""
        if self.stalled:
            return next(iter(self.stalled))
        oldest = next(iter(self.open), None)
        if oldest is not None and now - oldest.active_at >= self.evict_idle_s:
            return oldest
        return None

    def touch(self, conn: TcpProtocol) -> None:
        """``conn`` is active: the last to evict."""
        if conn in self.open:
            self.open.move_to_end(conn)

    def forget(self, conn: TcpProtocol) -> None:
        """Stop counting ``conn`` (it is closing)."""
        self.open.pop(conn, None)
        self.stalled.pop(conn, None)

    def wait_turn(self, conn: TcpProtocol) -> None:
        """Queue ``conn``'s backlog to be answered in the coming turns."""
        self.waiting.append(conn)
        if self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._run_turn)

    def _run_turn(self) -> None:
        """Answer up to :attr:`turn` queued queries, a slice per connection in turn; then let the loop poll."""
        self._next = None
        waiting, budget = self.waiting, self.turn
        for _ in range(len(waiting)):
            if budget <= 0:
                break
            conn = waiting.popleft()
            budget -= conn.take_turn(min(self.slice, budget))
            if conn.queued:
                waiting.append(conn)
        if waiting:
            self._next = asyncio.get_running_loop().call_soon(self._run_turn)

    def close_all(self) -> None:
        """Abort every open connection."""
        if self._next is not None:
            self._next.cancel()
            self._next = None
        self.waiting.clear()
        for conn in list(self.open):
            conn.close()


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: 2-byte length framing, pipelined queries answered in slices, idle and stall timeouts."""

    def __init__(
        self, responder: Responder, conns: TcpConnections, idle_s: float = TCP_IDLE_S, stall_s: float = TCP_STALL_S
    ) -> None:
        self._answer = responder.answer
        self._conns = conns
        self._idle_s, self._stall_s = idle_s, stall_s
        self._loop = asyncio.get_running_loop()  # protocols are made by the loop, in it
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.stalled = False  # more than TCP_WRITE_HIGH unsent: not read until the client reads
        self.queued = False  # waiting for its turn in conns.waiting (and not read meanwhile)
        self.active_at = 0.0  # loop time of its last read or answer
        self.peer: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        self.active_at = self._loop.time()
        if not self._conns.admit(self, self.active_at):
            transport.abort()  # type: ignore[attr-defined]
            return
        transport.set_write_buffer_limits(high=TCP_WRITE_HIGH, low=TCP_WRITE_LOW)  # type: ignore[attr-defined]
        self._arm(self._idle_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._conns.forget(self)
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._buf.clear()  # a turn still queued for it then answers nothing

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._touch()
        self._arm(self._idle_s)
        if not self._conns.waiting:  # nobody else waits: answer now, the common case
            self.answer_slice(self._conns.slice)
        if not self.stalled and self._has_query():
            self._queue()

    def take_turn(self, limit: int) -> int:
        """Answer up to ``limit`` of the backlog; stay queued while some is left, else read on."""
        n = self.answer_slice(limit)
        self._touch()
        self.queued = self._transport is not None and not self.stalled and self._has_query()
        if not self.queued:
            self._read_on()
        return n

    def answer_slice(self, limit: int) -> int:
        """Answer up to ``limit`` buffered queries (fewer past TCP_WRITE_HIGH bytes) in one write; how many."""
        buf, out, n, size_out = self._buf, [], 0, 0
        while n < limit and size_out < TCP_WRITE_HIGH and len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            message = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            n += 1
            try:
                reply = self._answer(message, True, self.peer)
            except Exception:  # never let one query hurt the connection
                log.exception("dns_answer_failed", size=size)
                continue
            if reply is not None:
                out.append(len(reply).to_bytes(2, "big") + reply)
                size_out += 2 + len(reply)
        if out and self._transport is not None:
            self._transport.write(b"".join(out))  # may call pause_writing
        return n

    def pause_writing(self) -> None:
        self.stalled = True
        self._conns.stalled[self] = None
        self._arm(self._stall_s)
        if self._transport is not None:
            self._transport.pause_reading()  # a client that does not read gets no more answers

    def resume_writing(self) -> None:
        self.stalled = False
        self._conns.stalled.pop(self, None)
        self._arm(self._idle_s)
        if self._has_query():
            self._queue()
        else:
            self._read_on()

    def close(self) -> None:
        """Close the connection now."""
        if self._transport is not None:
            self._transport.abort()

    def reset(self) -> None:
        """Close it now with a TCP reset, so the kernel drops what it still holds for a peer that does not read."""
        if self._transport is not None:
            sock = self._transport.get_extra_info("socket")
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self._transport.abort()

    def _has_query(self) -> bool:
        """Whether a whole query waits in the buffer."""
        buf = self._buf
        return len(buf) >= 2 and len(buf) >= 2 + ((buf[0] << 8) | buf[1])

    def _queue(self) -> None:
        """Stop reading and wait for a turn to answer the backlog."""
        if not self.queued and self._transport is not None:
            self.queued = True
            self._transport.pause_reading()
            self._conns.wait_turn(self)

    def _read_on(self) -> None:
        """Read again, unless a backlog or unsent answers say wait."""
        if self._transport is not None and not self.stalled and not self.queued:
            self._transport.resume_reading()

    def _touch(self) -> None:
        """Note activity: this connection is the last to be evicted as idle."""
        self.active_at = self._loop.time()
        self._conns.touch(self)

    def _arm(self, delay: float) -> None:
        """(Re)start the one timer: idle or stall timeout."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        """Idle (or stalled) too long: close, or reset when answers are unsent (a FIN would wait behind them)."""
        transport = self._transport
        if transport is None:
            return
        if self.queued:  # busy, not idle: its backlog is being answered
            self._arm(self._idle_s)
            return
        if self.stalled or transport.get_write_buffer_size() or _unsent_in_kernel(transport):
            log.debug("tcp_connection_stalled", peer=str(self.peer))
            self._conns.forget(self)
            self.reset()
        else:
            transport.close()


def _unsent_in_kernel(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel still holds for the peer (Linux SIOCOUTQ; 0 when it cannot tell)."""
    sock = transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return 0
    return int.from_bytes(raw, sys.byteorder, signed=True)


def limit_buffers(sock: socket.socket) -> None:
    """Cap the kernel's buffers of a listening TCP socket (its connections inherit them)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):  # a tuning, not a reason not to serve
            sock.setsockopt(socket.SOL_SOCKET, option, TCP_SOCKET_BUFFER)
