"""The scheduler's in-memory engine: incremental decisions, warming, memory, tombstones (no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from services.scheduler.engine import Engine, Outputs
from shared import subjects
from shared.messages import AnswerSet, PoolState, ProbeResult
from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef

DOMAIN = "www.example.com"
T0 = 1000.0


def check(**kw: Any) -> HealthCheck:
    return HealthCheck(**{"interval_s": 5, "failures": 1, "successes": 1, **kw})


def pool(name: str, *ips: str, **kw: Any) -> Pool:
    addrs = [Address(name=f"{name}-{i}", address=ip, health_check=check()) for i, ip in enumerate(ips, 1)]
    return Pool(type="ipv4", addresses=addrs, **kw)


def dom(**kw: Any) -> Domain:
    refs = [PoolRef(pool="Primary-DC", sequence=1), PoolRef(pool="Backup-DC", sequence=2)]
    return Domain(**{"record_type": "A", "enabled": True, "pools": refs, **kw})


def result(
    pool_name: str, n: int, ok: bool, *, region: str = "r1", error: str = "connection refused"
) -> ProbeResult:
    name = f"{pool_name}-{n}"
    return ProbeResult(
        region=region,
        prober="p1",
        key=subjects.address_key(pool_name, name),
        pool=pool_name,
        address=name,
        target="x",
        protocol="http",
        ok=ok,
        error="" if ok else error,
        at=T0,
    )


class World:
    """An engine plus a clock, with helpers that keep every output."""

    def __init__(
        self,
        *,
        domain: Domain | None = None,
        primary: Pool | None = None,
        loaded: Sequence[AnswerSet] = (),
        pool_states: Sequence[PoolState] = (),
    ) -> None:
        self.now = T0
        self.engine = Engine(now=self.now)
        for a in loaded:
            self.engine.load_answer(a)
        for s in pool_states:
            self.engine.load_pool_state(s)
        self.engine.set_pool(
            "Primary-DC", primary or pool("Primary-DC", "10.0.0.1"), now=self.now, at=self.now
        )
        self.engine.set_pool("Backup-DC", pool("Backup-DC", "10.0.1.1"), now=self.now, at=self.now)
        self.engine.set_domain(DOMAIN, domain or dom(), 11, at=self.now)
        self.out = self.engine.start(now=self.now, at=self.now)

    def feed(self, *results: ProbeResult) -> Outputs:
        out = Outputs()
        for r in results:
            step = self.engine.observe(r, now=self.now, at=self.now)
            out.answers += step.answers
            out.pool_states += step.pool_states
            out.switches += step.switches
        return out

    def tick(self, dt: float) -> Outputs:
        self.now += dt
        return self.engine.tick(now=self.now, at=self.now)

    def healthy(self) -> Outputs:
        return self.feed(result("Primary-DC", 1, True), result("Backup-DC", 1, True))


def test_nothing_is_published_while_warming() -> None:
    w = World()
    assert w.out.answers == [] and w.engine.warming(DOMAIN)
    assert w.feed(result("Primary-DC", 1, True)).answers == []


def test_answer_is_published_once_every_checked_address_has_a_result() -> None:
    w = World()
    out = w.healthy()
    assert [(a.pool, a.records, a.config_revision) for a in out.answers] == [("Primary-DC", ["10.0.0.1"], 11)]
    assert out.switches == []
    assert sorted(s.pool for s in out.pool_states) == ["Backup-DC", "Primary-DC"]


def test_warming_ends_after_one_interval_and_unknown_addresses_count_as_available() -> None:
    w = World()
    assert w.tick(4.0).answers == []
    out = w.tick(1.0)
    assert [(a.pool, a.fallback) for a in out.answers] == [("Primary-DC", False)]


def test_primary_failure_moves_the_answer_and_emits_a_switch() -> None:
    w = World()
    w.healthy()
    out = w.feed(result("Primary-DC", 1, False))
    assert [(a.pool, a.records) for a in out.answers] == [("Backup-DC", ["10.0.1.1"])]
    [switch] = out.switches
    assert switch.reason == "Primary-DC unavailable: Primary-DC-1 http connection refused"
    assert (switch.before, switch.after) == (["10.0.0.1"], ["10.0.1.1"])
    [state] = out.pool_states
    assert (state.pool, state.available, state.addresses[0].vantages) == ("Primary-DC", False, {"r1": "down"})


def test_a_result_that_changes_nothing_publishes_nothing() -> None:
    w = World()
    w.healthy()
    assert not w.feed(result("Primary-DC", 1, True), result("Backup-DC", 1, True))


def test_results_for_unknown_addresses_are_ignored() -> None:
    w = World()
    w.healthy()
    assert not w.feed(result("Nowhere-DC", 1, False))


@pytest.mark.parametrize(
    ("mode", "pool_after"), [("preemptive", "Primary-DC"), ("non_preemptive", "Backup-DC")]
)
def test_fail_back_follows_sequence_mode(mode: str, pool_after: str) -> None:
    w = World(domain=dom(sequence_mode=mode))
    w.healthy()
    w.feed(result("Primary-DC", 1, False))
    out = w.feed(result("Primary-DC", 1, True))
    assert w.engine.answers[DOMAIN].pool == pool_after
    if mode == "preemptive":
        assert [s.reason for s in out.switches] == ["Primary-DC available again"]
    else:
        assert out.answers == [] and out.switches == []


def test_non_preemptive_memory_comes_from_the_loaded_answer_and_is_not_republished() -> None:
    w = World(domain=dom(sequence_mode="non_preemptive"))
    w.healthy()
    w.feed(result("Primary-DC", 1, False))
    before = w.engine.answers[DOMAIN]
    restarted = World(
        domain=dom(sequence_mode="non_preemptive"),
        loaded=[before],
        pool_states=list(w.engine.pool_states.values()),
    )
    out = restarted.healthy()
    assert out.answers == []
    assert restarted.engine.answers[DOMAIN] is before


def test_pool_sequence_memory_survives_restart_through_pool_state() -> None:
    primary = Pool(
        type="ipv4",
        lb_strategy="sequence",
        sequence_mode="non_preemptive",
        addresses=[
            Address(name=f"Primary-DC-{i}", address=f"10.0.0.{i}", health_check=check()) for i in (1, 2)
        ],
    )
    w = World(primary=primary)
    w.feed(result("Primary-DC", 1, True), result("Primary-DC", 2, True), result("Backup-DC", 1, True))
    w.feed(result("Primary-DC", 1, False))
    assert w.engine.answers[DOMAIN].records == ["10.0.0.2"]
    restarted = World(
        primary=primary,
        loaded=list(w.engine.answers.values()),
        pool_states=list(w.engine.pool_states.values()),
    )
    # the first address comes back first: the pool must not forget it was holding the second
    restarted.feed(result("Primary-DC", 1, True))
    out = restarted.feed(result("Primary-DC", 2, True), result("Backup-DC", 1, True))
    assert out.answers == [] and restarted.engine.answers[DOMAIN].records == ["10.0.0.2"]


def test_all_pools_down_fails_open_to_the_first_pool() -> None:
    w = World()
    w.healthy()
    out = w.feed(result("Backup-DC", 1, False), result("Primary-DC", 1, False))
    assert [(a.pool, a.fallback) for a in out.answers] == [("Primary-DC", True)]
    assert out.switches[-1].reason == "no pool available: failing open to Primary-DC"


def test_disabled_domain_is_published_at_once_as_disabled() -> None:
    w = World(domain=dom(enabled=False))
    assert [(a.enabled, a.deleted) for a in w.out.answers] == [(False, False)]


def test_deleting_a_domain_publishes_a_tombstone() -> None:
    w = World()
    w.healthy()
    out = w.engine.set_domain(DOMAIN, None, 12, at=w.now)
    assert [(a.domain, a.deleted, a.enabled) for a in out.answers] == [(DOMAIN, True, False)]


def test_answers_for_domains_gone_from_config_are_tombstoned_at_start_once() -> None:
    old = AnswerSet(domain="old.example.com", enabled=True, record_type="A", records=["10.9.9.9"])
    w = World(loaded=[old])
    assert [(a.domain, a.deleted) for a in w.out.answers] == [("old.example.com", True)]
    again = World(loaded=[w.engine.answers["old.example.com"]])
    assert again.out.answers == []


def test_config_change_republishes_with_the_new_revision() -> None:
    w = World()
    w.healthy()
    out = w.engine.set_domain(DOMAIN, dom(ttl=60), 12, at=w.now)
    assert [(a.ttl, a.config_revision) for a in out.answers] == [(60, 12)]


def test_pool_change_recomputes_its_domains() -> None:
    w = World()
    w.healthy()
    out = w.engine.set_pool("Primary-DC", pool("Primary-DC", "10.0.0.9"), now=w.now, at=w.now)
    assert [a.records for a in out.answers] == [["10.0.0.9"]]


def test_manual_mode_change_takes_effect_without_a_result() -> None:
    w = World()
    w.healthy()
    p = pool("Primary-DC", "10.0.0.1")
    p = msgspec.structs.replace(
        p, addresses=[msgspec.structs.replace(p.addresses[0], mode="manual_unavailable")]
    )
    out = w.engine.set_pool("Primary-DC", p, now=w.now, at=w.now)
    assert [s.reason for s in out.switches] == ["Primary-DC unavailable: Primary-DC-1 set manual_unavailable"]


def test_deleted_pool_is_reported_for_removal() -> None:
    w = World(domain=dom(pools=[PoolRef(pool="Backup-DC")]))
    w.healthy()
    out = w.engine.set_pool("Primary-DC", None, now=w.now, at=w.now)
    assert out.removed_pools == ["Primary-DC"]


def test_failed_publication_is_retried_on_the_next_tick() -> None:
    w = World()
    w.healthy()
    w.engine.publish_failed(domains=[DOMAIN], pools=["Backup-DC"])
    out = w.tick(0.2)
    assert [a.domain for a in out.answers] == [DOMAIN]
    assert [s.pool for s in out.pool_states] == ["Backup-DC"]
    assert not w.tick(0.2)


def test_unchanged_pool_state_is_not_republished_after_restart() -> None:
    w = World()
    w.healthy()
    restarted = World(loaded=list(w.engine.answers.values()), pool_states=list(w.engine.pool_states.values()))
    assert not restarted.healthy()


@pytest.mark.parametrize(
    ("rate", "down_regions", "available"),
    [(50, 1, True), (50, 2, False), (20, 1, False), (80, 2, True), (80, 3, False)],
)
def test_failure_rate_across_regions(rate: int, down_regions: int, available: bool) -> None:
    p = pool("Primary-DC", "10.0.0.1")
    p = msgspec.structs.replace(
        p, addresses=[msgspec.structs.replace(p.addresses[0], health_check=check(failure_rate=rate))]
    )
    w = World(primary=p)
    w.feed(*(result("Primary-DC", 1, True, region=f"r{i}") for i in range(3)), result("Backup-DC", 1, True))
    w.feed(*(result("Primary-DC", 1, False, region=f"r{i}") for i in range(down_regions)))
    assert (w.engine.answers[DOMAIN].pool == "Primary-DC") is available


def test_address_that_gains_a_check_is_waited_for_like_a_new_one() -> None:
    unchecked = Pool(type="ipv4", addresses=[Address(name="Primary-DC-1", address="10.0.0.1")])
    w = World(primary=unchecked)
    w.feed(result("Backup-DC", 1, True))
    assert w.engine.answers[DOMAIN].pool == "Primary-DC"
    w.tick(10.0)
    out = w.engine.set_pool("Primary-DC", pool("Primary-DC", "10.0.0.1"), now=w.now, at=w.now)
    assert out.answers == [] and w.engine.warming(DOMAIN)
    out = w.feed(result("Primary-DC", 1, False))
    assert [a.pool for a in out.answers] == ["Backup-DC"]
