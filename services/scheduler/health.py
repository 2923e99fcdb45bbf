"""Per-vantage threshold state machine and address availability (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from msgspec import Struct

from shared.resources import Address, HealthCheck

State = Literal["unknown", "up", "down"]


class LastResult(Struct, kw_only=True, frozen=True):
    """The essentials of one probe result, kept to explain a state."""

    ok: bool
    error: str = ""
    protocol: str = ""
    rtt_ms: float | None = None
    at: float = 0.0


class RegionState(Struct, kw_only=True, frozen=True):
    """Thresholded state of one address seen from one region."""

    state: State = "unknown"
    oks: int = 0  # consecutive successes
    fails: int = 0  # consecutive failures
    last: LastResult | None = None
    last_failure: LastResult | None = None
    seen: float = 0.0  # monotonic time the scheduler received ``last``


class AddressStatus(Struct, kw_only=True, frozen=True):
    """Whether an address may be answered, and why not."""

    available: bool
    reason: str = ""


UNKNOWN = RegionState()


def observe(
    prev: RegionState | None, result: LastResult, hc: HealthCheck, *, seen: float = 0.0
) -> RegionState:
    """Feed one result into a region's state machine; return the new state."""
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
    return RegionState(
        state=state,
        oks=oks,
        fails=fails,
        last=result,
        last_failure=prev.last_failure if result.ok else result,
        seen=seen,
    )


def region_max_age_s(hc: HealthCheck) -> float:
    """How long a region's last result keeps counting: three intervals and a timeout."""
    return 3 * hc.interval_s + hc.timeout_s


def expired_regions(regions: Mapping[str, RegionState], hc: HealthCheck, *, now: float) -> list[str]:
    """Regions whose last result is too old to vouch for the address (a dead vantage point)."""
    oldest = now - region_max_age_s(hc)
    return [name for name, r in regions.items() if r.seen < oldest]


def is_checked(address: Address) -> bool:
    """An enabled auto-mode address with a health check: its state comes from probes."""
    return address.enabled and address.mode == "auto" and address.health_check is not None


def is_settled(
    address: Address, regions: Mapping[str, RegionState], *, now: float, tracked_since: float
) -> bool:
    """Whether an address has been observed, or needs no observation, or waited long enough."""
    if not is_checked(address):
        return True
    assert address.health_check is not None
    if any(r.state != "unknown" for r in regions.values()):
        return True
    return now - tracked_since >= address.health_check.interval_s


def address_status(
    address: Address,
    regions: Mapping[str, RegionState],
    *,
    now: float,
    tracked_since: float,
    held: AddressStatus | None = None,
) -> AddressStatus:
    """Availability of one address from its mode, check and regions' states.

    ``held`` is the availability decided when the last region expired: with no
    region left the address keeps it rather than counting as never seen.
    """
    if not address.enabled:
        return AddressStatus(available=False, reason=f"{address.name} disabled")
    if address.mode == "manual_available":
        return AddressStatus(available=True)
    if address.mode == "manual_unavailable":
        return AddressStatus(available=False, reason=f"{address.name} set manual_unavailable")
    hc = address.health_check
    if hc is None:
        return AddressStatus(available=True)
    known = {name: r for name, r in sorted(regions.items()) if r.state != "unknown"}
    if not known:
        if held is not None:
            return held
        if now - tracked_since >= hc.interval_s:
            return AddressStatus(available=True)
        return AddressStatus(available=False, reason=f"{address.name} {hc.protocol} no result yet")
    down = [r for r in known.values() if r.state == "down"]
    if 100 * len(down) / len(known) >= hc.failure_rate:
        return AddressStatus(available=False, reason=_down_reason(address.name, hc, down[0]))
    return AddressStatus(available=True)


def _down_reason(name: str, hc: HealthCheck, region: RegionState) -> str:
    failure = region.last_failure or region.last
    if failure is None:
        return f"{name} {hc.protocol} down"
    return f"{name} {failure.protocol or hc.protocol} {failure.error or 'failed'}"


def waiting_on(address: Address, regions: Mapping[str, RegionState]) -> str:
    """The anti-flap threshold the worst region waits on: "failures 1/3", "successes 0/2" or ""."""
    hc = address.health_check
    if hc is None or address.mode != "auto" or not address.enabled:
        return ""
    waits = [r for _, r in sorted(regions.items()) if r.state == "down" or (r.state == "up" and r.fails)]
    if not waits:
        return ""
    # worst first: a down region (fewest successes), else the up region with most failures
    worst = min(waits, key=lambda r: (0, r.oks) if r.state == "down" else (1, -r.fails))
    if worst.state == "down":
        return f"successes {worst.oks}/{hc.successes}"
    return f"failures {worst.fails}/{hc.failures}"


def region_states(regions: Mapping[str, RegionState]) -> dict[str, str]:
    """Region -> "up" | "down" | "unknown", for the published pool view."""
    return {name: r.state for name, r in sorted(regions.items())}


def same_outlook(prev: RegionState | None, last: LastResult) -> bool:
    """Whether ``last`` leaves everything published about its region as it was (the hot path).

    True for a success on an up region with no failure counted, and for the same failure
    again on a down region with no success counted: state, waiting and reason stay put.
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
