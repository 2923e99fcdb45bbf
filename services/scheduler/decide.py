"""Pool and domain decisions: availability, strategies, fallback (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec
from msgspec import Struct

from shared.messages import AddressState, AnswerGroup, AnswerSet, PoolState
from shared.resources import Address, Domain, Pool, PoolRef

# Share of enabled addresses that must be available, in percent.
CONDITION_SHARE: dict[str, int] = {"any_ok": 0, "p30_ok": 30, "p50_ok": 50, "p70_ok": 70, "all_ok": 100}


class PoolView(Struct, kw_only=True, frozen=True):
    """One pool evaluated against its addresses' availability."""

    pool: Pool
    name: str
    available: bool
    group: AnswerGroup | None  # what the pool answers from its available addresses
    current: str | None  # address held by a non-preemptive sequence
    addresses: list[AddressState]
    warming: bool = False


def enabled_addresses(pool: Pool) -> list[Address]:
    """The pool's enabled addresses, in list order."""
    return [a for a in pool.addresses if a.enabled]


def pool_available(pool: Pool, available: Collection[str]) -> bool:
    """Whether ``pool``'s health condition holds, given the names of its available addresses."""
    enabled = enabled_addresses(pool)
    if not pool.enabled or not enabled:
        return False
    up = sum(1 for a in enabled if a.name in available)
    if pool.health_condition == "any_ok":
        return up >= 1
    return 100 * up >= CONDITION_SHARE[pool.health_condition] * len(enabled)


def pool_group(
    pool: Pool, available: Collection[str], current: str | None
) -> tuple[AnswerGroup | None, str | None]:
    """Records the pool answers from its ``available`` addresses, and the address now held."""
    name = pool.name or ""
    up = [a for a in enabled_addresses(pool) if a.name in available]
    if not up:
        return None, None
    if pool.lb_strategy == "sequence":
        ordered = sorted(enumerate(up), key=lambda ia: (ia[1].sequence, ia[0]))
        chosen = ordered[0][1]
        if pool.sequence_mode == "non_preemptive" and current is not None:
            chosen = next((a for a in up if a.name == current), chosen)
        held = chosen.name if pool.sequence_mode == "non_preemptive" else None
        return AnswerGroup(pool=name, records=[chosen.address]), held
    records = [a.address for a in up]
    if pool.lb_strategy == "weight":
        return AnswerGroup(pool=name, records=records, record_weights=[a.weight for a in up]), None
    if pool.lb_strategy == "source_nearest":
        # the edge serves the records of the client's region when there are any, else all
        regions = [a.region for a in up]
        return AnswerGroup(pool=name, records=records, rotate=True, record_regions=regions), None
    return AnswerGroup(pool=name, records=records, rotate=True), None  # round_robin


def evaluate_pool(
    pool: Pool,
    states: Mapping[str, AddressState],
    *,
    current: str | None,
    warming: bool = False,
) -> PoolView:
    """Evaluate one pool from its addresses' states (keyed by address name)."""
    available = {n for n, s in states.items() if s.available and s.enabled}
    is_available = pool_available(pool, available)
    group, held = pool_group(pool, available, current) if pool.enabled else (None, None)
    return PoolView(
        pool=pool,
        name=pool.name or "",
        available=is_available,
        group=group if is_available else None,
        current=held if is_available else None,
        addresses=[states[a.name] for a in pool.addresses if a.name in states],
        warming=warming,
    )


def pool_state(view: PoolView, *, at: float, current: str | None = None) -> PoolState:
    """The published view of a pool (``current``: the memory to publish while it warms)."""
    return PoolState(
        pool=view.name,
        available=view.available,
        addresses=view.addresses,
        current=current if view.warming else view.current,
        warming=view.warming,
        region=view.pool.region,
        at=at,
    )


def unavailable_reasons(view: PoolView) -> list[str]:
    """Why the pool's enabled addresses are unavailable, in list order."""
    return [s.reason for s in view.addresses if s.enabled and not s.available and s.reason]


def ordered_refs(domain: Domain, views: Mapping[str, PoolView]) -> list[PoolRef]:
    """The domain's refs to enabled, known pools by (sequence, list order)."""
    refs = sorted(enumerate(domain.pools), key=lambda ir: (ir[1].sequence, ir[0]))
    return [r for _, r in refs if r.pool in views and views[r.pool].pool.enabled]


def decide_domain(
    name: str,
    domain: Domain,
    *,
    revision: int,
    views: Mapping[str, PoolView],
    previous: AnswerSet | None,
) -> AnswerSet:
    """The answer set of one domain from its pools' views and its previous answer."""
    base = AnswerSet(
        domain=name,
        enabled=domain.enabled,
        record_type=domain.record_type,
        ttl=domain.ttl,
        config_revision=revision,
    )
    if not domain.enabled:
        return base
    refs = ordered_refs(domain, views)
    if not refs:
        return base
    up = [r for r in refs if views[r.pool].available]
    if not up:
        return _fallback(base, views[refs[0].pool], nearest=domain.lb_strategy == "source_nearest")
    strategy = domain.lb_strategy
    if strategy == "round_robin":
        return _merged(base, [views[r.pool] for r in up])
    if strategy == "weight":
        groups = [_with_weight(views[r.pool].group, r.weight) for r in up]
        return _answer(base, [g for g in groups if g is not None], ",".join(r.pool for r in up))
    if strategy == "source_nearest":
        # one group per available pool in sequence order; the edge picks the client's region, else the first
        groups = [_nearest(views[r.pool].group, views[r.pool]) for r in up]
        nearest = msgspec.structs.replace(base, select="nearest")
        return _answer(nearest, [g for g in groups if g is not None], ",".join(r.pool for r in up))
    chosen = up[0]  # sequence
    if domain.sequence_mode == "non_preemptive" and previous is not None:
        chosen = next((r for r in up if r.pool == previous.pool), chosen)
    group = views[chosen.pool].group
    return _answer(base, [group] if group else [], chosen.pool)


def _with_weight(group: AnswerGroup | None, weight: int) -> AnswerGroup | None:
    return None if group is None else msgspec.structs.replace(group, weight=weight)


def _nearest(group: AnswerGroup | None, view: PoolView) -> AnswerGroup | None:
    return None if group is None else msgspec.structs.replace(group, region=view.pool.region)


def _merged(base: AnswerSet, views: Sequence[PoolView]) -> AnswerSet:
    # One rotating group of every pool's records: per-record weights or regions of the pools do
    # not survive the merge (a round-robin domain answers all its available records in turn).
    records: list[str] = []
    for v in views:
        for rec in v.group.records if v.group else []:
            if rec not in records:
                records.append(rec)
    pool = ",".join(v.name for v in views)
    groups = [AnswerGroup(pool=pool, records=records, rotate=True)] if records else []
    return _answer(base, groups, pool)


def _fallback(base: AnswerSet, view: PoolView, *, nearest: bool) -> AnswerSet:
    everyone = {a.name for a in enabled_addresses(view.pool)}
    group, _ = pool_group(view.pool, everyone, view.current)
    if nearest:  # keep the shape of a nearest answer so that failing open changes only the records
        base, group = msgspec.structs.replace(base, select="nearest"), _nearest(group, view)
    answer = _answer(base, [group] if group else [], view.name)
    return msgspec.structs.replace(answer, fallback=True)


def _answer(base: AnswerSet, groups: list[AnswerGroup], pool: str) -> AnswerSet:
    records: list[str] = []
    for g in groups:
        records.extend(r for r in g.records if r not in records)
    return msgspec.structs.replace(base, groups=groups, pool=pool, records=records)


def same_content(a: AnswerSet | None, b: AnswerSet | None) -> bool:
    """Whether two answer sets are equal apart from ``published_at``, ``revision`` and ``term``."""
    if a is None or b is None:
        return a is b
    return msgspec.structs.replace(a, published_at=0.0, revision=0, term=0) == msgspec.structs.replace(
        b, published_at=0.0, revision=0, term=0
    )


def domain_warming(domain: Domain, views: Mapping[str, PoolView]) -> bool:
    """Whether an enabled domain still waits for first results of its pools' checked addresses."""
    if not domain.enabled:
        return False
    return any(views[r.pool].warming for r in ordered_refs(domain, views))
