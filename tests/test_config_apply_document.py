"""``config.apply`` with a whole document: plan, check everything, then write, against a real config service."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NatsClient

from services.config.app import BACKEND, create_app
from services.config.apply import DocumentRequest, apply_document
from services.config.codec import DOMAIN, Kind, Stored
from services.config.store import ConfigStore
from shared import subjects
from shared.settings import NatsSettings, Settings
from tests.support import ROOT

Client = TestClient[web.Request, web.Application]

EXAMPLES = ROOT / "deploy" / "examples"


def _pool(*addresses: str) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [{"name": f"s{i}", "address": a} for i, a in enumerate(addresses, 1)]}


DOC: dict[str, Any] = {
    "pools": {"Primary-DC": _pool("192.0.2.1"), "Backup-DC": _pool("192.0.2.2")},
    "domains": {
        "www.example.com": {
            "record_type": "A",
            "ttl": 60,
            "pools": [{"pool": "Primary-DC", "sequence": 1}, {"pool": "Backup-DC", "sequence": 2}],
        }
    },
}
CREATED = [
    {"action": "create", "kind": "pools", "name": "Primary-DC"},
    {"action": "create", "kind": "pools", "name": "Backup-DC"},
    {"action": "create", "kind": "domains", "name": "www.example.com"},
]


def planned(changes: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Creates and deletes as a reply lists them: no diff, nothing reset."""
    return [{**c, "diff": "", "resets": []} for c in changes]


def short(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: c[k] for k in ("action", "kind", "name")} for c in changes]


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    """The config service in-process (REST API and config.apply), its NATS side up."""
    app = create_app(Settings(nats=NatsSettings(url=nats_url)))
    async with TestClient(TestServer(app)) as client:
        await asyncio.wait_for(app[BACKEND].ready.wait(), 15)
        yield client


async def send(nc: NatsClient, request: Any) -> dict[str, Any]:
    reply = await nc.request(subjects.CONFIG_APPLY, msgspec.json.encode(request), timeout=10)
    result: dict[str, Any] = msgspec.json.decode(reply.data)
    return result


async def get(api: Client, path: str) -> tuple[int, Any]:
    async with api.get("/api/v1" + path) as resp:
        return resp.status, await resp.json(content_type=None)


async def put(api: Client, path: str, body: Any) -> tuple[int, Any]:
    async with api.put("/api/v1" + path, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def operation_paths(api: Client) -> list[str]:
    _, body = await get(api, "/events?kind=operation&limit=100")
    return sorted(e["path"] for e in body["events"])


async def names(api: Client, collection: str) -> list[str]:
    _, body = await get(api, f"/{collection}")
    return [r["name"] for r in body[collection]]


def without(doc: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    del out[kind][name]
    return out


# -- accepted documents ------------------------------------------------------------------


async def test_a_valid_document_creates_every_resource_with_operation_events(api: Client, nc: NatsClient) -> None:
    reply = await send(nc, {"document": DOC})
    assert reply == {"status": 200, "body": {"changes": planned(CREATED), "dry_run": False}}
    status, pool = await get(api, "/pools/Primary-DC")
    assert status == 200 and pool["addresses"][0]["address"] == "192.0.2.1"
    status, domain = await get(api, "/domains/www.example.com")
    assert status == 200 and domain["ttl"] == 60 and [p["pool"] for p in domain["pools"]] == ["Primary-DC", "Backup-DC"]
    assert await operation_paths(api) == [
        "/api/v1/domains/www.example.com", "/api/v1/pools/Backup-DC", "/api/v1/pools/Primary-DC"
    ]


async def test_applying_the_same_document_again_reports_no_changes(api: Client, nc: NatsClient) -> None:
    assert (await send(nc, {"document": DOC}))["status"] == 200
    _, before = await get(api, "/domains/www.example.com")
    assert await send(nc, {"document": DOC}) == {"status": 200, "body": {"changes": [], "dry_run": False}}
    assert (await get(api, "/domains/www.example.com"))[1]["revision"] == before["revision"]
    assert len(await operation_paths(api)) == 3


async def test_a_changed_field_is_one_update(api: Client, nc: NatsClient) -> None:
    await send(nc, {"document": DOC})
    changed = copy.deepcopy(DOC)
    changed["domains"]["www.example.com"]["ttl"] = 120
    reply = await send(nc, {"document": changed})
    assert short(reply["body"]["changes"]) == [{"action": "update", "kind": "domains", "name": "www.example.com"}]
    assert (await get(api, "/domains/www.example.com"))[1]["ttl"] == 120


async def test_dry_run_lists_the_changes_and_writes_nothing(api: Client, nc: NatsClient) -> None:
    reply = await send(nc, {"document": DOC, "dry_run": True})
    assert reply == {"status": 200, "body": {"changes": planned(CREATED), "dry_run": True}}
    assert await names(api, "pools") == [] and await names(api, "domains") == []
    assert await operation_paths(api) == []


async def test_prune_deletes_what_the_document_no_longer_lists_domains_first(api: Client, nc: NatsClient) -> None:
    await send(nc, {"document": DOC})
    smaller = {"pools": {"Primary-DC": DOC["pools"]["Primary-DC"]}}
    reply = await send(nc, {"document": smaller, "prune": True})
    assert reply["status"] == 200
    assert reply["body"]["changes"] == planned([
        {"action": "delete", "kind": "domains", "name": "www.example.com"},
        {"action": "delete", "kind": "pools", "name": "Backup-DC"},
    ])
    assert await names(api, "pools") == ["Primary-DC"] and await names(api, "domains") == []


async def test_without_prune_unlisted_resources_stay(api: Client, nc: NatsClient) -> None:
    await send(nc, {"document": DOC})
    reply = await send(nc, {"document": {"pools": {"Primary-DC": DOC["pools"]["Primary-DC"]}}})
    assert reply["body"]["changes"] == []
    assert await names(api, "pools") == ["Backup-DC", "Primary-DC"]


async def test_a_domain_may_use_a_pool_defined_in_the_same_document_whatever_the_order(
    api: Client, nc: NatsClient
) -> None:
    document = {"domains": DOC["domains"], "pools": DOC["pools"]}  # domains listed first
    reply = await send(nc, {"document": document})
    assert reply["status"] == 200 and reply["body"]["changes"] == planned(CREATED)


async def test_templates_pools_and_topology_in_one_document(api: Client, nc: NatsClient) -> None:
    document = {
        "topology": {"entries": [{"cidr": "10.1.0.0/16", "region": "eu"}]},
        "pools": {"Web": {"type": "ipv4", "addresses": [
            {"name": "w1", "address": "192.0.2.9", "health_check": {"template": "web", "port": 8081}}]}},
        "health_templates": {"web": {"protocol": "http", "path": "/health", "interval_s": 5}},
    }
    reply = await send(nc, {"document": document})
    assert reply["body"]["changes"] == planned([
        {"action": "create", "kind": "health_templates", "name": "web"},
        {"action": "create", "kind": "pools", "name": "Web"},
        {"action": "create", "kind": "topology", "name": ""},
    ])
    check = (await get(api, "/pools/Web"))[1]["addresses"][0]["health_check"]
    assert (check["path"], check["port"], check["interval_s"]) == ("/health", 8081, 5)
    assert (await get(api, "/topology"))[1]["entries"] == [{"cidr": "10.1.0.0/16", "region": "eu"}]
    assert (await send(nc, {"document": document}))["body"]["changes"] == []


# -- refused documents: the REST API's errors, located, and nothing written ----------------


async def test_an_invalid_address_is_refused_with_the_prefixed_field_and_nothing_is_written(
    api: Client, nc: NatsClient
) -> None:
    bad = copy.deepcopy(DOC)
    bad["pools"]["Backup-DC"]["addresses"][0]["address"] = "300.0.0.1"
    reply = await send(nc, {"document": bad})
    assert reply["status"] == 400
    assert reply["body"]["error"]["code"] == "invalid_argument"
    assert reply["body"]["error"]["field"] == "pools.Backup-DC.addresses[0].address"
    # Primary-DC was valid and planned before Backup-DC: still nothing is written.
    assert await names(api, "pools") == [] and await names(api, "domains") == []
    assert await operation_paths(api) == []


@pytest.mark.parametrize(
    ("kind", "name", "body"),
    [
        ("pools", "p", {"type": "ipv4", "addresses": [{"name": "a", "address": "300.0.0.1"}]}),
        ("pools", "p", {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "weight": 0}]}),
        ("pools", "p", {"type": "ipv4", "zz": 1}),
        ("pools", "p", {"type": "ipv6", "addresses": [{"name": "a", "address": "192.0.2.1"}]}),
        ("domains", "www.example.com", {"record_type": "A", "pools": [{"pool": "nope"}]}),
        ("domains", "www.example.com", {"record_type": "A", "ttl": -1, "pools": []}),
        ("health_templates", "t", {"protocol": "gopher"}),
        ("alert_targets", "ops", {"url": "ftp://x"}),
    ],
)
async def test_errors_are_the_rest_api_errors_with_the_resource_in_the_field(
    api: Client, nc: NatsClient, kind: str, name: str, body: dict[str, Any]
) -> None:
    collection = {"pools": "pools", "domains": "domains", "health_templates": "health-templates",
                  "alert_targets": "alert-targets"}[kind]
    rest_status, rest = await put(api, f"/{collection}/{name}", body)
    reply = await send(nc, {"document": {kind: {name: body}}})
    assert reply["status"] == rest_status == 400
    error, expected = reply["body"]["error"], rest["error"]
    assert (error["code"], error["message"]) == (expected["code"], expected["message"])
    assert error["field"] == f"{kind}.{name}" + (f".{expected['field']}" if expected["field"] else "")


async def test_a_bad_name_is_refused_at_the_name(api: Client, nc: NatsClient) -> None:
    reply = await send(nc, {"document": {"pools": {"bad name!": _pool("192.0.2.1")}}})
    assert reply["status"] == 400 and reply["body"]["error"]["field"] == "pools.bad name!.name"


async def test_pruning_a_pool_still_in_use_is_a_conflict_and_nothing_is_written(api: Client, nc: NatsClient) -> None:
    await send(nc, {"document": DOC})
    events = len(await operation_paths(api))
    # The domain still uses Backup-DC; the new pool Extra is valid but must not be written either.
    document = copy.deepcopy(without(DOC, "pools", "Backup-DC"))
    document["pools"]["Extra"] = _pool("192.0.2.7")
    reply = await send(nc, {"document": document, "prune": True})
    assert reply["status"] == 409 and reply["body"]["error"]["code"] == "conflict"
    assert reply["body"]["error"]["field"] == "pools.Backup-DC"
    assert "used by domain www.example.com" in reply["body"]["error"]["message"]
    assert await names(api, "pools") == ["Backup-DC", "Primary-DC"]
    assert len(await operation_paths(api)) == events


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"document": {"zones": {}}}, "document"),
        ({"document": ["pools"]}, "document"),
        ({"document": {"pools": {"p": 5}}}, "document"),
        ({"document": {}, "zz": True}, "zz"),
        ({"document": {}, "prune": "yes"}, "prune"),
    ],
)
async def test_a_malformed_request_is_invalid_argument(
    api: Client, nc: NatsClient, request_: dict[str, Any], field: str
) -> None:
    reply = await send(nc, request_)
    assert reply["status"] == 400
    assert (reply["body"]["error"]["code"], reply["body"]["error"]["field"]) == ("invalid_argument", field)


async def test_a_write_failing_midway_reports_the_changes_already_applied(api: Client, nc: NatsClient) -> None:
    assert api.app is not None
    backend = api.app[BACKEND]
    await send(nc, {"document": {"pools": {"Old": _pool("192.0.2.5")}}})

    class RacingStore(ConfigStore):
        """A real store; just before its first write another writer starts using pool Old."""

        raced = False

        async def put(self, kind: Kind, name: str, body: bytes, *, if_match: str | None) -> tuple[Stored, bool]:
            if not self.raced:
                self.raced = True
                other = {"record_type": "A", "pools": [{"pool": "Old"}]}
                await ConfigStore(self.kv, self.js, view=self.view).put(DOMAIN, "late.example.com", json.dumps(other).encode(),
                                                        if_match=None)
            return await super().put(kind, name, body, if_match=if_match)

    assert backend.kv is not None and backend.js is not None and backend.view is not None
    store = RacingStore(backend.kv, backend.js, view=backend.view)
    document = {"pools": {"Primary-DC": DOC["pools"]["Primary-DC"]}, "domains": {}}
    reply = await apply_document(store, DocumentRequest(document=document, prune=True))
    assert reply.status == 409 and reply.body["error"]["field"] == "pools.Old"
    assert reply.body["applied"] == [{"action": "create", "kind": "pools", "name": "Primary-DC"}]
    assert await names(api, "pools") == ["Old", "Primary-DC"]


# -- the example publisher ----------------------------------------------------------------


async def test_the_example_publisher_applies_the_example_document_and_prints_the_reply(
    api: Client, nats_url: str
) -> None:
    async def publish(*args: str) -> tuple[int, dict[str, Any]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLES / "publish_config.py"), str(EXAMPLES / "gtm.yaml"), "--nats", nats_url,
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        assert not err, err.decode()
        return proc.returncode, json.loads(out)

    code, reply = await publish("--dry-run")
    assert code == 0 and reply["body"]["dry_run"] is True
    assert await names(api, "pools") == []
    code, reply = await publish()
    assert code == 0 and reply["status"] == 200
    assert reply["body"]["changes"] == planned(CREATED)
    _, domain = await get(api, "/domains/www.example.com")
    assert domain["enabled"] is True and domain["ttl"] == 60
    code, reply = await publish()
    assert code == 0 and reply["body"]["changes"] == []


async def test_the_example_publisher_exits_1_on_a_refused_document(api: Client, nats_url: str, tmp_path: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "gtm.yaml").read_text().replace("address: 127.0.0.3", "address: 300.0.0.1"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "publish_config.py"), str(bad), "--nats", nats_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    reply = json.loads(out)
    assert proc.returncode == 1 and reply["status"] == 400
    assert reply["body"]["error"]["field"] == "pools.Backup-DC.addresses[0].address"
    assert await names(api, "pools") == []
