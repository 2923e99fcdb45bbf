"""Switch detection: when a domain's answer moves to another pool, and why (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

from shared.messages import AnswerSet, SwitchEvent
from shared.resources import Domain

from .decide import PoolView, ordered_refs, unavailable_reasons


def detect_switch(
    domain: Domain,
    previous: AnswerSet | None,
    new: AnswerSet,
    *,
    views: Mapping[str, PoolView],
    at: float,
) -> SwitchEvent | None:
    """A SwitchEvent when an enabled domain's answering pool or fallback flag changed."""
    if previous is None or not previous.enabled or previous.deleted or not new.enabled:
        return None
    if previous.pool == new.pool and previous.fallback == new.fallback:
        return None
    return SwitchEvent(
        domain=new.domain,
        at=at,
        from_pool=previous.pool,
        to_pool=new.pool,
        reason=switch_reason(domain, previous, new, views=views),
        before=previous.records,
        after=new.records,
        fallback=new.fallback,
    )


def switch_reason(
    domain: Domain, previous: AnswerSet, new: AnswerSet, *, views: Mapping[str, PoolView]
) -> str:
    """Why the answer moved from ``previous.pool`` to ``new.pool``."""
    if new.fallback and not previous.fallback:
        return f"no pool available: failing open to {new.pool}"
    if new.fallback and previous.fallback:
        return "configuration changed"
    if previous.fallback:
        return f"{new.pool} available again"
    refs = ordered_refs(domain, views)
    rank = {r.pool: i for i, r in enumerate(refs)}
    before = [p for p in previous.pool.split(",") if p]
    after = [p for p in new.pool.split(",") if p]
    for name in before:
        view = views.get(name)
        if name in rank and view is not None and not view.available and _has_enabled(view):
            why = unavailable_reasons(view)
            return f"{name} unavailable: {why[0]}" if why else f"{name} unavailable"
    back = [
        p
        for p in after
        if p not in before and p in rank and views[p].available and _outranks(domain, rank, p, before)
    ]
    if back:
        return f"{','.join(back)} available again"
    return "configuration changed"


def _has_enabled(view: PoolView) -> bool:
    return any(s.enabled for s in view.addresses)


def _outranks(domain: Domain, rank: Mapping[str, int], pool: str, before: list[str]) -> bool:
    """Whether ``pool`` replacing ``before`` looks like a fail-back rather than a config change."""
    if domain.lb_strategy != "sequence":  # the other strategies answer every available pool
        return True
    return all(b in rank and rank[pool] < rank[b] for b in before)
