"""The stack's restart policy: capped exponential backoff, reset after a good run, give up on a crash loop."""

from __future__ import annotations

import pytest

from services.stack.restart import GiveUp, Restart, RestartPolicy, RestartTracker, backoff_delay

POLICY = RestartPolicy()  # 0.1 s doubling to 5 s, reset after 10 s up, 5 exits in 60 s give up


@pytest.mark.parametrize(
    ("attempt", "delay_s"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 3.2), (7, 5.0), (8, 5.0), (100, 5.0), (10_000, 5.0)],
)
def test_backoff_doubles_from_the_first_delay_up_to_the_cap(attempt: int, delay_s: float) -> None:
    assert backoff_delay(POLICY, attempt) == pytest.approx(delay_s)


# Each case: the exits of one child as (time of the exit, how long it had been up), and the
# decisions expected after each. "R<attempt>" = Restart, "G" = GiveUp.
CASES = {
    "one crash is restarted at once": ([(100.0, 30.0)], ["R1"]),
    "quick crashes back off": ([(100.0, 0.5), (101.0, 0.5), (102.0, 0.5)], ["R1", "R2", "R3"]),
    "the fifth exit within the window gives up": (
        [(100.0, 1.0), (102.0, 1.0), (104.0, 1.0), (106.0, 1.0), (108.0, 1.0)],
        ["R1", "R2", "R3", "R4", "G"],
    ),
    "exits spread wider than the window never give up": (
        [(0.0, 1.0), (20.0, 1.0), (40.0, 1.0), (60.0, 1.0), (80.0, 1.0), (100.0, 1.0), (120.0, 1.0)],
        ["R1", "R2", "R3", "R4", "R5", "R6", "R7"],
    ),
    "a child that stayed up starts the backoff again": (
        [(100.0, 1.0), (101.0, 1.0), (102.0, 1.0), (130.0, 25.0)],
        ["R1", "R2", "R3", "R1"],
    ),
    "an exit exactly one window old no longer counts": (
        [(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (60.0, 1.0)],
        ["R1", "R2", "R3", "R4", "R5"],
    ),
    "a good run resets the backoff but not the crash count": (
        [(100.0, 20.0), (101.0, 20.0), (102.0, 20.0), (103.0, 20.0), (104.0, 20.0)],
        ["R1", "R1", "R1", "R1", "G"],
    ),
}


def _label(decision: Restart | GiveUp) -> str:
    return f"R{decision.attempt}" if isinstance(decision, Restart) else "G"


@pytest.mark.parametrize(("exits", "expected"), list(CASES.values()), ids=list(CASES))
def test_restart_decisions(exits: list[tuple[float, float]], expected: list[str]) -> None:
    tracker = RestartTracker(POLICY)
    assert [_label(tracker.exited(now=now, up_s=up_s)) for now, up_s in exits] == expected


def test_a_restart_carries_the_backoff_delay_of_its_attempt() -> None:
    tracker = RestartTracker(POLICY)
    delays = []
    for i in range(4):
        decision = tracker.exited(now=float(i), up_s=0.1)
        assert isinstance(decision, Restart)
        delays.append(decision.delay_s)
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_giving_up_says_how_many_exits_in_which_window() -> None:
    tracker = RestartTracker(RestartPolicy(max_exits=3, window_s=10.0))
    decisions = [tracker.exited(now=float(i), up_s=0.1) for i in range(3)]
    assert decisions[-1] == GiveUp(exits=3, window_s=10.0)


def test_trackers_of_different_children_are_independent() -> None:
    a, b = RestartTracker(POLICY), RestartTracker(POLICY)
    for i in range(4):
        a.exited(now=float(i), up_s=0.1)
    assert b.exited(now=4.0, up_s=0.1) == Restart(attempt=1, delay_s=0.1)
