"""Settings: frozen, validated Structs, one per service, read once from the environment.

Every setting is a Struct field with its default and its allowed range (msgspec ``Meta``);
its environment variable is ``GTM_`` + its path (``edge.rrl.slip`` -> ``GTM_EDGE_RRL_SLIP``)
unless :data:`ENV_NAMES` says otherwise.  :func:`load` refuses a bad value with a
:class:`SettingsError` naming the variable and what it may be: nothing is clamped.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use."""


class _Settings(Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of every settings Struct (subclasses repeat ``frozen=True``: mypy does not see it inherited)."""


class NatsSettings(_Settings, frozen=True):
    """How to reach NATS."""

    url: str = DEFAULT_NATS_URL  # comma-separated server URLs
    user: str = ""
    password: str = ""
    creds: str = ""  # path of a .creds file
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    name: str = "gtm"  # the connection's name: gtm-<service>, not read from the environment
    # of every stream and bucket; 0 = 3 on a cluster of 3 or more servers, else 1
    replicas: Annotated[int, Meta(ge=0, le=5)] = 0
    # how long the HEALTH stream keeps an address's health log (GTM_HEALTH_LOG_DAYS)
    health_log_days: Annotated[int, Meta(ge=1, le=3650)] = 7


class LogSettings(_Settings, frozen=True):
    """How a service logs (structlog, to stderr)."""

    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal, else JSON


class ApiSettings(_Settings, frozen=True):
    """The config service's REST API."""

    listen: str = "127.0.0.1:8080"
    token: str = ""  # bearer token; required to listen beyond loopback (its writes are recorded as "default")
    # named bearer tokens, "name:secret" each (GTM_API_TOKENS=alice:s3cret,ci:other); any one of them,
    # or ``token``, is accepted, and the operation log records the name of the one used
    tokens: tuple[str, ...] = ()
    console_url: str = ""  # the console's public base URL, linked from alerts (GTM_CONSOLE_URL; "" = no links)

    def credentials(self) -> tuple[tuple[str, str], ...]:
        """(name, secret) of every accepted token; raise :class:`SettingsError` naming the variable."""
        return api_credentials(self.token, self.tokens)


DEFAULT_TOKEN_NAME = "default"  # GTM_API_TOKEN's name in the operation log
_TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@functools.lru_cache(maxsize=16)
def api_credentials(token: str, tokens: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """GTM_API_TOKEN (named ``default``) and GTM_API_TOKENS as (name, secret) pairs, checked.

    Each entry of ``tokens`` is ``name:secret`` (the secret may hold ``:``, not ``,``); names are
    1-64 of A-Za-z0-9._- and unique, secrets non-empty and unique.  A message never shows a secret.
    """
    out: list[tuple[str, str]] = [(DEFAULT_TOKEN_NAME, token)] if token else []
    for i, entry in enumerate(tokens, start=1):
        name, colon, secret = entry.partition(":")
        name = name.strip()
        if not colon:
            raise SettingsError(f"GTM_API_TOKENS: entry {i} is not name:secret (entries are separated by commas)")
        if not _TOKEN_NAME_RE.match(name):
            raise SettingsError(f"GTM_API_TOKENS: entry {i}: the name {name!r} is not 1-64 of A-Za-z0-9._-")
        if not secret:
            raise SettingsError(f"GTM_API_TOKENS: token {name!r} has an empty secret")
        for other, other_secret in out:
            if other == name:
                taken = "GTM_API_TOKEN's name" if token and other == DEFAULT_TOKEN_NAME else "listed twice"
                raise SettingsError(f"GTM_API_TOKENS: the name {name!r} is {taken}")
            if other_secret == secret:
                raise SettingsError(f"GTM_API_TOKENS: tokens {other!r} and {name!r} have the same secret")
        out.append((name, secret))
    return tuple(out)


class RrlSettings(_Settings, frozen=True):
    """The edge's UDP response rate limiting."""

    responses_per_s: Annotated[int, Meta(ge=0, le=1_000_000)] = 200  # per client subnet (0 = off)
    window_s: Annotated[int, Meta(ge=1, le=3600)] = 5  # limited until the average over this is under it
    slip: Annotated[int, Meta(ge=0, le=100)] = 2  # every Nth limited reply goes out truncated (0 = drop all)
    ipv4_prefix: Annotated[int, Meta(ge=0, le=32)] = 24  # client subnet sizes the limit applies to
    ipv6_prefix: Annotated[int, Meta(ge=0, le=128)] = 56
    # CIDRs never limited (loopback cannot be spoofed from the network: martian filter)
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


class EdgeSettings(_Settings, frozen=True):
    """The DNS edge."""

    listen: str = "127.0.0.1:5300"  # UDP and TCP
    workers: Annotated[int, Meta(ge=1, le=64)] = 1  # SO_REUSEPORT processes
    zone: str = ""  # when set, authoritative for it: SOA/NS at the apex, SOA in negatives
    ns: tuple[str, ...] = ()  # NS names of the zone (none: ns1.<zone>)
    state_dir: str = ".data/edge"  # where the last answer table is kept for a start without NATS ("" = nowhere)
    udp_gso: bool = True  # replies of one size to one sender in a batch go as one segmented send (UDP GSO)
    rrl: RrlSettings = RrlSettings()


class ProberSettings(_Settings, frozen=True):
    """A prober replica."""

    region: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[^.*> \t]+$")] = "local"
    id: str = ""  # default: <hostname>-<pid>
    concurrency: Annotated[int, Meta(ge=1, le=65_536)] = 256  # checks in flight at once


class SchedulerSettings(_Settings, frozen=True):
    """A scheduler replica."""

    id: str = ""  # default: <hostname>-<pid>
    tick_s: Annotated[float, Meta(gt=0, le=10)] = 0.2  # how often time-driven rules are looked at
    lease_s: Annotated[float, Meta(ge=0.5, le=300)] = 2.0  # a standby takes over at most this long after


class GeoipSettings(_Settings, frozen=True):
    """Where request-source lines find a client's country, continent and AS (the edge; the API's lookups)."""

    db: str = ""  # a MaxMind GeoIP2/GeoLite2 Country or City .mmdb ("" = the data geoip2fast ships)
    asn_db: str = ""  # a GeoLite2-ASN .mmdb for asn:N lines ("" = no AS numbers)


class Settings(_Settings, frozen=True):
    """Everything a GTM service reads from its environment."""

    nats: NatsSettings = NatsSettings()
    log: LogSettings = LogSettings()
    # this process in logs ("instance") and in gtm_build_info{instance_id} ("" = <hostname>-<pid>)
    instance: Annotated[str, Meta(max_length=128)] = ""
    # host:port of /metrics, /healthz, /readyz ("" = off; the config service serves them on its API port)
    metrics_listen: str = ""
    api: ApiSettings = ApiSettings()
    edge: EdgeSettings = EdgeSettings()
    prober: ProberSettings = ProberSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    geoip: GeoipSettings = GeoipSettings()


# Settings whose variable is not GTM_ + their path (None: not read from the environment).
ENV_NAMES: dict[str, str | None] = {
    "nats.url": "NATS_URL",
    "nats.name": None,
    "nats.health_log_days": "GTM_HEALTH_LOG_DAYS",
    "api.console_url": "GTM_CONSOLE_URL",
    "edge.listen": "GTM_DNS_LISTEN",
}


def _fields(cls: type[Struct], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, type) of every leaf setting of ``cls``."""
    for f in msgspec.structs.fields(cls):
        path = f"{prefix}{f.name}"
        if isinstance(f.type, type) and issubclass(f.type, Struct):
            yield from _fields(f.type, f"{path}.")
        else:
            yield path, f.type


def env_name(path: str) -> str | None:
    """The environment variable of the setting at dotted ``path``."""
    return ENV_NAMES.get(path, "GTM_" + path.replace(".", "_").upper())


LEAVES: dict[str, Any] = dict(_fields(Settings))
ENV_VARS: dict[str, str] = {name: path for path in LEAVES if (name := env_name(path))}  # variable -> path


def split_host_port(value: str, *, default_port: int) -> tuple[str, int]:
    """Parse ``host:port``, ``[v6]:port`` or a bare host."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise SettingsError(f"bad listen address {value!r}") from None
    if not 0 <= number <= 65535:
        raise SettingsError(f"bad listen address {value!r}: port {number} is not 0-65535")
    return host or "0.0.0.0", number


def _allowed(path: str) -> str:
    """What the setting at ``path`` may be, in words."""
    info = msgspec.inspect.type_info(LEAVES[path])
    if isinstance(info, msgspec.inspect.LiteralType):
        return "one of " + ", ".join(map(str, info.values))
    if isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        kind = "an integer" if isinstance(info, msgspec.inspect.IntType) else "a number"
        if info.ge is not None and info.le is not None:
            return f"{kind} from {info.ge} to {info.le}"
        bounds = [f"{op} {v}" for op, v in ((">=", info.ge), (">", info.gt), ("<=", info.le)) if v is not None]
        return " ".join([kind, " and ".join(bounds)]).strip()
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false (or 1 or 0)"
    if isinstance(info, msgspec.inspect.StrType) and info.pattern:
        return f"1-{info.max_length} characters without '.', '*', '>' or spaces (one NATS subject token)"
    return "a valid value"


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _raw(e: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets, by path, as msgspec will convert them."""
    flat: dict[str, Any] = {}
    for var, path in ENV_VARS.items():
        if var not in e:
            continue
        value, kind = e[var].strip(), LEAVES[path]
        if kind == tuple[str, ...]:
            flat[path] = tuple(p.strip() for p in value.split(",") if p.strip())
        elif kind is str:
            flat[path] = e[var] if path.endswith(("password", "token")) else value
        elif value:  # an empty number or choice means "the default"
            flat[path] = value.lower()
    return flat


def _check_name(var: str, name: str) -> str:
    """A DNS name in presentation form, lower case without the final dot; raise if it cannot be one."""
    text = name.strip().rstrip(".").lower()
    labels = text.split(".")
    if not text or len(text) > 253 or any(not 0 < len(label.encode()) <= 63 for label in labels):
        raise SettingsError(f"{var}={name!r}: bad label: a DNS name is labels of 1-63 octets, 253 in all")
    return text


def _check(s: Settings) -> Settings:
    """Checks a type cannot say; fill derived values."""
    s.api.credentials()  # GTM_API_TOKENS: name:secret pairs, names unique, secrets non-empty
    listens = {"GTM_API_LISTEN": s.api.listen, "GTM_DNS_LISTEN": s.edge.listen, "GTM_METRICS_LISTEN": s.metrics_listen}
    for var, listen in listens.items():
        if listen or var != "GTM_METRICS_LISTEN":  # "" turns the metrics listener off
            try:
                split_host_port(listen, default_port=0)
            except SettingsError as exc:
                raise SettingsError(f"{var}: {exc}") from None
    exempt = []
    for cidr in s.edge.rrl.exempt:
        try:
            exempt.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError as exc:
            raise SettingsError(f"GTM_EDGE_RRL_EXEMPT: {exc}") from None
    for var, path in (("GTM_GEOIP_DB", s.geoip.db), ("GTM_GEOIP_ASN_DB", s.geoip.asn_db)):
        if path and not os.path.isfile(path):
            raise SettingsError(
                f"{var}={path!r}: no such file (a MaxMind .mmdb database; leave it unset for the built-in data)"
            )
    zone = _check_name("GTM_EDGE_ZONE", s.edge.zone) if s.edge.zone.strip().rstrip(".") else ""
    ns = tuple(_check_name("GTM_EDGE_NS", n) for n in s.edge.ns)
    me = f"{socket.gethostname()}-{os.getpid()}"
    return msgspec.structs.replace(
        s,
        edge=msgspec.structs.replace(
            s.edge, zone=zone, ns=ns, rrl=msgspec.structs.replace(s.edge.rrl, exempt=tuple(exempt))
        ),
        prober=msgspec.structs.replace(s.prober, id=s.prober.id or me),
        scheduler=msgspec.structs.replace(s.scheduler, id=s.scheduler.id or me),
    )


def load(service: str, env: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``service`` from ``env`` (default: ``os.environ``); raise :class:`SettingsError`."""
    e = os.environ if env is None else env
    flat = _raw(e)
    try:
        settings = msgspec.convert(_nest(flat), Settings, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rpartition("at `$.")[2].rstrip("`").split("[")[0]
        var = env_name(path) if path in LEAVES else None
        if var is None:
            raise SettingsError(text) from None
        raise SettingsError(f"{var}={e.get(var, '')!r} is not allowed: it must be {_allowed(path)}") from None
    settings = _check(settings)
    return msgspec.structs.replace(settings, nats=msgspec.structs.replace(settings.nats, name=f"gtm-{service}"))
