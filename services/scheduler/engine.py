"""The scheduler's in-memory world: config, health, memory, and what to publish (pure, no I/O).

Every entry point takes ``now`` (monotonic seconds, for intervals) and ``at``
(unix seconds, stamped on messages) and returns an :class:`Outputs` that the
I/O shell publishes.  Work is incremental: a probe result only recomputes the
pool and domains of its address, and only when that address's state changed.

An engine that has not started (or was paused: a standby scheduler) keeps
following config and health but decides nothing; :meth:`Engine.take_over`
makes it decide, starting from what was last published.  Everything it
publishes carries its leader's ``term``; :meth:`Engine.repair` and
:meth:`Engine.repair_pool` answer a lower-term publication that landed after
its own (see :mod:`services.scheduler.fencing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from shared import subjects
from shared.messages import AddressState, AnswerSet, HealthLogEntry, PoolState, ProbeResult, SwitchEvent
from shared.resources import Address, Domain, HealthCheck, Pool, checks_of, domain_pools

from . import health
from .decide import (
    PoolView,
    decide_domain,
    domain_warming,
    evaluate_pool,
    pool_state,
    same_content,
)
from .fencing import repair_revision
from .health import (
    AddressStatus,
    LastResult,
    VantageState,
    address_health,
    address_status,
    check_states,
    expired_vantages,
    is_checked,
    is_settled,
    next_boundary,
    observe,
    same_outlook,
    vantage_key,
    vantage_states,
    waiting_on,
)
from .switch import detect_line_switches, detect_switch

_DEFAULT_CHECK = HealthCheck()
_SWEEP_S = 1.0  # how often vantages are checked for expiry (they live for at least 3 intervals)


@dataclass
class Outputs:
    """What one step decided to publish."""

    answers: list[AnswerSet] = field(default_factory=list)
    pool_states: list[PoolState] = field(default_factory=list)
    switches: list[SwitchEvent] = field(default_factory=list)
    removed_pools: list[str] = field(default_factory=list)
    health_logs: list[HealthLogEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.answers or self.pool_states or self.switches or self.removed_pools or self.health_logs)


@dataclass
class _Tracked:
    pool: str
    address: Address
    since: float
    vantages: dict[str, VantageState] = field(default_factory=dict)  # by the probers' region
    state: AddressState | None = None
    settled: bool = False
    # Availability when the last vantage expired.  With no vantage left the address keeps it
    # instead of counting as never seen: losing every vantage point (probers restarting, a
    # partition between probers and scheduler) says nothing about the backend, so neither
    # sending traffic to a dead address nor failing over from a healthy one is right.
    held: AddressStatus | None = None
    checks: list[HealthCheck] = field(default_factory=list)  # the address's checks (in step with ``address``)
    boundary: float | None = None  # the next start or end of one of its maintenance windows (unix time)

    def __post_init__(self) -> None:
        self.set_address(self.address)

    def set_address(self, address: Address, *, at: float | None = None) -> None:
        """Follow a config change of the address."""
        self.address = address
        self.checks = checks_of(address) or [_DEFAULT_CHECK]
        self.boundary = next_boundary(address, at) if address.maintenance and at is not None else None


def next_revision(previous: AnswerSet | None, *, at: float) -> int:
    """The revision of a domain's next answer: milliseconds since the epoch, and above the previous one.

    The clock part keeps revisions rising across a scheduler whose stream was wiped; the
    ``+ 1`` keeps them rising when the clock steps back or two answers share a millisecond.
    """
    return max(int(at * 1000), (previous.revision + 1) if previous is not None else 0)


class Engine:
    """Decisions for every pool and domain, kept up to date event by event."""

    def __init__(self, *, now: float) -> None:
        self.started = False
        self.config_loaded = False  # addresses of the initial config are timed from start_time
        self.start_time = now
        self.last_sweep = now
        self.pools: dict[str, Pool] = {}
        self.domains: dict[str, tuple[Domain, int]] = {}
        self.addresses: dict[str, _Tracked] = {}  # by address key
        self.views: dict[str, PoolView] = {}
        self.current: dict[str, str | None] = {}  # non-preemptive memory per pool
        self.pool_states: dict[str, PoolState] = {}  # last published/loaded
        self.answers: dict[str, AnswerSet] = {}  # last published/loaded
        self.domains_by_pool: dict[str, set[str]] = {}
        self.pending: set[str] = set()  # checked keys waiting for a first result or their interval
        self.retry_domains: set[str] = set()
        self.retry_pools: set[str] = set()
        self.term = 0  # of the leader this engine decides for (stamped on what it publishes)
        # domain -> a stale answer's revision that its first answer must go above (not decided yet)
        self.floors: dict[str, int] = {}
        self.logs: list[HealthLogEntry] = []  # health-log entries not handed out yet

    # -- loading previous decisions -------------------------------------------------

    def load_answer(self, answer: AnswerSet) -> None:
        """Remember an answer published before this process started."""
        self.answers[answer.domain] = answer

    def load_pool_state(self, state: PoolState) -> None:
        """Remember a pool view published before this process started (and its memory)."""
        self.pool_states[state.pool] = state
        self.current[state.pool] = state.current

    def mark_config_loaded(self) -> None:
        """The initial config is in: addresses added from now on get their first interval from now."""
        self.config_loaded = True

    def take_over(
        self, answers: list[AnswerSet], pool_states: list[PoolState], *, now: float, at: float, term: int = 0
    ) -> Outputs:
        """Become the deciding engine of a leader of ``term``, continuing from exactly what was last published."""
        self.term = term
        self.floors.clear()
        self.answers.clear()
        self.pool_states.clear()
        self.current.clear()
        for answer in answers:
            self.load_answer(answer)
        for state in pool_states:
            self.load_pool_state(state)
        return self.start(now=now, at=at)

    def pause(self) -> None:
        """Stop deciding (standby): keep following config and health, publish nothing."""
        self.started = False
        self.pending.clear()
        self.retry_domains.clear()
        self.retry_pools.clear()

    def start(self, *, now: float, at: float) -> Outputs:
        """Decide everything once the initial config and previous answers are loaded."""
        self.started = True
        self.config_loaded = True
        out = Outputs()
        for name in list(self.pools):
            self._refresh_pool(name, now=now, at=at, out=out, cascade=False)
        for name in list(self.domains):
            self._refresh_domain(name, at=at, out=out)
        for name, answer in list(self.answers.items()):
            if name not in self.domains and not answer.deleted:
                self._tombstone(name, answer, at=at, out=out)
        out.removed_pools.extend(p for p in self.pool_states if p not in self.pools)
        for p in out.removed_pools:
            del self.pool_states[p]
        return out

    # -- config ---------------------------------------------------------------------

    def set_pool(self, name: str, pool: Pool | None, *, now: float, at: float) -> Outputs:
        """Apply a pool written to (or deleted from, with None) the config bucket."""
        out = Outputs()
        old = self.pools.pop(name, None)
        keep = {a.name for a in pool.addresses} if pool else set()
        for a in old.addresses if old else []:
            if a.name not in keep:
                key = subjects.address_key(name, a.name)
                self.addresses.pop(key, None)
                self.pending.discard(key)
        if pool is None:
            self.views.pop(name, None)
            self.current.pop(name, None)
            if self.started and self.pool_states.pop(name, None) is not None:
                out.removed_pools.append(name)
        else:
            pool = msgspec.structs.replace(pool, name=name)
            self.pools[name] = pool
            since = now if self.config_loaded else self.start_time
            for a in pool.addresses:
                key = subjects.address_key(name, a.name)
                tracked = self.addresses.setdefault(key, _Tracked(pool=name, address=a, since=since))
                if is_checked(a) and not is_checked(tracked.address):
                    tracked.since = since  # newly checked: give its first check one interval
                    tracked.held = None
                tracked.set_address(a, at=at)
        if not self.started:
            return out
        if pool is not None:
            self._refresh_pool(name, now=now, at=at, out=out, cascade=True)
        else:
            for d in sorted(self.domains_by_pool.get(name, set())):
                self._refresh_domain(d, at=at, out=out)
        return out

    def set_domain(self, name: str, domain: Domain | None, revision: int, *, at: float) -> Outputs:
        """Apply a domain written to (or deleted from, with None) the config bucket."""
        out = Outputs()
        old = self.domains.pop(name, None)
        for pool in domain_pools(old[0]) if old else []:
            self.domains_by_pool.get(pool, set()).discard(name)
        self.retry_domains.discard(name)
        if domain is None:
            previous = self.answers.get(name)
            if self.started and previous is not None and not previous.deleted:
                self._tombstone(name, previous, at=at, out=out, revision=revision)
            return out
        self.domains[name] = (domain, revision)
        for pool in domain_pools(domain):
            self.domains_by_pool.setdefault(pool, set()).add(name)
        if self.started:
            self._refresh_domain(name, at=at, out=out)
        return out

    # -- health -----------------------------------------------------------------------

    def observe(self, result: ProbeResult, *, now: float, at: float) -> Outputs:
        """Feed one probe result; recompute only what its address's change affects."""
        out = Outputs()
        tracked = self.addresses.get(result.key)
        if tracked is None:
            return out
        last = LastResult(
            ok=result.ok, error=result.error, protocol=result.protocol, rtt_ms=result.rtt_ms, at=result.at
        )
        if not 0 <= result.check < len(tracked.checks):
            return out  # a check the address no longer has
        vantage = vantage_key(result.region, result.check)
        prev = tracked.vantages.get(vantage)
        new = tracked.vantages[vantage] = observe(prev, last, tracked.checks[result.check], seen=now)
        tracked.held = None
        if self.started:
            self.logs.extend(health.result_logs(result, prev, new))
        if (
            self.started
            and not same_outlook(prev, last)
            and self._refresh_address(result.key, tracked, now=now, at=at)
        ):
            self._refresh_pool(tracked.pool, now=now, at=at, out=out, cascade=True)
        return self._with_logs(out)

    def _with_logs(self, out: Outputs) -> Outputs:
        """``out`` with the health-log entries written since the last one."""
        if self.logs:
            out.health_logs.extend(self.logs)
            self.logs.clear()
        return out

    def tick(self, *, now: float, at: float) -> Outputs:
        """Handle interval deadlines (unknown addresses, warming), expired vantages, failed publications."""
        out = Outputs()
        expired = self._sweep(now=now)
        if not self.started:
            return out
        pools: set[str] = {p for p in self.retry_pools if p in self.pools}
        for key in expired:
            tracked = self.addresses.get(key)
            if tracked is not None and self._refresh_address(key, tracked, now=now, at=at):
                pools.add(tracked.pool)
        for key in list(self.pending):
            tracked = self.addresses.get(key)
            if tracked is None:
                self.pending.discard(key)
            elif self._refresh_address(key, tracked, now=now, at=at):
                pools.add(tracked.pool)
        for key, tracked in self.addresses.items():  # maintenance windows starting or ending
            if tracked.boundary is not None and tracked.boundary <= at:
                tracked.boundary = next_boundary(tracked.address, at)
                if self._refresh_address(key, tracked, now=now, at=at):
                    pools.add(tracked.pool)
        for name in sorted(pools):
            self._refresh_pool(name, now=now, at=at, out=out, cascade=True)
        for name in sorted(self.retry_domains):
            self._refresh_domain(name, at=at, out=out)
        return self._with_logs(out)

    def _sweep(self, *, now: float) -> list[str]:
        """Forget vantages that stopped reporting (a dead vantage point must not pin an address)."""
        if now - self.last_sweep < _SWEEP_S:
            return []
        self.last_sweep = now
        changed = []
        for key, tracked in self.addresses.items():
            if not tracked.vantages:
                continue
            gone = expired_vantages(tracked.vantages, tracked.checks, now=now)
            if not gone:
                continue
            if len(gone) == len(tracked.vantages):
                tracked.held = address_health(
                    tracked.address, tracked.vantages, now=now, tracked_since=tracked.since, held=tracked.held
                )
            for vantage in gone:
                del tracked.vantages[vantage]
            changed.append(key)
        return changed

    def repair(self, stale: AnswerSet, *, at: float) -> Outputs:
        """A lower-term answer landed after ours (a deposed leader's, late): publish ours over it.

        Ours goes out again with our term and a revision above the stale one; a domain not
        decided yet gets its first answer above it; a name we do not serve gets a tombstone.
        """
        out = Outputs()
        if not self.started:
            return out
        name = stale.domain
        own = self.answers.get(name)
        if own is not None:
            fixed = msgspec.structs.replace(
                own, term=self.term, published_at=at, revision=repair_revision(own.revision, stale.revision, at=at)
            )
            self.answers[name] = fixed
            out.answers.append(fixed)
        elif name in self.domains:
            self.floors[name] = max(self.floors.get(name, 0), stale.revision)
        elif not stale.deleted:
            self._tombstone(name, stale, at=at, out=out)
        return out

    def repair_pool(self, stale: PoolState, *, at: float) -> Outputs:
        """A lower-term pool view landed after ours: publish ours over it (or remove an unknown pool's)."""
        out = Outputs()
        if not self.started:
            return out
        own = self.pool_states.get(stale.pool)
        if own is not None:
            fixed = msgspec.structs.replace(own, term=self.term, at=at)
            self.pool_states[stale.pool] = fixed
            out.pool_states.append(fixed)
        elif stale.pool not in self.pools:
            out.removed_pools.append(stale.pool)
        return out

    def publish_failed(self, *, domains: list[str], pools: list[str]) -> None:
        """Publications that did not reach NATS: republish them on the next tick."""
        self.retry_domains.update(domains)
        self.retry_pools.update(pools)

    # -- recomputation ------------------------------------------------------------------

    def _status(self, tracked: _Tracked, *, now: float, at: float | None = None) -> AddressStatus:
        return address_status(
            tracked.address, tracked.vantages, now=now, tracked_since=tracked.since, held=tracked.held, at=at
        )

    def _refresh_address(self, key: str, tracked: _Tracked, *, now: float, at: float | None = None) -> bool:
        a = tracked.address
        status = self._status(tracked, now=now, at=at)
        settled = is_settled(a, tracked.vantages, now=now, tracked_since=tracked.since)
        state = AddressState(
            name=a.name,
            address=a.address,
            available=status.available,
            mode=status.mode,
            enabled=a.enabled,
            vantages=vantage_states(tracked.vantages),
            reason="" if status.available or not a.enabled else status.reason,
            waiting=waiting_on(a, tracked.vantages) if status.mode == "auto" else "",  # a window's mode decides
            warming=not settled,
            region=a.region,
            healthy=status.healthy if a.enabled else None,
            health_reason="" if status.healthy or not a.enabled else status.health_reason,
            maintenance_until=status.maintenance_until,
            checks=check_states(tracked.vantages, len(checks_of(a))),
        )
        if settled:
            self.pending.discard(key)
        else:
            self.pending.add(key)
        changed = state != tracked.state or settled != tracked.settled
        if self.started and tracked.state is not None and changed:
            entry = health.address_log(tracked.pool, tracked.state, state, at=at)
            if entry is not None:
                self.logs.append(entry)
        tracked.state, tracked.settled = state, settled
        return changed

    def _refresh_pool(self, name: str, *, now: float, at: float, out: Outputs, cascade: bool) -> None:
        pool = self.pools[name]
        states: dict[str, AddressState] = {}
        warming = False
        for a in pool.addresses:
            key = subjects.address_key(name, a.name)
            tracked = self.addresses[key]
            self._refresh_address(key, tracked, now=now, at=at)
            assert tracked.state is not None
            states[a.name] = tracked.state
            warming = warming or (pool.enabled and not tracked.settled)
        view = evaluate_pool(pool, states, current=self.current.get(name), warming=warming)
        old = self.views.get(name)
        self.views[name] = view
        if not warming:
            self.current[name] = view.current
            self._emit_pool_state(view, at=at, out=out)
        elif name not in self.pool_states or self.pool_states[name].warming:
            # a new pool says it is warming; a known one keeps its last view until settled
            self._emit_pool_state(view, at=at, out=out)
        if cascade and view != old:
            for d in self.domains_by_pool.get(name, set()).copy():
                self._refresh_domain(d, at=at, out=out)

    def _emit_pool_state(self, view: PoolView, *, at: float, out: Outputs) -> None:
        state = msgspec.structs.replace(pool_state(view, at=at, current=self.current.get(view.name)), term=self.term)
        old = self.pool_states.get(view.name)
        force = view.name in self.retry_pools
        self.retry_pools.discard(view.name)
        if (
            force
            or old is None
            or msgspec.structs.replace(old, at=0.0, term=0) != msgspec.structs.replace(state, at=0.0, term=0)
        ):
            self.pool_states[view.name] = state
            out.pool_states.append(state)

    def _refresh_domain(self, name: str, *, at: float, out: Outputs) -> None:
        entry = self.domains.get(name)
        if entry is None:
            previous = self.answers.get(name)
            if name in self.retry_domains and previous is not None and previous.deleted:
                out.answers.append(previous)
            self.retry_domains.discard(name)
            return
        domain, revision = entry
        if domain_warming(domain, self.views):
            return
        force = name in self.retry_domains
        self.retry_domains.discard(name)
        previous = self.answers.get(name)
        answer = decide_domain(name, domain, revision=revision, views=self.views, previous=previous)
        if same_content(previous, answer) and not force:
            return
        revision = max(next_revision(previous, at=at), self.floors.pop(name, -1) + 1)
        answer = msgspec.structs.replace(answer, published_at=at, revision=revision, term=self.term)
        switch = detect_switch(domain, previous, answer, views=self.views, at=at)
        self.answers[name] = answer
        out.answers.append(answer)
        if switch is not None:
            out.switches.append(switch)
        out.switches.extend(detect_line_switches(domain, previous, answer, views=self.views, at=at))

    def _tombstone(
        self, name: str, previous: AnswerSet, *, at: float, out: Outputs, revision: int | None = None
    ) -> None:
        tomb = AnswerSet(
            domain=name,
            enabled=False,
            deleted=True,
            record_type=previous.record_type,
            ttl=previous.ttl,
            config_revision=previous.config_revision if revision is None else revision,
            published_at=at,
            revision=next_revision(previous, at=at),
            term=self.term,
        )
        self.answers[name] = tomb
        out.answers.append(tomb)

    def warming(self, name: str) -> bool:
        """Whether a domain's answer is held back until its addresses have been observed."""
        entry = self.domains.get(name)
        return entry is not None and domain_warming(entry[0], self.views)

