"""Scheduler probe results/s: the pure engine, and a real scheduler process fed over NATS.

1,000 checked addresses in 200 pools of 5, 100 domains of two pools each; the
results are mostly successes with a few failures and recoveries sprinkled in,
so that some of them change states, pool views and answers.  Prints figures;
asserts nothing.  ``python -m tests.bench.scheduler`` runs it alone.
"""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.scheduler.engine import Engine
from shared import bus, subjects
from shared.messages import ProbeResult, encoder, pool_state_decoder
from shared.resources import Address, Domain, HealthCheck, Pool, PoolRef
from tests.bench.common import Lab
from tests.support import Service

RESULTS = 200_000
DOMAINS = 100
ADDRESSES_PER_POOL = 5
FAIL_SHARE = 0.01  # share of failing results: enough to move states, pools and answers now and then
CHECK = HealthCheck(interval_s=1, timeout_s=0.5, failures=2, successes=2)
MARKER_POOL = "marker"


def line(label: str, value: str) -> None:
    print(f"  {label:<44} {value}", flush=True)


def world() -> tuple[dict[str, Pool], dict[str, Domain]]:
    """200 pools of 5 addresses and 100 domains (primary + backup pool each)."""
    pools: dict[str, Pool] = {}
    domains: dict[str, Domain] = {}
    for d in range(DOMAINS):
        refs = []
        for side in (1, 2):
            name = f"p{d}-{side}"
            addrs = [
                Address(name=f"a{i}", address=f"10.{side}.{d}.{i + 1}", health_check=CHECK)
                for i in range(ADDRESSES_PER_POOL)
            ]
            pools[name] = Pool(type="ipv4", name=name, addresses=addrs, lb_strategy="round_robin")
            refs.append(PoolRef(pool=name, sequence=side))
        domains[f"d{d}.bench.example.com"] = Domain(record_type="A", enabled=True, pools=refs)
    return pools, domains


def results(pools: dict[str, Pool], n: int, *, regions: int = 3, seed: int = 7) -> list[ProbeResult]:
    """``n`` results cycling over every address and region, about FAIL_SHARE of them failures."""
    rng = random.Random(seed)
    keys = [(p, a.name) for p, pool in pools.items() for a in pool.addresses]
    now = time.time()
    out = []
    for i in range(n):
        pool, name = keys[i % len(keys)]
        ok = rng.random() >= FAIL_SHARE
        out.append(
            ProbeResult(
                region=f"r{(i // len(keys)) % regions}",
                prober="bench",
                key=subjects.address_key(pool, name),
                pool=pool,
                address=name,
                target="10.0.0.1",
                protocol="http",
                ok=ok,
                error="" if ok else "connection refused",
                rtt_ms=1.0 if ok else None,
                at=now,
            )
        )
    return out


def bench_engine() -> float:
    """Results/s of the pure engine (no NATS, no encoding)."""
    pools, domains = world()
    engine = Engine(now=0.0)
    for name, pool in pools.items():
        engine.set_pool(name, pool, now=0.0, at=0.0)
    for name, dom in domains.items():
        engine.set_domain(name, dom, 1, at=0.0)
    engine.start(now=0.0, at=0.0)
    feed = results(pools, RESULTS)
    published = 0
    start = time.perf_counter()
    for i, r in enumerate(feed):
        now = i * 1e-5
        out = engine.observe(r, now=now, at=now)
        published += len(out.answers) + len(out.pool_states)
    elapsed = time.perf_counter() - start
    rate = RESULTS / elapsed
    line("engine (pure), 200k results", f"{rate:>9,.0f} results/s  ({published:,} publications)")
    return rate


async def _feed_process(url: str, pools: dict[str, Pool], domains: dict[str, Domain]) -> tuple[float, int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    kv = await bus.config_bucket(js)
    for name, pool in pools.items():
        await kv.put(subjects.pool_key(name), msgspec.json.encode(pool))
    for name, dom in domains.items():
        await kv.put(subjects.domain_key(name), msgspec.json.encode(dom))
    done = asyncio.get_running_loop().create_future()

    async def on_state(msg: Msg) -> None:
        state = pool_state_decoder.decode(msg.data)
        if state.pool == MARKER_POOL and not state.available and not done.done():
            done.set_result(time.perf_counter())

    await nc.subscribe(subjects.pool_state(MARKER_POOL), cb=on_state)
    return await _publish_all(nc, pools, done)


async def _publish_all(
    nc: Client, pools: dict[str, Pool], done: asyncio.Future[float]
) -> tuple[float, int]:
    bench_pools = {n: p for n, p in pools.items() if n != MARKER_POOL}
    feed = [
        (subjects.probe_result(r.region, r.key), encoder.encode(r)) for r in results(bench_pools, RESULTS)
    ]
    up = results({MARKER_POOL: pools[MARKER_POOL]}, 1)[0]
    down = msgspec.structs.replace(up, ok=False, error="marker")
    # warm up: every address gets a first result, so the measured run is steady state
    for subject, data in [
        *feed[: len(feed) // 20],
        (subjects.probe_result(up.region, up.key), encoder.encode(up)),
    ]:
        await nc.publish(subject, data)
    await nc.flush()
    await asyncio.sleep(2.0)
    start = time.perf_counter()
    for i, (subject, data) in enumerate(feed):
        await nc.publish(subject, data)
        if i % 5000 == 0:
            await nc.flush()
    for _ in range(CHECK.failures):  # the marker's pool goes down once everything before it is processed
        await nc.publish(subjects.probe_result(down.region, down.key), encoder.encode(down))
    await nc.flush()
    sent = time.perf_counter() - start
    end = await asyncio.wait_for(done, 300)
    await nc.close()
    return end - start, int(RESULTS / sent)


def bench_process() -> float:
    """Results/s of a real scheduler process fed over core NATS."""
    pools, domains = world()
    pools[MARKER_POOL] = Pool(
        type="ipv4", name=MARKER_POOL, addresses=[Address(name="m", address="10.9.9.9", health_check=CHECK)]
    )
    with Lab() as lab:
        svc = Service("scheduler", {"NATS_URL": lab.nats.url}, lab.dir).start()
        svc.wait_for_event("service_ready", timeout=60)
        try:
            elapsed, send_rate = asyncio.run(_feed_process(lab.nats.url, pools, domains))
        finally:
            svc.stop()
    rate = RESULTS / elapsed
    line("scheduler process over NATS, 200k results", f"{rate:>9,.0f} results/s  (sent at {send_rate:,}/s)")
    return rate


def bench_scheduler() -> None:
    """Print the scheduler's probe results/s (goal: >= 20,000)."""
    print("\n== Scheduler probe results/s (1,000 addresses, 100 domains, 3 regions; goal >= 20,000)")
    bench_engine()
    bench_process()


if __name__ == "__main__":
    bench_scheduler()
