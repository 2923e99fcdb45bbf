"""Is the stack answering: NATS's port, the API's /readyz, every edge over DNS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import structlog

from services.stack.plan import Plan

log = structlog.get_logger(__name__)


async def tcp_open(host: str, port: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``host:port`` to accept a connection."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return True
        await asyncio.sleep(0.05)
    return False


async def http_ready(host: str, port: int) -> bool:
    """Whether the API at ``host:port`` answers ``/readyz`` with 200."""
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /readyz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        writer.close()
        return b" 200 " in status
    return False


def dns_ready(host: str, port: int) -> bool:
    """Whether the edge at ``host:port`` answers a DNS query at all."""
    # Any reply at all (REFUSED included) means the edge loaded its snapshot and listens.
    query = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x03gtm\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, (host, port))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


async def wait_ready(plan: Plan, started: float, timeout_s: float = 60.0) -> bool:
    """Wait until the API and every edge answer; log ``stack_ready`` then."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        api_ok = await http_ready(*plan.api)
        edges_ok = all(dns_ready(h, p) for h, p in plan.edges)
        if api_ok and edges_ok:
            log.info(
                "stack_ready",
                seconds=round(time.monotonic() - started, 2),
                api=f"http://{plan.api[0]}:{plan.api[1]}/api/v1",
                dns=[f"{h}:{p}" for h, p in plan.edges],
                nats=plan.nats_url,
                metrics=[f"http://{plan.api[0]}:{plan.api[1]}/metrics"]
                + [f"http://{h}:{p}/metrics" for _, h, p in plan.metrics],
            )
            return True
        await asyncio.sleep(0.1)
    return False
