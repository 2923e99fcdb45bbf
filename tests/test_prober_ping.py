"""Ping checks with real ICMP: several echo requests, the share lost against ``loss_rate``, the average RTT.

Only to 127.0.0.1 or to a pair of network namespaces made here (root, ``ip``; the partial loss
needs ``nft``): "prober" (10.79.0.1) and "target" (10.79.0.2) joined by a veth pair, with no way out.
Each check is bounded by ``(packets - 1) * PING_GAP_S + timeout_s``, so every test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from services.prober.checks import Checker, _ping_outcome, make_session
from services.prober.core import Outcome, Target
from services.prober.errors import PING_NOT_PERMITTED
from shared.resources import PING_GAP_S, HealthCheck
from tests.netns import _enter

pytestmark = pytest.mark.timeout(5)

T = TypeVar("T")

PROBER_IP, TARGET_IP = "10.79.0.1", "10.79.0.2"
TIMEOUT_S = 0.2  # a veth answers in well under a millisecond


def ping_check(packets: int, loss_rate: int = 100, timeout_s: float = TIMEOUT_S) -> HealthCheck:
    return HealthCheck(
        protocol="ping",
        interval_s=5,
        timeout_s=timeout_s,
        packets=packets,
        loss_rate=loss_rate,  # type: ignore[arg-type]
    )


async def ping(address: str, check: HealthCheck, checker: Checker | None = None) -> Outcome:
    """One ping check of ``address`` (with a fresh Checker unless one is given)."""
    target = Target(key="pool/a", pool="pool", address="a", target=address, check=check)
    if checker is not None:
        return await checker.probe(target)()
    async with make_session(concurrency=1) as session:
        return await Checker(session).probe(target)()


def _sh(*argv: str, stdin: str | None = None) -> None:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


class Pair:
    """Two namespaces joined by a veth: the prober's (``run`` runs a coroutine there) and the target's."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.prober, self.target = f"gtmping{tag}p", f"gtmping{tag}t"
        self._made: list[str] = []
        for ns in (self.prober, self.target):
            _sh("ip", "netns", "add", ns)
            self._made.append(ns)
        _sh(
            "ip",
            "-n",
            self.prober,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            self.target,
        )
        for ns, dev, ip in ((self.prober, "veth0", PROBER_IP), (self.target, "veth1", TARGET_IP)):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set ``net.<key>`` (a per-namespace setting) in ``ns``."""
        path = "/proc/sys/net/" + key.replace(".", "/")
        _sh("ip", "netns", "exec", ns, "sh", "-c", f"echo '{value}' > {path}")

    def run(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 4.0) -> T:
        """``make()`` run to its end on an event loop of its own, in a thread inside the prober's namespace."""
        got: list[T] = []
        failed: list[BaseException] = []

        def main() -> None:
            try:
                _enter(self.prober)  # this thread's sockets are the namespace's
                got.append(asyncio.run(make()))
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                failed.append(exc)

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"still running after {timeout} s")
        if failed:
            raise failed[0]
        return got[0]

    def close(self) -> None:
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _unavailable() -> str:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` not found"
    return ""


@pytest.fixture
def pair() -> Iterator[Pair]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    try:
        made = Pair()
    except RuntimeError as exc:
        pytest.skip(f"cannot make the namespaces: {exc}")
    try:
        yield made
    finally:
        made.close()


async def test_five_pings_to_loopback_all_answer() -> None:
    started = time.monotonic()
    outcome = await ping("127.0.0.1", ping_check(5))
    if outcome.error == PING_NOT_PERMITTED:
        pytest.skip("this process may open no ICMP socket")
    assert (outcome.ok, outcome.error, outcome.loss_pct) == (True, "", 0.0)
    assert outcome.rtt_ms is not None and 0 < outcome.rtt_ms < 100
    assert time.monotonic() - started >= 4 * PING_GAP_S * 0.9  # the requests went PING_GAP_S apart


@pytest.mark.parametrize("unprivileged", [True, False], ids=["datagram-socket", "raw-socket"])
def test_both_socket_modes_count_every_reply(pair: Pair, unprivileged: bool) -> None:
    # ping_group_range lets root's group open datagram ICMP sockets (else the raw fallback is taken)
    pair.sysctl(pair.prober, "ipv4.ping_group_range", "0 2147483647" if unprivileged else "1 0")

    async def go() -> tuple[Outcome, bool | None]:
        async with make_session(concurrency=1) as session:
            checker = Checker(session)
            outcome = await ping(TARGET_IP, ping_check(5), checker)
            return outcome, checker._ping_privileged

    outcome, privileged = pair.run(go)
    assert (outcome.ok, outcome.error, outcome.loss_pct) == (True, "", 0.0)
    assert outcome.rtt_ms is not None and outcome.rtt_ms > 0
    assert privileged is (not unprivileged)


def test_a_host_that_never_answers_loses_every_packet_in_bounded_time(pair: Pair) -> None:
    pair.sysctl(pair.target, "ipv4.icmp_echo_ignore_all", "1")  # silent: no reply, no ICMP error
    started = time.monotonic()
    outcome = pair.run(lambda: ping(TARGET_IP, ping_check(10)))
    took = time.monotonic() - started
    assert (outcome.ok, outcome.loss_pct, outcome.rtt_ms) == (False, 100.0, None)
    assert outcome.error == "packet loss 100% (threshold 100%)"
    # the requests do not wait for each other's timeout: 9 gaps and one timeout, not 10 timeouts
    assert took < 9 * PING_GAP_S + TIMEOUT_S + 0.6, took

    single = pair.run(lambda: ping(TARGET_IP, ping_check(1)))  # the default: one packet, fail when it is lost
    assert (single.ok, single.loss_pct, single.error) == (False, 100.0, "packet loss 100% (threshold 100%)")


def test_losing_every_other_echo_request_is_judged_against_loss_rate(pair: Pair) -> None:
    if shutil.which("nft") is None:
        pytest.skip("`nft` not found")
    rules = (
        "table inet gtmping {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    icmp type echo-request numgen inc mod 2 == 0 drop\n"
        "  }\n"
        "}\n"
    )
    try:
        _sh("ip", "netns", "exec", pair.target, "nft", "-f", "-", stdin=rules)
    except RuntimeError as exc:
        pytest.skip(f"nftables unusable in a namespace: {exc}")

    async def go() -> list[Outcome]:
        async with make_session(concurrency=1) as session:
            checker = Checker(session)
            # 10 packets each: the drop counter stays in step, 5 of every 10 are lost
            return [await ping(TARGET_IP, ping_check(10, rate), checker) for rate in (30, 50, 80)]

    strict, even, lenient = pair.run(go)
    assert (strict.ok, strict.loss_pct, strict.error) == (False, 50.0, "packet loss 50% (threshold 30%)")
    assert (even.ok, even.loss_pct, even.error) == (False, 50.0, "packet loss 50% (threshold 50%)")
    assert (lenient.ok, lenient.loss_pct, lenient.error) == (True, 50.0, "")
    for outcome in (strict, even, lenient):
        assert outcome.rtt_ms is not None and outcome.rtt_ms > 0  # the average of the 5 replies


def test_the_threshold_is_reached_exactly_and_rtt_is_the_replies_average() -> None:
    assert _ping_outcome(10, 1, [1.0] * 9, 10) == Outcome(
        ok=False, rtt_ms=1.0, loss_pct=10.0, error="packet loss 10% (threshold 10%)"
    )
    assert _ping_outcome(3, 1, [1.0, 2.0], 50) == Outcome(ok=True, rtt_ms=1.5, loss_pct=33.33)
    assert _ping_outcome(3, 2, [4.0], 50).error == "packet loss 66.67% (threshold 50%)"
    assert _ping_outcome(1, 0, [0.25], 100) == Outcome(ok=True, rtt_ms=0.25, loss_pct=0.0)
    assert _ping_outcome(1, 1, [], 100) == Outcome(
        ok=False, rtt_ms=None, loss_pct=100.0, error="packet loss 100% (threshold 100%)"
    )
