"""Fencing a deposed scheduler leader, piece by piece (no network): terms, repairs, the edge's guard.

The partition test in ``test_partition_scheduler`` shows it end to end on real sockets.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from services.edge import wire
from services.edge.table import AnswerTable, StaleAnswer, StaleTerm
from services.scheduler import fencing
from services.scheduler.lease import HOLDER_MARGIN, Lease
from services.scheduler.service import Scheduler
from shared import subjects
from shared.messages import AnswerSet, PoolState, answer_set_decoder, encoder, pool_state_decoder
from tests.test_scheduler_engine import DOMAIN, T0, World, result

# -- terms -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease_term", "seen", "term"),
    [
        (7, [], 7),  # the first leader of a fresh bus
        (7, [3, 5], 7),  # the usual case: the lease revision is above every older leader's term
        (7, [7], 8),  # never equal to a term already on the bus
        (2, [40, 12], 41),  # the lease bucket was recreated, the streams kept term 40
        (0, [], 1),  # (a lease without a revision still gets a term)
    ],
)
def test_a_new_leaders_term_is_its_lease_revision_above_every_term_seen(
    lease_term: int, seen: list[int], term: int
) -> None:
    assert fencing.leader_term(lease_term, seen) == term


@pytest.mark.parametrize(
    ("term", "own", "stale", "deposed"),
    [
        (3, 5, True, False),
        (5, 5, False, False),  # our own publications
        (6, 5, False, True),  # someone took over after us
        (0, 5, False, False),  # a publisher that does not fence: neither
        (3, 0, False, False),  # we are not fencing (no term yet)
    ],
)
def test_stale_and_deposed(term: int, own: int, stale: bool, deposed: bool) -> None:
    assert fencing.is_stale(term, own) is stale
    assert fencing.is_deposed(term, own) is deposed


@pytest.mark.parametrize(
    ("own", "stale", "at", "revision"),
    [
        (1_000, 2_000, 1.5, 2_001),  # the stale one is newer than ours: go above it
        (3_000, 2_000, 1.5, 3_001),  # ours is newer: go above ours
        (1_000, 2_000, 5.0, 5_000),  # the clock is ahead of both
    ],
)
def test_a_repair_goes_above_both_revisions(own: int, stale: int, at: float, revision: int) -> None:
    assert fencing.repair_revision(own, stale, at=at) == revision


# -- the lease ---------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("held", "since_renewal", "valid"),
    [
        (False, 0.0, False),
        (True, 0.0, True),
        (True, 2.0 * HOLDER_MARGIN - 0.01, True),
        (True, 2.0 * HOLDER_MARGIN, False),  # the holder's loop may not have noticed yet: valid() has
        (True, 5.0, False),
    ],
)
def test_a_lease_is_valid_only_until_the_holder_margin_after_its_last_renewal(
    held: bool, since_renewal: float, valid: bool
) -> None:
    clock = Clock()
    lease = Lease(None, holder="s1", lease_s=2.0, clock=clock)  # type: ignore[arg-type]
    lease.held, lease.renewed_at = held, clock.now
    clock.now += since_renewal
    assert lease.valid() is valid


# -- the engine --------------------------------------------------------------------------------------------------


def _leader(term: int, *, loaded: list[AnswerSet] | None = None) -> World:
    """A World whose engine took over as the leader of ``term``, both pools healthy."""
    w = World()
    w.engine.pause()
    w.feed(result("Primary-DC", 1, True), result("Backup-DC", 1, True))
    w.out = w.engine.take_over(loaded or [], [], now=w.now, at=w.now, term=term)
    return w


def test_everything_a_leader_publishes_carries_its_term() -> None:
    w = _leader(9)
    assert [(a.domain, a.term) for a in w.out.answers] == [(DOMAIN, 9)]
    assert {s.term for s in w.out.pool_states} == {9}
    out = w.feed(result("Primary-DC", 1, False))
    assert [a.term for a in out.answers] == [9] and {s.term for s in out.pool_states} == {9}
    w.engine.set_domain(DOMAIN, None, 12, at=w.now)
    assert w.engine.answers[DOMAIN].deleted and w.engine.answers[DOMAIN].term == 9


def test_a_takeover_does_not_republish_an_answer_only_because_its_term_is_older() -> None:
    old = _leader(3)
    new = _leader(8, loaded=list(old.engine.answers.values()))
    assert new.out.answers == []


def _stale(w: World, **changes: Any) -> AnswerSet:
    own = w.engine.answers[DOMAIN]
    return msgspec.structs.replace(own, term=own.term - 1, records=["10.0.1.1"], pool="Backup-DC", **changes)


@pytest.mark.parametrize("stale_is_newer", [True, False])
def test_the_leader_publishes_its_own_answer_over_a_stale_one(stale_is_newer: bool) -> None:
    w = _leader(9)
    own = w.engine.answers[DOMAIN]
    revision = own.revision + 5_000 if stale_is_newer else own.revision - 1
    stale = _stale(w, revision=revision)
    out = w.engine.repair(stale, at=w.now)
    [fixed] = out.answers
    assert (fixed.term, fixed.records) == (9, own.records)
    assert fixed.revision > max(own.revision, stale.revision)
    assert w.engine.answers[DOMAIN] == fixed  # and later decisions count from it
    assert out.switches == []


def test_a_stale_answer_for_a_domain_not_decided_yet_puts_a_floor_under_its_first_answer() -> None:
    w = World()
    w.engine.pause()
    w.engine.take_over([], [], now=w.now, at=w.now, term=9)  # no result yet: the domain is warming
    assert DOMAIN not in w.engine.answers
    stale = AnswerSet(domain=DOMAIN, enabled=True, record_type="A", revision=10**13, term=4)
    assert not w.engine.repair(stale, at=w.now)
    out = w.feed(result("Primary-DC", 1, True), result("Backup-DC", 1, True))
    assert [(a.term, a.revision > stale.revision) for a in out.answers] == [(9, True)]


def test_a_stale_answer_for_a_name_nobody_serves_gets_a_tombstone_over_it() -> None:
    w = _leader(9)
    stale = AnswerSet(
        domain="gone.example.com", enabled=True, record_type="A", records=["1.2.3.4"], revision=77, term=4
    )
    [tomb] = w.engine.repair(stale, at=w.now).answers
    assert (tomb.domain, tomb.deleted, tomb.term, tomb.revision > 77) == ("gone.example.com", True, 9, True)


def test_a_paused_engine_repairs_nothing() -> None:
    w = _leader(9)
    stale = _stale(w)
    w.engine.pause()
    assert not w.engine.repair(stale, at=w.now)
    assert not w.engine.repair_pool(PoolState(pool="Primary-DC", available=False, term=1), at=w.now)


def test_the_leader_publishes_its_own_pool_view_over_a_stale_one_and_removes_an_unknown_pools() -> None:
    w = _leader(9)
    out = w.engine.repair_pool(PoolState(pool="Primary-DC", available=False, term=4), at=w.now + 1)
    [fixed] = out.pool_states
    assert (fixed.pool, fixed.available, fixed.term, fixed.at) == ("Primary-DC", True, 9, w.now + 1)
    out = w.engine.repair_pool(PoolState(pool="Gone", available=False, term=4), at=w.now)
    assert out.removed_pools == ["Gone"]


# -- the edge's guard --------------------------------------------------------------------------------------------


def _aset(name: str, term: int, revision: int, record: str = "192.0.2.1", deleted: bool = False) -> AnswerSet:
    return AnswerSet(
        domain=name, enabled=not deleted, deleted=deleted, record_type="A",
        records=[] if deleted else [record], revision=revision, term=term,
    )


def _served(table: AnswerTable, name: str) -> list[bytes]:
    compiled = table.names.get(wire.name_to_wire(name))
    return [] if compiled is None else [compiled.raw]


A, B = "a.example.com", "b.example.com"


@pytest.mark.parametrize(
    ("steps", "outcomes", "highest"),
    [
        # a deposed leader's late answer for a name served: ignored, whatever its revision
        ([(A, 5, 100), (A, 4, 200)], ["ok", "term"], 5),
        # the highest term counts across names: B's late answer is ignored too
        ([(A, 5, 100), (B, 4, 90), (B, 5, 95), (A, 6, 110), (B, 5, 300)], ["ok", "ok", "ok", "ok", "term"], 6),
        # ... but a name served by nobody takes it (better than no answer; the leader repairs it)
        ([(A, 6, 100), (B, 5, 300)], ["ok", "ok"], 6),
        # the repair: a higher term and a higher revision replace the stale answer
        ([(A, 4, 100), (A, 4, 200), (A, 5, 201)], ["ok", "ok", "ok"], 5),
        # a higher term with a lower revision: the revision still protects the newer answer ...
        ([(A, 4, 200), (A, 5, 150)], ["ok", "revision"], 5),
        # ... and the higher term is remembered all the same
        ([(A, 4, 200), (A, 5, 150), (A, 4, 300)], ["ok", "revision", "term"], 5),
        # term 0 (an unfenced publisher) is never judged by term
        ([(A, 5, 100), (A, 0, 200), (B, 0, 1)], ["ok", "ok", "ok"], 5),
        # a tombstone counts as served: a late answer cannot bring the name back
        ([(A, 5, 100), ("-" + A, 6, 101), (A, 5, 500)], ["ok", "ok", "term"], 6),
    ],
)
def test_the_edge_ignores_a_lower_term_for_a_name_it_serves(
    steps: list[tuple[str, int, int]], outcomes: list[str], highest: int
) -> None:
    table = AnswerTable()
    got = []
    for name, term, revision in steps:
        aset = _aset(name.lstrip("-"), term, revision, record=f"192.0.2.{revision % 250}", deleted=name[0] == "-")
        try:
            table.apply(aset)
            got.append("ok")
        except StaleTerm:
            got.append("term")
        except StaleAnswer:
            got.append("revision")
    assert got == outcomes
    assert table.highest_term == highest


def test_a_stale_term_leaves_the_served_answer_alone_and_terms_count_again_after_forget() -> None:
    table = AnswerTable()
    table.apply(_aset(A, 5, 100, "192.0.2.1"))
    before = _served(table, A)
    with pytest.raises(StaleTerm):
        table.apply(_aset(A, 4, 200, "192.0.2.2"))
    assert _served(table, A) == before
    table.forget_terms()  # the stream replays from the start: stream order decides again
    table.apply(_aset(A, 4, 200, "192.0.2.2"))
    assert table.highest_term == 4


# -- the shell: what it hands to NATS, and when ------------------------------------------------------------------


class FakeJs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append((subject, data))


class FakeNc:
    def __init__(self) -> None:
        self.is_connected = True


class Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data = subject, data


def _shell(term: int = 9) -> tuple[Scheduler, FakeJs, FakeNc, Lease]:
    js, nc = FakeJs(), FakeNc()
    lease = Lease(None, holder="s1", lease_s=2.0)  # type: ignore[arg-type]
    lease.held, lease.renewed_at = True, time.monotonic()
    scheduler = Scheduler(js, lease=lease, nc=nc)  # type: ignore[arg-type]
    w = _leader(term)
    scheduler.engine = w.engine
    scheduler.leader = True
    return scheduler, js, nc, lease


def _answers(js: FakeJs) -> list[AnswerSet]:
    return [answer_set_decoder.decode(d) for s, d in js.sent if s.startswith("answers.")]


async def test_the_leader_republishes_over_a_lower_term_answer_and_ignores_its_own() -> None:
    scheduler, js, _, _ = _shell(9)
    own = scheduler.engine.answers[DOMAIN]
    await scheduler.on_answer(Msg(subjects.answers(DOMAIN), encoder.encode(own)))  # type: ignore[arg-type]
    assert js.sent == []
    stale = msgspec.structs.replace(own, term=4, revision=own.revision + 10, records=["10.0.1.1"])
    await scheduler.on_answer(Msg(subjects.answers(DOMAIN), encoder.encode(stale)))  # type: ignore[arg-type]
    [fixed] = _answers(js)
    assert (fixed.term, fixed.records, fixed.revision > stale.revision) == (9, own.records, True)


async def test_the_leader_republishes_over_a_lower_term_pool_view() -> None:
    scheduler, js, _, _ = _shell(9)
    stale = PoolState(pool="Primary-DC", available=False, term=4)
    msg = Msg(subjects.pool_state("Primary-DC"), encoder.encode(stale))
    await scheduler.on_pool_state(msg)  # type: ignore[arg-type]
    [(subject, data)] = js.sent
    view = pool_state_decoder.decode(data)
    assert (subject, view.available, view.term) == (subjects.pool_state("Primary-DC"), True, 9)


async def test_a_leader_that_sees_a_higher_term_steps_down_at_once() -> None:
    scheduler, js, _, lease = _shell(9)
    newer = msgspec.structs.replace(scheduler.engine.answers[DOMAIN], term=12)
    await scheduler.on_answer(Msg(subjects.answers(DOMAIN), encoder.encode(newer)))  # type: ignore[arg-type]
    assert (scheduler.leader, lease.held, js.sent) == (False, False, [])
    assert scheduler.may_publish() == "lease not valid"


@pytest.mark.parametrize("why", ["disconnected", "lease over"])
async def test_nothing_is_handed_to_nats_without_a_valid_lease_and_a_connection(why: str) -> None:
    scheduler, js, nc, lease = _shell(9)
    if why == "disconnected":
        nc.is_connected = False
    else:
        lease.renewed_at -= 2.0 * HOLDER_MARGIN  # its loop has not noticed yet
    out = scheduler.engine.observe(result("Primary-DC", 1, False), now=T0, at=T0)
    assert out.answers
    await scheduler.publish(out)
    assert js.sent == []
    assert DOMAIN in scheduler.engine.retry_domains  # retried on a tick, if still leading by then
    nc.is_connected, lease.renewed_at = True, time.monotonic()
    await scheduler.publish(scheduler.engine.tick(now=T0 + 0.5, at=T0 + 0.5))
    assert [a.records for a in _answers(js)] == [["10.0.1.1"]]


async def test_a_standby_follows_answers_of_every_term() -> None:
    scheduler, js, _, _ = _shell(9)
    scheduler.leader = False
    scheduler.engine.pause()
    older = msgspec.structs.replace(scheduler.engine.answers[DOMAIN], term=3, records=["10.0.1.1"])
    await scheduler.on_answer(Msg(subjects.answers(DOMAIN), encoder.encode(older)))  # type: ignore[arg-type]
    assert scheduler.engine.answers[DOMAIN] == older  # its memory for a takeover, which re-reads the stream anyway
    assert js.sent == []


@pytest.mark.parametrize("late_lands", [True, False])
async def test_a_takeover_repairs_what_landed_while_it_read_the_streams_but_not_what_it_read(late_lands: bool) -> None:
    previous = _leader(4)  # what the old leader published: the primary
    included = previous.engine.answers[DOMAIN]
    late = msgspec.structs.replace(included, revision=included.revision + 50, records=["10.0.1.1"])
    js, nc = FakeJs(), FakeNc()
    lease = Lease(None, holder="s2", lease_s=2.0)  # type: ignore[arg-type]
    lease.held, lease.renewed_at, lease.term = True, time.monotonic(), 9
    scheduler = Scheduler(js, lease=lease, nc=nc)  # type: ignore[arg-type]
    w = World()
    w.engine.pause()
    w.feed(result("Primary-DC", 1, True), result("Backup-DC", 1, True))
    scheduler.engine = w.engine

    async def read() -> tuple[list[AnswerSet], list[PoolState]]:
        for m in (included, late) if late_lands else (included,):  # they land while the streams are read
            await scheduler.on_answer(Msg(subjects.answers(DOMAIN), encoder.encode(m)))  # type: ignore[arg-type]
        return [included], list(previous.engine.pool_states.values())

    scheduler.read_published = read  # type: ignore[method-assign]
    await scheduler.become_leader(lease)
    if not late_lands:
        assert js.sent == []  # what it read is no stale arrival: "answers are published only when they change"
        return
    [fixed] = _answers(js)
    assert (fixed.term, fixed.records, fixed.revision > late.revision) == (9, included.records, True)
