"""Probe throughput of ONE prober process: HTTP and TCP checks/s against a loopback target.

The bench configures N addresses at ``interval_s: 1`` that all point at one fast
loopback target (an aiohttp server and a TCP listener, in a process of their
own), starts one prober, and counts the ProbeResults it publishes on NATS.
The schedule lag (how late checks start against their schedule) is what the
prober itself logs as ``schedule_lag`` every 10 s; the bench reads its second
report, so start-up is left out, and counts the results of that same window.

Prints figures; asserts nothing.  ``python -m tests.bench.prober [http|tcp ...]``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats

from shared import bus, messages, subjects
from shared.resources import Address, HealthCheck, Pool, validate_pool
from tests.bench.common import Lab
from tests.support import Service, free_port, wait_until

PER_POOL = 100
# Addresses at interval 1 s, i.e. the checks/s asked for: above the goals, so the figures show
# the goal rate sustained with its lag; "per CPU-second" extrapolates what one core could do.
OFFERED = {"http": 1_500, "tcp": 4_000}
GOALS = {"http": 1_000, "tcp": 3_000}
LAG_GOAL_MS = 250.0


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}", flush=True)


# --- the loopback target, in its own process -----------------------------------------------


def _serve(http_port: int, tcp_port: int) -> None:
    """Run the target: an aiohttp server answering 200 and a TCP listener."""
    from aiohttp import web

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/", ok)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port, backlog=4096).start()
        loop = asyncio.get_running_loop()
        await loop.create_server(asyncio.Protocol, "127.0.0.1", tcp_port, backlog=4096)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())


def _open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


# --- config and counting -------------------------------------------------------------------


def _pools(protocol: str, count: int, port: int) -> list[Pool]:
    check = HealthCheck(protocol=protocol, port=port, interval_s=1, timeout_s=0.9)  # type: ignore[arg-type]
    pools = []
    for p in range(0, count, PER_POOL):
        addresses = [
            Address(name=f"a{i}", address="127.0.0.1", health_check=check)
            for i in range(p, min(count, p + PER_POOL))
        ]
        pools.append(validate_pool(Pool(type="ipv4", addresses=addresses), f"{protocol}-{p // PER_POOL}"))
    return pools


async def _configure(url: str, pools: list[Pool]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.config_bucket(js)
    for pool in pools:
        assert pool.name is not None
        await kv.put(subjects.pool_key(pool.name), msgspec.json.encode(pool))
    await nc.close()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _lag_reports(svc: Service) -> list[dict[str, Any]]:
    return [e for e in svc.events() if e.get("event") == "schedule_lag"]


async def _count(url: str, svc: Service, pid: int) -> dict[str, float]:
    """Count results and failures over the window of the prober's second lag report."""
    nc = await nats.connect(url)
    seen = {"all": 0, "failed": 0}
    rtts: list[float] = []

    async def on_msg(msg: Any) -> None:
        result = messages.probe_result_decoder.decode(msg.data)
        seen["all"] += 1
        if not result.ok:
            seen["failed"] += 1
        if len(marks) == 1 and result.rtt_ms is not None:
            rtts.append(result.rtt_ms)

    marks: list[tuple[float, int, int, float]] = []
    await nc.subscribe(subjects.PROBE_RESULT_ALL, cb=on_msg)
    deadline = time.monotonic() + 40
    while len(marks) < 2 and time.monotonic() < deadline:
        reports = len(_lag_reports(svc))
        if reports > len(marks):
            marks.append((time.monotonic(), seen["all"], seen["failed"], _cpu_s(pid)))
        await asyncio.sleep(0.05)
    await nc.close()
    if len(marks) < 2:
        raise RuntimeError("the prober did not report schedule_lag twice in 40 s")
    (t1, n1, f1, c1), (t2, n2, f2, c2) = marks
    report = _lag_reports(svc)[1]
    return {
        "results_per_s": (n2 - n1) / (t2 - t1),
        "failed": f2 - f1,
        "cpu_pct": 100 * (c2 - c1) / (t2 - t1),
        "prober_checks_per_s": float(report["checks_per_s"]),
        "p50_ms": float(report["p50_ms"]),
        "p99_ms": float(report["p99_ms"]),
        "max_ms": float(report["max_ms"]),
        "rtt_p99_ms": sorted(rtts)[int(0.99 * len(rtts))] if rtts else float("nan"),
    }


def _phase(protocol: str, count: int, port: int) -> dict[str, float]:
    with Lab() as lab:
        asyncio.run(_configure(lab.nats.url, _pools(protocol, count, port)))
        env = {"NATS_URL": lab.nats.url, "GTM_PROBER_REGION": "bench", "GTM_LOG_LEVEL": "info"}
        svc = Service("prober", env, lab.dir).start()
        try:
            svc.wait_for_event("service_ready", timeout=30)
            assert svc.proc is not None
            return asyncio.run(_count(lab.nats.url, svc, svc.proc.pid))
        finally:
            svc.stop()


def bench_prober(protocols: list[str] | None = None) -> None:
    """Print HTTP and TCP checks/s of one prober process and its schedule lag p99."""
    which = protocols or ["http", "tcp"]
    print("\n== one prober process: checks/s against a loopback target, interval 1 s")
    http_port, tcp_port = free_port(), free_port()
    target = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(http_port, tcp_port), daemon=True
    )
    target.start()
    try:
        wait_until(lambda: _open(http_port) and _open(tcp_port), timeout=15)
        for protocol in which:
            r = _phase(protocol, OFFERED[protocol], http_port if protocol == "http" else tcp_port)
            verdict = "ok" if r["results_per_s"] >= GOALS[protocol] and r["p99_ms"] <= LAG_GOAL_MS else "BELOW GOAL"
            line(
                f"{protocol.upper()} checks/s ({OFFERED[protocol]:,} addresses offered)",
                f"{r['results_per_s']:>7,.0f}/s  (goal >= {GOALS[protocol]:,})  "
                f"failed {r['failed']:.0f}  rtt p99 {r['rtt_p99_ms']:.1f} ms  prober CPU {r['cpu_pct']:.0f}%",
            )
            per_core = r["results_per_s"] / max(r["cpu_pct"] / 100, 1e-6)
            line(f"{protocol.upper()} checks per prober CPU-second", f"{per_core:>7,.0f}")
            line(
                f"{protocol.upper()} schedule lag p50 / p99 / max",
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms  "
                f"(goal p99 <= {LAG_GOAL_MS:.0f})  {verdict}",
            )
    finally:
        target.terminate()
        target.join(5)


if __name__ == "__main__":
    bench_prober(sys.argv[1:] or None)
