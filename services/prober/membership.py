"""Replicas of one region: who is live, and which replica owns which address.

Pure: heartbeats and the clock come in as arguments.  Ownership is rendezvous
(highest-random-weight) hashing of the address key over the live members, so
every address has exactly one owner, and a member joining or leaving moves
only the addresses it gains or had.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping

HEARTBEAT_S = 0.5  # how often a prober announces itself
LIVE_FACTOR = 3.0  # live while the last heartbeat is younger than this many of its periods
# A new prober listens this long before it probes, so it knows its peers and does not double-probe.
JOIN_WAIT_S = HEARTBEAT_S * 1.2


def expiry(received_at: float, interval_s: float) -> float:
    """When a member heard at ``received_at``, announcing every ``interval_s``, stops being live."""
    return received_at + LIVE_FACTOR * (interval_s if interval_s > 0 else HEARTBEAT_S)


def observe(
    expiries: Mapping[str, float], *, prober: str, now: float, interval_s: float, stopping: bool
) -> dict[str, float]:
    """The members' expiry times after hearing one heartbeat at ``now``."""
    out = dict(expiries)
    if stopping:
        out.pop(prober, None)
    else:
        out[prober] = expiry(now, interval_s)
    return out


def live_members(expiries: Mapping[str, float], now: float, me: str) -> frozenset[str]:
    """The members whose last heartbeat is still fresh at ``now``, always including ``me``."""
    return frozenset([me, *(m for m, until in expiries.items() if until > now)])


def prune(expiries: Mapping[str, float], now: float) -> dict[str, float]:
    """Drop the members that are no longer live at ``now``."""
    return {m: until for m, until in expiries.items() if until > now}


def weight(member: str, key: str) -> int:
    """The rendezvous weight of ``member`` for ``key``: the same in every process."""
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: str, live: Collection[str]) -> str | None:
    """The live member that owns ``key`` (None when nobody is live)."""
    best: str | None = None
    best_weight = -1
    for member in sorted(live):  # sorted: ties (never in practice) resolve the same everywhere
        w = weight(member, key)
        if w > best_weight:
            best, best_weight = member, w
    return best


def owned_by(keys: Iterable[str], live: Collection[str], me: str) -> set[str]:
    """The subset of ``keys`` that ``me`` owns among ``live`` (all of them when alone)."""
    if not live or set(live) <= {me}:
        return set(keys)
    members = sorted(live)
    return {k for k in keys if owner(k, members) == me}
