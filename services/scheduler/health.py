"""Per-vantage threshold state machine and address availability (pure, no I/O).

A vantage is the region of the probers that checked an address with one of its checks:
each has its own thresholded state.  A check's verdict combines its regions by
``failure_rate``; the address's health combines its checks by its ``judgement``; its
availability is that health unless its mode (or a maintenance window) says otherwise.
Vantages are keyed by region for the first check and ``region.N`` for check N (a
region never holds a dot).  (An address's own ``region``, where it is in the topology,
is another thing.)
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec
from msgspec import Struct

from services.scheduler.decide import CONDITION_SHARE  # the same words: share of checks (here) or addresses
from shared.messages import AddressState, HealthLogEntry, ProbeResult
from shared.resources import Address, HealthCheck, checks_of

State = Literal["unknown", "up", "down"]


class LastResult(Struct, kw_only=True, frozen=True):
    """The essentials of one probe result, kept to explain a state."""

    ok: bool
    error: str = ""
    protocol: str = ""
    rtt_ms: float | None = None
    at: float = 0.0


class VantageState(Struct, kw_only=True, frozen=True):
    """Thresholded state of one address seen from one vantage (a prober region)."""

    state: State = "unknown"
    oks: int = 0  # consecutive successes
    fails: int = 0  # consecutive failures
    last: LastResult | None = None
    last_failure: LastResult | None = None
    seen: float = 0.0  # monotonic time the scheduler received ``last``


class AddressStatus(Struct, kw_only=True, frozen=True):
    """Whether an address may be answered, and why not; its real health and the mode in force."""

    available: bool
    reason: str = ""
    healthy: bool | None = None  # what its checks say, whatever the mode (None: no check)
    health_reason: str = ""  # why it is unhealthy
    mode: str = "auto"  # the mode in force: its own, or a maintenance window's
    maintenance_until: float = 0.0  # the end of the window in force (unix time; 0: none)


def vantage_key(region: str, check: int) -> str:
    """The key of the vantage of ``region`` for check number ``check``."""
    return region if check == 0 else f"{region}.{check}"


def split_vantage(key: str) -> tuple[str, int]:
    """(region, check number) of a vantage key."""
    region, dot, index = key.rpartition(".")
    if dot and index.isdigit():
        return region, int(index)
    return key, 0


def window_mode(address: Address, at: float) -> tuple[str, float]:
    """(the mode in force at unix time ``at``, the end of the maintenance window that sets it or 0)."""
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    for window in address.maintenance:
        if window.start <= when < window.until:
            return window.mode, window.until.timestamp()
    return address.mode, 0.0


def next_boundary(address: Address, at: float) -> float | None:
    """The next start or end of a maintenance window after unix time ``at`` (None: none)."""
    when = datetime.datetime.fromtimestamp(at, datetime.UTC)
    times = [t.timestamp() for w in address.maintenance for t in (w.start, w.until) if t > when]
    return min(times) if times else None


UNKNOWN = VantageState()


def observe(
    prev: VantageState | None, result: LastResult, hc: HealthCheck, *, seen: float = 0.0
) -> VantageState:
    """Feed one result into a vantage's state machine; return the new state."""
    prev = prev or UNKNOWN
    oks = prev.oks + 1 if result.ok else 0
    fails = 0 if result.ok else prev.fails + 1
    state: State = prev.state
    if state == "unknown":
        state = "up" if result.ok else "down"
    elif state == "up" and fails >= hc.failures:
        state = "down"
    elif state == "down" and oks >= hc.successes:
        state = "up"
    return VantageState(
        state=state,
        oks=oks,
        fails=fails,
        last=result,
        last_failure=prev.last_failure if result.ok else result,
        seen=seen,
    )


def vantage_max_age_s(hc: HealthCheck) -> float:
    """How long a vantage's last result keeps counting: three intervals and a timeout."""
    return 3 * hc.interval_s + hc.timeout_s


def _check_of(checks: HealthCheck | Sequence[HealthCheck], index: int) -> HealthCheck | None:
    if isinstance(checks, HealthCheck):
        return checks
    return checks[index] if 0 <= index < len(checks) else None


def expired_vantages(
    vantages: Mapping[str, VantageState], checks: HealthCheck | Sequence[HealthCheck], *, now: float
) -> list[str]:
    """Vantages whose last result is too old to vouch for the address (a dead vantage point), or of a check gone."""
    out = []
    for name, v in vantages.items():
        hc = _check_of(checks, split_vantage(name)[1])
        if hc is None or v.seen < now - vantage_max_age_s(hc):
            out.append(name)
    return out


def is_checked(address: Address) -> bool:
    """An enabled auto-mode address with a health check: its state comes from probes."""
    return address.enabled and address.mode == "auto" and bool(checks_of(address))


def is_settled(
    address: Address, vantages: Mapping[str, VantageState], *, now: float, tracked_since: float
) -> bool:
    """Whether an address has been observed (each of its checks), or needs no observation, or waited long enough."""
    if not is_checked(address):
        return True
    seen = {split_vantage(name)[1] for name, v in vantages.items() if v.state != "unknown"}
    return all(i in seen or now - tracked_since >= hc.interval_s for i, hc in enumerate(checks_of(address)))


def address_status(
    address: Address,
    vantages: Mapping[str, VantageState],
    *,
    now: float,
    tracked_since: float,
    held: AddressStatus | None = None,
    at: float | None = None,
) -> AddressStatus:
    """Availability of one address from its mode (or maintenance window at unix ``at``), checks and vantages.

    ``held`` is the availability decided when the last vantage expired: with no
    vantage left the address keeps it rather than counting as never seen.  The real
    health is worked out in every mode, so that a manual mode still reports it.
    """
    if not address.enabled:
        return AddressStatus(available=False, reason=f"{address.name} disabled")
    mode, until = window_mode(address, at) if at is not None and address.maintenance else (address.mode, 0.0)
    health = address_health(address, vantages, now=now, tracked_since=tracked_since, held=held)
    if mode == "manual_available":
        return AddressStatus(available=True, healthy=health.healthy, health_reason=health.health_reason,
                             mode=mode, maintenance_until=until)
    if mode == "manual_unavailable":
        why = "in a maintenance window" if until else "set manual_unavailable"
        return AddressStatus(available=False, reason=f"{address.name} {why}", healthy=health.healthy,
                             health_reason=health.health_reason, mode=mode, maintenance_until=until)
    return AddressStatus(available=health.available, reason=health.reason, healthy=health.healthy,
                         health_reason=health.health_reason, mode=mode, maintenance_until=until)


def address_health(
    address: Address,
    vantages: Mapping[str, VantageState],
    *,
    now: float,
    tracked_since: float,
    held: AddressStatus | None,
) -> AddressStatus:
    """What the address's checks say, combined by its judgement (available = healthy)."""
    checks = checks_of(address)
    if not checks:
        return AddressStatus(available=True)
    by_check: dict[int, dict[str, VantageState]] = {}
    for name, v in sorted(vantages.items()):
        if v.state != "unknown":
            region, index = split_vantage(name)
            by_check.setdefault(index, {})[region] = v
    if not by_check and held is not None:
        return msgspec.structs.replace(held, healthy=held.available, health_reason=held.reason)
    ups, reasons = 0, []
    for index, hc in enumerate(checks):
        known = by_check.get(index, {})
        if not known:
            if now - tracked_since >= hc.interval_s:
                ups += 1
            else:
                reasons.append(f"{address.name} {hc.protocol} no result yet")
            continue
        down = [v for v in known.values() if v.state == "down"]
        if 100 * len(down) / len(known) >= hc.failure_rate:
            reasons.append(_down_reason(address.name, hc, down[0]))
        else:
            ups += 1
    share = CONDITION_SHARE[address.judgement] if len(checks) > 1 else 100
    healthy = ups >= 1 if share == 0 else 100 * ups >= share * len(checks)
    reason = "" if healthy else (reasons[0] if len(checks) == 1 or not reasons else
                                 f"{reasons[0]} ({len(checks) - ups} of {len(checks)} checks failing, "
                                 f"judgement {address.judgement})")
    return AddressStatus(available=healthy, reason=reason, healthy=healthy, health_reason=reason)


def _down_reason(name: str, hc: HealthCheck, vantage: VantageState) -> str:
    failure = vantage.last_failure or vantage.last
    if failure is None:
        return f"{name} {hc.protocol} down"
    return f"{name} {failure.protocol or hc.protocol} {failure.error or 'failed'}"


def waiting_on(address: Address, vantages: Mapping[str, VantageState]) -> str:
    """The anti-flap threshold the worst vantage waits on: "failures 1/3", "successes 0/2" or ""."""
    checks = checks_of(address)
    if not checks or address.mode != "auto" or not address.enabled:
        return ""
    waits = [(n, v) for n, v in sorted(vantages.items()) if v.state == "down" or (v.state == "up" and v.fails)]
    waits = [(n, v) for n, v in waits if split_vantage(n)[1] < len(checks)]
    if not waits:
        return ""
    # worst first: a down vantage (fewest successes), else the up vantage with most failures
    name, worst = min(waits, key=lambda nv: (0, nv[1].oks) if nv[1].state == "down" else (1, -nv[1].fails))
    hc = checks[split_vantage(name)[1]]
    if worst.state == "down":
        return f"successes {worst.oks}/{hc.successes}"
    return f"failures {worst.fails}/{hc.failures}"


def vantage_states(vantages: Mapping[str, VantageState], check: int = 0) -> dict[str, str]:
    """Region -> "up" | "down" | "unknown" for one check, for the published pool view (``AddressState.vantages``)."""
    out: dict[str, str] = {}
    for name, v in sorted(vantages.items()):
        region, index = split_vantage(name)
        if index == check:
            out[region] = v.state
    return out


def check_states(vantages: Mapping[str, VantageState], checks: int) -> list[dict[str, str]]:
    """:func:`vantage_states` of each of ``checks`` checks (empty for one check: ``vantages`` says it)."""
    return [vantage_states(vantages, i) for i in range(checks)] if checks > 1 else []


def same_outlook(prev: VantageState | None, last: LastResult) -> bool:
    """Whether ``last`` leaves everything published about its vantage as it was (the hot path).

    True for a success on an up vantage with no failure counted, and for the same failure
    again on a down vantage with no success counted: state, waiting and reason stay put.
    """
    if prev is None:
        return False
    if last.ok:
        return prev.state == "up" and prev.fails == 0
    failure = prev.last_failure
    return (
        prev.state == "down"
        and prev.oks == 0
        and failure is not None
        and failure.error == last.error
        and failure.protocol == last.protocol
    )


# -- the health log ------------------------------------------------------------------------------


def result_logs(result: ProbeResult, prev: VantageState | None, new: VantageState) -> list[HealthLogEntry]:
    """What one probe result writes in the health log: a failed check, and a region's state change."""
    base = HealthLogEntry(
        at=result.at, kind="check_failed", pool=result.pool, address=result.address, region=result.region,
        prober=result.prober, check=result.check, protocol=result.protocol, ok=result.ok, error=result.error,
        rtt_ms=result.rtt_ms, loss_pct=result.loss_pct,
    )
    out = [] if result.ok else [base]
    if new.state != "unknown" and (prev is None or prev.state != new.state):
        message = f"{result.protocol} check {result.check} seen {new.state} from {result.region}"
        out.append(msgspec.structs.replace(base, kind="region_changed", state=new.state, message=message))
    return out


def address_log(pool: str, old: AddressState, new: AddressState, *, at: float | None) -> HealthLogEntry | None:
    """The health-log entry of an address whose availability, real health or mode in force changed (None: none)."""
    if (old.available, old.healthy, old.mode) == (new.available, new.healthy, new.mode):
        return None
    parts = []
    if new.mode != old.mode:
        if new.maintenance_until:
            until = datetime.datetime.fromtimestamp(new.maintenance_until, datetime.UTC).isoformat()
            parts.append(f"maintenance window: {new.mode} until {until}")
        elif old.maintenance_until:
            parts.append(f"maintenance window over: back to {new.mode}")
        else:
            parts.append(f"mode {new.mode}")
    if new.available != old.available:
        parts.append("available" if new.available else f"unavailable: {new.reason or 'down'}")
    if new.healthy != old.healthy and new.healthy is not None:
        health = "healthy" if new.healthy else f"unhealthy: {new.health_reason or 'checks failing'}"
        if new.mode != "auto":
            health += f" (the answer was not changed: {new.mode})"
        parts.append(health)
    return HealthLogEntry(
        at=at or 0.0, kind="address_changed", pool=pool, address=new.name, available=new.available,
        healthy=new.healthy, mode=new.mode, error=new.health_reason or new.reason, message="; ".join(parts),
    )
