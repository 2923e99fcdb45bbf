"""Start the planned processes, wait until the stack answers, stop it all on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from urllib.parse import urlparse

import structlog

from services.stack.plan import Plan, Proc

log = structlog.get_logger(__name__)

STOP_GRACE_S = 10.0
SELF_EXIT_S = 0.5


async def _spawn(proc: Proc, *, own_session: bool = False) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        *proc.argv, env=proc.env or None, start_new_session=own_session
    )
    log.info("process_started", process=proc.name, pid=child.pid)
    return child


async def _tcp_open(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return True
        await asyncio.sleep(0.05)
    return False


async def _http_ready(host: str, port: int) -> bool:
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /readyz HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        writer.close()
        return b" 200 " in status
    return False


def _dns_ready(host: str, port: int) -> bool:
    # Any reply at all (REFUSED included) means the edge loaded its snapshot and listens.
    query = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x03gtm\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, (host, port))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


async def _wait_ready(plan: Plan, started: float, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        api_ok = await _http_ready(*plan.api)
        edges_ok = all(_dns_ready(h, p) for h, p in plan.edges)
        if api_ok and edges_ok:
            log.info(
                "stack_ready",
                seconds=round(time.monotonic() - started, 2),
                api=f"http://{plan.api[0]}:{plan.api[1]}/api/v1",
                dns=[f"{h}:{p}" for h, p in plan.edges],
                nats=plan.nats_url,
            )
            return True
        await asyncio.sleep(0.1)
    return False


async def _stop_group(group: list[tuple[str, asyncio.subprocess.Process]]) -> None:
    """Stop processes together: let those already signalled exit, SIGTERM the rest, then SIGKILL."""
    alive = [(n, c) for n, c in group if c.returncode is None]
    if alive:
        # A Ctrl-C reaches the whole process group: most children are already stopping.
        await asyncio.wait([asyncio.ensure_future(c.wait()) for _, c in alive], timeout=SELF_EXIT_S)
    for _, child in alive:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    for name, child in group:
        try:
            await asyncio.wait_for(child.wait(), STOP_GRACE_S)
        except TimeoutError:
            log.warning("process_killed", process=name)
            child.kill()
            await child.wait()
        log.info("process_stopped", process=name, code=child.returncode)


async def _terminate(children: list[tuple[str, asyncio.subprocess.Process]]) -> None:
    """Stop the services first, NATS last, so the services can drain."""
    await _stop_group([(n, c) for n, c in children if n != "nats"])
    await _stop_group([(n, c) for n, c in children if n == "nats"])


async def supervise(plan: Plan, stop: asyncio.Event) -> int:
    """Run the stack until ``stop`` is set or a child dies; return an exit code."""
    started = time.monotonic()
    children: list[tuple[str, asyncio.subprocess.Process]] = []
    code = 0
    try:
        if plan.nats is not None:
            # NATS stays out of the terminal's process group: a Ctrl-C or a signal to
            # the group must not kill it before the services have drained.
            children.append(("nats", await _spawn(plan.nats, own_session=True)))
            url = urlparse(plan.nats_url)
            if not await _tcp_open(url.hostname or "127.0.0.1", url.port or 4222, 15):
                log.error("nats_not_listening", url=plan.nats_url, hint="is port 4222 already in use?")
                return 1
        for proc in plan.services:
            children.append((proc.name, await _spawn(proc)))
        waiters = {asyncio.ensure_future(c.wait()): name for name, c in children}
        ready = asyncio.ensure_future(_wait_ready(plan, started))
        stopped = asyncio.ensure_future(stop.wait())
        pending = {*waiters, ready, stopped}
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                break
            if ready in done and not ready.result():
                log.error("stack_not_ready", hint="see the services' log lines above")
                code = 1
                break
            died = [waiters[d] for d in done if d in waiters]
            if died:
                # On Ctrl-C the whole process group gets SIGINT: a child may exit first.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                if not stop.is_set():
                    log.error("process_exited", process=died[0])
                    code = 1
                break
        for task in pending:
            task.cancel()
    finally:
        await _terminate(children)
    return code
