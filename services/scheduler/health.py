"""Per-vantage threshold state machine and address availability (pure, no I/O).

A vantage is the region of the probers that checked an address: each has its own
thresholded state, and the address's availability combines them.  (An address's own
``region``, where it is in the topology, is another thing.)
"""

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


class VantageState(Struct, kw_only=True, frozen=True):
    """Thresholded state of one address seen from one vantage (a prober region)."""

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


def expired_vantages(vantages: Mapping[str, VantageState], hc: HealthCheck, *, now: float) -> list[str]:
    """Vantages whose last result is too old to vouch for the address (a dead vantage point)."""
    oldest = now - vantage_max_age_s(hc)
    return [name for name, v in vantages.items() if v.seen < oldest]


def is_checked(address: Address) -> bool:
    """An enabled auto-mode address with a health check: its state comes from probes."""
    return address.enabled and address.mode == "auto" and address.health_check is not None


def is_settled(
    address: Address, vantages: Mapping[str, VantageState], *, now: float, tracked_since: float
) -> bool:
    """Whether an address has been observed, or needs no observation, or waited long enough."""
    if not is_checked(address):
        return True
    assert address.health_check is not None
    if any(v.state != "unknown" for v in vantages.values()):
        return True
    return now - tracked_since >= address.health_check.interval_s


def address_status(
    address: Address,
    vantages: Mapping[str, VantageState],
    *,
    now: float,
    tracked_since: float,
    held: AddressStatus | None = None,
) -> AddressStatus:
    """Availability of one address from its mode, check and vantages' states.

    ``held`` is the availability decided when the last vantage expired: with no
    vantage left the address keeps it rather than counting as never seen.
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
    known = {name: v for name, v in sorted(vantages.items()) if v.state != "unknown"}
    if not known:
        if held is not None:
            return held
        if now - tracked_since >= hc.interval_s:
            return AddressStatus(available=True)
        return AddressStatus(available=False, reason=f"{address.name} {hc.protocol} no result yet")
    down = [v for v in known.values() if v.state == "down"]
    if 100 * len(down) / len(known) >= hc.failure_rate:
        return AddressStatus(available=False, reason=_down_reason(address.name, hc, down[0]))
    return AddressStatus(available=True)


def _down_reason(name: str, hc: HealthCheck, vantage: VantageState) -> str:
    failure = vantage.last_failure or vantage.last
    if failure is None:
        return f"{name} {hc.protocol} down"
    return f"{name} {failure.protocol or hc.protocol} {failure.error or 'failed'}"


def waiting_on(address: Address, vantages: Mapping[str, VantageState]) -> str:
    """The anti-flap threshold the worst vantage waits on: "failures 1/3", "successes 0/2" or ""."""
    hc = address.health_check
    if hc is None or address.mode != "auto" or not address.enabled:
        return ""
    waits = [v for _, v in sorted(vantages.items()) if v.state == "down" or (v.state == "up" and v.fails)]
    if not waits:
        return ""
    # worst first: a down vantage (fewest successes), else the up vantage with most failures
    worst = min(waits, key=lambda v: (0, v.oks) if v.state == "down" else (1, -v.fails))
    if worst.state == "down":
        return f"successes {worst.oks}/{hc.successes}"
    return f"failures {worst.fails}/{hc.failures}"


def vantage_states(vantages: Mapping[str, VantageState]) -> dict[str, str]:
    """Vantage -> "up" | "down" | "unknown", for the published pool view (``AddressState.vantages``)."""
    return {name: v.state for name, v in sorted(vantages.items())}


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
