"""Partition (issue 9, d): one node of a 3-node NATS cluster cut off from the other two.

Every stream and bucket has 3 replicas.  The node cut off leads none of the streams the config
API writes (a leader cut off is the kill -9 case of ``test_cluster_faults``: writes wait for
an election).  Clients can still reach every node:

- the config API connected to a node of the majority keeps taking writes;
- the config API connected to the isolated node refuses them (503: no quorum answers), and a
  raw KV put there times out: nothing is acknowledged that could be lost, and none of it
  lands after the heal either;
- after the heal nothing written during the cut is lost, and the isolated node catches up.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from shared import bus, subjects
from tests.netns import (
    Bus,
    Host,
    NatsNode,
    Net,
    NsApi,
    net,  # noqa: F401 - the fixture
    start_cluster,
    start_service,
)
from tests.support import wait_until

pytestmark = pytest.mark.e2e

CUT_S = 10.0
WRITTEN_BY_API = (subjects.kv_stream(subjects.CONFIG_BUCKET), subjects.STREAM_EVENTS)


def _pool(i: int) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [{"name": "a", "address": f"192.0.2.{i % 250 + 1}"}]}


def _jsz(node: NatsNode) -> dict[str, Any]:
    url = f"http://{node.host.ip}:8222/jsz?streams=true&accounts=true"
    with urllib.request.urlopen(url, timeout=2) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def _local(client: Host, node: NatsNode, stream: str) -> dict[str, Any]:
    """``node``'s own replica of ``stream``: its state and its view of the leader."""
    for account in client.call(_jsz, node).get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                return {"last_seq": detail["state"]["last_seq"], "leader": detail["cluster"].get("leader")}
    return {"last_seq": 0, "leader": None}


def _names(api: NsApi) -> set[str]:
    """The pools a config API lists (once it answers)."""

    def listed() -> Any:
        status, body = api.get("/pools")
        return body if status == 200 else None

    return {p["name"] for p in wait_until(listed, timeout=20)["pools"]}


class Writes(threading.Thread):
    """PUT a new pool every ``every_s`` through one config API; remember how each went."""

    def __init__(self, api: NsApi, prefix: str, every_s: float) -> None:
        super().__init__(daemon=True)
        self.api, self.prefix, self.every_s = api, prefix, every_s
        self.done: list[tuple[float, float, str, int]] = []  # (started, seconds, name, status)
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            name, started = f"{self.prefix}-{i}", time.monotonic()
            try:
                status = self.api.put(f"/pools/{name}", _pool(i))[0]
            except Exception:  # noqa: BLE001 - no reply at all
                status = 0
            self.done.append((started, time.monotonic() - started, name, status))
            i += 1
            self.stopping.wait(self.every_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(20)

    def between(self, start: float, end: float) -> list[tuple[float, float, str, int]]:
        return [w for w in self.done if start <= w[0] < end]


def test_a_node_cut_off_from_the_other_two_refuses_writes_and_catches_up_after_the_heal(
    net: Net, record_property: Callable[[str, object], None]
) -> None:
    hosts = [net.host(f"n{i}") for i in (1, 2, 3)]
    client, minority_client = net.host("client"), net.host("client-iso")
    nodes = start_cluster(hosts)
    ctl = Bus(client, ",".join(n.url for n in nodes))

    async def prepare() -> dict[str, str]:
        await bus.ensure_streams(ctl.js, replicas=3)
        await bus.config_bucket(ctl.js, replicas=3)
        await bus.leases_bucket(ctl.js, replicas=3)
        return {s: (await ctl.js.stream_info(s)).cluster.leader for s in WRITTEN_BY_API}

    leaders = wait_until(lambda: ctl.run(prepare()), timeout=30, step=0.5)
    meta = client.call(_jsz, nodes[0])["meta_cluster"].get("leader")
    followers = [n for n in nodes if n.host.name not in leaders.values()]
    victim = next((n for n in followers if n.host.name != meta), followers[0])
    majority = [n for n in nodes if n is not victim]
    env = {"GTM_NATS_REPLICAS": "3", "GTM_API_LISTEN": "127.0.0.1:8080"}
    api_host, iso_api_host = net.host("api"), net.host("api-iso")
    config = start_service(api_host, "config", {**env, "NATS_URL": majority[0].url})
    iso_config = start_service(iso_api_host, "config", {**env, "NATS_URL": victim.url})
    for proc in (config, iso_config):
        proc.wait_for_event("service_ready", timeout=60)
    api, iso_api = NsApi(api_host), NsApi(iso_api_host)
    before = [f"Before-{i}" for i in range(3)]
    for i, name in enumerate(before):
        assert api.put(f"/pools/{name}", _pool(i))[0] == 201
    raw = Bus(minority_client, victim.url, timeout=2.0)
    kv_stream = subjects.kv_stream(subjects.CONFIG_BUCKET)

    writes = Writes(api, "Cut", every_s=0.25)
    net.on_close(writes.stop)
    writes.start()
    time.sleep(0.5)
    net.isolate(victim.host, from_=[n.host for n in majority])
    cut_at = time.monotonic()
    refused: list[tuple[str, int, float]] = []  # (what, status, seconds)
    while time.monotonic() < cut_at + CUT_S - 3.5:
        started = time.monotonic()
        status = iso_api.put(f"/pools/Minority-{len(refused)}", _pool(0))[0]
        refused.append(("api", status, time.monotonic() - started))
        started = time.monotonic()
        try:
            raw.put(subjects.CONFIG_BUCKET, f"pools.Minority-raw-{len(refused)}", b"{}", timeout=10)
            refused.append(("kv put", 200, time.monotonic() - started))
        except Exception:  # noqa: BLE001 - what we expect: no quorum answers
            refused.append(("kv put", 0, time.monotonic() - started))
    time.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
    isolated_view = _local(client, victim, kv_stream)
    net.rejoin(victim.host)
    healed = time.monotonic()

    def caught_up() -> dict[str, Any] | None:
        mine, theirs = _local(client, victim, kv_stream), _local(client, majority[0], kv_stream)
        return mine if mine["last_seq"] >= theirs["last_seq"] - 4 and mine["leader"] else None

    wait_until(caught_up, timeout=30, step=0.05)
    catch_up = time.monotonic() - healed
    time.sleep(3.0)
    writes.stop()
    during = writes.between(cut_at, healed)
    after = writes.between(healed, time.monotonic())
    listed, iso_listed = _names(api), _names(iso_api)
    acknowledged = {name for _, _, name, status in writes.done if status in (200, 201)}

    slowest = max(seconds for _, seconds, _, _ in during)
    failed_after = [w for w in after if w[3] not in (200, 201)]
    print(
        f"\n[partition d] {victim.host.name} cut off from {[n.host.name for n in majority]} for {CUT_S:.0f} s "
        f"(stream leaders {sorted(set(leaders.values()))}, meta {meta}): {len(during)} writes through the majority, "
        f"{sum(w[3] in (200, 201) for w in during)} acknowledged, slowest {slowest:.3f} s; isolated side: "
        f"{len(refused)} writes, {sum(s in (200, 201) for _, s, _ in refused)} acknowledged "
        f"(API {sorted({s for w, s, _ in refused if w == 'api'})} after "
        f"{max(t for w, _, t in refused if w == 'api'):.1f} s, KV put timed out after "
        f"{max(t for w, _, t in refused if w == 'kv put'):.1f} s); its replica stood at seq "
        f"{isolated_view['last_seq']}, leader {isolated_view['leader']}; caught up {catch_up:.2f} s after the heal; "
        f"writes failed after the heal: {len(failed_after)} of {len(after)} "
        f"({', '.join(f'{w[0] - healed:.1f} s' for w in failed_after[:3])}{'...' if len(failed_after) > 3 else ''})"
    )
    record_property("catch_up_s", round(catch_up, 2))
    assert during and all(status in (200, 201) for _, _, _, status in during), during
    assert slowest < 1.0
    assert refused and all(status not in (200, 201) for _, status, _ in refused), refused
    assert acknowledged <= listed and acknowledged <= iso_listed  # nothing acknowledged was lost, anywhere
    assert set(before) <= listed
    assert not {n for n in listed | iso_listed if n.startswith("Minority")}  # refused is refused: none landed later
    assert isolated_view["last_seq"] < _local(client, majority[0], kv_stream)["last_seq"]
