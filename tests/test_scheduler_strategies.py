"""Every strategy of the pure core, table by table: domain level, pool level, CNAME, modes, conditions."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.scheduler.decide import PoolView, decide_domain, evaluate_pool, pool_group
from services.scheduler.health import VantageState, address_status
from services.scheduler.switch import detect_switch
from shared.messages import AddressState, AnswerGroup, AnswerSet
from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef

CHECK = HealthCheck(interval_s=5)
NAME = "www.example.com"


def mkaddr(name: str, value: str, **kw: Any) -> Address:
    return Address(name=name, address=value, **{"health_check": CHECK, **kw})


def mkpool(name: str, *addrs: Address, kind: str = "ipv4", **kw: Any) -> Pool:
    return Pool(type=kind, name=name, addresses=list(addrs), **kw)  # type: ignore[arg-type]


def view(pool: Pool, up: set[str], current: str | None = None) -> PoolView:
    states = {
        a.name: AddressState(
            name=a.name,
            address=a.address,
            available=a.name in up and a.enabled,
            reason="" if a.name in up else f"{a.name} down",
        )
        for a in pool.addresses
    }
    return evaluate_pool(pool, states, current=current)


# -- domain level ------------------------------------------------------------------------------

EU = mkpool("EU", mkaddr("eu1", "10.0.0.1"), mkaddr("eu2", "10.0.0.2"), region="eu")
US = mkpool("US", mkaddr("us1", "10.0.1.1"), region="us")
AP = mkpool("AP", mkaddr("ap1", "10.0.2.1"), region="ap")
POOLS = {"EU": EU, "US": US, "AP": AP}
UP_ALL = {"EU": {"eu1", "eu2"}, "US": {"us1"}, "AP": {"ap1"}}
EU_DOWN = {**UP_ALL, "EU": set()}
ONLY_AP = {"AP": {"ap1"}}
NONE: dict[str, set[str]] = {}
REFS = [
    PoolRef(pool="US", sequence=2, weight=1),
    PoolRef(pool="EU", sequence=1, weight=3),
    PoolRef(pool="AP", sequence=3, weight=2),
]
EU_G = AnswerGroup(pool="EU", records=["10.0.0.1", "10.0.0.2"], rotate=True)
US_G = AnswerGroup(pool="US", records=["10.0.1.1"], rotate=True)
AP_G = AnswerGroup(pool="AP", records=["10.0.2.1"], rotate=True)


def domain(strategy: str, mode: str = "preemptive", **kw: Any) -> Domain:
    return Domain(
        record_type="A",
        enabled=True,
        pools=REFS,
        lb_strategy=strategy,  # type: ignore[arg-type]
        sequence_mode=mode,  # type: ignore[arg-type]
        **kw,
    )


def decide(dom: Domain, up: dict[str, set[str]], previous: str | None = None) -> AnswerSet:
    views = {n: view(p, up.get(n, set())) for n, p in POOLS.items()}
    prev = AnswerSet(domain=NAME, enabled=True, record_type="A", pool=previous) if previous else None
    return decide_domain(NAME, dom, revision=4, views=views, previous=prev)


def g(group: AnswerGroup, **kw: Any) -> AnswerGroup:
    return msgspec.structs.replace(group, **kw)


@pytest.mark.parametrize(
    ("dom", "up", "previous", "pool", "groups", "select", "fallback"),
    [
        # sequence, preemptive: the first available pool by sequence, back as soon as it recovers
        (domain("sequence"), UP_ALL, None, "EU", [EU_G], "weight", False),
        (domain("sequence"), EU_DOWN, "EU", "US", [US_G], "weight", False),
        (domain("sequence"), UP_ALL, "US", "EU", [EU_G], "weight", False),
        (domain("sequence"), ONLY_AP, "US", "AP", [AP_G], "weight", False),
        # sequence, non-preemptive: keep the current pool while it is available
        (domain("sequence", "non_preemptive"), UP_ALL, None, "EU", [EU_G], "weight", False),
        (domain("sequence", "non_preemptive"), UP_ALL, "US", "US", [US_G], "weight", False),
        (domain("sequence", "non_preemptive"), UP_ALL, "AP", "AP", [AP_G], "weight", False),
        (domain("sequence", "non_preemptive"), ONLY_AP, "US", "AP", [AP_G], "weight", False),
        (domain("sequence", "non_preemptive"), EU_DOWN, "EU", "US", [US_G], "weight", False),
        # round_robin: every available pool's records in one rotating group
        (
            domain("round_robin"),
            UP_ALL,
            None,
            "EU,US,AP",
            [
                AnswerGroup(
                    pool="EU,US,AP", records=["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.2.1"], rotate=True
                )
            ],
            "weight",
            False,
        ),
        (
            domain("round_robin"),
            EU_DOWN,
            None,
            "US,AP",
            [AnswerGroup(pool="US,AP", records=["10.0.1.1", "10.0.2.1"], rotate=True)],
            "weight",
            False,
        ),
        # weight: one group per available pool, the edge picks one per query by the ref's weight
        (
            domain("weight"),
            UP_ALL,
            None,
            "EU,US,AP",
            [g(EU_G, weight=3), US_G, g(AP_G, weight=2)],
            "weight",
            False,
        ),
        (domain("weight"), EU_DOWN, None, "US,AP", [US_G, g(AP_G, weight=2)], "weight", False),
        # source_nearest: one group per available pool by sequence, each with its pool's region
        (
            domain("source_nearest"),
            UP_ALL,
            None,
            "EU,US,AP",
            [g(EU_G, region="eu"), g(US_G, region="us"), g(AP_G, region="ap")],
            "nearest",
            False,
        ),
        (
            domain("source_nearest"),
            EU_DOWN,
            None,
            "US,AP",
            [g(US_G, region="us"), g(AP_G, region="ap")],
            "nearest",
            False,
        ),
        # fail-open: no pool available -> every enabled address of the first enabled pool
        (domain("sequence"), NONE, "US", "EU", [EU_G], "weight", True),
        (domain("sequence", "non_preemptive"), NONE, "US", "EU", [EU_G], "weight", True),
        (domain("round_robin"), NONE, None, "EU", [EU_G], "weight", True),
        (domain("weight"), NONE, None, "EU", [EU_G], "weight", True),
        (domain("source_nearest"), NONE, None, "EU", [g(EU_G, region="eu")], "nearest", True),
    ],
)
def test_domain_strategy(
    dom: Domain,
    up: dict[str, set[str]],
    previous: str | None,
    pool: str,
    groups: list[AnswerGroup],
    select: str,
    fallback: bool,
) -> None:
    got = decide(dom, up, previous)
    assert (got.pool, got.groups, got.select, got.fallback) == (pool, groups, select, fallback)
    assert got.records == list(dict.fromkeys(r for grp in groups for r in grp.records))
    assert (got.enabled, got.deleted, got.config_revision) == (True, False, 4)


@pytest.mark.parametrize(
    ("strategy", "before", "after", "reason"),
    [
        ("source_nearest", EU_DOWN, UP_ALL, "EU available again"),
        ("source_nearest", {**UP_ALL, "AP": set()}, UP_ALL, "AP available again"),  # every pool counts
        ("source_nearest", UP_ALL, EU_DOWN, "EU unavailable: eu1 down"),
        ("weight", {"EU": {"eu1"}}, {"EU": {"eu1"}, "AP": {"ap1"}}, "AP available again"),
        ("sequence", EU_DOWN, UP_ALL, "EU available again"),
    ],
)
def test_switch_reason_for_multi_pool_strategies(
    strategy: str, before: dict[str, set[str]], after: dict[str, set[str]], reason: str
) -> None:
    dom = domain(strategy)
    old, new = decide(dom, before), decide(dom, after)
    views = {n: view(p, after.get(n, set())) for n, p in POOLS.items()}
    event = detect_switch(dom, old, new, views=views, at=1.0)
    assert event is not None and event.reason == reason


# -- pool level --------------------------------------------------------------------------------

A1 = mkaddr("a1", "10.0.0.1", sequence=2, weight=5, region="eu")
A2 = mkaddr("a2", "10.0.0.2", sequence=1, weight=1, region="us")
A3 = mkaddr("a3", "10.0.0.3", sequence=3, weight=2, region="eu")
ALL3 = {"a1", "a2", "a3"}


@pytest.mark.parametrize(
    ("strategy", "mode", "up", "current", "group", "held"),
    [
        ("round_robin", "preemptive", ALL3, None, {"records": ["1", "2", "3"], "rotate": True}, None),
        ("round_robin", "preemptive", {"a1", "a3"}, None, {"records": ["1", "3"], "rotate": True}, None),
        ("sequence", "preemptive", ALL3, None, {"records": ["2"]}, None),
        ("sequence", "preemptive", ALL3, "a1", {"records": ["2"]}, None),  # preemptive: back to a2
        ("sequence", "preemptive", {"a1", "a3"}, None, {"records": ["1"]}, None),
        ("sequence", "non_preemptive", ALL3, None, {"records": ["2"]}, "a2"),
        ("sequence", "non_preemptive", ALL3, "a1", {"records": ["1"]}, "a1"),  # keeps a1
        ("sequence", "non_preemptive", {"a2", "a3"}, "a1", {"records": ["2"]}, "a2"),  # a1 gone
        ("weight", "preemptive", ALL3, None, {"records": ["1", "2", "3"], "record_weights": [5, 1, 2]}, None),
        ("weight", "preemptive", {"a1", "a3"}, None, {"records": ["1", "3"], "record_weights": [5, 2]}, None),
        (
            "source_nearest",
            "preemptive",
            ALL3,
            None,
            {"records": ["1", "2", "3"], "rotate": True, "record_regions": ["eu", "us", "eu"]},
            None,
        ),
        (
            "source_nearest",
            "preemptive",
            {"a2", "a3"},
            None,
            {"records": ["2", "3"], "rotate": True, "record_regions": ["us", "eu"]},
            None,
        ),
    ],
)
def test_pool_strategy(
    strategy: str, mode: str, up: set[str], current: str | None, group: dict[str, Any], held: str | None
) -> None:
    pool = mkpool("p", A1, A2, A3, lb_strategy=strategy, sequence_mode=mode)
    got, chosen = pool_group(pool, up, current)
    records = [f"10.0.0.{r}" for r in group.pop("records")]
    assert got == AnswerGroup(pool="p", records=records, **group)
    assert chosen == held


@pytest.mark.parametrize("strategy", ["round_robin", "sequence", "weight", "source_nearest"])
def test_pool_strategy_fails_open_with_every_enabled_address(strategy: str) -> None:
    pool = mkpool("P", A1, A2, A3, mkaddr("off", "10.0.0.9", enabled=False), lb_strategy=strategy)
    refs = [PoolRef(pool="P")]
    got = decide_domain(
        NAME,
        Domain(record_type="A", enabled=True, pools=refs),
        revision=1,
        views={"P": view(pool, set())},
        previous=None,
    )
    assert got.fallback
    expected = ["10.0.0.2"] if strategy == "sequence" else ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert got.records == expected


# -- CNAME domains with domain pools -------------------------------------------------------------

WEB = mkpool(
    "Web",
    mkaddr("w1", "web1.origin.example.net", sequence=1, weight=4),
    mkaddr("w2", "web2.origin.example.net", sequence=2, weight=1),
    kind="domain",
)
CDN = mkpool("Cdn", mkaddr("c1", "edge.cdn.example.org"), kind="domain")
CNAME_POOLS = {"Web": WEB, "Cdn": CDN}


def cname_decide(strategy: str, pool_strategy: str, up: dict[str, set[str]]) -> AnswerSet:
    pools = {"Web": msgspec.structs.replace(WEB, lb_strategy=pool_strategy), "Cdn": CDN}
    dom = Domain(
        record_type="CNAME",
        enabled=True,
        lb_strategy=strategy,  # type: ignore[arg-type]
        pools=[PoolRef(pool="Web", sequence=1, weight=3), PoolRef(pool="Cdn", sequence=2)],
    )
    views = {n: view(p, up.get(n, set())) for n, p in pools.items()}
    return decide_domain("cdn.example.com", dom, revision=2, views=views, previous=None)


W1, W2, C1 = "web1.origin.example.net", "web2.origin.example.net", "edge.cdn.example.org"


@pytest.mark.parametrize(
    ("strategy", "pool_strategy", "up", "records", "fallback"),
    [
        ("sequence", "sequence", {"Web": {"w1", "w2"}, "Cdn": {"c1"}}, [W1], False),
        ("sequence", "sequence", {"Web": {"w2"}, "Cdn": {"c1"}}, [W2], False),
        ("sequence", "round_robin", {"Web": {"w1", "w2"}, "Cdn": {"c1"}}, [W1, W2], False),
        ("sequence", "weight", {"Web": {"w1", "w2"}, "Cdn": {"c1"}}, [W1, W2], False),
        ("sequence", "sequence", {"Cdn": {"c1"}}, [C1], False),
        ("weight", "sequence", {"Web": {"w1", "w2"}, "Cdn": {"c1"}}, [W1, C1], False),
        ("round_robin", "round_robin", {"Web": {"w2"}, "Cdn": {"c1"}}, [W2, C1], False),
        ("sequence", "sequence", {}, [W1], True),
    ],
)
def test_cname_domain_answers_host_names_of_domain_pools(
    strategy: str, pool_strategy: str, up: dict[str, set[str]], records: list[str], fallback: bool
) -> None:
    got = cname_decide(strategy, pool_strategy, up)
    assert (got.record_type, got.records, got.fallback) == ("CNAME", records, fallback)
    if pool_strategy == "weight" and strategy == "sequence":
        assert got.groups[0].record_weights == [4, 1]


# -- address modes and health conditions ---------------------------------------------------------

DOWN = VantageState(state="down")
UP = VantageState(state="up")


@pytest.mark.parametrize(
    ("mode", "regions", "has_check", "available"),
    [
        ("manual_available", {"r1": DOWN}, True, True),  # manual wins over a failing check
        ("manual_available", {}, False, True),
        ("manual_unavailable", {"r1": UP}, True, False),  # manual wins over a passing check
        ("manual_unavailable", {}, False, False),
        ("auto", {"r1": UP}, True, True),
        ("auto", {"r1": DOWN}, True, False),
        ("auto", {}, False, True),  # no check: always available
    ],
)
def test_address_mode(mode: str, regions: dict[str, VantageState], has_check: bool, available: bool) -> None:
    a = mkaddr("a", "10.0.0.1", mode=mode, health_check=CHECK if has_check else None)
    assert address_status(a, regions, now=100.0, tracked_since=0.0).available is available


TEN = [mkaddr(f"a{i}", f"10.0.0.{i}") for i in range(10)]


@pytest.mark.parametrize(
    ("condition", "up", "answered_by"),
    [
        ("any_ok", 1, "Main"),
        ("any_ok", 0, "Spare"),
        ("p30_ok", 3, "Main"),
        ("p30_ok", 2, "Spare"),
        ("p50_ok", 5, "Main"),
        ("p50_ok", 4, "Spare"),
        ("p70_ok", 7, "Main"),
        ("p70_ok", 6, "Spare"),
        ("all_ok", 10, "Main"),
        ("all_ok", 9, "Spare"),
    ],
)
def test_health_condition_decides_whether_the_pool_answers(condition: str, up: int, answered_by: str) -> None:
    main = mkpool("Main", *TEN, health_condition=condition)
    spare = mkpool("Spare", mkaddr("s1", "10.0.9.1"))
    views = {"Main": view(main, {f"a{i}" for i in range(up)}), "Spare": view(spare, {"s1"})}
    dom = Domain(
        record_type="A", enabled=True, pools=[PoolRef(pool="Main"), PoolRef(pool="Spare", sequence=2)]
    )
    got = decide_domain(NAME, dom, revision=1, views=views, previous=None)
    assert got.pool == answered_by
    if answered_by == "Main":  # only the available addresses are answered
        assert len(got.records) == up
