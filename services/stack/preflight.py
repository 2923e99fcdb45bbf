"""Before starting anything: the data directory is ours alone and every port is free."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from msgspec import Struct

from services.stack.plan import Plan

LOCK_FILE = "stack.lock"


class Endpoint(Struct, kw_only=True, frozen=True):
    """One address a child of the stack will listen on."""

    owner: str
    transport: str  # "tcp" or "udp"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.owner} {self.transport} {self.host}:{self.port}"


def lock_data_dir(data_dir: Path) -> int | None:
    """Take the stack's exclusive lock in ``data_dir``: its descriptor, or None if another holds it.

    The lock goes with the process (a ``kill -9`` releases it) and the descriptor is not
    inherited, so a child that outlives the stack cannot keep it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def endpoints(plan: Plan) -> list[Endpoint]:
    """Every address the planned children will listen on."""
    out = []
    if plan.nats is not None:
        url = urlparse(plan.nats_url)
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        out.append(Endpoint(owner="nats", transport="tcp", host=host, port=port))
    out.append(Endpoint(owner="config", transport="tcp", host=plan.api[0], port=plan.api[1]))
    for i, (host, port) in enumerate(plan.edges, start=1):
        for transport in ("udp", "tcp"):
            out.append(Endpoint(owner=f"edge{i}", transport=transport, host=host, port=port))
    for owner, host, port in plan.metrics:
        out.append(Endpoint(owner=f"{owner} metrics", transport="tcp", host=host, port=port))
    return out


def bind_error(endpoint: Endpoint) -> str | None:
    """Why ``endpoint`` cannot be bound now (``Address already in use``), or None if it can."""
    kind = socket.SOCK_STREAM if endpoint.transport == "tcp" else socket.SOCK_DGRAM
    try:
        family, _, _, _, addr = socket.getaddrinfo(endpoint.host, endpoint.port, type=kind)[0]
        with socket.socket(family, kind) as s:
            if kind == socket.SOCK_STREAM:
                # As the services bind: a connection in TIME_WAIT is no reason to refuse.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
            if kind == socket.SOCK_STREAM:
                s.listen()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def taken(plan: Plan) -> list[str]:
    """The planned addresses that cannot be bound, each with the reason."""
    return [f"{e} ({err})" for e in endpoints(plan) if (err := bind_error(e)) is not None]


def release(fd: int | None) -> None:
    """Give the data directory lock back."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
