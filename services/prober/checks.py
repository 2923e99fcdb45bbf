"""The checks themselves: HTTP(S), TCP and ICMP ping against one target.

TLS certificates are NOT verified: targets are usually IP addresses, and a
health check asks "does it answer?", not "is its certificate valid?".  When the
check has a ``host``, it is sent as the Host header and as the TLS SNI name.
Redirects are not followed: a 3xx is a status like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import Any

import aiohttp
import structlog

from services.prober.core import Outcome, Target, check_url, code_matches, status_error
from services.prober.errors import DNS_ERROR, PING_NOT_PERMITTED, TIMEOUT, classify_error

icmplib: Any
try:  # optional: ICMP also needs an OS that allows it (see Checker._warn_ping)
    icmplib = importlib.import_module("icmplib")
except ImportError:  # pragma: no cover - depends on the installation
    icmplib = None

log = structlog.get_logger(__name__)

USER_AGENT = "gtm-prober/0.1"


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
    """Runs one check of one target and reports an Outcome; never raises (but on cancel)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._ping_privileged: bool | None = None  # the ICMP mode that worked last
        self._ping_warned = False

    async def check(self, target: Target) -> Outcome:
        """Check ``target`` once with its protocol."""
        protocol = target.check.protocol
        try:
            if protocol in ("http", "https"):
                return await self._http(target)
            if protocol == "tcp":
                return await self._tcp(target)
            if protocol == "ping":
                return await self._ping(target)
            return Outcome(ok=False, error=f"error: unknown protocol {protocol}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is a result, not a crash
            return Outcome(ok=False, error=classify_error(exc))

    async def _http(self, target: Target) -> Outcome:
        hc = target.check
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {
            "timeout": aiohttp.ClientTimeout(total=hc.timeout_s),
            "allow_redirects": False,
        }
        if hc.host:
            kwargs["headers"] = {"Host": hc.host}
        if hc.protocol == "https":
            kwargs["ssl"] = False  # no verification, see the module docstring
            if hc.host:
                kwargs["server_hostname"] = hc.host
        start = loop.time()
        async with self._session.get(check_url(target), **kwargs) as resp:
            rtt_ms = _ms(loop.time() - start)
            status = resp.status
        if code_matches(status, hc.expected_codes):
            return Outcome(ok=True, rtt_ms=rtt_ms)
        return Outcome(ok=False, rtt_ms=rtt_ms, error=status_error(status))

    async def _tcp(self, target: Target) -> Outcome:
        hc = target.check
        port = hc.effective_port
        if port is None:
            return Outcome(ok=False, error="error: no port configured")
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(hc.timeout_s):
            _, writer = await asyncio.open_connection(target.target, port)
        rtt_ms = _ms(loop.time() - start)
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(hc.timeout_s):
                await writer.wait_closed()
        return Outcome(ok=True, rtt_ms=rtt_ms)

    async def _ping(self, target: Target) -> Outcome:
        if icmplib is None:
            self._warn_ping("icmplib is not installed")
            return Outcome(ok=False, error=PING_NOT_PERMITTED)
        hc = target.check
        modes = [False, True] if self._ping_privileged is None else [self._ping_privileged]
        for privileged in modes:
            try:
                async with asyncio.timeout(hc.timeout_s + 1):
                    host = await icmplib.async_ping(
                        target.target, count=1, timeout=hc.timeout_s, privileged=privileged
                    )
            except icmplib.SocketPermissionError:
                continue
            except icmplib.NameLookupError:
                return Outcome(ok=False, error=DNS_ERROR)
            self._ping_privileged = privileged
            if host.is_alive:
                return Outcome(ok=True, rtt_ms=round(float(host.avg_rtt), 3))
            return Outcome(ok=False, error=TIMEOUT)
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
                "install icmplib, and allow unprivileged ICMP with "
                "sysctl net.ipv4.ping_group_range='0 2147483647' "
                "or give the prober CAP_NET_RAW"
            ),
        )


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)
