"""Replica membership and rendezvous ownership: pure, table-driven and property-based."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.prober.membership import (
    HEARTBEAT_S,
    JOIN_WAIT_S,
    expiry,
    live_members,
    observe,
    owned_by,
    owner,
    prune,
    weight,
)

members_st = st.sets(st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=12), min_size=1, max_size=8)
keys_st = st.sets(st.text(alphabet="abcdefghijklmnop/=2E.-", min_size=1, max_size=20), max_size=60)


# --- liveness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expiries", "now", "live"),
    [
        pytest.param({}, 10.0, {"me"}, id="alone"),
        pytest.param({"b": 11.0}, 10.0, {"me", "b"}, id="fresh-peer"),
        pytest.param({"b": 10.0}, 10.0, {"me"}, id="expired-exactly-now"),
        pytest.param({"b": 9.0, "c": 12.0}, 10.0, {"me", "c"}, id="one-of-two-expired"),
        pytest.param({"me": 1.0}, 10.0, {"me"}, id="self-always-live"),
    ],
)
def test_live_members_are_self_and_peers_heard_recently(
    expiries: dict[str, float], now: float, live: set[str]
) -> None:
    assert live_members(expiries, now, "me") == frozenset(live)


def test_a_member_is_live_for_three_heartbeats_after_its_last_one() -> None:
    assert expiry(100.0, HEARTBEAT_S) == pytest.approx(101.5)
    after = observe({}, prober="b", now=100.0, interval_s=HEARTBEAT_S, stopping=False)
    assert live_members(after, 101.49, "me") == {"me", "b"}
    assert live_members(after, 101.5, "me") == {"me"}


def test_a_slower_peer_is_kept_live_for_three_of_its_own_periods() -> None:
    assert expiry(100.0, 2.0) == pytest.approx(106.0)
    assert expiry(100.0, 0.0) == pytest.approx(100.0 + 3 * HEARTBEAT_S)  # nonsense period: the default


def test_a_new_heartbeat_extends_liveness_and_stopping_removes_at_once() -> None:
    state = observe({}, prober="b", now=100.0, interval_s=0.5, stopping=False)
    state = observe(state, prober="b", now=101.0, interval_s=0.5, stopping=False)
    assert live_members(state, 102.4, "me") == {"me", "b"}
    state = observe(state, prober="b", now=101.2, interval_s=0.5, stopping=True)
    assert live_members(state, 101.2, "me") == {"me"}
    assert observe({}, prober="x", now=1.0, interval_s=0.5, stopping=True) == {}


def test_prune_forgets_expired_members_only() -> None:
    assert prune({"a": 5.0, "b": 15.0}, 10.0) == {"b": 15.0}


def test_a_new_prober_listens_about_one_heartbeat_before_probing() -> None:
    assert HEARTBEAT_S <= JOIN_WAIT_S <= 2 * HEARTBEAT_S


# --- ownership -----------------------------------------------------------------------------


def test_weight_is_stable_across_processes() -> None:
    # blake2b, not hash(): the same number in every process and every run
    assert weight("r1-a", "pool/a") == weight("r1-a", "pool/a")
    assert weight("r1-a", "pool/a") != weight("r1-b", "pool/a")
    assert weight("a", "bc") != weight("ab", "c")  # the separator keeps the pair unambiguous


@pytest.mark.parametrize(
    ("live", "expected"),
    [
        pytest.param([], None, id="nobody"),
        pytest.param(["solo"], "solo", id="one-member"),
    ],
)
def test_owner_of_degenerate_member_sets(live: list[str], expected: str | None) -> None:
    assert owner("p/a", live) == expected


def test_owner_is_the_member_with_the_highest_weight() -> None:
    live = ["r1-a", "r1-b", "r1-c"]
    for key in ("p/a", "p/b", "q=2E1/x"):
        assert owner(key, live) == max(live, key=lambda m: weight(m, key))
        assert owner(key, list(reversed(live))) == owner(key, live)


@pytest.mark.parametrize(
    ("live", "me", "keys", "expected"),
    [
        pytest.param(set(), "me", {"a", "b"}, {"a", "b"}, id="no-live-set-owns-all"),
        pytest.param({"me"}, "me", {"a", "b"}, {"a", "b"}, id="alone-owns-all"),
        pytest.param({"me", "x"}, "me", set(), set(), id="no-keys"),
    ],
)
def test_owned_by_edge_cases(live: set[str], me: str, keys: set[str], expected: set[str]) -> None:
    assert owned_by(keys, live, me) == expected


def test_two_replicas_split_many_addresses_roughly_evenly() -> None:
    keys = {f"pool/a{i}" for i in range(1000)}
    mine = owned_by(keys, {"r1-a", "r1-b"}, "r1-a")
    theirs = owned_by(keys, {"r1-a", "r1-b"}, "r1-b")
    assert mine | theirs == keys and not mine & theirs
    assert 400 < len(mine) < 600


@given(members=members_st, keys=keys_st)
def test_every_address_has_exactly_one_owner_among_live_members(members: set[str], keys: set[str]) -> None:
    shares = [owned_by(keys, members, m) for m in sorted(members)]
    assert set().union(*shares) == keys
    assert sum(len(s) for s in shares) == len(keys)
    for key in keys:
        assert owner(key, members) in members


@given(members=members_st, keys=keys_st, data=st.data())
def test_removing_a_member_only_moves_that_members_addresses(
    members: set[str], keys: set[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(members)))
    rest = members - {gone}
    before = {k: owner(k, members) for k in keys}
    after = {k: owner(k, rest) for k in keys}
    for key in keys:
        if before[key] != gone:
            assert after[key] == before[key]
        else:
            assert after[key] in rest or not rest


@given(members=members_st, keys=keys_st, newcomer=st.text(alphabet="xyz", min_size=13, max_size=14))
def test_a_joining_member_only_takes_addresses_for_itself(
    members: set[str], keys: set[str], newcomer: str
) -> None:
    before = {k: owner(k, members) for k in keys}
    after = {k: owner(k, members | {newcomer}) for k in keys}
    assert all(after[k] in (before[k], newcomer) for k in keys)
