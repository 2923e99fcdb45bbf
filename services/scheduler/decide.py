"""Pool and domain decisions: availability, strategies, fallback (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec
from msgspec import Struct

from shared import lines as linespec
from shared.messages import AddressState, AnswerGroup, AnswerSet, LineAnswer, PoolState
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
    """Records the pool answers from its ``available`` addresses, and the address now held.

    With address lines, each record says the lines it serves (``record_lines``); a ``sequence``
    pool then answers the first available address of each line (and holds the default line's).
    """
    name = pool.name or ""
    up = [a for a in enabled_addresses(pool) if a.name in available]
    if not up:
        return None, None
    lined = any(not linespec.is_default_only(a.lines) for a in pool.addresses)
    if pool.lb_strategy == "sequence":
        ordered = [a for _, a in sorted(enumerate(up), key=lambda ia: (ia[1].sequence, ia[0]))]
        preemptive = pool.sequence_mode != "non_preemptive"
        if not lined:
            chosen = ordered[0]
            if not preemptive and current is not None:
                chosen = next((a for a in up if a.name == current), chosen)
            return AnswerGroup(pool=name, records=[chosen.address]), None if preemptive else chosen.name
        return _sequence_by_line(name, ordered, current=None if preemptive else current, preemptive=preemptive)
    records = [a.address for a in up]
    record_lines = [list(a.lines) for a in up] if lined else []
    if pool.lb_strategy == "weight":
        weights = [a.weight for a in up]
        return AnswerGroup(pool=name, records=records, record_weights=weights, record_lines=record_lines), None
    if pool.lb_strategy == "source_nearest":
        # the edge serves the records of the client's region when there are any, else all
        regions = [a.region for a in up]
        group = AnswerGroup(pool=name, records=records, rotate=True, record_regions=regions, record_lines=record_lines)
        return group, None
    return AnswerGroup(pool=name, records=records, rotate=True, record_lines=record_lines), None  # round_robin


def _sequence_by_line(
    name: str, ordered: list[Address], *, current: str | None, preemptive: bool
) -> tuple[AnswerGroup, str | None]:
    """A sequence pool with address lines: the first available address (by sequence) of each line."""
    serves: dict[str, list[str]] = {}  # address name -> the lines it is chosen for, in first-chosen order
    by_name = {a.name: a for a in ordered}
    held = None
    for line in linespec.by_specificity(line for a in ordered for line in a.lines):
        candidates = [a for a in ordered if line in a.lines]
        chosen = candidates[0]
        if line == linespec.DEFAULT:
            if current is not None:
                chosen = next((a for a in candidates if a.name == current), chosen)
            held = None if preemptive else chosen.name
        serves.setdefault(chosen.name, []).append(line)
    records = [by_name[n].address for n in serves]
    return AnswerGroup(pool=name, records=records, record_lines=list(serves.values())), held


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


def domain_lines(domain: Domain) -> list[str]:
    """The request-source lines a domain's pools are on, most specific first."""
    return linespec.by_specificity(line for ref in domain.pools for line in ref.lines)


def decide_domain(
    name: str,
    domain: Domain,
    *,
    revision: int,
    views: Mapping[str, PoolView],
    previous: AnswerSet | None,
) -> AnswerSet:
    """The answer set of one domain from its pools' views and its previous answer.

    Each request-source line is decided among the pools on it; the default line's answer (or,
    when no pool of the default line is available, the all-down policy's) is the top level, the
    other lines that have a pool available go in ``lines``.
    """
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
    held = previous.pool if previous is not None else None
    top = _among(base, domain, [r for r in refs if linespec.DEFAULT in r.lines], views, held)
    if top is None:
        top = _all_down(base, domain, refs, views)
    others = []
    previous_lines = {a.line: a.pool for a in previous.lines} if previous is not None else {}
    for line in domain_lines(domain):
        if line == linespec.DEFAULT:
            continue
        chosen = _among(base, domain, [r for r in refs if line in r.lines], views, previous_lines.get(line))
        if chosen is not None:
            others.append(
                LineAnswer(line=line, groups=chosen.groups, pool=chosen.pool, records=chosen.records,
                           select=chosen.select)
            )
    return msgspec.structs.replace(top, lines=others) if others else top


def _among(
    base: AnswerSet, domain: Domain, refs: list[PoolRef], views: Mapping[str, PoolView], held: str | None
) -> AnswerSet | None:
    """The answer of the domain's strategy among ``refs`` (``held``: the pool a non-preemptive
    sequence keeps); None when none of them is available."""
    up = [r for r in refs if views[r.pool].available]
    if not up:
        return None
    strategy = domain.lb_strategy
    if strategy == "round_robin":
        own = [r for r in up if not _is_cname_pool(domain, views[r.pool])]
        return _merged(base, [views[r.pool] for r in own or up], domain)
    if strategy == "weight":
        groups = [_with_weight(_typed(domain, views[r.pool]), r.weight) for r in up]
        return _answer(base, [g for g in groups if g is not None], ",".join(r.pool for r in up))
    if strategy == "source_nearest":
        # one group per available pool in sequence order; the edge picks the client's region, else the first
        groups = [_nearest(_typed(domain, views[r.pool]), views[r.pool]) for r in up]
        nearest = msgspec.structs.replace(base, select="nearest")
        return _answer(nearest, [g for g in groups if g is not None], ",".join(r.pool for r in up))
    chosen = up[0]  # sequence
    if domain.sequence_mode == "non_preemptive" and held is not None:
        chosen = next((r for r in up if r.pool == held), chosen)
    group = _typed(domain, views[chosen.pool])
    return _answer(base, [group] if group else [], chosen.pool)


def _all_down(base: AnswerSet, domain: Domain, refs: list[PoolRef], views: Mapping[str, PoolView]) -> AnswerSet:
    """What the domain answers when no pool of the default line is available: its ``all_down`` policy."""
    policy = domain.all_down
    if not refs and policy != "fallback_pool":
        return base  # no enabled pool: nothing to answer
    if policy == "fail_closed":  # an empty NOERROR
        return msgspec.structs.replace(base, fallback=True)
    if policy == "fallback_pool" and domain.fallback_pool and domain.fallback_pool in views:
        view = views[domain.fallback_pool]
        if view.available and view.group is not None:  # its available addresses, else all (fail open on it)
            group = _typed(domain, view)
            return msgspec.structs.replace(_answer(base, [group] if group else [], view.name), fallback=True)
        return _fallback(base, view, domain, nearest=False)
    if not refs:
        return base
    return _fallback(base, views[refs[0].pool], domain, nearest=domain.lb_strategy == "source_nearest")


def _is_cname_pool(domain: Domain, view: PoolView) -> bool:
    """Whether a pool answers CNAME records in a domain of another type (a domain-name pool of an A domain)."""
    return view.pool.type == "domain" and domain.record_type != "CNAME"


def _typed(domain: Domain, view: PoolView, group: AnswerGroup | None = None) -> AnswerGroup | None:
    """The pool's group (or ``group``), saying its records are CNAME when they are not of the domain's type."""
    group = view.group if group is None else group
    if group is None or not _is_cname_pool(domain, view):
        return group
    return msgspec.structs.replace(group, record_type="CNAME")


def _with_weight(group: AnswerGroup | None, weight: int) -> AnswerGroup | None:
    return None if group is None else msgspec.structs.replace(group, weight=weight)


def _nearest(group: AnswerGroup | None, view: PoolView) -> AnswerGroup | None:
    return None if group is None else msgspec.structs.replace(group, region=view.pool.region)


def _merged(base: AnswerSet, views: Sequence[PoolView], domain: Domain) -> AnswerSet:
    # One rotating group of every pool's records: per-record weights or regions of the pools do
    # not survive the merge (a round-robin domain answers all its available records in turn);
    # address lines do.  The pools are all of one answer type (the caller's choice).
    records: list[str] = []
    record_lines: list[list[str]] = []
    for v in views:
        group = v.group
        for i, rec in enumerate(group.records if group else []):
            if rec not in records:
                records.append(rec)
                record_lines.append(group.record_lines[i] if group and group.record_lines else [linespec.DEFAULT])
    pool = ",".join(v.name for v in views)
    if all(linespec.is_default_only(lines) for lines in record_lines):
        record_lines = []
    cname = bool(views) and _is_cname_pool(domain, views[0])
    group = AnswerGroup(pool=pool, records=records, rotate=True, record_lines=record_lines,
                        record_type="CNAME" if cname else "")
    return _answer(base, [group] if records else [], pool)


def _fallback(base: AnswerSet, view: PoolView, domain: Domain, *, nearest: bool) -> AnswerSet:
    everyone = {a.name for a in enabled_addresses(view.pool)}
    group, _ = pool_group(view.pool, everyone, view.current)
    group = _typed(domain, view, group)
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
    fallback = views.get(domain.fallback_pool) if domain.fallback_pool else None
    return any(views[r.pool].warming for r in ordered_refs(domain, views)) or bool(fallback and fallback.warming)
