"""List GETs under concurrent readers: throughput, p50/p99 and errors of ``GET /api/v1/pools``."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import Api, NatsServer, Service, free_port, wait_until

READERS = 16
SECONDS = 10
POOLS = 50


def _reader(url: str, until: float, samples: list[float], errors: list[int]) -> None:
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
            samples.append(time.perf_counter() - start)
        except urllib.error.HTTPError as err:
            errors.append(err.code)
        except OSError:
            errors.append(0)


def list_load(base: str, *, readers: int = READERS, seconds: float = SECONDS) -> dict[str, float]:
    """``readers`` threads listing pools as fast as they can for ``seconds``; figures of the run."""
    samples: list[float] = []
    errors: list[int] = []
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_reader, args=(f"{base}/pools", until, samples, errors), daemon=True)
        for _ in range(readers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000 if samples else float("nan")  # noqa: E731
    return {
        "ok": len(samples),
        "errors": len(errors),
        "5xx": sum(1 for c in errors if c >= 500),
        "per_s": len(samples) / seconds,
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
    }


def bench_api(root: str | None = None) -> None:
    """Print list-GET figures of a config service (``root``: another checkout to compare with)."""
    print(f"\n== GET /api/v1/pools: {READERS} readers at full speed for {SECONDS} s, {POOLS} pools stored")
    tmp = Path(tempfile.mkdtemp(prefix="gtm-bench-api-"))
    server = NatsServer(tmp / "nats")
    server.start()
    port = free_port()
    env = {"NATS_URL": server.url, "GTM_API_LISTEN": f"127.0.0.1:{port}", "GTM_LOG_LEVEL": "warning"}
    if root:
        env["PYTHONPATH"] = root
    config = Service("config", env, tmp)
    try:
        if root:
            config.env["PYTHONPATH"] = root
        config.start()
        api = Api(f"http://127.0.0.1:{port}/api/v1")
        wait_until(lambda: api.get("/pools")[0] == 200, timeout=30)
        for i in range(POOLS):
            api.put(f"/pools/P{i}", {"type": "ipv4", "addresses": [{"name": "a", "address": f"192.0.2.{i + 1}"}]})
        r = list_load(api.base)
        print(
            f"  {'list GETs':<44} {r['per_s']:,.0f}/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
            f"errors {r['errors']:.0f} (5xx {r['5xx']:.0f}) of {r['ok'] + r['errors']:,.0f}",
            flush=True,
        )
    finally:
        config.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    bench_api(os.environ.get("GTM_BENCH_ROOT") or None)
