"""Pure alert logic: which switches happened, the JSON body a webhook receives, the text of the others.

Domain switches come from the scheduler's SwitchEvents as they are.  Pool and address
switches are derived from consecutive PoolStates of one pool: a change of ``available``
is a switch; the first state seen of a pool is only the baseline.  Email and Apprise
targets get the same alert as a title and a plain-text body (:func:`alert_text`).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from services.config.views import iso, switch_message
from shared.messages import AddressState, PoolState, SwitchEvent
from shared.resources import AlertTarget

# An email address as far as GTM cares: one "@" with something on each side, nothing that could
# break a header or an SMTP command (space, control characters, angle brackets, commas, quotes).
_ADDRESS_RE = re.compile(r"^[^@\s<>,;:\"()\[\]\\\x00-\x1f\x7f]+@[^@\s<>,;:\"()\[\]\\\x00-\x1f\x7f]+$")

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


def address_alert(old: PoolState, new: PoolState, address: AddressState, was: AddressState | None = None) -> Alert:
    """The alert body of one address that became available or unavailable, or whose real health or mode in
    force changed (a manual mode, a maintenance window starting or ending): the reason says which."""
    reason = address.reason or ("checks ok" if address.available else "unavailable")
    if address.maintenance_until:
        until = iso(address.maintenance_until)
        reason = f"maintenance window ({address.mode}) until {until}"
        if address.reason:
            reason += f": {address.reason}"
    elif was is not None and was.maintenance_until:
        reason = f"maintenance window over, back to {address.mode}: {reason}"
    health = ""
    if was is not None and address.healthy is not None and was.healthy != address.healthy and address.mode != "auto":
        health = "healthy" if address.healthy else f"unhealthy: {address.health_reason or 'checks failing'}"
        health += f" (the answer was not changed: {address.mode})"
        if was.available == address.available and was.mode == address.mode:
            reason = health
    message = f"address {new.pool}/{address.name} ({address.address}) is {_word(address.available)}: {reason}"
    if health and reason != health:
        message += f"; {health}"
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
        "message": message,
        "healthy": address.healthy,
        "mode": address.mode,
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
        before = {a.name: a for a in old.addresses}
        alerts = [
            address_alert(old, state, a, before[a.name])
            for a in state.addresses
            if a.name in before and _moved(before[a.name], a)
        ]
        if old.available != state.available:
            alerts.append(pool_alert(old, state))
        return alerts


def _moved(was: AddressState, now: AddressState) -> bool:
    """Whether an address changed in a way worth an alert: available, mode in force, or real health in a manual mode."""
    if was.available != now.available or was.mode != now.mode:
        return True
    return now.mode != "auto" and now.healthy is not None and was.healthy is not None and was.healthy != now.healthy


def wanted(target: AlertTarget, alert: Alert) -> bool:
    """Whether ``target`` receives ``alert``."""
    return target.enabled and alert["kind"] in target.kinds


def is_address(value: str) -> bool:
    """Whether ``value`` looks like an email address (one "@", no spaces or control characters)."""
    return bool(_ADDRESS_RE.match(value))


def smtp_endpoint(smtp: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as (host, port); ValueError unless both are there and valid."""
    if not smtp or _CONTROL_OR_SPACE.search(smtp) or "/" in smtp or "@" in smtp:
        raise ValueError("smtp must be host:port")
    split = urllib.parse.urlsplit("//" + smtp)
    host, port = split.hostname, split.port  # .port raises ValueError on a bad port
    if not host or port is None or port == 0:
        raise ValueError("smtp must be host:port with a port from 1 to 65535")
    return host, port


_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def console_link(base: str, alert: Alert) -> str:
    """The console page of what ``alert`` is about (a domain, or the pool), or "" without a ``base``."""
    if not base:
        return ""
    if alert.get("kind") == "domain":
        return f"{base}/#/domains/{urllib.parse.quote(str(alert['domain']), safe='')}"
    return f"{base}/#/pools/{urllib.parse.quote(str(alert['pool']), safe='')}"


def _list(values: list[str]) -> str:
    return ", ".join(values) or "(none)"


def alert_text(alert: Alert) -> tuple[str, str]:
    """The title (mail subject) and the plain-text body of an alert, for email and Apprise targets."""
    if alert["kind"] == "domain":
        title = f"GTM: {alert['domain']} {alert['message']}"
        lines = [  # no line starts "From ": mail software turns that into ">From "
            f"Domain: {alert['domain']}",
            f"Pool before: {alert['from_pool'] or '(none)'}",
            f"Pool after: {alert['to_pool'] or '(none)'}" + (" (fallback)" if alert.get("fallback") else ""),
        ]
    elif alert["kind"] == "pool":
        state = _word(bool(alert["available"]))
        title = f"GTM: pool {alert['pool']} is {state}"
        lines = [f"Pool: {alert['pool']}", f"State: {state}"]
    else:
        state = _word(bool(alert["available"]))
        title = f"GTM: address {alert['pool']}/{alert['address']} ({alert['target']}) is {state}"
        lines = [f"Pool: {alert['pool']}", f"Address: {alert['address']} ({alert['target']})", f"State: {state}"]
    lines += [
        f"Reason: {alert['reason']}",
        f"Time: {alert['at']}",
        f"Answer before: {_list(alert['before'])}",
        f"Answer after: {_list(alert['after'])}",
    ]
    if alert.get("console_url"):
        lines.append(f"Console: {alert['console_url']}")
    lines += ["", str(alert["message"])]
    return title, "\n".join(lines) + "\n"
