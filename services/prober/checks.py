"""The checks themselves: HTTP(S), TCP and ICMP ping against one target.

TLS certificates are verified only when the check says ``verify_tls``: targets
are usually IP addresses, and a health check mostly asks "does it answer?".
When verified, the name checked is ``host`` (else the address itself).  When the
check has a ``host``, it is sent as the Host header and as the TLS SNI name.
Redirects are not followed: a 3xx is a status like any other.  With
``body_match`` the first 64 KiB of the body must contain the string.

A ping check sends ``packets`` echo requests ``PING_GAP_S`` apart, each given
``timeout_s`` for its reply, and fails when the share lost reaches ``loss_rate``
percent (the default, one packet and 100%, fails when the one reply is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import icmplib  # type: ignore[import-untyped]  # ships no type hints
import structlog
import yarl

from services.prober.core import (
    Outcome,
    Target,
    body_matches,
    check_url,
    code_matches,
    status_error,
)
from services.prober.errors import (
    BODY_MISMATCH,
    DNS_ERROR,
    PING_NOT_PERMITTED,
    classify_error,
)
from shared.resources import PING_GAP_S

log = structlog.get_logger(__name__)

USER_AGENT = "gtm-prober/0.1"
BODY_LIMIT = 64 * 1024  # body_match looks at most this far into the body

Probe = Callable[[], Awaitable[Outcome]]


def make_session(*, concurrency: int) -> aiohttp.ClientSession:
    """The process's HTTP session: a fresh connection per check, at most ``concurrency``."""
    connector = aiohttp.TCPConnector(
        force_close=True,  # a killed backend is seen at once, never via a pooled socket
        limit=concurrency,
        use_dns_cache=False,  # domain targets are checked where DNS points now
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        auto_decompress=False,
    )


class Checker:
    """Builds, once per target, a probe that checks it and reports an Outcome.

    A probe never raises (but on cancel): every failure is an Outcome.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._verify_ctx: ssl.SSLContext | None = None  # built on first use: loads the CA store
        self._ping_privileged: bool | None = None  # the ICMP mode that worked last
        self._ping_warned = False

    def probe(self, target: Target) -> Probe:
        """A reusable coroutine function that checks ``target`` once per call."""
        protocol = target.check.protocol
        if protocol in ("http", "https"):
            run = self._http_probe(target)
        elif protocol == "tcp":
            run = self._tcp_probe(target)
        elif protocol == "ping":

            async def run() -> Outcome:
                return await self._ping(target)

        else:
            unknown = Outcome(ok=False, error=f"error: unknown protocol {protocol}")

            async def run() -> Outcome:
                return unknown

        async def guarded() -> Outcome:
            try:
                return await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is a result, not a crash
                return Outcome(ok=False, error=classify_error(exc))

        return guarded

    def _verify_context(self) -> ssl.SSLContext:
        if self._verify_ctx is None:
            self._verify_ctx = ssl.create_default_context()
        return self._verify_ctx

    def _http_probe(self, target: Target) -> Callable[[], Awaitable[Outcome]]:
        hc = target.check
        url = yarl.URL(check_url(target))  # parsed once, not on every check
        kwargs: dict[str, Any] = {
            "timeout": aiohttp.ClientTimeout(total=hc.timeout_s),
            "allow_redirects": False,
        }
        if hc.host:
            kwargs["headers"] = {"Host": hc.host}
        if hc.protocol == "https":
            # ssl=False: no verification at all; a context verifies chain and name
            kwargs["ssl"] = self._verify_context() if hc.verify_tls else False
            if hc.host:
                kwargs["server_hostname"] = hc.host
        expected = hc.expected_codes
        needle = hc.body_match.encode()
        get = self._session.get

        async def run() -> Outcome:
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with get(url, **kwargs) as resp:
                rtt_ms = _ms(loop.time() - start)
                status = resp.status
                if not code_matches(status, expected):
                    return Outcome(ok=False, rtt_ms=rtt_ms, error=status_error(status))
                if needle and not body_matches(await _read_prefix(resp.content, needle), needle):
                    return Outcome(ok=False, rtt_ms=rtt_ms, error=BODY_MISMATCH)
            return Outcome(ok=True, rtt_ms=rtt_ms)

        return run

    def _tcp_probe(self, target: Target) -> Callable[[], Awaitable[Outcome]]:
        hc = target.check
        port = hc.effective_port
        host = target.target
        timeout_s = hc.timeout_s
        no_port = Outcome(ok=False, error="error: no port configured")

        async def run() -> Outcome:
            if port is None:
                return no_port
            loop = asyncio.get_running_loop()
            start = loop.time()
            async with asyncio.timeout(timeout_s):
                transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
            rtt_ms = _ms(loop.time() - start)
            transport.close()  # a FIN, not a RST: polite to the backend's logs
            return Outcome(ok=True, rtt_ms=rtt_ms)

        return run

    async def _ping(self, target: Target) -> Outcome:
        hc = target.check
        address = target.target
        if icmplib.is_hostname(address):
            try:
                address = (await icmplib.async_resolve(address))[0]
            except icmplib.NameLookupError:
                return Outcome(ok=False, error=DNS_ERROR)
        modes = [False, True] if self._ping_privileged is None else [self._ping_privileged]
        for privileged in modes:
            try:
                # the echo requests and the wait for the last one's reply, and a second of grace
                async with asyncio.timeout((hc.packets - 1) * PING_GAP_S + hc.timeout_s + 1):
                    lost, rtts = await _echo(address, hc.packets, hc.timeout_s, privileged=privileged)
            except icmplib.SocketPermissionError:
                continue
            self._ping_privileged = privileged
            return _ping_outcome(hc.packets, lost, rtts, hc.loss_rate)
        self._ping_privileged = None
        self._warn_ping("the OS refuses ICMP sockets to this process")
        return Outcome(ok=False, error=PING_NOT_PERMITTED)

    def _warn_ping(self, why: str) -> None:
        if self._ping_warned:
            return
        self._ping_warned = True
        log.warning(
            "ping_not_permitted",
            reason=why,
            hint=(
                "allow unprivileged ICMP with "
                "sysctl net.ipv4.ping_group_range='0 2147483647' "
                "or give the prober CAP_NET_RAW"
            ),
        )


async def _read_prefix(content: aiohttp.StreamReader, needle: bytes) -> bytes:
    """The body up to BODY_LIMIT bytes, stopping early once ``needle`` is in it."""
    buf = bytearray()
    while len(buf) < BODY_LIMIT:
        chunk = await content.read(BODY_LIMIT - len(buf))
        if not chunk:
            break
        buf += chunk
        if needle in buf:
            break
    return bytes(buf)


async def _echo(address: str, count: int, timeout_s: float, *, privileged: bool) -> tuple[int, list[float]]:
    """Send ``count`` echo requests to the IP ``address``, PING_GAP_S apart: (how many got no reply, RTTs in ms).

    The requests go on schedule, not after the previous reply: a reply counts when it comes within
    ``timeout_s`` of its request, so the whole takes at most ``(count - 1) * PING_GAP_S + timeout_s``.
    A request the OS refuses to send (no route) is lost.  Raises SocketPermissionError when the OS
    refuses the socket itself.
    """
    v6 = icmplib.is_ipv6_address(address)
    echo_reply = 129 if v6 else 0
    raw = (icmplib.ICMPv6Socket if v6 else icmplib.ICMPv4Socket)(None, privileged)
    ident = icmplib.utils.unique_identifier()  # distinct per check in this process (raw sockets see every reply)
    pending: dict[int, Any] = {}  # sequence -> the ICMPRequest still waiting for its reply
    rtts: list[float] = []
    all_answered = asyncio.Event()
    sending = True

    def settled() -> None:
        if not sending and not pending:
            all_answered.set()

    async def receive(sock: Any) -> None:
        while True:
            try:
                reply = await sock.receive(None, timeout_s + count * PING_GAP_S + 1)
            except icmplib.TimeoutExceeded:
                continue
            except icmplib.ICMPSocketError:  # an error queued on the socket: not a reply to anything
                await asyncio.sleep(0.01)  # and never a busy loop, should it stay
                continue
            if reply.type != echo_reply:  # an error (unreachable, TTL exceeded) or, on loopback, a request
                continue
            request = pending.get(reply.sequence)
            if request is None or request.id != reply.id:
                continue  # someone else's, or a late duplicate
            rtt_s = reply.time - request.time
            if rtt_s <= timeout_s:  # a later reply is a loss, as it would be to a lone request
                rtts.append(rtt_s * 1000.0)
                del pending[reply.sequence]
                settled()

    with icmplib.AsyncSocket(raw) as sock:
        receiver = asyncio.create_task(receive(sock))
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            last_sent = start
            for sequence in range(count):
                await asyncio.sleep(max(0.0, start + sequence * PING_GAP_S - loop.time()))
                request = icmplib.ICMPRequest(destination=address, id=ident, sequence=sequence)
                try:
                    sock.send(request)
                except icmplib.ICMPLibError:
                    continue  # not sent: lost
                pending[sequence] = request
                last_sent = loop.time()
            sending = False
            settled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last_sent + timeout_s - loop.time())):
                    await all_answered.wait()
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
    return count - len(rtts), rtts


def _ping_outcome(sent: int, lost: int, rtts: list[float], loss_rate: int) -> Outcome:
    """Fails when ``lost`` of ``sent`` reaches ``loss_rate`` percent; rtt_ms: the replies' average."""
    loss_pct = round(100.0 * lost / sent, 2)
    rtt_ms = round(sum(rtts) / len(rtts), 3) if rtts else None
    if lost * 100 >= loss_rate * sent:  # in integers: 3 of 10 is exactly 30%
        return Outcome(
            ok=False, rtt_ms=rtt_ms, loss_pct=loss_pct, error=f"packet loss {loss_pct:g}% (threshold {loss_rate}%)"
        )
    return Outcome(ok=True, rtt_ms=rtt_ms, loss_pct=loss_pct)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
