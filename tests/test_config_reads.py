"""Reads that hold: lists come from one view of the bucket, not from a consumer per request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.config.mirror import ConfigView
from tests.bench.api import list_load
from tests.support import Api, Service, free_port, wait_until


@pytest.fixture
def api(nats_url: str, log_dir: Path) -> Iterator[Api]:
    port = free_port()
    config = Service("config", {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}"}, log_dir).start()
    client = Api(f"http://127.0.0.1:{port}/api/v1")
    try:
        wait_until(lambda: client.get("/pools")[0] == 200, timeout=30)
        yield client
    finally:
        config.stop()


def _pool(i: int) -> dict:
    return {"type": "ipv4", "addresses": [{"name": "a", "address": f"192.0.2.{i % 250 + 1}"}]}


def test_sixteen_readers_at_full_speed_for_ten_seconds_get_no_5xx(api: Api) -> None:
    for i in range(20):
        assert api.put(f"/pools/P{i}", _pool(i))[0] == 201
    result = list_load(api.base, readers=16, seconds=10)
    print(f"\n16 readers x 10 s: {result['per_s']:,.0f} list GETs/s, p99 {result['p99_ms']:.1f} ms, "
          f"{result['errors']:.0f} errors")
    assert result["errors"] == 0 and result["ok"] > 0
    assert api.get("/pools")[0] == 200  # and the next one too


def test_a_list_right_after_a_write_includes_it_while_others_read(api: Api) -> None:
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            api.get("/pools")

    readers = [threading.Thread(target=read, daemon=True) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for i in range(40):
            assert api.put(f"/pools/W{i}", _pool(i))[0] == 201
            status, body = api.get("/pools")
            assert status == 200 and f"W{i}" in {p["name"] for p in body["pools"]}
        assert api.delete("/pools/W0")[0] == 204
        assert "W0" not in {p["name"] for p in api.get("/pools")[1]["pools"]}
    finally:
        stop.set()
        for t in readers:
            t.join(10)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([("pools.a", b"1", None, 1)], {"pools.a": (b"1", 1)}),
        ([("pools.a", b"1", None, 1), ("pools.a", b"2", None, 2)], {"pools.a": (b"2", 2)}),
        ([("pools.a", b"1", None, 1), ("pools.a", b"", {"KV-Operation": "DEL"}, 2)], {}),
        ([("pools.a", b"1", None, 1), ("pools.a", b"", {"KV-Operation": "PURGE"}, 2)], {}),
        ([("pools.a", b"1", None, 3), ("domains.x", b"2", None, 4)], {"pools.a": (b"1", 3), "domains.x": (b"2", 4)}),
    ],
)
def test_the_view_applies_values_and_delete_markers(messages: list, expected: dict) -> None:
    view = ConfigView(js=None)  # type: ignore[arg-type]  # apply() needs no NATS
    for key, value, headers, seq in messages:
        view.apply(key, value, headers, seq)
    assert view.entries == expected
    assert view.seq == max(m[3] for m in messages)
    assert [k for k, _, _ in view.scan("pools.")] == [k for k in expected if k.startswith("pools.")]


def test_the_view_waits_for_what_the_stream_holds() -> None:
    import asyncio

    class Stream:
        async def stream_info(self, name: str):  # type: ignore[no-untyped-def]
            return type("Info", (), {"state": type("State", (), {"last_seq": 2})()})()

    async def run() -> float:
        view = ConfigView(js=Stream())  # type: ignore[arg-type]
        view.apply("pools.a", b"1", None, 1)
        started = time.monotonic()
        waiting = asyncio.ensure_future(view.caught_up())
        await asyncio.sleep(0.05)
        assert not waiting.done()  # seq 1 of 2: not yet
        view.apply("pools.b", b"2", None, 2)
        await asyncio.wait_for(waiting, 1)
        return time.monotonic() - started

    assert asyncio.run(run()) < 1
