"""The prober's pure core: targets, diffs, schedule, status matching, error strings."""

from __future__ import annotations

import errno
import socket
import ssl

import aiohttp
import msgspec
import pytest
from aiohttp.client_reqrep import ConnectionKey
from hypothesis import given
from hypothesis import strategies as st

from services.prober.core import (
    FIRST_RUN_WINDOW_S,
    TAKEOVER_WINDOW_S,
    Target,
    body_matches,
    check_url,
    code_matches,
    derive_targets,
    diff_targets,
    first_delay,
    lag_summary,
    next_due,
    probed_check,
    transition_event,
)
from services.prober.errors import classify_error, short_text
from shared.resources import Address, HealthCheck, Pool

HC = HealthCheck(protocol="http", port=8080, interval_s=5, timeout_s=1)
TCP = HealthCheck(protocol="tcp", port=22, interval_s=5, timeout_s=1)


def _pool(*addresses: Address, enabled: bool = True, type: str = "ipv4") -> Pool:
    return Pool(type=type, enabled=enabled, addresses=list(addresses))  # type: ignore[arg-type]


def _addr(
    name: str, ip: str = "192.0.2.1", *, hc: HealthCheck | None = HC, enabled: bool = True, mode: str = "auto"
) -> Address:
    return Address(name=name, address=ip, health_check=hc, enabled=enabled, mode=mode)  # type: ignore[arg-type]


def _target(pool: str, name: str, ip: str = "192.0.2.1", hc: HealthCheck = HC) -> Target:
    key = f"{pool.replace('.', '=2E')}/{name.replace('.', '=2E')}"
    return Target(key=key, pool=pool, address=name, target=ip, check=hc)


# --- target derivation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pools", "expected_keys"),
    [
        pytest.param({}, [], id="no-pools"),
        pytest.param({"p": _pool(_addr("a"), _addr("b"))}, ["p/a", "p/b"], id="enabled-addresses"),
        pytest.param({"p": _pool(_addr("a"), enabled=False)}, [], id="disabled-pool"),
        pytest.param({"p": _pool(_addr("a", enabled=False), _addr("b"))}, ["p/b"], id="disabled-address"),
        pytest.param({"p": _pool(_addr("a", hc=None), _addr("b"))}, ["p/b"], id="no-health-check"),
        pytest.param(
            {"p": _pool(_addr("a", mode="manual_available"), _addr("b", mode="manual_unavailable"))},
            ["p/a", "p/b"],
            id="manual-modes-still-probed",
        ),
        pytest.param(
            {"p": _pool(_addr("a")), "q": _pool(_addr("a"))}, ["p/a", "q/a"], id="same-name-two-pools"
        ),
        pytest.param({"p.1": _pool(_addr("web.a"))}, ["p=2E1/web=2Ea"], id="dots-escaped-in-key"),
    ],
)
def test_derive_targets_probes_enabled_checked_addresses_of_enabled_pools(
    pools: dict[str, Pool], expected_keys: list[str]
) -> None:
    assert sorted(derive_targets(pools)) == expected_keys


def test_derive_targets_carries_pool_address_target_and_check() -> None:
    pools = {"web.pool": _pool(_addr("a.1", "2001:db8::1", hc=TCP), type="ipv6")}
    assert derive_targets(pools) == {
        "web=2Epool/a=2E1": Target(
            key="web=2Epool/a=2E1", pool="web.pool", address="a.1", target="2001:db8::1", check=TCP
        )
    }


# --- diffing -----------------------------------------------------------------------------

A, B, C = _target("p", "a"), _target("p", "b"), _target("p", "c")
A_NEW_PORT = _target("p", "a", hc=msgspec.structs.replace(HC, port=8081))
A_NEW_IP = _target("p", "a", ip="192.0.2.9")


@pytest.mark.parametrize(
    ("old", "new", "start", "stop", "restart"),
    [
        pytest.param({}, {"p/a": A}, ["p/a"], [], [], id="first-load"),
        pytest.param({"p/a": A}, {"p/a": A}, [], [], [], id="unchanged"),
        pytest.param({"p/a": A, "p/b": B}, {"p/a": A}, [], ["p/b"], [], id="address-removed"),
        pytest.param({"p/a": A}, {}, [], ["p/a"], [], id="everything-removed"),
        pytest.param({"p/a": A}, {"p/a": A_NEW_PORT}, [], [], ["p/a"], id="check-changed"),
        pytest.param({"p/a": A}, {"p/a": A_NEW_IP}, [], [], ["p/a"], id="ip-changed"),
        pytest.param(
            {"p/a": A, "p/b": B}, {"p/a": A_NEW_PORT, "p/c": C}, ["p/c"], ["p/b"], ["p/a"], id="mixed"
        ),
    ],
)
def test_diff_targets_splits_start_stop_restart(
    old: dict[str, Target], new: dict[str, Target], start: list[str], stop: list[str], restart: list[str]
) -> None:
    diff = diff_targets(old, new)
    assert (diff.start, diff.stop, diff.restart) == (start, stop, restart)
    assert diff.empty == (not (start or stop or restart))


def test_unrelated_address_field_change_does_not_restart_the_check() -> None:
    before = derive_targets({"p": _pool(Address(name="a", address="192.0.2.1", weight=1, health_check=HC))})
    after = derive_targets({"p": _pool(Address(name="a", address="192.0.2.1", weight=50, health_check=HC))})
    assert diff_targets(before, after).empty


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param({}, {"template": "web"}, id="template-named"),
        pytest.param({"template": "web"}, {"template": "web2"}, id="template-renamed"),
        pytest.param({"template": "web"}, {"template": "web", "overrides": ["port"]}, id="overrides-listed"),
        pytest.param({"overrides": ["port", "path"]}, {}, id="overrides-dropped"),
    ],
)
def test_informational_template_fields_do_not_restart_the_check(
    before: dict[str, object], after: dict[str, object]
) -> None:
    def targets(extra: dict[str, object]) -> dict[str, Target]:
        check = msgspec.structs.replace(HC, **extra)
        return derive_targets({"p": _pool(Address(name="a", address="192.0.2.1", health_check=check))})

    assert diff_targets(targets(before), targets(after)).empty


def test_a_real_field_change_beside_a_template_still_restarts() -> None:
    a = probed_check(msgspec.structs.replace(HC, template="web", overrides=["port"]))
    b = probed_check(msgspec.structs.replace(HC, template="web", overrides=["port"], port=9))
    assert a != b
    assert (a.template, a.overrides) == ("", [])
    assert probed_check(HC) is HC


# --- schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param([], {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}, id="no-checks"),
        pytest.param([0.002], {"p50_ms": 2.0, "p99_ms": 2.0, "max_ms": 2.0}, id="one-check"),
        pytest.param(
            [0.001] * 98 + [0.1, 0.3], {"p50_ms": 1.0, "p99_ms": 300.0, "max_ms": 300.0}, id="tail"
        ),
        pytest.param(
            [i / 1000 for i in range(1000)], {"p50_ms": 500.0, "p99_ms": 990.0, "max_ms": 999.0}, id="spread"
        ),
        pytest.param([0.3, 0.1, 0.2], {"p50_ms": 200.0, "p99_ms": 300.0, "max_ms": 300.0}, id="unsorted"),
    ],
)
def test_lag_summary_gives_percentiles_in_ms(samples: list[float], expected: dict[str, float]) -> None:
    assert lag_summary(samples) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("body", "needle", "ok"),
    [
        (b"", b"", True),
        (b"anything", b"", True),
        (b"status: healthy", b"healthy", True),
        (b"status: unhealthy", b"healthy", True),  # a substring, as documented
        (b"status: down", b"healthy", False),
        (b"", b"ok", False),
        ("caf\u00e9".encode(), "\u00e9".encode(), True),
    ],
)
def test_body_matches_is_a_substring_test(body: bytes, needle: bytes, ok: bool) -> None:
    assert body_matches(body, needle) is ok


@pytest.mark.parametrize(
    ("interval", "draw", "expected"),
    [
        (15, 0.0, 0.0),
        (15, 0.5, 0.5),  # capped to the 1 s window, not spread over 15 s
        (1, 0.999, 0.999),
        (1, 1.5, 1.0),  # out-of-range draws are clamped
        (1, -1.0, 0.0),
    ],
)
def test_first_delay_is_jittered_within_a_short_window(interval: float, draw: float, expected: float) -> None:
    assert first_delay(interval, draw) == pytest.approx(expected)


def test_takeovers_use_a_shorter_first_run_window() -> None:
    assert first_delay(15, 0.999, TAKEOVER_WINDOW_S) == pytest.approx(0.4995)
    assert TAKEOVER_WINDOW_S < FIRST_RUN_WINDOW_S


@given(interval=st.floats(1, 3600), draw=st.floats(0, 1, exclude_max=True))
def test_first_delay_never_exceeds_interval_or_window(interval: float, draw: float) -> None:
    assert 0 <= first_delay(interval, draw) <= min(interval, FIRST_RUN_WINDOW_S)


@pytest.mark.parametrize(
    ("due", "interval", "now", "expected"),
    [
        pytest.param(100.0, 5, 100.3, 105.0, id="quick-check-no-drift"),
        pytest.param(100.0, 5, 104.9, 105.0, id="slow-check-still-on-schedule"),
        pytest.param(100.0, 5, 105.0, 105.0, id="exactly-on-next-slot"),
        pytest.param(100.0, 5, 105.1, 110.0, id="overran-one-slot-skips-it"),
        pytest.param(100.0, 5, 117.0, 120.0, id="overran-several-slots"),
        pytest.param(100.0, 1, 99.0, 101.0, id="clock-before-due"),
    ],
)
def test_next_due_follows_the_schedule_not_the_check_duration(
    due: float, interval: float, now: float, expected: float
) -> None:
    assert next_due(due, interval, now) == pytest.approx(expected)


@given(due=st.floats(0, 1e6), interval=st.floats(1, 3600), lag=st.floats(0, 1e5))
def test_next_due_is_a_future_slot_on_the_grid(due: float, interval: float, lag: float) -> None:
    nxt = next_due(due, interval, due + lag)
    assert nxt >= due + lag - 1e-6
    assert nxt > due
    slots = (nxt - due) / interval
    assert abs(slots - round(slots)) < 1e-6 * max(1.0, slots)


# --- status matching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected", "ok"),
    [
        (200, [200], True),
        (204, [200], False),
        (204, ["2xx"], True),
        (299, ["2xx"], True),
        (301, ["2xx"], False),
        (503, ["5xx"], True),
        (503, [200, "5xx"], True),
        (404, [200, "5xx"], False),
        (302, [301, 302], True),
        (200, ["2XX"], True),
        (200, ["200"], True),
        (200, [], False),
        (200, ["xx"], False),
    ],
)
def test_code_matches_ints_and_ranges(status: int, expected: list[int | str], ok: bool) -> None:
    assert code_matches(status, expected) is ok


# --- transitions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "ok", "event"),
    [
        (None, True, None),
        (None, False, "check_failed"),
        (True, True, None),
        (True, False, "check_failed"),
        (False, False, None),
        (False, True, "check_recovered"),
    ],
)
def test_transition_event_only_on_change(previous: bool | None, ok: bool, event: str | None) -> None:
    assert transition_event(previous, ok) == event


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "hc", "url"),
    [
        ("192.0.2.1", HealthCheck(protocol="http"), "http://192.0.2.1:80/"),
        ("192.0.2.1", HealthCheck(protocol="https", path="/health?x=1"), "https://192.0.2.1:443/health?x=1"),
        ("2001:db8::1", HealthCheck(protocol="http", port=8080, path="/h"), "http://[2001:db8::1]:8080/h"),
        ("www.example.com", HealthCheck(protocol="https", port=8443), "https://www.example.com:8443/"),
    ],
)
def test_check_url_brackets_ipv6_and_defaults_port(ip: str, hc: HealthCheck, url: str) -> None:
    assert check_url(Target(key="p/a", pool="p", address="a", target=ip, check=hc)) == url


# --- error classification ----------------------------------------------------------------

_KEY = ConnectionKey("192.0.2.1", 80, False, True, None, None, None)


def _connector_error(os_error: OSError) -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(_KEY, os_error)


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        pytest.param(
            ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connection refused", id="refused"
        ),
        pytest.param(
            OSError(errno.ECONNREFUSED, "Connect call failed"), "connection refused", id="refused-errno"
        ),
        pytest.param(
            _connector_error(ConnectionRefusedError(errno.ECONNREFUSED, "x")),
            "connection refused",
            id="aiohttp-refused",
        ),
        pytest.param(TimeoutError(), "timeout", id="timeout"),
        pytest.param(aiohttp.ServerTimeoutError("read"), "timeout", id="aiohttp-read-timeout"),
        pytest.param(aiohttp.ConnectionTimeoutError("connect"), "timeout", id="aiohttp-connect-timeout"),
        pytest.param(OSError(errno.ETIMEDOUT, "timed out"), "timeout", id="timeout-errno"),
        pytest.param(ConnectionResetError(errno.ECONNRESET, "reset"), "connection reset", id="reset"),
        pytest.param(
            aiohttp.ClientOSError(errno.ECONNRESET, "reset by peer"), "connection reset", id="aiohttp-reset"
        ),
        pytest.param(aiohttp.ServerDisconnectedError(), "connection reset", id="server-disconnected"),
        pytest.param(BrokenPipeError(errno.EPIPE, "pipe"), "connection reset", id="broken-pipe"),
        pytest.param(ssl.SSLError(1, "handshake failure"), "tls error", id="ssl"),
        pytest.param(
            aiohttp.ClientConnectorSSLError(_KEY, OSError(1, "bad tls")), "tls error", id="aiohttp-tls"
        ),
        pytest.param(
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns error", id="gaierror"
        ),
        pytest.param(
            aiohttp.ClientConnectorDNSError(_KEY, OSError(1, "cannot resolve")), "dns error", id="aiohttp-dns"
        ),
        pytest.param(
            _caused(aiohttp.ClientOSError(1, "wrapped"), socket.gaierror(-2, "no name")),
            "dns error",
            id="dns-in-cause",
        ),
        pytest.param(
            OSError(errno.EHOSTUNREACH, "No route to host"),
            "error: [Errno 113] No route to host",
            id="other-oserror",
        ),
        pytest.param(ValueError(), "error: ValueError", id="no-text"),
        pytest.param(RuntimeError("x" * 200), "error: " + "x" * 77 + "...", id="long-text-truncated"),
    ],
)
def test_classify_error_gives_stable_strings(exc: BaseException, error: str) -> None:
    assert classify_error(exc) == error


def test_short_text_is_one_line() -> None:
    assert short_text(RuntimeError("bad\nthing\t here")) == "bad thing here"
