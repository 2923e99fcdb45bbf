"""Switch detection: when a domain's answer moves to another pool, and why (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from shared.messages import AnswerSet, LineAnswer, SwitchEvent
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


def detect_line_switches(
    domain: Domain,
    previous: AnswerSet | None,
    new: AnswerSet,
    *,
    views: Mapping[str, PoolView],
    at: float,
) -> list[SwitchEvent]:
    """A SwitchEvent for each request-source line whose answering pool changed (the default line aside).

    A line without an answer of its own is answered by the client's next line: ``to_pool`` then says
    ``(next line)``, and the records are what the top level answers.
    """
    if previous is None or not previous.enabled or previous.deleted or not new.enabled:
        return []
    before = {a.line: a for a in previous.lines}
    after = {a.line: a for a in new.lines}
    out = []
    for line in sorted(before.keys() | after.keys()):
        old, now = before.get(line), after.get(line)
        if old is not None and now is not None and old.pool == now.pool:
            continue
        from_pool = old.pool if old is not None else ""
        to_pool = now.pool if now is not None else ""
        if not from_pool and not to_pool:
            continue
        if now is None:
            down = [p for p in from_pool.split(",") if p in views and not views[p].available]
            why = unavailable_reasons(views[down[0]]) if down else []
            reason = (f"{down[0]} unavailable: {why[0]}" if why else f"{down[0]} unavailable") if down else (
                "configuration changed")
            reason += "; its clients get their next line"
        elif old is None:
            back = to_pool in views and views[to_pool].available
            reason = f"{to_pool} available again" if back else "configuration changed"
        else:
            reason = switch_reason(domain, _as_set(previous, old), _as_set(new, now), views=views)
        out.append(SwitchEvent(
            domain=new.domain, at=at, line=line, from_pool=from_pool or "(next line)", to_pool=to_pool or "(next line)",
            reason=reason, before=old.records if old else previous.records, after=now.records if now else new.records,
        ))
    return out


def _as_set(base: AnswerSet, line: LineAnswer) -> AnswerSet:
    """A line's answer in the shape :func:`switch_reason` reads."""
    return msgspec.structs.replace(base, pool=line.pool, records=line.records, fallback=False, lines=[])


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
