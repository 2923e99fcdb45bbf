"""The prober's pure core: check targets, their diff, the schedule and status matching.

Nothing here does I/O or reads the clock; callers pass ``now`` and random draws in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import msgspec
from msgspec import Struct

from shared import subjects
from shared.resources import HealthCheck, Pool, checks_of

# A fresh start (or a changed check) runs its first check within this window,
# so a new prober reports quickly instead of waiting up to a whole interval.
FIRST_RUN_WINDOW_S = 1.0
# Addresses taken over from a replica that died are already late: check them sooner.
TAKEOVER_WINDOW_S = 0.5


class Target(Struct, kw_only=True, frozen=True):
    """One address to check: where, how, and under which identity."""

    key: str  # subjects.address_key(pool, address)
    pool: str
    address: str  # the address's name
    target: str  # the IP or host name probed
    check: HealthCheck
    index: int = 0  # which of the address's health checks

    @property
    def id(self) -> str:
        """This check's identity among all targets: the address key, ``#index`` after it beyond the first."""
        return target_id(self.key, self.index)


def target_id(key: str, index: int) -> str:
    """The identity of check ``index`` of the address ``key``."""
    return key if index == 0 else f"{key}#{index}"


class Outcome(Struct, kw_only=True, frozen=True):
    """The result of one check, before it becomes a ProbeResult."""

    ok: bool
    rtt_ms: float | None = None
    error: str = ""
    loss_pct: float | None = None  # ping: the share of echo requests lost


class TargetDiff(Struct, kw_only=True, frozen=True):
    """What a config change means for the running checks (sorted keys)."""

    start: list[str]
    stop: list[str]
    restart: list[str]

    @property
    def empty(self) -> bool:
        """True when nothing has to change."""
        return not (self.start or self.stop or self.restart)


def derive_targets(pools: Mapping[str, Pool]) -> dict[str, Target]:
    """Every health check of every enabled address in every enabled pool, by :attr:`Target.id`.

    Manual modes are checked too: the real health is reported (and alerted) while the mode decides.
    """
    targets: dict[str, Target] = {}
    for pool_name in sorted(pools):
        pool = pools[pool_name]
        if not pool.enabled:
            continue
        for addr in pool.addresses:
            if not addr.enabled:
                continue
            key = subjects.address_key(pool_name, addr.name)
            for index, check in enumerate(checks_of(addr)):
                target = Target(
                    key=key,
                    pool=pool_name,
                    address=addr.name,
                    target=addr.address,
                    check=probed_check(check),
                    index=index,
                )
                targets[target.id] = target
    return targets


def probed_check(check: HealthCheck) -> HealthCheck:
    """``check`` without its informational fields, so changing only those restarts nothing."""
    if not check.template and not check.overrides:
        return check
    return msgspec.structs.replace(check, template="", overrides=[])


def diff_targets(old: Mapping[str, Target], new: Mapping[str, Target]) -> TargetDiff:
    """Keys to start, to stop, and to restart because their target changed."""
    return TargetDiff(
        start=sorted(new.keys() - old.keys()),
        stop=sorted(old.keys() - new.keys()),
        restart=sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    )


def first_delay(interval_s: float, draw: float, window_s: float = FIRST_RUN_WINDOW_S) -> float:
    """Delay of a target's first check: ``draw`` in [0, 1) spread over a short window."""
    return min(max(draw, 0.0), 1.0) * min(interval_s, window_s)


def next_due(due: float, interval_s: float, now: float) -> float:
    """The next scheduled time after ``due``, skipping slots already missed at ``now``.

    Measured from the schedule, not from when a check ended, so check
    duration never makes the period drift; a check that overran its slot
    does not cause a burst of catch-up checks.
    """
    nxt = due + interval_s
    if nxt >= now:
        return nxt
    return due + interval_s * math.ceil((now - due) / interval_s)


def lag_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max (ms) of how late checks started against their schedule."""
    if not samples_s:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0, 3)

    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(ordered[-1] * 1000.0, 3)}


def code_matches(status: int, expected: Sequence[int | str]) -> bool:
    """True when an HTTP status matches one of ``expected`` (ints or ranges like "2xx")."""
    for code in expected:
        if isinstance(code, int) and not isinstance(code, bool):
            if status == code:
                return True
        elif isinstance(code, str):
            text = code.strip().lower()
            if len(text) == 3 and text.endswith("xx") and text[0].isdigit():
                if status // 100 == int(text[0]):
                    return True
            elif text.isdigit() and status == int(text):
                return True
    return False


def status_error(status: int) -> str:
    """The error string of an unexpected HTTP status."""
    return f"status {status}"


def transition_event(previous: bool | None, ok: bool) -> str | None:
    """The log event a result deserves: on ok->fail, fail->ok, or a first failure."""
    if not ok and previous is not False:
        return "check_failed"
    if ok and previous is False:
        return "check_recovered"
    return None


def body_matches(body: bytes, needle: bytes) -> bool:
    """True when no match is asked for or ``body`` contains ``needle``."""
    return not needle or needle in body


def check_url(target: Target) -> str:
    """The URL an HTTP(S) check requests: scheme://<ip or host>:<port><path>."""
    hc = target.check
    host = f"[{target.target}]" if ":" in target.target else target.target
    port = hc.effective_port
    netloc = host if port is None else f"{host}:{port}"
    return f"{hc.protocol}://{netloc}{hc.path}"
