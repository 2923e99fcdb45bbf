"""Config resources: their Structs, their kinds (named once for every part of GTM), and validation.

These are the shapes the REST API accepts and the ``gtm_config`` KV bucket
stores.  Decoding forbids unknown fields; :func:`validate_pool` and
:func:`validate_domain` add the checks a type cannot express and raise
:class:`ResourceError` naming the offending field.  :data:`RESOURCE_KINDS` is
the one registry of resource kinds: the config service, config documents and
gtmctl all derive their views from it.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from shared import lines as linespec
from shared import subjects

NAME_RE = r"^[A-Za-z0-9._-]{1,64}$"
# Names NAME_RE allows that no URL can carry: browsers and curl remove these path segments (RFC 3986 5.2.4).
DOT_SEGMENTS = frozenset({".", ".."})
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: CR and LF split an HTTP request
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_CODE_RANGE_RE = re.compile(r"^[1-5]xx$")

Name = Annotated[str, Meta(pattern=NAME_RE)]
_NAME = re.compile(NAME_RE.strip("^$"))
Remarks = Annotated[str, Meta(max_length=256)]
Percent = Literal[20, 50, 80, 100]
LossRate = Literal[10, 30, 50, 80, 90, 100]
PING_GAP_S = 0.1  # between the echo requests of one ping check
OneToTen = Annotated[int, Meta(ge=1, le=10)]
OneToHundred = Annotated[int, Meta(ge=1, le=100)]
Port = Annotated[int, Meta(ge=1, le=65535)]

PoolType = Literal["ipv4", "ipv6", "domain"]
RecordType = Literal["A", "AAAA", "CNAME"]
HealthCondition = Literal["any_ok", "p30_ok", "p50_ok", "p70_ok", "all_ok"]
PoolStrategy = Literal["round_robin", "sequence", "weight", "source_nearest"]
DomainStrategy = Literal["sequence", "round_robin", "weight", "source_nearest"]
SequenceMode = Literal["preemptive", "non_preemptive"]
AddressMode = Literal["auto", "manual_available", "manual_unavailable"]
AllDown = Literal["fail_open", "fail_closed", "fallback_pool"]
# Request-source lines (shared.lines): "default", "continent:XX", "country:CC", "asn:N", "region:NAME"
Lines = Annotated[list[str], Meta(max_length=64)]
Protocol = Literal["http", "https", "tcp", "ping"]

RECORD_TYPE_FOR_POOL: dict[str, str] = {"ipv4": "A", "ipv6": "AAAA", "domain": "CNAME"}
# The pool types a domain of each record type may use: its own, and domain-name pools (answered as CNAME)
POOL_TYPES_FOR_RECORD: dict[str, tuple[str, ...]] = {
    "A": ("ipv4", "domain"),
    "AAAA": ("ipv6", "domain"),
    "CNAME": ("domain",),
}
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}


class ResourceError(ValueError):
    """A resource failed validation; ``field`` is its JSON path."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class _Resource(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every resource Struct: unknown fields forbidden (inherited; `frozen` is restated for type checkers)."""


class HealthCheck(_Resource, kw_only=True, frozen=True):
    """How one address is checked."""

    protocol: Protocol = "http"
    port: Port | None = None
    path: Annotated[str, Meta(min_length=1, max_length=1024)] = "/"
    host: Annotated[str, Meta(max_length=253)] = ""
    expected_codes: list[int | str] = msgspec.field(default_factory=lambda: [200])
    interval_s: Annotated[float, Meta(ge=1, le=3600)] = 15.0
    timeout_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0
    failures: OneToTen = 2
    successes: OneToTen = 1
    failure_rate: Percent = 50
    verify_tls: bool = False  # https: verify the certificate against `host` (or the address)
    body_match: Annotated[str, Meta(max_length=1024)] = ""  # ok only if the body contains this
    # http, https, tcp: hold an idle connection to the port between checks and check again at once when
    # the backend's end closes it (a crash is seen in milliseconds); off for servers that serve one
    # connection at a time (an idle one would hold them up)
    hold_connection: bool = True
    # ping: echo requests per check, and the loss (percent) at which the check fails
    packets: Annotated[int, Meta(ge=1, le=100)] = 1
    loss_rate: LossRate = 100
    template: str = ""  # the health template this check was resolved from ("" = none)
    overrides: list[str] = []  # fields set on the address itself

    @property
    def effective_port(self) -> int | None:
        """The port probed: the configured one or the protocol's default."""
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.protocol)


class HealthTemplate(HealthCheck, kw_only=True, frozen=True):
    """A health-check template as written through the API: a check plus the usual name and revision."""

    name: Name | None = None
    revision: int | None = None


class MaintenanceWindow(_Resource, kw_only=True, frozen=True):
    """A time the address behaves as ``mode`` says, returning to its own mode by itself at ``until``."""

    start: datetime.datetime = msgspec.field(name="from")
    until: datetime.datetime
    mode: Literal["manual_unavailable", "manual_available"] = "manual_unavailable"


class Address(_Resource, kw_only=True, frozen=True):
    """One service address in a pool."""

    name: Name
    address: Annotated[str, Meta(min_length=1, max_length=253)]
    enabled: bool = True
    mode: AddressMode = "auto"
    weight: OneToHundred = 1
    sequence: OneToHundred = 1
    health_check: HealthCheck | None = None  # the one-check shorthand of ``health_checks``
    health_checks: Annotated[list[HealthCheck], Meta(max_length=16)] = []
    judgement: HealthCondition = "all_ok"  # share of the checks that must pass (with several)
    maintenance: Annotated[list[MaintenanceWindow], Meta(max_length=64)] = []
    region: Annotated[str, Meta(max_length=64)] = ""  # for address-level source_nearest
    lines: Lines = msgspec.field(default_factory=lambda: [linespec.DEFAULT])
    remarks: Remarks = ""


class Pool(_Resource, kw_only=True, frozen=True):
    """An address pool."""

    type: PoolType
    name: Name | None = None
    enabled: bool = True
    health_condition: HealthCondition = "any_ok"
    lb_strategy: PoolStrategy = "round_robin"
    sequence_mode: SequenceMode = "preemptive"
    region: Annotated[str, Meta(max_length=64)] = ""  # for domain-level source_nearest
    remarks: Remarks = ""
    addresses: list[Address] = []
    revision: int | None = None


class PoolRef(_Resource, kw_only=True, frozen=True):
    """A pool used by a domain, with its place in the sequence and weight."""

    pool: Name
    sequence: OneToHundred = 1
    weight: OneToHundred = 1
    lines: Lines = msgspec.field(default_factory=lambda: [linespec.DEFAULT])


class Domain(_Resource, kw_only=True, frozen=True):
    """An access domain."""

    record_type: RecordType
    name: str | None = None
    ttl: Annotated[int, Meta(ge=1, le=86400)] = 30
    enabled: bool = False
    remarks: Remarks = ""
    pools: list[PoolRef] = []
    lb_strategy: DomainStrategy = "sequence"
    sequence_mode: SequenceMode = "preemptive"
    # When no pool is available: answer the first enabled pool anyway (fail_open), an empty NOERROR
    # (fail_closed), or the pool named by ``fallback_pool``.
    all_down: AllDown = "fail_open"
    fallback_pool: Name | None = None
    revision: int | None = None


class TopologyEntry(_Resource, kw_only=True, frozen=True):
    """Clients in ``cidr`` are nearest to ``region``."""

    cidr: Annotated[str, Meta(min_length=1, max_length=64)]
    region: Annotated[str, Meta(min_length=1, max_length=64)]


class Topology(_Resource, kw_only=True, frozen=True):
    """The client-subnet to region table used by ``source_nearest``."""

    entries: list[TopologyEntry] = []
    revision: int | None = None


AlertKind = Literal["address", "pool", "domain"]


class AlertTarget(_Resource, kw_only=True, frozen=True):
    """Where the switches of the kinds it asks for are sent: a webhook, an email or an Apprise URL.

    ``type`` says which; its fields: ``webhook`` a JSON POST to ``url`` (http or https); ``email`` a
    plain-text mail through the SMTP server ``smtp`` ("host:port") from ``from`` to every ``to``,
    with STARTTLS when ``starttls`` and a login when ``username`` is set; ``apprise`` a notification
    to ``url``, any URL the Apprise library knows (slack://, msteams://, json://, mailto://, ...).
    The fields of the other types stay empty (validation refuses them).  Targets stored before
    there were types have none and are webhooks.
    """

    type: Literal["webhook", "email", "apprise"] = "webhook"
    url: Annotated[str, Meta(max_length=2048)] = ""  # webhook, apprise
    smtp: Annotated[str, Meta(max_length=300)] = ""  # email: "host:port"
    sender: Annotated[str, Meta(max_length=320)] = msgspec.field(default="", name="from")  # email
    to: Annotated[list[Annotated[str, Meta(max_length=320)]], Meta(max_length=100)] = []  # email
    starttls: bool = False  # email
    username: Annotated[str, Meta(max_length=256)] = ""  # email: log in when set
    password: Annotated[str, Meta(max_length=256)] = ""  # email
    name: Name | None = None
    enabled: bool = True
    kinds: list[AlertKind] = msgspec.field(default_factory=lambda: ["address", "pool", "domain"])
    remarks: Remarks = ""
    revision: int | None = None


@dataclass(frozen=True)
class ResourceKind:
    """One kind of config resource: its names in the API, in config documents, in the bucket and in events."""

    resource: str  # the word for one: OperationEvent.resource, error messages ("pool", "alert_target", ...)
    manifest_key: str  # its key in a config document: "pools", "health_templates", ...
    collection: str  # the REST API's URL segment: "pools", "health-templates", ...
    list_key: str  # the key of the REST API's list body: "pools", "templates", ... ("" for a singleton)
    body: type[Struct]  # what a request body or document entry decodes into
    stored: type[Struct]  # what the KV bucket holds
    prefix: str  # KV key prefix
    key: Callable[[str], str]  # the KV key of the resource called ``name``
    fqdn_names: bool = False  # named by a domain name (normalized) instead of NAME_RE
    singleton: str = ""  # the one resource's name, for a kind without a collection (topology)


def _topology_key(_name: str) -> str:
    return subjects.TOPOLOGY_KEY


# Every resource kind, in the order a document's changes apply (prunes run in reverse).
RESOURCE_KINDS: tuple[ResourceKind, ...] = (
    ResourceKind("template", "health_templates", "health-templates", "templates", HealthTemplate, HealthCheck,
                 subjects.TEMPLATE_PREFIX, subjects.template_key),
    ResourceKind("pool", "pools", "pools", "pools", Pool, Pool, subjects.POOL_PREFIX, subjects.pool_key),
    ResourceKind("domain", "domains", "domains", "domains", Domain, Domain, subjects.DOMAIN_PREFIX,
                 subjects.domain_key, fqdn_names=True),
    ResourceKind("alert_target", "alert_targets", "alert-targets", "alert_targets", AlertTarget, AlertTarget,
                 subjects.ALERT_PREFIX, subjects.alert_key),
    ResourceKind("topology", "topology", "topology", "", Topology, Topology, subjects.TOPOLOGY_KEY, _topology_key,
                 singleton="topology"),
)


def normalize_fqdn(name: str) -> str:
    """Lower-case a domain name and drop its trailing dot; raise if invalid."""
    fqdn = name.strip().rstrip(".").lower() if name.strip() != "." else ""
    if not fqdn or len(fqdn) > 253:
        raise ResourceError(f"invalid domain name {name!r}", "name")
    labels = fqdn.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise ResourceError(f"invalid domain name {name!r}", "name")
    if labels[-1].isdigit():
        raise ResourceError(f"invalid domain name {name!r}: top-level label is numeric", "name")
    return fqdn


def _check_address_value(pool_type: str, value: str, field: str) -> str:
    """Check an address matches its pool's type; return its canonical form."""
    if pool_type == "domain":
        try:
            return normalize_fqdn(value)
        except ResourceError:
            raise ResourceError(f"{value!r} is not a valid domain name", field) from None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ResourceError(f"{value!r} is not a valid {pool_type} address", field) from None
    if (pool_type == "ipv4") != (ip.version == 4):
        raise ResourceError(f"{value!r} is not a valid {pool_type} address", field)
    return str(ip)


def check_url_name(name: str, field: str, what: str) -> None:
    """A name that goes into a URL path: NAME_RE all through (msgspec's pattern lets a final newline
    pass ``$``) and not ``.`` or ``..`` (browsers and curl rewrite them)."""
    if not _NAME.fullmatch(name):
        raise ResourceError(f"{what} names are 1-64 of A-Za-z0-9._-", field)
    if name in DOT_SEGMENTS:
        raise ResourceError(
            f"{what} names cannot be {name!r}: browsers and curl remove it from URLs, so it could not be reached",
            field,
        )


def check_no_control(value: str, field: str) -> None:
    """Refuse control characters (CR, LF, NUL, ...) in a value that goes into a request line or header."""
    if m := _CONTROL_RE.search(value):
        raise ResourceError(f"control character {m.group()!r} is not allowed (CR and LF split requests)", field)


def check_health(hc: HealthCheck, field: str) -> None:
    """Check a health check beyond its types; raise ResourceError naming the field."""
    check_no_control(hc.path, f"{field}.path")
    check_no_control(hc.host, f"{field}.host")
    if hc.timeout_s >= hc.interval_s:
        raise ResourceError("timeout_s must be less than interval_s", f"{field}.timeout_s")
    if hc.protocol != "ping" and (hc.packets != 1 or hc.loss_rate != 100):
        raise ResourceError("packets and loss_rate are for ping checks", f"{field}.packets")
    ping_time = (hc.packets - 1) * PING_GAP_S + hc.timeout_s
    if hc.protocol == "ping" and ping_time >= hc.interval_s:
        raise ResourceError(
            f"{hc.packets} pings {PING_GAP_S} s apart and a {hc.timeout_s} s timeout take {ping_time:.1f} s: "
            f"interval_s must be longer",
            f"{field}.interval_s",
        )
    if hc.protocol == "tcp" and hc.port is None:
        raise ResourceError("a tcp check needs a port", f"{field}.port")
    if not hc.path.startswith("/"):
        raise ResourceError("path must start with '/'", f"{field}.path")
    if not hc.expected_codes:
        raise ResourceError("expected_codes must not be empty", f"{field}.expected_codes")
    for i, code in enumerate(hc.expected_codes):
        where = f"{field}.expected_codes[{i}]"
        if isinstance(code, bool):
            raise ResourceError("expected an HTTP status code", where)
        if isinstance(code, int) and not 100 <= code <= 599:
            raise ResourceError("HTTP status codes are 100-599", where)
        if isinstance(code, str) and not _CODE_RANGE_RE.match(code):
            raise ResourceError("status ranges look like '2xx'", where)


def check_maintenance(windows: list[MaintenanceWindow], field: str) -> None:
    """Windows with a time zone, each ending after it starts, none overlapping another."""
    for j, w in enumerate(windows):
        for attr, value in (("from", w.start), ("until", w.until)):
            if value.tzinfo is None:
                raise ResourceError(
                    "an RFC 3339 time with its offset is needed (e.g. 2026-12-01T02:00:00Z)", f"{field}[{j}].{attr}"
                )
        if w.until <= w.start:
            raise ResourceError("until must be after from", f"{field}[{j}].until")
    ordered = sorted(range(len(windows)), key=lambda j: windows[j].start)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if windows[b].start < windows[a].until:
            raise ResourceError(f"overlaps maintenance[{a}]: windows must not overlap", f"{field}[{b}].from")


def checks_of(address: Address) -> list[HealthCheck]:
    """An address's health checks: ``health_checks``, or the one ``health_check`` (none: always available)."""
    if address.health_checks:
        return list(address.health_checks)
    return [address.health_check] if address.health_check is not None else []


def validate_pool(pool: Pool, name: str) -> Pool:
    """Check a decoded pool beyond its types; return it named and canonical."""
    if pool.name is not None and pool.name != name:
        raise ResourceError(f"name {pool.name!r} does not match the path", "name")
    check_url_name(name, "name", "pool")
    seen: set[str] = set()
    addresses = []
    for i, addr in enumerate(pool.addresses):
        field = f"addresses[{i}]"
        check_url_name(addr.name, f"{field}.name", "address")
        if addr.name in seen:
            raise ResourceError(f"duplicate address name {addr.name!r}", f"{field}.name")
        seen.add(addr.name)
        value = _check_address_value(pool.type, addr.address, f"{field}.address")
        if addr.health_check is not None:
            if addr.health_checks:
                raise ResourceError("use health_check (one check) or health_checks, not both", f"{field}.health_checks")
            check_health(addr.health_check, f"{field}.health_check")
        for j, hc in enumerate(addr.health_checks):
            check_health(hc, f"{field}.health_checks[{j}]")
        check_lines(addr.lines, f"{field}.lines")
        check_maintenance(addr.maintenance, f"{field}.maintenance")
        addresses.append(msgspec.structs.replace(addr, address=value))
    return msgspec.structs.replace(pool, name=name, addresses=addresses, revision=None)


def check_lines(given: list[str], field: str) -> None:
    """Check a ``lines`` list; raise ResourceError naming the offending line (``field[i]``)."""
    try:
        linespec.check_lines(given)
    except linespec.LineError as exc:
        index = exc.args[1] if len(exc.args) > 1 else -1
        raise ResourceError(str(exc.args[0]), field if index < 0 else f"{field}[{index}]") from None


def validate_domain(domain: Domain, fqdn: str, pools: Mapping[str, Pool]) -> Domain:
    """Check a decoded domain against itself and the existing ``pools``; return it named and canonical."""
    if domain.name is not None and normalize_fqdn(domain.name) != fqdn:
        raise ResourceError(f"name {domain.name!r} does not match the path", "name")
    seen: set[str] = set()
    for i, ref in enumerate(domain.pools):
        field = f"pools[{i}].pool"
        if ref.pool in seen:
            raise ResourceError(f"pool {ref.pool!r} is listed twice", field)
        seen.add(ref.pool)
        _check_pool_type(domain.record_type, ref.pool, pools, field)
        check_lines(ref.lines, f"pools[{i}].lines")
    all_down = domain.all_down
    if all_down == "fallback_pool":
        if not domain.fallback_pool:
            raise ResourceError('all_down "fallback_pool" needs the pool to answer in fallback_pool', "fallback_pool")
        _check_pool_type(domain.record_type, domain.fallback_pool, pools, "fallback_pool")
    elif domain.fallback_pool:
        raise ResourceError(
            f'fallback_pool is answered only with all_down "fallback_pool" (all_down is {all_down!r})', "fallback_pool"
        )
    return msgspec.structs.replace(domain, name=fqdn, revision=None)


def _check_pool_type(record_type: str, name: str, pools: Mapping[str, Pool], field: str) -> None:
    """Pool ``name`` exists and a domain of ``record_type`` may answer from it."""
    pool = pools.get(name)
    if pool is None:
        raise ResourceError(f"pool {name!r} does not exist", field)
    allowed = POOL_TYPES_FOR_RECORD[record_type]
    if pool.type not in allowed:
        raise ResourceError(
            f"pool {name!r} is of type {pool.type}; record type {record_type} needs {' or '.join(allowed)} pools",
            field,
        )


def domain_pools(domain: Domain) -> list[str]:
    """Every pool a domain may answer from: its pools, then its fallback pool."""
    names = [ref.pool for ref in domain.pools]
    if domain.fallback_pool and domain.fallback_pool not in names:
        names.append(domain.fallback_pool)
    return names


pool_decoder = msgspec.json.Decoder(Pool)
domain_decoder = msgspec.json.Decoder(Domain)
