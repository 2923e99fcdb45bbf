"""When to restart a child that exited, and when to give up: pure, the clock is passed in."""

from __future__ import annotations

from collections import deque

from msgspec import Struct


class RestartPolicy(Struct, kw_only=True, frozen=True):
    """Capped exponential backoff per child, and the crash loop that ends the stack."""

    first_delay_s: float = 0.1
    max_delay_s: float = 5.0
    reset_after_s: float = 10.0  # a child up this long starts the next backoff from the first delay
    max_exits: int = 5  # this many exits of one child within window_s: give up
    window_s: float = 60.0


class Restart(Struct, kw_only=True, frozen=True):
    """Start the child again after ``delay_s``; ``attempt`` counts restarts since it last stayed up."""

    attempt: int
    delay_s: float


class GiveUp(Struct, kw_only=True, frozen=True):
    """The child keeps crashing: ``exits`` exits within ``window_s``."""

    exits: int
    window_s: float


def backoff_delay(policy: RestartPolicy, attempt: int) -> float:
    """The delay before restart number ``attempt`` (1-based): doubling from the first, capped."""
    doublings = min(max(attempt - 1, 0), 62)
    return min(policy.max_delay_s, policy.first_delay_s * float(1 << doublings))


class RestartTracker:
    """The restart history of one child."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self._exits: deque[float] = deque()

    def exited(self, *, now: float, up_s: float) -> Restart | GiveUp:
        """Record an exit at ``now`` of a child that had been up ``up_s``; say what to do."""
        p = self.policy
        self._exits.append(now)
        while self._exits and self._exits[0] <= now - p.window_s:
            self._exits.popleft()
        if len(self._exits) >= p.max_exits:
            return GiveUp(exits=len(self._exits), window_s=p.window_s)
        self.attempt = 1 if up_s >= p.reset_after_s else self.attempt + 1
        return Restart(attempt=self.attempt, delay_s=backoff_delay(p, self.attempt))
