"""Anti-flap visibility, warming, and vantage points that stop reporting (pure core and engine)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.scheduler.health import VantageState, expired_vantages, waiting_on
from shared.messages import PoolState
from shared.resources import Address, HealthCheck, Pool
from tests.test_scheduler_engine import DOMAIN, World, check, result

# -- waiting: which threshold the worst region waits on -------------------------------------------


def rs(state: str, oks: int = 0, fails: int = 0, seen: float = 0.0) -> VantageState:
    return VantageState(state=state, oks=oks, fails=fails, seen=seen)  # type: ignore[arg-type]


def checked(**kw: Any) -> Address:
    return Address(name="a", address="10.0.0.1", health_check=HealthCheck(failures=3, successes=2), **kw)


@pytest.mark.parametrize(
    ("regions", "waiting"),
    [
        ({}, ""),
        ({"r1": rs("up")}, ""),
        ({"r1": rs("up", oks=9)}, ""),
        ({"r1": rs("up", fails=1)}, "failures 1/3"),
        ({"r1": rs("up", fails=2), "r2": rs("up", fails=1)}, "failures 2/3"),
        ({"r1": rs("down")}, "successes 0/2"),
        ({"r1": rs("down", oks=1)}, "successes 1/2"),
        ({"r1": rs("down", oks=1), "r2": rs("down")}, "successes 0/2"),  # the worst region
        ({"r1": rs("up", fails=2), "r2": rs("down", oks=1)}, "successes 1/2"),  # down is worse
        ({"r1": rs("unknown")}, ""),
    ],
)
def test_waiting_names_the_threshold_of_the_worst_region(
    regions: dict[str, VantageState], waiting: str
) -> None:
    assert waiting_on(checked(), regions) == waiting


@pytest.mark.parametrize(
    "address",
    [
        checked(mode="manual_available"),
        checked(mode="manual_unavailable"),
        checked(enabled=False),
        Address(name="a", address="10.0.0.1"),
    ],
)
def test_nothing_is_waited_on_without_an_active_check(address: Address) -> None:
    assert waiting_on(address, {"r1": rs("down")}) == ""


def with_check(**kw: Any) -> Pool:
    p = Pool(
        type="ipv4", addresses=[Address(name="Primary-DC-1", address="10.0.0.1", health_check=check(**kw))]
    )
    return p


def test_pool_state_is_published_when_waiting_changes_but_the_answer_is_not() -> None:
    w = World(primary=with_check(failures=3, successes=2))
    w.healthy()
    out = w.feed(result("Primary-DC", 1, False))
    assert out.answers == []
    [state] = out.pool_states
    assert (state.available, state.addresses[0].waiting) == (True, "failures 1/3")
    out = w.feed(result("Primary-DC", 1, False), result("Primary-DC", 1, False))
    assert [s.addresses[0].waiting for s in out.pool_states] == ["failures 2/3", "successes 0/2"]
    assert [a.pool for a in out.answers] == ["Backup-DC"]
    out = w.feed(result("Primary-DC", 1, True))
    assert [s.addresses[0].waiting for s in out.pool_states] == ["successes 1/2"] and out.answers == []
    out = w.feed(result("Primary-DC", 1, True))
    assert [s.addresses[0].waiting for s in out.pool_states] == [""]
    assert [a.pool for a in out.answers] == ["Primary-DC"]


def test_repeated_identical_results_publish_nothing() -> None:
    w = World()
    w.healthy()
    w.feed(result("Primary-DC", 1, False))
    assert not w.feed(*(result("Primary-DC", 1, False) for _ in range(5)))
    assert w.feed(result("Primary-DC", 1, False, error="timeout")).pool_states  # a new reason is news
    assert not w.feed(*(result("Backup-DC", 1, True) for _ in range(5)))


# -- warming ---------------------------------------------------------------------------------------


def test_new_pools_say_they_are_warming_until_their_addresses_have_a_result() -> None:
    w = World()
    assert w.out.answers == []
    assert sorted((s.pool, s.warming, s.addresses[0].warming) for s in w.out.pool_states) == [
        ("Backup-DC", True, True),
        ("Primary-DC", True, True),
    ]
    out = w.feed(result("Primary-DC", 1, True))
    assert [(s.pool, s.warming) for s in out.pool_states] == [("Primary-DC", False)]
    assert out.answers == [] and w.engine.warming(DOMAIN)  # Backup-DC has no result yet
    out = w.feed(result("Backup-DC", 1, True))
    assert [(s.pool, s.warming) for s in out.pool_states] == [("Backup-DC", False)]
    assert [a.pool for a in out.answers] == ["Primary-DC"] and not w.engine.warming(DOMAIN)


def test_warming_ends_after_one_interval_without_results() -> None:
    w = World()
    w.feed(result("Primary-DC", 1, False))
    assert w.tick(4.9).answers == []
    out = w.tick(0.1)
    assert [(s.pool, s.warming, s.addresses[0].available) for s in out.pool_states] == [
        ("Backup-DC", False, True)
    ]
    assert [a.pool for a in out.answers] == [
        "Backup-DC"
    ]  # the first answer already avoids the failed primary


def test_warming_keeps_the_last_published_view_and_memory_of_a_known_pool() -> None:
    w = World()
    w.healthy()
    before = dict(w.engine.pool_states)
    restarted = World(loaded=list(w.engine.answers.values()), pool_states=list(before.values()))
    assert restarted.out.pool_states == [] and restarted.out.answers == []
    assert restarted.engine.pool_states == before


def test_warming_pool_state_publishes_the_remembered_non_preemptive_address() -> None:
    remembered = PoolState(pool="Primary-DC", available=True, current="Primary-DC-1", warming=True)
    w = World(pool_states=[remembered])
    [state] = [s for s in w.out.pool_states if s.pool == "Primary-DC"]
    assert (state.warming, state.current) == (True, "Primary-DC-1")


# -- vantage points that stop reporting --------------------------------------------------------------

MAX_AGE_S = 3 * 5 + 2  # 3 x interval_s + timeout_s of check()


@pytest.mark.parametrize(
    ("age", "expired"), [(0.0, False), (MAX_AGE_S - 0.1, False), (MAX_AGE_S + 0.1, True)]
)
def test_a_region_expires_after_three_intervals_and_a_timeout(age: float, expired: bool) -> None:
    regions = {"r1": rs("up", seen=100.0)}
    assert expired_vantages(regions, check(), now=100.0 + age) == (["r1"] if expired else [])


def two_regions(rate: int = 50) -> World:
    primary = with_check(failure_rate=rate)
    w = World(primary=primary)
    w.feed(
        result("Primary-DC", 1, True, region="r1"),
        result("Primary-DC", 1, True, region="r2"),
        result("Backup-DC", 1, True),
    )
    return w


def test_a_dead_vantage_point_stops_pinning_an_address_down() -> None:
    w = two_regions()
    out = w.feed(result("Primary-DC", 1, False, region="r1"))  # 1 of 2 regions down: 50 % >= 50 %
    assert [a.pool for a in out.answers] == ["Backup-DC"]
    w.now += 10
    w.feed(result("Primary-DC", 1, True, region="r2"), result("Backup-DC", 1, True))
    assert not w.tick(MAX_AGE_S - 10 - 0.5)  # r1 still counts
    out = w.tick(1.0)  # r1's last result is older than 3 intervals and a timeout: forgotten
    assert [a.pool for a in out.answers] == ["Primary-DC"]
    [state] = [s for s in out.pool_states if s.pool == "Primary-DC"]
    assert state.addresses[0].vantages == {"r2": "up"}


@pytest.mark.parametrize(("ok", "pool"), [(False, "Backup-DC"), (True, "Primary-DC")])
def test_with_every_region_gone_an_address_keeps_its_last_availability(ok: bool, pool: str) -> None:
    w = World(primary=with_check(failure_rate=100))
    w.feed(result("Primary-DC", 1, ok), result("Backup-DC", 1, True))
    assert w.engine.answers[DOMAIN].pool == pool
    w.tick(MAX_AGE_S + 1.0)  # no prober anywhere reports any more
    w.tick(60.0)
    assert w.engine.answers[DOMAIN].pool == pool
    state = w.engine.pool_states["Primary-DC"].addresses[0]
    assert (state.available, state.vantages, state.warming) == (ok, {}, False)
    w.feed(result("Primary-DC", 1, not ok))  # a prober is back: its result counts again
    assert w.engine.answers[DOMAIN].pool == ("Primary-DC" if not ok else "Backup-DC")


def test_standby_engine_follows_health_but_decides_nothing_until_it_takes_over() -> None:
    leader = World(domain=None)
    leader.healthy()
    leader.feed(result("Primary-DC", 1, False))
    leader.feed(result("Primary-DC", 1, True))  # preemptive: back on Primary-DC
    standby = World()
    standby.engine.pause()
    assert not standby.healthy() and not standby.tick(10.0)
    out = standby.engine.take_over(
        list(leader.engine.answers.values()),
        list(leader.engine.pool_states.values()),
        now=standby.now,
        at=standby.now,
    )
    assert out.answers == []  # same health, same config: nothing new to say
    assert msgspec.structs.replace(
        standby.engine.answers[DOMAIN], published_at=0.0
    ) == msgspec.structs.replace(leader.engine.answers[DOMAIN], published_at=0.0)
