"""Wire messages between services: one msgspec Struct per message.

Tags carry the version; decoders ignore unknown fields, so a message may
gain fields (with defaults) without breaking older readers.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class _Message(Struct, frozen=True):
    """The base of every message.

    Each message says ``kw_only=True, frozen=True`` again: msgspec applies ``kw_only`` to the
    fields of the class that says it only, and mypy (PEP 681) does not inherit ``frozen``.
    The ``tag`` is each message's own.
    """


class ProbeResult(_Message, tag="probe_result.v1", kw_only=True, frozen=True):
    """One health check of one address from one prober."""

    region: str
    prober: str
    key: str  # shared.subjects.address_key(pool, address)
    pool: str
    address: str  # the address's name
    target: str  # the IP or host name probed
    protocol: str
    ok: bool
    rtt_ms: float | None = None
    error: str = ""
    at: float  # unix time
    check: int = 0  # which of the address's health checks (its index in ``health_checks``)
    loss_pct: float | None = None  # ping: the share of echo requests lost


class AddressState(_Message, tag="address_state.v1", kw_only=True, frozen=True):
    """The scheduler's view of one address."""

    name: str
    address: str
    available: bool
    mode: str = "auto"
    enabled: bool = True
    # prober region (vantage point) -> "up" | "down" | "unknown", after the per-vantage thresholds;
    # "regions" on the wire.  Not ``region``: where the address itself is.
    vantages: dict[str, str] = msgspec.field(default={}, name="regions")
    reason: str = ""  # why it is unavailable, e.g. "http connection refused"
    # which anti-flap threshold it waits on, e.g. "failures 1/3" or "successes 0/2" ("" = none)
    waiting: str = ""
    warming: bool = False  # checked but no result yet and its first interval not over
    region: str = ""  # the address's topology region, for address-level source_nearest
    # What its checks say whatever the mode (None: not checked, or disabled): a manual mode or a
    # maintenance window decides ``available``, and this still tells the real health.
    healthy: bool | None = None
    health_reason: str = ""  # why it is unhealthy
    maintenance_until: float = 0.0  # ``mode`` comes from a maintenance window ending then (unix time; 0: none)
    checks: list[dict[str, str]] = []  # with several checks: per check, region -> state (as ``vantages``)


class PoolState(_Message, tag="pool_state.v1", kw_only=True, frozen=True):
    """The scheduler's view of one pool, published on ``pool.state.<pool>``."""

    pool: str
    available: bool
    addresses: list[AddressState] = []
    current: str | None = None  # address held by a non-preemptive sequence
    warming: bool = False
    region: str = ""
    at: float = 0.0
    term: int = 0  # the publishing leader's term, as on AnswerSet (0: not said)


class AnswerGroup(_Message, tag="answer_group.v1", kw_only=True, frozen=True):
    """Records of one pool that an edge serves together.

    ``rotate``: rotate the order per query (round robin).
    ``record_weights``: when not empty, answer one record per query, chosen by weight.
    """

    pool: str
    records: list[str]
    weight: int = 1
    rotate: bool = False
    record_weights: list[int] = []
    region: str = ""  # the pool's region, for select == "nearest"
    # per record region (same length as records) for address-level source_nearest:
    # serve the records of the client's region when there are any, else all
    record_regions: list[str] = []
    # per record request-source lines (same length as records; [] = all default) for address lines:
    # serve the records of the client's most specific matching line, else all
    record_lines: list[list[str]] = []
    # the records' type when it is not the domain's: "CNAME" for a domain-name pool of an A or AAAA domain
    record_type: str = ""


class LineAnswer(_Message, tag="line_answer.v1", kw_only=True, frozen=True):
    """What a domain answers the clients of one request-source line (shared.lines) that has a pool available."""

    line: str
    groups: list[AnswerGroup] = []
    pool: str = ""
    records: list[str] = []
    select: str = "weight"


class AnswerSet(_Message, tag="answer_set.v1", kw_only=True, frozen=True):
    """The compiled answer of one domain, on ``answers.publish.<domain>``.

    With several groups an edge picks one group per query: by group weight when
    ``select`` is "weight"; when it is "nearest", the group whose region is the
    client's (ECS subnet, else resolver address, mapped by the topology table),
    else the first group. ``lines`` answer the clients of other request-source
    lines. ``deleted`` is a tombstone: the edge forgets the name.
    """

    domain: str
    enabled: bool
    record_type: str
    ttl: int = 30
    groups: list[AnswerGroup] = []
    pool: str = ""  # the pool (or comma-joined pools) answering
    records: list[str] = []  # all records served
    fallback: bool = False
    deleted: bool = False
    select: str = "weight"  # "weight" | "nearest"
    # Request-source lines other than default that have a pool available, most specific first.  A
    # client is answered by the first of its matching lines found here, else by the groups above
    # (the default line's answer, or what the domain answers when no pool of the line is available).
    lines: list[LineAnswer] = []
    config_revision: int = 0
    published_at: float = 0.0
    # Monotonic per domain across schedulers and restarts (milliseconds since the epoch, or
    # the previous revision + 1 when that is higher): an edge never replaces an answer with
    # one of a lower revision, so no late publication can bring an older decision back.
    revision: int = 0
    # The term of the scheduler that published it: the revision of the lease key when that
    # scheduler became leader, rising with every takeover.  An edge that has seen a higher term
    # ignores a lower one for a name it serves (a deposed leader's publication arriving late).
    # 0: the publisher did not say (never fenced).
    term: int = 0


class SwitchEvent(_Message, tag="switch_event.v1", kw_only=True, frozen=True):
    """A domain's answer moved to another pool (or into or out of fallback)."""

    domain: str
    at: float
    from_pool: str
    to_pool: str
    reason: str
    before: list[str] = []
    after: list[str] = []
    fallback: bool = False
    # the request-source line whose answer moved ("" = the default line, the domain's top-level answer)
    line: str = ""


class FieldChange(Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One top-level field of a resource that a write changed: ``before`` -> ``after`` (null: absent).

    A keyed list (a pool's ``addresses``, a domain's ``pools``, the topology's ``entries``) is
    summarised: ``before`` and ``after`` are its lengths, ``added``, ``removed`` and ``changed``
    the keys (names) of its items, at most 20 each then ``"(+N more)"``; ``reordered`` when
    only the order changed.  A long value is cut (a string) or counted (``"[N items]"``).
    """

    field: str
    before: Any = None
    after: Any = None
    added: list[str] = []
    removed: list[str] = []
    changed: list[str] = []
    reordered: bool = False


class OperationEvent(_Message, tag="operation_event.v1", kw_only=True, frozen=True):
    """An accepted config change, for the operation log (the audit trail).

    ``who``, ``via``, ``client`` and ``changes`` came later: events written before decode with
    their defaults ("" and []).
    """

    at: float
    method: str
    path: str
    resource: str  # the kind of config written: "pool" | "domain" | "template" | "alert_target" | "topology"
    name: str
    revision: int
    domain: str = ""
    message: str = ""
    # who wrote: the API token's name, the client's address (no token), or the NATS user ("nats")
    who: str = ""
    via: str = ""  # "rest" | "console" | "apply" (POST /api/v1/apply) | "config.apply" (NATS)
    client: str = ""  # the HTTP client's address (REST, console, apply)
    changes: list[FieldChange] = []


class HealthLogEntry(_Message, tag="health_log.v1", kw_only=True, frozen=True):
    """One line of an address's health log, on ``health.log.<pool>.<address>`` (the HEALTH stream).

    ``kind``: ``check_failed`` (a failed check from one prober), ``region_changed`` (the thresholded
    state of one check seen from one region went ``up`` or ``down``), ``address_changed`` (its
    availability or real health changed; ``message`` says why, and when a manual mode or a
    maintenance window kept the answer as it was).
    """

    at: float
    kind: str
    pool: str
    address: str
    region: str = ""
    prober: str = ""
    check: int = 0
    protocol: str = ""
    ok: bool | None = None
    state: str = ""  # region_changed: "up" | "down"
    error: str = ""
    rtt_ms: float | None = None
    loss_pct: float | None = None
    available: bool | None = None  # address_changed
    healthy: bool | None = None  # address_changed
    mode: str = ""  # address_changed: the mode in force
    message: str = ""


class ProberHeartbeat(_Message, tag="prober_heartbeat.v1", kw_only=True, frozen=True):
    """A prober replica announcing itself on ``prober.members.<region>``."""

    region: str
    prober: str
    at: float
    interval_s: float = 1.0
    stopping: bool = False


Event = SwitchEvent | OperationEvent

encoder = msgspec.json.Encoder()
probe_result_decoder = msgspec.json.Decoder(ProbeResult)
pool_state_decoder = msgspec.json.Decoder(PoolState)
answer_set_decoder = msgspec.json.Decoder(AnswerSet)
event_decoder = msgspec.json.Decoder(Event)
heartbeat_decoder = msgspec.json.Decoder(ProberHeartbeat)
health_log_decoder = msgspec.json.Decoder(HealthLogEntry)
