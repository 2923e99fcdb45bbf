"""Response rate limiting at the edge: the pure limiter (buckets, slip, subnets, bounded table)
and a real edge that rate-limits UDP per client subnet but answers TCP always."""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rrset
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.edge import rrl
from services.edge.rrl import DROP, PASS, SLIP, Limiter, truncated
from services.edge.stats import EdgeCollector, QueryCounts, RrlCounts
from services.edge.table import AnswerTable
from shared.settings import RrlSettings, SettingsError, load
from tests.support import Service, answer_addresses, dns_query, free_port, wait_until
from tests.test_edge_service import a_set, edge, publish

P, D, S = PASS, DROP, SLIP
CLIENT = "192.0.2.10"


def run(limiter: Limiter, times: list[float], host: str = CLIENT) -> list[int]:
    """The verdict for one reply to ``host`` at each of ``times`` (the clock ticked to each first)."""
    verdicts = []
    for t in times:
        limiter.tick(t)
        verdicts.append(limiter.check(host))
    return verdicts


def burst(n: int, at: float = 100.0) -> list[float]:
    """``n`` replies at the same instant."""
    return [at] * n


def limiter(rate: int, **kw: object) -> Limiter:
    """A limiter whose clock starts at 100 s."""
    return Limiter(rate=rate, now=100.0, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the pure limiter


@pytest.mark.parametrize(
    ("rate", "times"),
    [
        (10, burst(10)),  # a whole second's worth at once
        (10, [100 + i / 10 for i in range(100)]),  # exactly the rate for ten seconds
        (10, [100 + i / 5 for i in range(50)]),  # half the rate
        (1, [100.0, 101.0, 102.0, 110.0]),
        (200, burst(200) + [101.0 + i / 200 for i in range(200)]),  # a full second's worth, then the rate
        (10, burst(10, at=100.9) + burst(10, at=101.0)),  # epochs are counted apart
    ],
)
def test_replies_under_the_limit_all_pass(rate: int, times: list[float]) -> None:
    lim = limiter(rate, window_s=5)
    assert run(lim, times) == [P] * len(times)
    assert (lim.counts.drop, lim.counts.slip) == (0, 0)


@pytest.mark.parametrize(
    ("slip", "over"),
    [
        (2, [D, S, D, S, D, S]),  # every 2nd limited reply slips (the default)
        (1, [S, S, S, S, S, S]),  # every limited reply slips: nothing is silently dropped
        (3, [D, D, S, D, D, S]),
        (0, [D, D, D, D, D, D]),  # never slip
    ],
)
def test_replies_over_the_limit_are_dropped_with_every_nth_slipped(slip: int, over: list[int]) -> None:
    lim = limiter(5, window_s=5, slip=slip)
    assert run(lim, burst(5 + len(over))) == [P] * 5 + over
    assert lim.counts.drop == over.count(D)
    assert lim.counts.slip == over.count(S)


def test_each_second_brings_the_rate_again() -> None:
    lim = limiter(10, window_s=1, slip=0)
    assert run(lim, burst(10, at=100.0)) == [P] * 10
    assert run(lim, [100.99]) == [D]
    assert run(lim, burst(11, at=101.0)) == [P] * 10 + [D]  # with a one-second window nothing is owed
    assert run(lim, burst(10, at=103.5)) == [P] * 10


@pytest.mark.parametrize(("at", "verdict"), [(101.0, D), (102.0, D), (103.0, D), (104.9, D), (105.0, P)])
def test_a_flooding_subnet_stays_limited_until_its_average_over_the_window_is_under_the_rate(
    at: float, verdict: int
) -> None:
    lim = limiter(10, window_s=5, slip=0)
    run(lim, burst(1000, at=100.0))  # 100 times the rate: 50 owed (the window's worth), paid at 10/s
    assert run(lim, [at]) == [verdict]


def test_a_subnet_under_the_limit_is_never_penalised_by_its_past() -> None:
    lim = limiter(10, window_s=5)
    assert run(lim, burst(10, at=100.0) + burst(10, at=101.0) + burst(10, at=102.0)) == [P] * 30


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [
        ("192.0.2.1", "192.0.2.254", True),  # one IPv4 /24
        ("192.0.2.1", "192.0.3.1", False),
        ("10.0.0.1", "10.0.0.2", True),
        ("2001:db8:0:ff::1", "2001:db8::2", True),  # one IPv6 /56: 2001:db8:0:0000-00ff
        ("2001:db8:0:ff:ffff:ffff:ffff:ffff", "2001:db8:0:1::", True),
        ("2001:db8:0:100::1", "2001:db8::2", False),  # the 7th byte differs
        ("2001:db8:1::1", "2001:db8::1", False),
        ("::ffff:192.0.2.1", "192.0.2.9", True),  # IPv4-mapped (dual-stack socket) counts as IPv4
        ("fe80::1%eth0", "fe80::2", True),  # a zone index does not make another subnet
        ("192.0.2.1", "::ffff:192.0.3.1", False),
    ],
)
def test_clients_of_one_subnet_share_a_limit_and_other_subnets_are_independent(
    first: str, second: str, shared: bool
) -> None:
    lim = limiter(3, window_s=5, slip=0)
    assert run(lim, burst(3), host=first) == [P, P, P]
    assert run(lim, [100.0], host=second) == ([D] if shared else [P])
    assert run(lim, [100.0], host=first) == [D]


@pytest.mark.parametrize(
    ("v4", "v6", "first", "second", "shared"),
    [
        (32, 56, "192.0.2.1", "192.0.2.2", False),
        (16, 56, "192.0.2.1", "192.0.200.2", True),
        (20, 56, "192.0.2.1", "192.0.15.1", True),
        (20, 56, "192.0.2.1", "192.0.16.1", False),
        (24, 64, "2001:db8:0:ff::1", "2001:db8::2", False),
        (24, 60, "2001:db8:0:f::1", "2001:db8:0:1::2", True),
        (24, 60, "2001:db8:0:10::1", "2001:db8:0:1::2", False),
        (0, 0, "192.0.2.1", "203.0.113.1", True),
    ],
)
def test_the_subnet_prefix_lengths_are_configurable(v4: int, v6: int, first: str, second: str, shared: bool) -> None:
    lim = limiter(2, window_s=5, slip=0, ipv4_prefix=v4, ipv6_prefix=v6)
    assert run(lim, burst(2), host=first) == [P, P]
    assert run(lim, [100.0], host=second) == ([D] if shared else [P])


@pytest.mark.parametrize(
    ("exempt", "host", "limited"),
    [
        (RrlSettings().exempt, "127.0.0.1", False),
        (RrlSettings().exempt, "::1", False),
        (RrlSettings().exempt, "::ffff:127.0.0.1", False),
        (RrlSettings().exempt, "192.0.2.1", True),
        ((), "127.0.0.1", True),
        (("192.0.2.0/24", "2001:db8::/32"), "192.0.2.77", False),
        (("192.0.2.0/24", "2001:db8::/32"), "2001:db8:ff::1", False),
        (("192.0.2.0/24", "2001:db8::/32"), "198.51.100.1", True),
        (("192.0.2.5/32",), "192.0.2.6", False),  # exemption covers whole client subnets
    ],
)
def test_exempt_networks_are_never_limited(exempt: tuple[str, ...], host: str, limited: bool) -> None:
    lim = limiter(1, window_s=1, slip=0, exempt=rrl.parse_exempt(exempt))
    assert run(lim, burst(5) + burst(5, at=101.0), host=host) == ([P, D, D, D, D] * 2 if limited else [P] * 10)


def test_a_bad_exempt_list_is_refused() -> None:
    with pytest.raises(rrl.RrlError, match="GTM_EDGE_RRL_EXEMPT"):
        rrl.parse_exempt(["192.0.2.0/24", "not-a-network"])


def test_subnets_idle_for_a_window_are_forgotten_by_the_clock() -> None:
    lim = limiter(5, window_s=5)
    for i in range(50):
        run(lim, [100.0], host=f"198.51.{i}.1")
    run(lim, [103.0], host="192.0.2.1")
    assert len(lim) == 51
    lim.tick(104.9)
    assert len(lim) == 51
    lim.tick(105.0)  # a window after the last sweep: the clock sweeps
    assert len(lim) == 1
    lim.tick(108.0)  # 192.0.2.1 has been idle for a window, but sweeps come a window apart
    assert len(lim) == 1
    lim.tick(110.0)
    assert len(lim) == 0


def test_forgetting_an_idle_subnet_loses_nothing() -> None:
    remembered, forgotten = limiter(10, window_s=3), limiter(10, window_s=3)
    for lim in (remembered, forgotten):
        run(lim, burst(500, at=100.0))  # deep in debt
    forgotten.epoch = 103
    assert forgotten.sweep() == 1 and len(forgotten) == 0 and len(remembered) == 1
    times = burst(15, at=103.0)
    assert run(remembered, times) == run(forgotten, times) == [P] * 10 + [D, S, D, S, D]


def test_the_table_is_capped_and_new_subnets_share_one_counter_while_it_is_full() -> None:
    lim = limiter(3, window_s=5, slip=0, max_entries=100)
    for i in range(1000):  # a spoofed flood from a thousand subnets
        run(lim, [100.0], host=f"10.{i // 256}.{i % 256}.1")
    assert len(lim) == 100
    assert lim.counts.drop == 900 - 3  # the subnets beyond the cap shared one counter of 3 a second
    assert run(lim, [100.5], host="203.0.113.1") == [D]
    assert run(lim, burst(3), host="10.0.0.99") == [P, P, D]  # a subnet known before keeps its own
    assert run(lim, [101.0], host="203.0.113.1") == [D]  # the shared counter owes the window's worth
    assert len(lim) == 100  # nobody idle yet: the table stays full
    assert run(lim, burst(3, at=106.0), host="203.0.113.1") == [P, P, P]  # the flood stopped a window ago
    assert len(lim) == 1


def test_exempt_clients_pass_even_when_the_table_is_full() -> None:
    lim = limiter(1, slip=0, max_entries=10, exempt=rrl.parse_exempt(RrlSettings().exempt))
    for i in range(10):
        run(lim, [100.0], host=f"10.0.{i}.1")
    assert run(lim, burst(5), host="127.0.0.1") == [P] * 5
    assert run(lim, burst(2), host="203.0.113.1") == [P, D]


class CountingSweeps(Limiter):
    """A limiter that counts its sweeps."""

    sweeps = 0

    def sweep(self) -> int:
        self.sweeps += 1
        return super().sweep()


def test_a_full_table_is_swept_once_a_second_by_the_clock_never_per_reply() -> None:
    lim = CountingSweeps(rate=3, window_s=5, max_entries=10, now=100.0)
    for i in range(110):  # fills the table, then a flood of new subnets
        run(lim, [100.0 + i / 1000], host=f"10.1.{i}.1")
    assert lim.sweeps == 0
    lim.tick(101.0)
    assert lim.sweeps == 1
    lim.tick(101.5)
    assert lim.sweeps == 1


@given(st.text(max_size=60))
def test_the_limiter_never_raises_on_an_odd_address(host: str) -> None:
    assert limiter(1, exempt=rrl.parse_exempt(RrlSettings().exempt)).check(host) in (PASS, DROP, SLIP)


@pytest.mark.parametrize(
    "bad", [{"rate": 0}, {"rate": 1, "window_s": 0}, {"rate": 1, "slip": -1}, {"rate": 1, "ipv4_prefix": 33}]
)
def test_a_limiter_refuses_settings_it_cannot_honour(bad: dict[str, int]) -> None:
    with pytest.raises(rrl.RrlError):
        Limiter(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the slipped reply


def full_reply(*, edns: bool) -> bytes:
    """A real reply with two A records (as dnspython builds it)."""
    q = dns.message.make_query("www.example.com", "A", use_edns=0 if edns else -1)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    r.answer.append(dns.rrset.from_text("www.example.com.", 30, "IN", "A", "192.0.2.1", "192.0.2.2"))
    return r.to_wire()


@pytest.mark.parametrize("edns", [False, True])
def test_a_slipped_reply_is_truncated_with_the_question_and_no_records(edns: bool) -> None:
    reply = full_reply(edns=edns)
    slipped = dns.message.from_wire(truncated(reply))
    original = dns.message.from_wire(reply)
    assert slipped.id == original.id
    assert slipped.flags & dns.flags.TC
    assert slipped.flags & dns.flags.QR and slipped.flags & dns.flags.AA
    assert slipped.question == original.question
    assert not slipped.answer and not slipped.authority
    assert (slipped.edns >= 0) is edns
    assert len(truncated(reply)) < len(reply)


@given(st.binary(max_size=80))
def test_truncating_any_bytes_never_raises(data: bytes) -> None:
    assert isinstance(truncated(data), bytes)


# ---------------------------------------------------------------- settings and metrics


def test_settings_default_to_200_per_s_per_subnet_with_slip_2_and_loopback_exempt() -> None:
    s = load("edge", {}).edge.rrl
    assert (s.responses_per_s, s.window_s, s.slip) == (200, 5, 2)
    assert (s.ipv4_prefix, s.ipv6_prefix) == (24, 56)
    assert rrl.parse_exempt(s.exempt) == [
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    ]


def test_settings_read_the_rrl_variables_and_zero_turns_it_off() -> None:
    env = {
        "GTM_EDGE_RRL_RESPONSES_PER_S": "0",
        "GTM_EDGE_RRL_WINDOW_S": "15",
        "GTM_EDGE_RRL_SLIP": "0",
        "GTM_EDGE_RRL_IPV4_PREFIX": "32",
        "GTM_EDGE_RRL_IPV6_PREFIX": "64",
        "GTM_EDGE_RRL_EXEMPT": "",
    }
    s = load("edge", env).edge.rrl
    assert (s.responses_per_s, s.window_s, s.slip) == (0, 15, 0)
    assert (s.ipv4_prefix, s.ipv6_prefix, s.exempt) == (32, 64, ())
    counts = RrlCounts()
    assert rrl.from_settings(s, counts) is None
    assert rrl.from_settings(msgspec.structs.replace(s, responses_per_s=1), counts) is not None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GTM_EDGE_RRL_RESPONSES_PER_S": "lots"}, "GTM_EDGE_RRL_RESPONSES_PER_S='lots' is not allowed"),
        ({"GTM_EDGE_RRL_RESPONSES_PER_S": "-1"}, "must be an integer from 0 to"),
        ({"GTM_EDGE_RRL_IPV4_PREFIX": "33"}, "GTM_EDGE_RRL_IPV4_PREFIX='33' is not allowed: it must be an integer from 0 to 32"),
        ({"GTM_EDGE_RRL_IPV6_PREFIX": "-1"}, "from 0 to 128"),
        ({"GTM_EDGE_RRL_WINDOW_S": "0"}, "GTM_EDGE_RRL_WINDOW_S='0'"),
        ({"GTM_EDGE_RRL_EXEMPT": "192.0.2.0/24,not-a-network"}, "GTM_EDGE_RRL_EXEMPT"),
    ],
)
def test_settings_refuse_bad_rrl_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load("edge", env)


def test_limited_replies_are_exported_by_action() -> None:
    counts = RrlCounts()
    run(limiter(1, slip=2, counts=counts), burst(6))  # 1 pass, then D S D S D
    families = {f.name: f for f in EdgeCollector(QueryCounts(), AnswerTable(), counts).collect()}
    samples = {s.labels["action"]: s.value for s in families["gtm_edge_rrl"].samples if s.name.endswith("_total")}
    assert samples == {"drop": 3, "slip": 2}


# ---------------------------------------------------------------- a real edge


NAME = "rrl.example.com"


def start_edge(nats_url: str, log_dir: Path, **env: str) -> tuple[Service, int]:
    """A ready edge serving NAME, with ``env``; return it and its DNS port."""
    publish(nats_url, a_set(NAME, "192.0.2.1", "192.0.2.2"))
    port = free_port()
    svc = edge(nats_url, log_dir, port, **env).start()
    svc.wait_for_event("service_ready")
    return svc, port


def udp_burst(port: int, count: int, *, settle_s: float = 1.0) -> tuple[int, int]:
    """Send ``count`` queries for NAME from one socket at once; return (full answers, truncated replies)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        queries = [dns.message.make_query(NAME, "A", id=i).to_wire() for i in range(count)]
        for q in queries:
            s.send(q)
        answered = slipped = 0
        s.settimeout(settle_s)
        while answered + slipped < count:
            try:
                reply = dns.message.from_wire(s.recv(4096))
            except TimeoutError:
                break
            if reply.flags & dns.flags.TC:
                assert not reply.answer, "a slipped reply carries no records"
                slipped += 1
            else:
                assert answer_addresses(reply) == ["192.0.2.1", "192.0.2.2"]
                answered += 1
    return answered, slipped


@pytest.fixture
def limited_edge(nats_url: str, log_dir: Path) -> Iterator[tuple[Service, int, int]]:
    """An edge limiting every client (loopback too) to 20 replies/s, with /metrics; yields (svc, dns, metrics)."""
    metrics = free_port()
    env = {"GTM_EDGE_RRL_RESPONSES_PER_S": "20", "GTM_EDGE_RRL_EXEMPT": ""}
    env["GTM_METRICS_LISTEN"] = f"127.0.0.1:{metrics}"
    svc, port = start_edge(nats_url, log_dir, **env)
    try:
        yield svc, port, metrics
    finally:
        svc.stop()


def test_an_edge_answers_a_udp_burst_from_one_subnet_at_about_its_limit_and_slips_some(
    limited_edge: tuple[Service, int, int],
) -> None:
    svc, port, metrics = limited_edge
    assert svc.wait_for_event("rrl_enabled")["responses_per_s"] == 20
    answered, slipped = udp_burst(port, 200)
    assert 1 <= answered <= 2 * 20 + 5  # a second's worth at once, and what refilled meanwhile
    assert slipped >= 40  # about every other one of the ~180 over the limit
    assert answered + slipped < 200  # the others were dropped
    text = wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2).read().decode())
    assert f'gtm_edge_rrl_total{{action="slip"}} {float(slipped)}' in text
    assert 'gtm_edge_rrl_total{action="drop"} 0.0' not in text


def test_tcp_is_never_rate_limited(limited_edge: tuple[Service, int, int]) -> None:
    _, port, _ = limited_edge
    udp_burst(port, 200)  # the loopback subnet is now deep over its UDP limit
    for _ in range(60):  # three times the limit, over one connection each
        assert answer_addresses(dns_query(port, NAME, tcp=True)) == ["192.0.2.1", "192.0.2.2"]


def test_a_truncated_reply_sends_the_client_to_tcp_where_it_gets_its_answer(
    limited_edge: tuple[Service, int, int],
) -> None:
    _, port, _ = limited_edge
    udp_burst(port, 200)
    q = dns.message.make_query(NAME, "A")
    used_tcp = False
    for _ in range(10):  # dropped replies time out; a slipped one falls back to TCP
        try:
            reply, tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=port, timeout=0.5)
        except dns.exception.Timeout:
            continue
        assert answer_addresses(reply) == ["192.0.2.1", "192.0.2.2"]
        used_tcp |= tcp
    assert used_tcp


@pytest.mark.parametrize(
    "env",
    [{"GTM_EDGE_RRL_RESPONSES_PER_S": "0", "GTM_EDGE_RRL_EXEMPT": ""}, {}],
    ids=["rrl-off", "defaults-loopback-exempt"],
)
def test_every_udp_query_is_answered_when_rrl_is_off_or_the_client_is_exempt(
    nats_url: str, log_dir: Path, env: dict[str, str]
) -> None:
    svc, port = start_edge(nats_url, log_dir, **env)
    try:
        assert svc.wait_for_event("rrl_disabled" if env else "rrl_enabled")
        assert udp_burst(port, 200, settle_s=3.0) == (200, 0)
    finally:
        svc.stop()
