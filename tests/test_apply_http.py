"""``POST /api/v1/apply``: the ``config.apply`` document over HTTP, against a real config service and NATS.

What a client sees: status codes, the change list (with diffs and the fields reset because the
document leaves them out), the contract's error bodies with resource-prefixed fields, and that a
refused document writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NatsClient

from services.config.codec import MAX_BODY_BYTES
from shared import subjects
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.support import config_client

Client = TestClient[web.Request, web.Application]


def _pool(*addresses: str) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [{"name": f"s{i}", "address": a} for i, a in enumerate(addresses, 1)]}


DOC: dict[str, Any] = {
    "pools": {"Primary-DC": _pool("192.0.2.1"), "Backup-DC": _pool("192.0.2.2")},
    "domains": {
        "www.example.com": {
            "record_type": "A",
            "ttl": 60,
            "enabled": True,
            "pools": [{"pool": "Primary-DC", "sequence": 1}, {"pool": "Backup-DC", "sequence": 2}],
        }
    },
}


def created(kind: str, name: str) -> dict[str, Any]:
    return {"action": "create", "kind": kind, "name": name, "diff": "", "resets": []}


CREATED = [created("pools", "Primary-DC"), created("pools", "Backup-DC"), created("domains", "www.example.com")]


_client = config_client


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    """The config service in-process (REST API and config.apply), its NATS side up."""
    async for client in _client(Settings(nats=NatsSettings(url=nats_url))):
        yield client


async def post(api: Client, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    async with api.post("/api/v1/apply", data=data, headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def get(api: Client, path: str) -> tuple[int, Any]:
    async with api.get("/api/v1" + path) as resp:
        return resp.status, await resp.json(content_type=None)


async def request(api: Client, method: str, path: str, body: Any) -> int:
    async with api.request(method, "/api/v1" + path, json=body) as resp:
        return resp.status


async def names(api: Client, collection: str) -> list[str]:
    return [r["name"] for r in (await get(api, f"/{collection}"))[1][collection]]


async def operations(api: Client) -> int:
    return len((await get(api, "/events?kind=operation&limit=100"))[1]["events"])


# -- accepted -------------------------------------------------------------------------------


async def test_a_valid_document_is_200_with_its_changes_and_is_written(api: Client) -> None:
    assert await post(api, {"document": DOC}) == (200, {"changes": CREATED, "dry_run": False})
    status, domain = await get(api, "/domains/www.example.com")
    assert status == 200 and domain["ttl"] == 60 and domain["enabled"] is True
    assert await names(api, "pools") == ["Backup-DC", "Primary-DC"]
    assert await operations(api) == 3


async def test_the_same_document_twice_is_no_changes_and_no_writes(api: Client) -> None:
    assert (await post(api, {"document": DOC}))[0] == 200
    revision = (await get(api, "/domains/www.example.com"))[1]["revision"]
    assert await post(api, {"document": DOC}) == (200, {"changes": [], "dry_run": False})
    assert (await get(api, "/domains/www.example.com"))[1]["revision"] == revision
    assert await operations(api) == 3


async def test_dry_run_lists_the_changes_and_writes_nothing(api: Client) -> None:
    assert await post(api, {"document": DOC, "dry_run": True}) == (200, {"changes": CREATED, "dry_run": True})
    assert await names(api, "pools") == [] and await names(api, "domains") == []
    assert await operations(api) == 0


async def test_an_update_carries_its_diff(api: Client) -> None:
    await post(api, {"document": DOC})
    changed = copy.deepcopy(DOC)
    changed["domains"]["www.example.com"]["ttl"] = 120
    status, body = await post(api, {"document": changed, "dry_run": True})
    assert status == 200
    [change] = body["changes"]
    assert (change["action"], change["kind"], change["name"], change["resets"]) == (
        "update", "domains", "www.example.com", [])
    assert change["diff"].splitlines()[-3:] == ['-  "ttl": 60', '+  "ttl": 120', " }"]
    assert (await get(api, "/domains/www.example.com"))[1]["ttl"] == 60


async def test_prune_deletes_what_the_document_no_longer_lists_domains_first(api: Client) -> None:
    await post(api, {"document": DOC})
    status, body = await post(api, {"document": {"pools": {"Primary-DC": DOC["pools"]["Primary-DC"]}}, "prune": True})
    assert status == 200
    assert [(c["action"], c["kind"], c["name"]) for c in body["changes"]] == [
        ("delete", "domains", "www.example.com"), ("delete", "pools", "Backup-DC")]
    assert await names(api, "pools") == ["Primary-DC"] and await names(api, "domains") == []


# -- fields changed outside the document ----------------------------------------------------------


async def test_a_field_set_outside_the_document_is_reset_and_marked_in_the_diff(api: Client) -> None:
    await post(api, {"document": DOC})
    # the walkthrough's step 5, through the API (the console does the same)
    assert await request(api, "PATCH", "/domains/www.example.com", {"sequence_mode": "non_preemptive"}) == 200
    status, body = await post(api, {"document": DOC, "dry_run": True})
    assert status == 200
    [change] = body["changes"]
    assert change["resets"] == [{"field": "sequence_mode", "from": "non_preemptive", "to": "preemptive"}]
    assert change["diff"].splitlines()[0] == (
        '! sequence_mode: "non_preemptive" -> "preemptive"'
        "  (not in the document, changed outside it: reset to the default)")
    assert (await get(api, "/domains/www.example.com"))[1]["sequence_mode"] == "non_preemptive"
    # applied for real, the reply says the same before the value is reset
    status, body = await post(api, {"document": DOC})
    assert status == 200 and body["changes"][0]["resets"][0]["field"] == "sequence_mode"
    assert (await get(api, "/domains/www.example.com"))[1]["sequence_mode"] == "preemptive"


async def test_a_nested_field_set_outside_the_document_is_named_with_its_address(api: Client) -> None:
    await post(api, {"document": DOC})
    pool = copy.deepcopy(DOC["pools"]["Backup-DC"])
    pool["addresses"][0]["mode"] = "manual_unavailable"  # an operator took it out of service
    assert await request(api, "PUT", "/pools/Backup-DC", pool) == 200
    _, body = await post(api, {"document": DOC, "dry_run": True})
    assert [(c["name"], c["resets"]) for c in body["changes"]] == [
        ("Backup-DC", [{"field": "addresses[0].mode", "from": "manual_unavailable", "to": "auto"}])]


async def test_a_field_the_document_writes_is_an_ordinary_update_not_a_reset(api: Client) -> None:
    await post(api, {"document": DOC})
    assert await request(api, "PATCH", "/domains/www.example.com", {"sequence_mode": "non_preemptive"}) == 200
    pinned = copy.deepcopy(DOC)
    pinned["domains"]["www.example.com"]["sequence_mode"] = "non_preemptive"
    assert await post(api, {"document": pinned}) == (200, {"changes": [], "dry_run": False})
    pinned["domains"]["www.example.com"]["sequence_mode"] = "preemptive"
    _, body = await post(api, {"document": pinned, "dry_run": True})
    assert body["changes"][0]["resets"] == [] and "!" not in body["changes"][0]["diff"]


# -- refused: the error body, and nothing written --------------------------------------------------


async def test_one_bad_pool_refuses_the_whole_document_and_writes_nothing(api: Client) -> None:
    bad = copy.deepcopy(DOC)
    bad["pools"]["Backup-DC"]["addresses"][0]["address"] = "300.0.0.1"
    assert await post(api, {"document": bad}) == (400, {"error": {
        "code": "invalid_argument",
        "message": "'300.0.0.1' is not a valid ipv4 address",
        "field": "pools.Backup-DC.addresses[0].address",
    }})
    # Primary-DC is valid and comes first in the plan: it is not written either
    assert (await get(api, "/pools/Primary-DC"))[0] == 404
    assert await names(api, "pools") == [] and await names(api, "domains") == []
    assert await operations(api) == 0


async def test_a_dry_run_is_validated_by_the_server(api: Client) -> None:
    typo = {"pools": {"Primary-DC": {"type": "ipv4", "adresses": [{"name": "s1", "address": "192.0.2.1"}]}}}
    assert await post(api, {"document": typo, "dry_run": True}) == (400, {"error": {
        "code": "invalid_argument",
        "message": "Object contains unknown field `adresses`",
        "field": "pools.Primary-DC.adresses",
    }})


async def test_pruning_a_pool_in_use_is_409_and_writes_nothing(api: Client) -> None:
    await post(api, {"document": DOC})
    document = {"pools": {"Primary-DC": DOC["pools"]["Primary-DC"], "Extra": _pool("192.0.2.7")},
                "domains": DOC["domains"]}
    status, body = await post(api, {"document": document, "prune": True})
    assert status == 409
    assert (body["error"]["code"], body["error"]["field"]) == ("conflict", "pools.Backup-DC")
    assert await names(api, "pools") == ["Backup-DC", "Primary-DC"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b"", "", "a JSON request body is required"),
        (b"{", "", "malformed JSON: Input data was truncated"),
        ({"prune": True}, "document", "Object missing required field `document`"),
        ({"document": {}, "zz": 1}, "zz", "Object contains unknown field `zz`"),
        ({"document": {}, "dry_run": "yes"}, "dry_run", "Expected `bool`, got `str`"),
        ({"document": {"zones": {}}}, "document", "unknown kinds: zones"),
        ({"document": ["pools"]}, "document", "the document must be a mapping of kinds (pools, domains, ...)"),
    ],
)
async def test_a_malformed_request_is_400_invalid_argument(api: Client, body: Any, field: str, message: str) -> None:
    assert await post(api, body) == (400, {"error": {"code": "invalid_argument", "message": message, "field": field}})


async def test_a_body_over_the_limit_is_413(api: Client) -> None:
    status, body = await post(api, b'{"document": {}, "x": "' + b"x" * MAX_BODY_BYTES + b'"}')
    assert status == 413 and body["error"]["code"] == "payload_too_large"


async def test_only_post_is_allowed(api: Client) -> None:
    async with api.get("/api/v1/apply") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_the_token_is_required(nats_url: str) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(token="s3cret"))
    async for api in _client(settings):
        status, body = await post(api, {"document": DOC})
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert await names_with_token(api) == []
        async with api.post("/api/v1/apply", json={"document": DOC}, headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200


async def names_with_token(api: Client) -> list[str]:
    async with api.get("/api/v1/pools", headers={"Authorization": "Bearer s3cret"}) as resp:
        return [p["name"] for p in (await resp.json())["pools"]]


# -- one implementation, two transports ---------------------------------------------------------


async def test_http_and_nats_answer_the_same_body_for_the_same_request(api: Client, nc: NatsClient) -> None:
    await post(api, {"document": DOC})
    assert await request(api, "PATCH", "/domains/www.example.com", {"sequence_mode": "non_preemptive"}) == 200
    bad = copy.deepcopy(DOC)
    bad["pools"]["Extra"] = _pool("300.0.0.1")
    for req in ({"document": DOC, "dry_run": True}, {"document": bad}, {"document": DOC, "prune": True, "dry_run": True},
                {"document": {}, "zz": 1}):
        status, body = await post(api, req)
        reply = await nc.request(subjects.CONFIG_APPLY, msgspec.json.encode(req), timeout=10)
        assert msgspec.json.decode(reply.data) == {"status": status, "body": body}


async def test_a_document_nested_too_deep_is_400_and_writes_nothing(api: Client) -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    status, body = await post(api, {"document": {"pools": {"P": {"type": "ipv4", "addresses": deep}}}})
    assert status == 400 and body["error"]["code"] == "invalid_argument", body
    assert "nested deeper" in body["error"]["message"]
    assert await names(api, "pools") == []
