"""The scheduler's pure core: thresholds, availability, strategies, fallback, switches, warming."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.decide import (
    PoolView,
    decide_domain,
    domain_warming,
    evaluate_pool,
    pool_available,
    pool_group,
    same_content,
)
from services.scheduler.health import LastResult, State, VantageState, address_status, is_settled, observe
from services.scheduler.switch import detect_switch
from shared.messages import AddressState, AnswerGroup, AnswerSet
from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef


def hc(**kw: Any) -> HealthCheck:
    return HealthCheck(**{"interval_s": 5, **kw})


def addr(name: str, ip: str, **kw: Any) -> Address:
    return Address(name=name, address=ip, **{"health_check": hc(), **kw})


def mkpool(name: str, *addrs: Address, **kw: Any) -> Pool:
    return Pool(type="ipv4", name=name, addresses=list(addrs), **kw)


def res(ok: bool, error: str = "connection refused", protocol: str = "http", at: float = 1.0) -> LastResult:
    return LastResult(ok=ok, error="" if ok else error, protocol=protocol, at=at)


def feed(seq: str, check: HealthCheck, start: VantageState | None = None) -> VantageState:
    """Feed a string of results ("+" ok, "-" fail) into the state machine."""
    state = start
    for c in seq:
        state = observe(state, res(c == "+"), check)
    assert state is not None
    return state


def region(state: State, error: str = "connection refused", protocol: str = "http") -> VantageState:
    failure = res(False, error, protocol)
    return VantageState(state=state, last=res(True) if state == "up" else failure, last_failure=failure)


def view(pool: Pool, up: set[str], current: str | None = None, warming: bool = False) -> PoolView:
    states = {
        a.name: AddressState(
            name=a.name,
            address=a.address,
            available=a.name in up and a.enabled,
            enabled=a.enabled,
            reason="" if a.name in up else f"{a.name} http connection refused",
        )
        for a in pool.addresses
    }
    return evaluate_pool(pool, states, current=current, warming=warming)


PRIMARY = mkpool("Primary-DC", addr("Primary-Server-01", "10.0.0.1"), addr("Primary-Server-02", "10.0.0.2"))
BACKUP = mkpool("Backup-DC", addr("Backup-Server-01", "10.0.1.1"))
THIRD = mkpool("Third-DC", addr("Third-Server-01", "10.0.2.1"))
ALL_POOLS = {"Primary-DC": PRIMARY, "Backup-DC": BACKUP, "Third-DC": THIRD}
PRIMARY_ADDRS = {"Primary-Server-01", "Primary-Server-02"}


def domain(**kw: Any) -> Domain:
    refs = [PoolRef(pool="Primary-DC", sequence=1), PoolRef(pool="Backup-DC", sequence=2)]
    return Domain(**{"record_type": "A", "enabled": True, "pools": refs, **kw})


def views(up: dict[str, set[str]]) -> dict[str, PoolView]:
    return {name: view(p, up.get(name, set())) for name, p in ALL_POOLS.items()}


ALL_UP = {"Primary-DC": PRIMARY_ADDRS, "Backup-DC": {"Backup-Server-01"}, "Third-DC": {"Third-Server-01"}}
PRIMARY_DOWN = {**ALL_UP, "Primary-DC": set()}
NONE_UP: dict[str, set[str]] = {}


def answer(pool: str, records: list[str], fallback: bool = False, **kw: Any) -> AnswerSet:
    return AnswerSet(
        domain="www.example.com",
        enabled=True,
        record_type="A",
        pool=pool,
        records=records,
        fallback=fallback,
        groups=[AnswerGroup(pool=pool, records=records)],
        **kw,
    )


# -- 1. threshold state machine -------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "successes", "seq", "expected"),
    [
        (2, 1, "+", "up"),  # from unknown, the first result sets the state directly
        (2, 1, "-", "down"),
        (3, 3, "-", "down"),
        (2, 1, "+-", "up"),  # one failure is not enough
        (2, 1, "+--", "down"),
        (2, 1, "+-+-", "up"),  # not consecutive
        (3, 1, "+---", "down"),
        (3, 1, "+--", "up"),
        (1, 1, "+-", "down"),
        (2, 1, "-+", "up"),
        (2, 2, "-+", "down"),
        (2, 2, "-++", "up"),
        (2, 3, "-++-++", "down"),
        (2, 3, "-++-+++", "up"),
        (10, 10, "+" + "-" * 9, "up"),
        (10, 10, "+" + "-" * 10, "down"),
    ],
)
def test_thresholds_need_consecutive_results(failures: int, successes: int, seq: str, expected: str) -> None:
    assert feed(seq, hc(failures=failures, successes=successes)).state == expected


def test_state_machine_counts_and_keeps_last_result_and_failure() -> None:
    state = feed("+--+", hc(failures=3))
    assert (state.state, state.oks, state.fails) == ("up", 1, 0)
    assert state.last is not None and state.last.ok
    assert state.last_failure is not None and state.last_failure.error == "connection refused"


# -- 2. address availability --------------------------------------------------------------

NOW, SINCE = 100.0, 99.0  # tracked for 1 s, interval 5 s


@pytest.mark.parametrize(
    ("address", "regions", "available", "reason"),
    [
        (addr("a", "10.0.0.1", mode="manual_available"), {"r1": region("down")}, True, ""),
        (
            addr("a", "10.0.0.1", mode="manual_unavailable"),
            {"r1": region("up")},
            False,
            "a set manual_unavailable",
        ),
        (addr("a", "10.0.0.1", health_check=None), {}, True, ""),
        (addr("a", "10.0.0.1"), {"r1": region("up")}, True, ""),
        (addr("a", "10.0.0.1"), {"r1": region("down")}, False, "a http connection refused"),
        (addr("a", "10.0.0.1"), {"r1": region("down", "timeout", "tcp")}, False, "a tcp timeout"),
        (addr("a", "10.0.0.1"), {"r1": region("down", "status 503")}, False, "a http status 503"),
        (addr("a", "10.0.0.1"), {"r1": VantageState()}, False, "a http no result yet"),
        (addr("a", "10.0.0.1", enabled=False), {"r1": region("up")}, False, "a disabled"),
    ],
)
def test_address_availability_by_mode_and_check(
    address: Address, regions: dict[str, VantageState], available: bool, reason: str
) -> None:
    status = address_status(address, regions, now=NOW, tracked_since=SINCE)
    assert (status.available, status.reason) == (available, reason)


@pytest.mark.parametrize(
    ("failure_rate", "states", "available"),
    [
        (50, "u", True),
        (50, "d", False),
        (20, "d", False),
        (100, "d", False),
        (50, "ud", False),  # 50 % >= 50
        (80, "ud", True),
        (100, "ud", True),
        (20, "ud", False),
        (100, "dd", False),
        (50, "uud", True),  # 33 % < 50
        (20, "uud", False),  # 33 % >= 20
        (50, "udd", False),  # 67 %
        (80, "udd", True),
        (100, "udd", True),
        (100, "ddd", False),
        (50, "u?d", False),  # unknown regions do not count: 1 of 2 known
        (50, "??u", True),
        (80, "d??", False),
    ],
)
def test_failure_rate_combines_known_regions(failure_rate: int, states: str, available: bool) -> None:
    names: dict[str, State] = {"u": "up", "d": "down", "?": "unknown"}
    regions = {f"r{i}": region(names[c]) if c != "?" else VantageState() for i, c in enumerate(states)}
    address = addr("a", "10.0.0.1", health_check=hc(failure_rate=failure_rate))
    assert address_status(address, regions, now=NOW, tracked_since=SINCE).available is available


@pytest.mark.parametrize(("elapsed", "available"), [(0.0, False), (4.9, False), (5.0, True), (60.0, True)])
def test_unknown_address_becomes_available_after_one_interval(elapsed: float, available: bool) -> None:
    address = addr("a", "10.0.0.1")
    assert address_status(address, {}, now=SINCE + elapsed, tracked_since=SINCE).available is available
    assert is_settled(address, {}, now=SINCE + elapsed, tracked_since=SINCE) is available


def test_down_reason_names_the_last_failure_even_while_recovering() -> None:
    state = feed("-+", hc(successes=2))
    status = address_status(
        addr("Primary-Server-01", "10.0.0.1"), {"r1": state}, now=NOW, tracked_since=SINCE
    )
    assert status.reason == "Primary-Server-01 http connection refused"


# -- 3. pool availability -------------------------------------------------------------------

FIVE = mkpool("p", *(addr(f"a{i}", f"10.0.0.{i}") for i in range(1, 6)))


@pytest.mark.parametrize(
    ("condition", "up_count", "available"),
    [
        ("any_ok", 0, False),
        ("any_ok", 1, True),
        ("p30_ok", 1, False),  # 20 %
        ("p30_ok", 2, True),  # 40 %
        ("p50_ok", 2, False),
        ("p50_ok", 3, True),
        ("p70_ok", 3, False),
        ("p70_ok", 4, True),
        ("all_ok", 4, False),
        ("all_ok", 5, True),
    ],
)
def test_pool_health_condition(condition: str, up_count: int, available: bool) -> None:
    pool = mkpool("p", *FIVE.addresses, health_condition=condition)
    assert pool_available(pool, {f"a{i}" for i in range(1, up_count + 1)}) is available


@pytest.mark.parametrize(
    ("condition", "up", "available"),
    [
        ("all_ok", {"a1"}, True),  # the disabled address does not count
        ("p50_ok", {"a1"}, True),
        ("p70_ok", {"a1"}, True),
        ("any_ok", {"a2"}, False),  # a disabled address is never available
    ],
)
def test_pool_condition_counts_enabled_addresses_only(condition: str, up: set[str], available: bool) -> None:
    pool = mkpool(
        "p", addr("a1", "10.0.0.1"), addr("a2", "10.0.0.2", enabled=False), health_condition=condition
    )
    assert view(pool, up).available is available


@pytest.mark.parametrize(
    "pool",
    [
        mkpool("p", addr("a1", "10.0.0.1"), enabled=False),
        mkpool("p"),
        mkpool("p", addr("a1", "10.0.0.1", enabled=False)),
    ],
)
def test_disabled_or_empty_pool_is_unavailable(pool: Pool) -> None:
    assert view(pool, {"a1"}).available is False


# -- 4. pool records -------------------------------------------------------------------------

SEQ = [
    addr("a1", "10.0.0.1", sequence=2),
    addr("a2", "10.0.0.2", sequence=1),
    addr("a3", "10.0.0.3", sequence=1),
]


@pytest.mark.parametrize(
    ("kw", "up", "current", "records", "held"),
    [
        ({"lb_strategy": "sequence"}, {"a1", "a2", "a3"}, None, ["10.0.0.2"], None),
        ({"lb_strategy": "sequence"}, {"a1", "a3"}, None, ["10.0.0.3"], None),  # list order breaks ties
        ({"lb_strategy": "sequence"}, {"a1", "a2"}, "a1", ["10.0.0.2"], None),  # preemptive
        (
            {"lb_strategy": "sequence", "sequence_mode": "non_preemptive"},
            {"a1", "a2"},
            "a1",
            ["10.0.0.1"],
            "a1",
        ),
        (
            {"lb_strategy": "sequence", "sequence_mode": "non_preemptive"},
            {"a2", "a3"},
            "a1",
            ["10.0.0.2"],
            "a2",
        ),
        (
            {"lb_strategy": "sequence", "sequence_mode": "non_preemptive"},
            {"a1", "a2"},
            None,
            ["10.0.0.2"],
            "a2",
        ),
        ({"lb_strategy": "round_robin"}, {"a1", "a3"}, None, ["10.0.0.1", "10.0.0.3"], None),
        ({"lb_strategy": "source_nearest"}, {"a1", "a2"}, None, ["10.0.0.1", "10.0.0.2"], None),
    ],
)
def test_pool_strategy_picks_records(
    kw: dict[str, str], up: set[str], current: str | None, records: list[str], held: str | None
) -> None:
    group, chosen = pool_group(mkpool("p", *SEQ, **kw), up, current)
    assert group is not None
    assert (group.records, chosen) == (records, held)
    assert group.rotate is (kw["lb_strategy"] in ("round_robin", "source_nearest"))


def test_weight_pool_answers_available_records_with_weights() -> None:
    pool = mkpool(
        "p",
        addr("a1", "10.0.0.1", weight=10),
        addr("a2", "10.0.0.2", weight=5),
        addr("a3", "10.0.0.3", weight=1),
        lb_strategy="weight",
    )
    group, _ = pool_group(pool, {"a1", "a3"}, None)
    assert group == AnswerGroup(pool="p", records=["10.0.0.1", "10.0.0.3"], record_weights=[10, 1])


def test_pool_without_available_address_has_no_group_and_no_current() -> None:
    pool = mkpool("p", *SEQ, lb_strategy="sequence", sequence_mode="non_preemptive")
    v = view(pool, set(), current="a1")
    assert (v.available, v.group, v.current) == (False, None, None)


# -- 5. domain decisions ------------------------------------------------------------------------

P1 = ["10.0.0.1", "10.0.0.2"]
B1 = ["10.0.1.1"]


@pytest.mark.parametrize(
    ("kw", "up", "previous_pool", "pool", "records", "fallback"),
    [
        ({}, ALL_UP, None, "Primary-DC", P1, False),
        ({}, PRIMARY_DOWN, None, "Backup-DC", B1, False),
        ({}, ALL_UP, "Backup-DC", "Primary-DC", P1, False),  # preemptive fail-back
        ({"sequence_mode": "non_preemptive"}, ALL_UP, "Backup-DC", "Backup-DC", B1, False),
        ({"sequence_mode": "non_preemptive"}, ALL_UP, "Primary-DC", "Primary-DC", P1, False),
        ({"sequence_mode": "non_preemptive"}, PRIMARY_DOWN, "Primary-DC", "Backup-DC", B1, False),
        ({"sequence_mode": "non_preemptive"}, ALL_UP, None, "Primary-DC", P1, False),
        ({"sequence_mode": "non_preemptive"}, ALL_UP, "Gone-DC", "Primary-DC", P1, False),
        ({"lb_strategy": "source_nearest"}, PRIMARY_DOWN, None, "Backup-DC", B1, False),
        ({}, NONE_UP, None, "Primary-DC", P1, True),  # fail open to the first enabled pool
        ({"sequence_mode": "non_preemptive"}, NONE_UP, "Backup-DC", "Primary-DC", P1, True),
        ({"lb_strategy": "round_robin"}, ALL_UP, None, "Primary-DC,Backup-DC", P1 + B1, False),
        ({"lb_strategy": "round_robin"}, PRIMARY_DOWN, None, "Backup-DC", B1, False),
        ({"lb_strategy": "round_robin"}, NONE_UP, None, "Primary-DC", P1, True),
        ({"lb_strategy": "weight"}, ALL_UP, None, "Primary-DC,Backup-DC", P1 + B1, False),
        ({"lb_strategy": "weight"}, NONE_UP, None, "Primary-DC", P1, True),
    ],
)
def test_domain_strategy_chooses_pool(
    kw: dict[str, str],
    up: dict[str, set[str]],
    previous_pool: str | None,
    pool: str,
    records: list[str],
    fallback: bool,
) -> None:
    previous = answer(previous_pool, []) if previous_pool else None
    got = decide_domain("www.example.com", domain(**kw), revision=7, views=views(up), previous=previous)
    assert (got.pool, got.records, got.fallback, got.config_revision) == (pool, records, fallback, 7)
    assert got.enabled and not got.deleted and got.ttl == 30 and got.record_type == "A"


def test_pool_order_is_ref_sequence_then_list_order() -> None:
    refs = [
        PoolRef(pool="Third-DC", sequence=2),
        PoolRef(pool="Backup-DC", sequence=1),
        PoolRef(pool="Primary-DC", sequence=2),
    ]
    got = decide_domain(
        "d.example.com", domain(pools=refs), revision=1, views=views(PRIMARY_DOWN), previous=None
    )
    assert got.pool == "Backup-DC"
    got = decide_domain("d.example.com", domain(pools=refs), revision=1, views=views(NONE_UP), previous=None)
    assert (got.pool, got.fallback) == ("Backup-DC", True)


def test_disabled_pools_are_skipped_and_fallback_uses_first_enabled_pool() -> None:
    vs = views(NONE_UP)
    vs["Primary-DC"] = view(mkpool("Primary-DC", *PRIMARY.addresses, enabled=False), PRIMARY_ADDRS)
    got = decide_domain("d.example.com", domain(), revision=1, views=vs, previous=None)
    assert (got.pool, got.records, got.fallback) == ("Backup-DC", B1, True)


def test_fallback_answers_enabled_addresses_by_the_pool_strategy() -> None:
    pool = mkpool(
        "Primary-DC",
        addr("x1", "10.0.0.1", sequence=2),
        addr("x2", "10.0.0.2", sequence=1),
        addr("x3", "10.0.0.3", enabled=False, sequence=1),
        lb_strategy="sequence",
    )
    vs = {"Primary-DC": view(pool, set())}
    got = decide_domain(
        "d.example.com", domain(pools=[PoolRef(pool="Primary-DC")]), revision=1, views=vs, previous=None
    )
    assert (got.records, got.fallback) == (["10.0.0.2"], True)


def test_weight_domain_has_one_group_per_available_pool_with_ref_weight() -> None:
    refs = [
        PoolRef(pool="Primary-DC", weight=3),
        PoolRef(pool="Backup-DC", weight=1),
        PoolRef(pool="Third-DC", weight=9),
    ]
    vs = views({**ALL_UP, "Third-DC": set()})
    got = decide_domain(
        "d.example.com", domain(pools=refs, lb_strategy="weight"), revision=1, views=vs, previous=None
    )
    assert [(g.pool, g.weight, g.records) for g in got.groups] == [
        ("Primary-DC", 3, P1),
        ("Backup-DC", 1, B1),
    ]


def test_round_robin_domain_merges_pools_into_one_rotating_group() -> None:
    got = decide_domain(
        "d.example.com", domain(lb_strategy="round_robin"), revision=1, views=views(ALL_UP), previous=None
    )
    assert got.groups == [AnswerGroup(pool="Primary-DC,Backup-DC", records=P1 + B1, rotate=True)]


@pytest.mark.parametrize(
    ("dom", "enabled", "groups"),
    [
        (domain(enabled=False), False, 0),
        (domain(pools=[]), True, 0),
        (domain(pools=[PoolRef(pool="Missing-DC")]), True, 0),
    ],
)
def test_disabled_domain_or_no_enabled_pool(dom: Domain, enabled: bool, groups: int) -> None:
    got = decide_domain("d.example.com", dom, revision=3, views=views(ALL_UP), previous=None)
    assert (got.enabled, len(got.groups), got.records, got.fallback, got.deleted) == (
        enabled,
        groups,
        [],
        False,
        False,
    )


def test_same_content_ignores_published_at_only() -> None:
    a = answer("Primary-DC", P1, published_at=1.0)
    assert same_content(a, answer("Primary-DC", P1, published_at=2.0))
    assert not same_content(a, answer("Primary-DC", P1, config_revision=2))
    assert not same_content(a, None)


# -- 6. switch detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "up", "reason"),
    [
        (
            answer("Primary-DC", P1),
            answer("Backup-DC", B1),
            PRIMARY_DOWN,
            "Primary-DC unavailable: Primary-Server-01 http connection refused",
        ),
        (answer("Backup-DC", B1), answer("Primary-DC", P1), ALL_UP, "Primary-DC available again"),
        (
            answer("Backup-DC", B1),
            answer("Primary-DC", P1, fallback=True),
            NONE_UP,
            "no pool available: failing open to Primary-DC",
        ),
        (
            answer("Primary-DC", P1, fallback=True),
            answer("Backup-DC", B1),
            PRIMARY_DOWN,
            "Backup-DC available again",
        ),
        (answer("Primary-DC", P1), answer("Backup-DC", B1), ALL_UP, "configuration changed"),
        (answer("Old-DC", ["10.9.9.9"]), answer("Primary-DC", P1), ALL_UP, "configuration changed"),
    ],
)
def test_switch_reason(before: AnswerSet, after: AnswerSet, up: dict[str, set[str]], reason: str) -> None:
    event = detect_switch(domain(), before, after, views=views(up), at=5.0)
    assert event is not None
    assert (event.from_pool, event.to_pool, event.reason) == (before.pool, after.pool, reason)
    assert (event.before, event.after, event.fallback, event.at) == (
        before.records,
        after.records,
        after.fallback,
        5.0,
    )


@pytest.mark.parametrize(
    "before",
    [
        None,
        answer("Primary-DC", P1),  # same pool, same fallback flag
        AnswerSet(domain="www.example.com", enabled=False, record_type="A"),
        AnswerSet(domain="www.example.com", enabled=False, deleted=True, record_type="A"),
    ],
)
def test_no_switch_without_a_previous_enabled_answer_on_another_pool(before: AnswerSet | None) -> None:
    after = answer("Primary-DC", ["10.0.0.1"])
    assert detect_switch(domain(), before, after, views=views(ALL_UP), at=1.0) is None


def test_no_switch_when_the_domain_gets_disabled() -> None:
    after = AnswerSet(domain="www.example.com", enabled=False, record_type="A")
    assert detect_switch(domain(), answer("Primary-DC", P1), after, views=views(ALL_UP), at=1.0) is None


def test_round_robin_switch_names_the_pool_that_went_down() -> None:
    before, after = answer("Primary-DC,Backup-DC", P1 + B1), answer("Backup-DC", B1)
    event = detect_switch(domain(lb_strategy="round_robin"), before, after, views=views(PRIMARY_DOWN), at=1.0)
    assert event is not None and event.reason.startswith("Primary-DC unavailable: Primary-Server-01")


# -- 7. warming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dom", "warming_pools", "expected"),
    [
        (domain(), set(), False),
        (domain(), {"Backup-DC"}, True),
        (domain(), {"Third-DC"}, False),  # not one of its pools
        (domain(enabled=False), {"Primary-DC"}, False),  # disabled domains never warm
    ],
)
def test_domain_warms_while_one_of_its_pools_does(
    dom: Domain, warming_pools: set[str], expected: bool
) -> None:
    vs = {n: view(p, ALL_UP[n], warming=n in warming_pools) for n, p in ALL_POOLS.items()}
    assert domain_warming(dom, vs) is expected


@pytest.mark.parametrize(
    ("address", "regions", "elapsed", "settled"),
    [
        (addr("a", "10.0.0.1"), {}, 1.0, False),
        (addr("a", "10.0.0.1"), {"r1": VantageState()}, 1.0, False),
        (addr("a", "10.0.0.1"), {"r1": region("down")}, 1.0, True),
        (addr("a", "10.0.0.1"), {}, 5.0, True),
        (addr("a", "10.0.0.1", health_check=None), {}, 0.0, True),
        (addr("a", "10.0.0.1", mode="manual_unavailable"), {}, 0.0, True),
        (addr("a", "10.0.0.1", enabled=False), {}, 0.0, True),
    ],
)
def test_checked_address_settles_on_first_result_or_interval(
    address: Address, regions: dict[str, VantageState], elapsed: float, settled: bool
) -> None:
    assert is_settled(address, regions, now=SINCE + elapsed, tracked_since=SINCE) is settled


# -- properties -----------------------------------------------------------------------------------

_addresses = st.lists(
    st.builds(
        lambda i, enabled, seq, w: Address(
            name=f"a{i}", address=f"10.0.0.{i}", enabled=enabled, sequence=seq, weight=w
        ),
        st.integers(1, 250),
        st.booleans(),
        st.integers(1, 3),
        st.integers(1, 5),
    ),
    max_size=5,
    unique_by=lambda a: a.name,
)
_pools = st.builds(
    lambda i, addrs, enabled, strategy, mode, condition: Pool(
        type="ipv4",
        name=f"P{i}",
        addresses=addrs,
        enabled=enabled,
        lb_strategy=strategy,
        sequence_mode=mode,
        health_condition=condition,
    ),
    st.integers(0, 3),
    _addresses,
    st.booleans(),
    st.sampled_from(["round_robin", "sequence", "weight", "source_nearest"]),
    st.sampled_from(["preemptive", "non_preemptive"]),
    st.sampled_from(["any_ok", "p30_ok", "p50_ok", "p70_ok", "all_ok"]),
)


@settings(max_examples=300, deadline=None)
@given(
    pools=st.lists(_pools, min_size=1, max_size=4, unique_by=lambda p: p.name),
    strategy=st.sampled_from(["sequence", "round_robin", "weight", "source_nearest"]),
    mode=st.sampled_from(["preemptive", "non_preemptive"]),
    data=st.data(),
)
def test_answer_properties(pools: list[Pool], strategy: str, mode: str, data: st.DataObject) -> None:
    vs = {}
    for p in pools:
        up = data.draw(
            st.sets(st.sampled_from([a.name for a in p.addresses])) if p.addresses else st.just(set())
        )
        vs[p.name or ""] = view(
            p, up, current=data.draw(st.sampled_from([None, *(a.name for a in p.addresses)]))
        )
    refs = [PoolRef(pool=p.name or "", sequence=data.draw(st.integers(1, 3))) for p in pools]
    dom = Domain(record_type="A", enabled=True, pools=refs, lb_strategy=strategy, sequence_mode=mode)  # type: ignore[arg-type]
    previous = answer(data.draw(st.sampled_from([p.name or "" for p in pools])), [])
    got = decide_domain("d.example.com", dom, revision=1, views=vs, previous=previous)
    enabled_pools = [p for p in pools if p.enabled]
    any_up = any(vs[p.name or ""].available for p in enabled_pools)
    assert got.fallback is (bool(enabled_pools) and not any_up)
    chosen = [n for n in got.pool.split(",") if n]
    allowed = {a.address for p in pools if p.name in chosen for a in p.addresses if a.enabled}
    assert set(got.records) <= allowed
    assert set(got.records) == {r for g in got.groups for r in g.records}
    if not got.fallback:
        assert all(vs[n].available for n in chosen)
        available = {
            a.address
            for n in chosen
            for a in vs[n].pool.addresses
            if vs[n].addresses and any(s.name == a.name and s.available for s in vs[n].addresses)
        }
        assert set(got.records) <= available
    for g in got.groups:
        assert not g.record_weights or len(g.record_weights) == len(g.records)


@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(st.booleans(), min_size=1, max_size=30),
    failures=st.integers(1, 10),
    successes=st.integers(1, 10),
)
def test_state_machine_properties(seq: list[bool], failures: int, successes: int) -> None:
    check = hc(failures=failures, successes=successes)
    state = feed("".join("+" if ok else "-" for ok in seq), check)
    assert state.state in ("up", "down")
    assert state.oks == 0 or state.fails == 0
    if state.fails >= failures:
        assert state.state == "down"
    if state.oks >= successes:
        assert state.state == "up"
