"""Pure read models: the event log cache, latest probe results, events and status views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from services.config.errors import InvalidArgument
from shared import lines as linespec
from shared import subjects
from shared.messages import AnswerSet, Event, FieldChange, OperationEvent, PoolState, ProbeResult, SwitchEvent
from shared.resources import RESOURCE_KINDS, AddressMode, Domain, Pool

EVENT_KINDS = ("switch", "operation")
RESOURCES = tuple(k.resource for k in RESOURCE_KINDS)  # what ?resource= may say
MAX_NAME = 253
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def iso(ts: float) -> str:
    """Unix seconds as an ISO 8601 UTC string with milliseconds (``...T01:39:20.123Z``)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_kind(event: Event) -> str:
    """``"switch"`` or ``"operation"``."""
    return "switch" if isinstance(event, SwitchEvent) else "operation"


def switch_message(event: SwitchEvent) -> str:
    """One line describing a switch."""
    which = f"line {event.line} " if event.line else ""
    return f"{which}switched from {event.from_pool or '(none)'} to {event.to_pool or '(none)'}: {event.reason}"


def render_event(event: Event) -> dict[str, Any]:
    """The API view of a switch or operation event."""
    if isinstance(event, SwitchEvent):
        return {
            "kind": "switch",
            "domain": event.domain,
            "at": iso(event.at),
            "message": switch_message(event),
            "from_pool": event.from_pool,
            "to_pool": event.to_pool,
            "reason": event.reason,
            "before": list(event.before),
            "after": list(event.after),
            "fallback": event.fallback,
        }
    return {
        "kind": "operation",
        "domain": event.domain,
        "at": iso(event.at),
        "message": event.message or f"{event.method} {event.path}",
        "method": event.method,
        "path": event.path,
        "resource": event.resource,
        "name": event.name,
        "revision": event.revision,
        "who": event.who,
        "via": event.via,
        "client": event.client,
        "changes": [render_change(c) for c in event.changes],
    }


def render_change(change: FieldChange) -> dict[str, Any]:
    """``{"field", "before", "after"}``, plus ``added``/``removed``/``changed``/``reordered`` for a list summary."""
    out: dict[str, Any] = {"field": change.field, "before": change.before, "after": change.after}
    for key in ("added", "removed", "changed"):
        if names := getattr(change, key):
            out[key] = list(names)
    if change.reordered:
        out["reordered"] = True
    return out


@dataclass(frozen=True)
class EventsQuery:
    """Filters of ``GET /events``; ``resource`` and ``name`` select operations (the audit trail of one resource)."""

    domain: str = ""
    kind: str = ""
    limit: int = DEFAULT_LIMIT
    resource: str = ""
    name: str = ""

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes every filter."""
        if self.kind and event_kind(event) != self.kind:
            return False
        if self.domain and event.domain != self.domain:
            return False
        if self.resource or self.name:
            if not isinstance(event, OperationEvent):
                return False
            if self.resource and event.resource != self.resource:
                return False
            if self.name and event.name not in (self.name, _fqdn(self.name)):
                return False
        return True


def _fqdn(name: str) -> str:
    return name.rstrip(".").lower()


def parse_limit(query: Mapping[str, str], *, default: int, maximum: int) -> int:
    """The ``limit`` parameter (``default`` when absent or empty); 400 naming it unless an integer 1-``maximum``."""
    raw = query.get("limit", "")
    if raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidArgument(f"limit must be an integer, not {raw!r}", "limit") from None
    if not 1 <= limit <= maximum:
        raise InvalidArgument(f"limit must be 1-{maximum}", "limit")
    return limit


def parse_events_query(query: Mapping[str, str]) -> EventsQuery:
    """Validate ``domain``, ``kind``, ``resource``, ``name`` and ``limit``; raise ``invalid_argument`` naming it."""
    limit = parse_limit(query, default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
    kind = query.get("kind", "")
    if kind and kind not in EVENT_KINDS:
        raise InvalidArgument("kind must be switch or operation", "kind")
    domain = query.get("domain", "").strip().rstrip(".").lower()
    resource = query.get("resource", "")
    if resource and resource not in RESOURCES:
        raise InvalidArgument(f"resource must be one of {', '.join(RESOURCES)}", "resource")
    name = query.get("name", "").strip()
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"name is at most {MAX_NAME} characters", "name")
    if resource == "domain":
        name = _fqdn(name)
    return EventsQuery(domain=domain, kind=kind, limit=limit, resource=resource, name=name)


class EventLog:
    """The last ``capacity`` events of the EVENTS stream, keyed by stream sequence."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.high_seq = 0  # highest stream sequence seen, decodable or not
        self._events: dict[int, Event] = {}

    def __len__(self) -> int:
        return len(self._events)

    def seen(self, seq: int) -> None:
        """Note that the stream reached ``seq`` (even if that message was unreadable)."""
        self.high_seq = max(self.high_seq, seq)

    def add(self, seq: int, event: Event) -> None:
        """Insert an event (a duplicate sequence replaces itself); drop the oldest over capacity."""
        self.seen(seq)
        self._events[seq] = event
        if len(self._events) > self.capacity + self.capacity // 10:
            for old in sorted(self._events)[: len(self._events) - self.capacity]:
                del self._events[old]

    def query(self, q: EventsQuery) -> list[dict[str, Any]]:
        """Events matching ``q``, newest first, rendered."""
        out: list[dict[str, Any]] = []
        for seq in sorted(self._events, reverse=True):
            event = self._events[seq]
            if not q.matches(event):
                continue
            out.append(render_event(event))
            if len(out) >= q.limit:
                break
        return out

    @property
    def low_seq(self) -> int:
        """The oldest stream sequence held (0 when empty): older events are only in the stream."""
        return min(self._events, default=0)


class ProbeTable:
    """The latest probe result per (address key, check, region, prober)."""

    def __init__(self, max_age_s: float = 3 * 3600, prune_every: int = 1024) -> None:
        self.max_age_s = max_age_s
        self.prune_every = prune_every
        self._added = 0
        self._latest: dict[str, dict[tuple[int, str, str], ProbeResult]] = {}

    def add(self, result: ProbeResult) -> None:
        """Keep ``result`` unless a newer one of the same prober is known."""
        per_key = self._latest.setdefault(result.key, {})
        slot = (result.check, result.region, result.prober)
        old = per_key.get(slot)
        if old is None or old.at <= result.at:
            per_key[slot] = result
        self._added += 1
        if self._added % self.prune_every == 0:
            self.prune(now=result.at)

    def prune(self, *, now: float) -> None:
        """Forget results older than ``max_age_s`` (probers that went away)."""
        for key in list(self._latest):
            fresh = {s: r for s, r in self._latest[key].items() if now - r.at <= self.max_age_s}
            if fresh:
                self._latest[key] = fresh
            else:
                del self._latest[key]

    def checks(self, key: str) -> list[ProbeResult]:
        """The latest results of one address, by check, region, then prober."""
        return [r for _, r in sorted(self._latest.get(key, {}).items())]


DateTime = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]  # iso(): RFC 3339, UTC



class CheckView(Struct, kw_only=True, frozen=True):
    """The latest result of one prober for one check of one address."""

    region: str
    prober: str
    ok: bool
    rtt_ms: float | None
    error: str
    at: DateTime
    check: int = 0  # which of the address's health checks
    protocol: str = ""
    loss_pct: float | None = None  # ping: the share of echo requests lost


class AddressStatus(Struct, kw_only=True, frozen=True):
    """One address of a pool's status: config, the scheduler's view (null until it publishes) and checks."""

    name: str
    address: str
    available: bool | None
    mode: AddressMode  # as configured
    region: str
    lines: list[str]  # the request-source lines the address serves inside its pool
    waiting: str | None
    warming: bool | None
    checks: list[CheckView]
    # What the scheduler says beyond ``available`` (null until it publishes): the real health, whatever
    # the mode; the mode in force (a maintenance window's, else ``mode``) and until when
    healthy: bool | None = None
    health_reason: str | None = None
    mode_in_force: str | None = None
    maintenance_until: DateTime | None = None
    judgement: str = "all_ok"  # how its checks combine (with several)


class PoolStatus(Struct, kw_only=True, frozen=True):
    """One pool of a domain's status."""

    name: str
    available: bool | None
    warming: bool | None
    region: str
    # the request-source lines the domain answers this pool on ([] for the fallback pool, which
    # answers when no pool of the default line is available)
    lines: list[str]
    fallback_pool: bool  # it is the domain's fallback_pool (all_down "fallback_pool")
    addresses: list[AddressStatus]


class LineAnswerView(Struct, kw_only=True, frozen=True):
    """What the clients of one request-source line are answered (a line with a pool available)."""

    line: str
    pool: str
    records: list[str]


class AnswerView(Struct, kw_only=True, frozen=True):
    """The answer the edges serve for a domain: to clients of the default line (and of lines with no pool
    available); ``lines``: what the clients of the other lines get, most specific first."""

    pool: str
    records: list[str]
    ttl: int
    fallback: bool
    published_at: DateTime | None
    lines: list[LineAnswerView] = []


class DomainStatus(Struct, kw_only=True, frozen=True):
    """``GET /domains/{fqdn}/status``: the answer served and why."""

    domain: str
    enabled: bool
    status: Literal["disabled", "warming", "active"]
    answer: AnswerView | None
    pools: list[PoolStatus]


def render_check(result: ProbeResult) -> CheckView:
    """The API view of one probe result."""
    return CheckView(
        region=result.region,
        prober=result.prober,
        ok=result.ok,
        rtt_ms=result.rtt_ms,
        error=result.error,
        at=iso(result.at),
        check=result.check,
        protocol=result.protocol,
        loss_pct=result.loss_pct,
    )


def render_answer(answer: AnswerSet | None) -> AnswerView | None:
    """The API view of a published answer (None before the first one, or after a tombstone)."""
    if answer is None or answer.deleted:
        return None
    return AnswerView(
        pool=answer.pool,
        records=list(answer.records),
        ttl=answer.ttl,
        fallback=answer.fallback,
        published_at=iso(answer.published_at) if answer.published_at else None,
        lines=[LineAnswerView(line=a.line, pool=a.pool, records=list(a.records)) for a in answer.lines],
    )


def render_pool_status(
    name: str,
    pool: Pool | None,
    state: PoolState | None,
    probes: ProbeTable,
    *,
    lines: list[str] | None = None,
    fallback_pool: bool = False,
) -> PoolStatus:
    """One pool of a domain's status: availability from the scheduler, addresses from config.

    What the scheduler says (``available``, ``waiting``, ``warming``) is null until it has
    published the pool's state.
    """
    states = {a.name: a for a in state.addresses} if state else {}
    addresses = []
    for addr in pool.addresses if pool else []:
        seen = states.get(addr.name)
        addresses.append(
            AddressStatus(
                name=addr.name,
                address=addr.address,
                available=seen.available if seen else None,
                mode=addr.mode,
                region=addr.region,
                lines=list(addr.lines),
                waiting=seen.waiting if seen else None,
                warming=seen.warming if seen else None,
                checks=[render_check(r) for r in probes.checks(subjects.address_key(name, addr.name))],
                healthy=seen.healthy if seen else None,
                health_reason=seen.health_reason if seen else None,
                mode_in_force=seen.mode if seen else None,
                maintenance_until=iso(seen.maintenance_until) if seen and seen.maintenance_until else None,
                judgement=addr.judgement,
            )
        )
    return PoolStatus(
        name=name,
        available=state.available if state else None,
        warming=state.warming if state else None,
        region=pool.region if pool else "",
        lines=[linespec.DEFAULT] if lines is None else lines,
        fallback_pool=fallback_pool,
        addresses=addresses,
    )


def domain_phase(
    domain: Domain, answer: AnswerSet | None, states: list[PoolState | None]
) -> Literal["disabled", "warming", "active"]:
    """``disabled``; ``warming`` while enabled but its first answer is not out (or a pool warms); else ``active``."""
    if not domain.enabled:
        return "disabled"
    if answer is None or answer.deleted or not answer.enabled or any(s is not None and s.warming for s in states):
        return "warming"
    return "active"


def render_status(
    domain: Domain,
    answer: AnswerSet | None,
    pools: list[tuple[str, Pool | None, PoolState | None]],
    probes: ProbeTable,
) -> DomainStatus:
    """``GET /domains/{fqdn}/status``: the answer served and why."""
    assert domain.name is not None
    refs = {ref.pool: list(ref.lines) for ref in domain.pools}
    return DomainStatus(
        domain=domain.name,
        enabled=domain.enabled,
        status=domain_phase(domain, answer, [state for _, _, state in pools]),
        answer=render_answer(answer),
        pools=[
            render_pool_status(
                name, pool, state, probes, lines=refs.get(name, []), fallback_pool=name == domain.fallback_pool
            )
            for name, pool, state in pools
        ],
    )
