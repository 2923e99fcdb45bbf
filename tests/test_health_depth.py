"""Health in depth, in the scheduler's pure core: several checks combined by a judgement, the real health
kept in manual modes, maintenance windows that end by themselves; and their validation."""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest

from services.prober.core import derive_targets
from services.scheduler.engine import Engine
from services.scheduler.health import LastResult, VantageState, address_status, observe, vantage_key
from shared import subjects
from shared.messages import ProbeResult
from shared.resources import Address, HealthCheck, MaintenanceWindow, Pool, ResourceError, validate_pool

HTTP = HealthCheck(protocol="http", port=80, interval_s=5, failures=1)
TCP = HealthCheck(protocol="tcp", port=443, interval_s=5, failures=1)
PING = HealthCheck(protocol="ping", interval_s=5, failures=1)
UP = VantageState(state="up")
DOWN = VantageState(state="down", last_failure=LastResult(ok=False, error="connection refused", protocol="tcp"))


def addr(**kw: Any) -> Address:
    return Address(name="a", address="192.0.2.1", **kw)


def status(address: Address, vantages: dict[str, VantageState], **kw: Any) -> Any:
    return address_status(address, vantages, now=100.0, tracked_since=0.0, **kw)


# (judgement, [check 0 up?, check 1 up?, check 2 up?], available)
JUDGEMENTS = [
    ("all_ok", [True, True, True], True),
    ("all_ok", [True, True, False], False),
    ("any_ok", [False, False, True], True),
    ("any_ok", [False, False, False], False),
    ("p30_ok", [True, False, False], True),  # 1 of 3 = 33 %
    ("p50_ok", [True, False, False], False),
    ("p50_ok", [True, True, False], True),
    ("p70_ok", [True, True, False], False),  # 67 %
]


@pytest.mark.parametrize(("judgement", "ups", "available"), JUDGEMENTS)
def test_several_checks_are_combined_by_the_judgement(judgement: str, ups: list[bool], available: bool) -> None:
    a = addr(health_checks=[HTTP, TCP, PING], judgement=judgement)
    vantages = {vantage_key("eu", i): UP if up else DOWN for i, up in enumerate(ups)}
    s = status(a, vantages)
    assert s.available is available and s.healthy is available
    if not available:
        assert "checks failing" in s.reason and judgement in s.reason


def test_each_check_combines_its_regions_by_its_failure_rate() -> None:
    strict = msgspec.structs.replace(TCP, failure_rate=100)
    a = addr(health_checks=[HTTP, strict], judgement="all_ok")
    # check 1 is down in one region of two: under its 100 % failure rate it still passes
    assert status(a, {"eu": UP, "us": UP, "eu.1": DOWN, "us.1": UP}).available
    assert not status(a, {"eu": UP, "us": UP, "eu.1": DOWN, "us.1": DOWN}).available


def test_the_shorthand_is_one_check_and_a_check_not_seen_yet_waits_one_interval() -> None:
    a = addr(health_checks=[HTTP, TCP])
    waiting = address_status(a, {"eu": UP}, now=1.0, tracked_since=0.0)
    assert not waiting.available and "no result yet" in waiting.reason
    assert address_status(a, {"eu": UP}, now=6.0, tracked_since=0.0).available
    assert status(addr(health_check=TCP), {"eu": DOWN}).reason == "a tcp connection refused"


@pytest.mark.parametrize("mode", ["manual_available", "manual_unavailable"])
def test_a_manual_mode_decides_but_the_real_health_is_kept(mode: str) -> None:
    a = addr(health_check=TCP, mode=mode)
    down = status(a, {"eu": DOWN})
    assert down.available is (mode == "manual_available")
    assert down.healthy is False and down.health_reason == "a tcp connection refused"
    assert status(a, {"eu": UP}).healthy is True


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def window(start: str, until: str, mode: str = "manual_unavailable") -> MaintenanceWindow:
    return MaintenanceWindow(start=datetime.datetime.fromisoformat(start),
                             until=datetime.datetime.fromisoformat(until), mode=mode)  # type: ignore[arg-type]


def test_inside_a_maintenance_window_the_address_behaves_as_its_mode_says_and_returns_by_itself() -> None:
    a = addr(health_check=TCP, maintenance=[window("2026-12-01T02:00:00+00:00", "2026-12-01T04:00:00+00:00")])
    before = status(a, {"eu": UP}, at=at("2026-12-01T01:59:59+00:00"))
    inside = status(a, {"eu": UP}, at=at("2026-12-01T02:00:00+00:00"))
    after = status(a, {"eu": UP}, at=at("2026-12-01T04:00:00+00:00"))
    assert (before.available, before.mode) == (True, "auto")
    assert (inside.available, inside.mode, inside.healthy) == (False, "manual_unavailable", True)
    assert inside.maintenance_until == at("2026-12-01T04:00:00+00:00")
    assert "maintenance window" in inside.reason
    assert (after.available, after.mode, after.maintenance_until) == (True, "auto", 0.0)


def test_a_window_can_also_force_an_address_available() -> None:
    a = addr(health_check=TCP, maintenance=[window("2026-12-01T02:00:00Z", "2026-12-01T03:00:00Z",
                                                   "manual_available")])
    assert status(a, {"eu": DOWN}, at=at("2026-12-01T02:30:00+00:00")).available


def test_the_engine_ends_a_window_on_its_own_tick_and_follows_every_check() -> None:
    start, until = 1_900_000_000.0, 1_900_000_060.0
    iso = lambda t: datetime.datetime.fromtimestamp(t, datetime.UTC)  # noqa: E731
    a = Address(name="web", address="192.0.2.1", health_checks=[HTTP, TCP], judgement="all_ok",
                maintenance=[MaintenanceWindow(start=iso(start), until=iso(until))])
    engine = Engine(now=0.0)
    engine.set_pool("P", Pool(type="ipv4", addresses=[a]), now=0.0, at=start - 10)
    engine.start(now=0.0, at=start - 10)
    key = subjects.address_key("P", "web")

    def feed(check: int, ok: bool, t: float) -> None:
        engine.observe(ProbeResult(region="eu", prober="p", key=key, pool="P", address="web", target="192.0.2.1",
                                   protocol="http" if check == 0 else "tcp", ok=ok, at=t, check=check),
                       now=t - start + 10, at=t)

    feed(0, True, start - 5)
    feed(1, True, start - 5)
    assert engine.pool_states["P"].addresses[0].available
    engine.tick(now=11.0, at=start + 1)  # the window starts
    state = engine.pool_states["P"].addresses[0]
    assert (state.available, state.mode, state.healthy, state.maintenance_until) == (
        False, "manual_unavailable", True, until)
    feed(1, False, start + 2)  # the second check fails inside the window: real health says so
    state = engine.pool_states["P"].addresses[0]
    assert (state.available, state.healthy) == (False, False) and "checks failing" in state.health_reason
    assert state.checks == [{"eu": "up"}, {"eu": "down"}]
    feed(1, True, start + 3)
    engine.tick(now=71.0, at=until + 0.5)  # the window ends by itself
    state = engine.pool_states["P"].addresses[0]
    assert (state.available, state.mode, state.maintenance_until) == (True, "auto", 0.0)


def test_the_prober_checks_every_check_of_every_address_in_every_mode() -> None:
    pool = Pool(type="ipv4", addresses=[
        Address(name="a", address="192.0.2.1", health_checks=[HTTP, TCP]),
        Address(name="b", address="192.0.2.2", health_check=PING, mode="manual_unavailable"),
    ])
    targets = derive_targets({"P": pool})
    assert sorted(targets) == ["P/a", "P/a#1", "P/b"]
    assert (targets["P/a#1"].index, targets["P/a#1"].check.protocol) == (1, "tcp")


# -- validation -----------------------------------------------------------------------------------


def pool_of(**kw: Any) -> Pool:
    return Pool(type="ipv4", addresses=[Address(name="a", address="192.0.2.1", **kw)])


@pytest.mark.parametrize(
    ("kw", "field", "says"),
    [
        ({"health_check": HTTP, "health_checks": [TCP]}, "addresses[0].health_checks", "not both"),
        ({"health_checks": [HTTP, msgspec.structs.replace(TCP, port=None)]}, "addresses[0].health_checks[1].port",
         "port"),
        ({"health_check": msgspec.structs.replace(HTTP, packets=5)}, "addresses[0].health_check.packets", "ping"),
        ({"health_check": HealthCheck(protocol="ping", packets=50, interval_s=5, timeout_s=1)},
         "addresses[0].health_check.interval_s", "50 pings"),
        ({"maintenance": [window("2026-12-01T04:00:00Z", "2026-12-01T02:00:00Z")]},
         "addresses[0].maintenance[0].until", "after"),
        ({"maintenance": [window("2026-12-01T02:00:00Z", "2026-12-01T04:00:00Z"),
                          window("2026-12-01T03:00:00Z", "2026-12-01T05:00:00Z")]},
         "addresses[0].maintenance[1].from", "overlaps"),
        ({"maintenance": [window("2026-12-01T02:00:00", "2026-12-01T04:00:00Z")]},
         "addresses[0].maintenance[0].from", "offset"),
    ],
)
def test_bad_checks_and_windows_are_refused_naming_the_field(kw: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ResourceError, match=says) as err:
        validate_pool(pool_of(**kw), "P")
    assert err.value.field == field


def test_ping_with_packets_and_loss_rate_is_accepted() -> None:
    hc = HealthCheck(protocol="ping", packets=20, loss_rate=50, interval_s=5, timeout_s=1)
    assert validate_pool(pool_of(health_check=hc), "P").addresses[0].health_check == hc


def test_observe_is_per_check_vantage() -> None:
    v = observe(None, LastResult(ok=False, error="x"), TCP)
    assert v.state == "down"


# -- alerts ---------------------------------------------------------------------------------------


def _pool_state(**kw: Any) -> Any:
    from shared.messages import AddressState, PoolState

    return PoolState(pool="P", available=True, at=1.0, addresses=[AddressState(name="a", address="192.0.2.1", **kw)])


def test_a_manual_modes_real_health_change_is_alerted_saying_the_answer_was_kept() -> None:
    from services.config.alerts import PoolWatch

    watch = PoolWatch()
    watch.observe(_pool_state(available=True, mode="manual_available", healthy=True))
    (alert,) = watch.observe(_pool_state(available=True, mode="manual_available", healthy=False,
                                         health_reason="a tcp connection refused"))
    assert alert["kind"] == "address" and alert["healthy"] is False
    assert "unhealthy: a tcp connection refused (the answer was not changed: manual_available)" in alert["message"]
    # in auto mode the same change is an ordinary availability alert, and no change is no alert
    assert watch.observe(_pool_state(available=True, mode="manual_available", healthy=False,
                                     health_reason="a tcp connection refused")) == []


def test_a_maintenance_window_starting_and_ending_is_alerted() -> None:
    from services.config.alerts import PoolWatch

    watch = PoolWatch()
    watch.observe(_pool_state(available=True, healthy=True))
    (start,) = watch.observe(_pool_state(available=False, mode="manual_unavailable", healthy=True,
                                         maintenance_until=1_900_000_000.0, reason="a in a maintenance window"))
    assert "maintenance window (manual_unavailable) until 2030-03-17" in start["message"]
    (end,) = watch.observe(_pool_state(available=True, healthy=True))
    assert "maintenance window over, back to auto" in end["message"] and end["available"] is True
