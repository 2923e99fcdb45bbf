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
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
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
    )
