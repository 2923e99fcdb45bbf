"""Pure alert logic: which switches happened, and the JSON body each webhook receives.

Domain switches come from the scheduler's SwitchEvents as they are.  Pool and address
switches are derived from consecutive PoolStates of one pool: a change of ``available``
is a switch; the first state seen of a pool is only the baseline.
"""

from __future__ import annotations

from typing import Any

from services.config.views import iso, switch_message
from shared.messages import AddressState, PoolState, SwitchEvent
from shared.resources import AlertTarget

Alert = dict[str, Any]


def domain_alert(event: SwitchEvent) -> Alert:
    """The alert body of a domain switch."""
    return {
        "kind": "domain",
        "at": iso(event.at),
        "domain": event.domain,
        "from_pool": event.from_pool,
        "to_pool": event.to_pool,
        "fallback": event.fallback,
        "reason": event.reason,
        "before": list(event.before),
        "after": list(event.after),
        "message": switch_message(event),
    }


def serving(state: PoolState) -> list[str]:
    """The records of the enabled, available addresses of a pool state."""
    return [a.address for a in state.addresses if a.available and a.enabled]


def _word(available: bool) -> str:
    return "available" if available else "unavailable"


def pool_alert(old: PoolState, new: PoolState) -> Alert:
    """The alert body of a pool that became available or unavailable."""
    enabled = [a for a in new.addresses if a.enabled]
    reason = f"{sum(a.available for a in enabled)} of {len(enabled)} enabled addresses available"
    return {
        "kind": "pool",
        "at": iso(new.at),
        "pool": new.pool,
        "available": new.available,
        "reason": reason,
        "before": serving(old),
        "after": serving(new),
        "message": f"pool {new.pool} is {_word(new.available)}: {reason}",
    }


def address_alert(old: PoolState, new: PoolState, address: AddressState) -> Alert:
    """The alert body of one address that became available or unavailable."""
    reason = address.reason or ("checks ok" if address.available else "unavailable")
    return {
        "kind": "address",
        "at": iso(new.at),
        "pool": new.pool,
        "address": address.name,
        "target": address.address,
        "available": address.available,
        "reason": reason,
        "before": serving(old),
        "after": serving(new),
        "message": f"address {new.pool}/{address.name} ({address.address}) is {_word(address.available)}: {reason}",
    }


class PoolWatch:
    """The last PoolState of every pool, turning the next one into pool and address alerts."""

    def __init__(self) -> None:
        self._last: dict[str, PoolState] = {}

    def observe(self, state: PoolState) -> list[Alert]:
        """Alerts for what changed since the pool's previous state (none for its first)."""
        old = self._last.get(state.pool)
        self._last[state.pool] = state
        if old is None:
            return []
        before = {a.name: a.available for a in old.addresses}
        alerts = [
            address_alert(old, state, a)
            for a in state.addresses
            if a.name in before and before[a.name] != a.available
        ]
        if old.available != state.available:
            alerts.append(pool_alert(old, state))
        return alerts


def wanted(target: AlertTarget, alert: Alert) -> bool:
    """Whether ``target`` receives ``alert``."""
    return target.enabled and alert["kind"] in target.kinds
