"""Crash detection without waiting: an idle connection held to each HTTP(S) and TCP check's port.

A backend process that dies (``kill -9``, a crash, an OOM kill) has its sockets closed by the
kernel at once: the peer of an idle connection reads EOF (FIN) or a reset (RST) within
microseconds.  :class:`ConnectionWatch` holds such a connection and, when it ends, asks for a
re-check at once (``poke``); the re-check is an ordinary check, so a closed connection counts
as nothing by itself: only a failed check counts.

Servers close idle connections too (an HTTP server's header timeout, a TLS server waiting for
its ClientHello).  That costs a re-check, which succeeds, and no alarm; the watch then waits
out the rest of the interval before it connects again, and :class:`RecheckBudget` bounds the
re-checks per interval whatever happens.  A watch that cannot connect waits an interval: the
regular checks cover a backend that is already down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.resources import HealthCheck

WATCHED = frozenset({"http", "https", "tcp"})
RECHECKS_PER_INTERVAL = 2


def watchable(check: HealthCheck) -> bool:
    """Whether a check's port is watched (ping has no connection to hold; ``hold_connection`` may say no)."""
    return check.protocol in WATCHED and check.effective_port is not None and check.hold_connection


@dataclass
class RecheckBudget:
    """At most ``limit`` re-checks per ``interval_s`` window (a server that keeps closing cannot storm)."""

    interval_s: float
    limit: int = RECHECKS_PER_INTERVAL
    _times: list[float] = field(default_factory=list)

    def allow(self, now: float) -> bool:
        """Whether a re-check may run at ``now`` (and count it if so)."""
        self._times = [t for t in self._times if now - t < self.interval_s]
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True


class ConnectionWatch:
    """Holds one idle TCP connection to ``host:port`` and calls ``poke`` when the peer closes or resets it."""

    def __init__(self, host: str, port: int, check: HealthCheck, poke: Callable[[], None]) -> None:
        self.host, self.port = host, port
        self.interval_s = check.interval_s
        self.timeout_s = check.timeout_s
        self.poke = poke
        self.closes = 0  # connections that ended (each one a poke)
        # https: complete the TLS handshake (unverified: this connection only listens), so that a server
        # doing handshakes in its accept loop is not held up by a connection that never says hello
        self._tls: ssl.SSLContext | None = None
        self._sni: str | None = None
        if check.protocol == "https":
            self._tls = ssl.create_default_context()
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE
            self._sni = check.host or (None if _is_ip(host) else host)

    async def run(self) -> None:
        """Connect, wait for the end of the connection, poke, and again, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host, self.port, ssl=self._tls, server_hostname=self._sni if self._tls else None
                    ),
                    self.timeout_s,
                )
            except (OSError, TimeoutError, ssl.SSLError):
                await asyncio.sleep(self.interval_s)  # down or unreachable: the regular checks see it
                continue
            opened = loop.time()
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            try:
                while await reader.read(4096):
                    pass  # a server that talks first (SMTP, SSH banners): read on until the end
            except (ConnectionError, OSError):
                pass  # a reset: the same news as an EOF
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            self.closes += 1
            self.poke()
            lived = loop.time() - opened
            if lived < self.interval_s:
                await asyncio.sleep(self.interval_s - lived)  # a server closing idle connections fast


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
