"""Settings: frozen Structs built once, in each service's ``__main__``, from the environment."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from msgspec import Struct

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use."""


class NatsSettings(Struct, kw_only=True, frozen=True):
    """How to reach NATS."""

    url: str = DEFAULT_NATS_URL
    user: str = ""
    password: str = ""
    creds: str = ""  # path of a .creds file
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    name: str = "gtm"
    replicas: int = 0  # of every stream and bucket; 0 = 3 on a cluster of 3 or more servers, else 1


class Settings(Struct, kw_only=True, frozen=True):
    """Everything a GTM service reads from its environment."""

    nats: NatsSettings
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    api_listen: str = "127.0.0.1:8080"
    api_token: str = ""
    dns_listen: str = "127.0.0.1:5300"
    edge_workers: int = 1
    prober_region: str = "local"
    prober_id: str = ""
    prober_concurrency: int = 256
    scheduler_tick_s: float = 0.2
    scheduler_id: str = ""
    scheduler_lease_s: float = 2.0  # a standby takes over at most this long after the leader dies
    edge_zone: str = ""  # when set, the edge is authoritative for it: SOA/NS at the apex, SOA in negatives
    edge_ns: str = ""  # comma-separated NS names of edge_zone (default ns1.<zone>)
    metrics_listen: str = ""  # host:port of /metrics, /healthz, /readyz ("" = off; config uses its API port)
    edge_rrl_responses_per_s: int = 200  # UDP replies per client subnet per second (0 = no rate limiting)
    edge_rrl_window_s: int = 5  # a subnet over the limit stays limited until its average over this is under it
    edge_rrl_slip: int = 2  # every Nth limited reply goes out truncated (TC) instead of dropped (0 = drop all)
    edge_rrl_ipv4_prefix: int = 24  # client subnet sizes the limit applies to
    edge_rrl_ipv6_prefix: int = 56
    edge_rrl_exempt: str = "127.0.0.0/8,::1/128"  # comma-separated CIDRs never limited ("" = none)
    # where an edge keeps its last answer table, to answer from it when started while NATS is away
    edge_state_dir: str = ".data/edge"  # "" = keep nothing on disk


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
        return host or "0.0.0.0", int(port) if port else default_port
    except ValueError:
        raise SettingsError(f"bad listen address {value!r}") from None


def from_env(service: str, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings of ``service`` from ``env`` (default: ``os.environ``)."""
    e = os.environ if env is None else env
    region = e.get("GTM_PROBER_REGION", "local")
    if not region or any(c in region for c in ".*> "):
        raise SettingsError(f"GTM_PROBER_REGION {region!r} must be one subject token")
    try:
        workers = int(e.get("GTM_EDGE_WORKERS", "1"))
        concurrency = int(e.get("GTM_PROBER_CONCURRENCY", "256"))
        lease_s = float(e.get("GTM_SCHEDULER_LEASE_S", "2"))
        rrl_rate = int(e.get("GTM_EDGE_RRL_RESPONSES_PER_S", "200"))
        rrl_window_s = int(e.get("GTM_EDGE_RRL_WINDOW_S", "5"))
        rrl_slip = int(e.get("GTM_EDGE_RRL_SLIP", "2"))
        rrl_v4, rrl_v6 = int(e.get("GTM_EDGE_RRL_IPV4_PREFIX", "24")), int(e.get("GTM_EDGE_RRL_IPV6_PREFIX", "56"))
        replicas = int(e.get("GTM_NATS_REPLICAS", "0") or "0")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if not 0 <= replicas <= 5:
        raise SettingsError(f"GTM_NATS_REPLICAS must be 1-5 (or unset for automatic), not {replicas}")
    if not (0 <= rrl_v4 <= 32 and 0 <= rrl_v6 <= 128):
        raise SettingsError("GTM_EDGE_RRL_IPV4_PREFIX must be 0-32 and GTM_EDGE_RRL_IPV6_PREFIX 0-128")
    return Settings(
        nats=NatsSettings(
            url=e.get("NATS_URL", DEFAULT_NATS_URL),
            user=e.get("GTM_NATS_USER", ""),
            password=e.get("GTM_NATS_PASSWORD", ""),
            creds=e.get("GTM_NATS_CREDS", ""),
            tls_ca=e.get("GTM_NATS_TLS_CA", ""),
            tls_cert=e.get("GTM_NATS_TLS_CERT", ""),
            tls_key=e.get("GTM_NATS_TLS_KEY", ""),
            name=f"gtm-{service}",
            replicas=replicas,
        ),
        log_level=e.get("GTM_LOG_LEVEL", "info").lower(),
        log_format=e.get("GTM_LOG_FORMAT", "auto").lower(),
        api_listen=e.get("GTM_API_LISTEN", "127.0.0.1:8080"),
        api_token=e.get("GTM_API_TOKEN", ""),
        dns_listen=e.get("GTM_DNS_LISTEN", "127.0.0.1:5300"),
        edge_workers=max(1, workers),
        prober_region=region,
        prober_id=e.get("GTM_PROBER_ID", "") or f"{socket.gethostname()}-{os.getpid()}",
        prober_concurrency=max(1, concurrency),
        scheduler_id=e.get("GTM_SCHEDULER_ID", "") or f"{socket.gethostname()}-{os.getpid()}",
        scheduler_lease_s=max(0.5, lease_s),
        edge_zone=e.get("GTM_EDGE_ZONE", "").strip().rstrip(".").lower(),
        edge_ns=e.get("GTM_EDGE_NS", ""),
        metrics_listen=e.get("GTM_METRICS_LISTEN", ""),
        edge_rrl_responses_per_s=max(0, rrl_rate),
        edge_rrl_window_s=max(1, rrl_window_s),
        edge_rrl_slip=max(0, rrl_slip),
        edge_rrl_ipv4_prefix=rrl_v4,
        edge_rrl_ipv6_prefix=rrl_v6,
        edge_rrl_exempt=e.get("GTM_EDGE_RRL_EXEMPT", "127.0.0.0/8,::1/128"),
        edge_state_dir=e.get("GTM_EDGE_STATE_DIR", ".data/edge"),
    )
