"""REST API of health templates, topology and alert targets; template resolution; status phases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NatsClient

from services.config.codec import MAX_BODY_BYTES
from shared import subjects
from shared.messages import AddressState, AnswerSet, PoolState, encoder
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.test_config_api import (
    DOMAIN_A,
    POOL_V4,
    Client,
    _client,
    apply_request,
    call,
    events_in_stream,
)

WEB = {"protocol": "http", "port": 8080, "path": "/health", "interval_s": 5, "timeout_s": 1}
TARGET = {"url": "http://127.0.0.1:9/hook"}
TOPOLOGY = {"entries": [{"cidr": "10.0.0.0/8", "region": "cn-east"}, {"cidr": "2001:db8::/32", "region": "eu"}]}


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    """The API app in-process, its NATS side up."""
    async for client in _client(Settings(nats=NatsSettings(url=nats_url))):
        yield client


def _pool(*checks: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "ipv4", **extra, "addresses": [
        {"name": f"a{i}", "address": f"192.0.2.{i + 1}", "health_check": hc} for i, hc in enumerate(checks)]}


async def _ok(api: Client, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    status, got = await call(api, method, path, body, **kw)
    assert status in (200, 201, 204), (status, got)
    return got


async def _operations(api: Client) -> list[tuple[str, str, str]]:
    events = (await call(api, "GET", "/api/v1/events?kind=operation"))[1]["events"]
    return [(e["method"], e["resource"], e["name"]) for e in reversed(events)]


# -- the three new resources: CRUD ------------------------------------------------------

RESOURCES = [
    ("/api/v1/health-templates", "web", WEB, {"port": 9090}, "templates", "template"),
    ("/api/v1/alert-targets", "ops", TARGET, {"enabled": False}, "alert_targets", "alert_target"),
]


@pytest.mark.parametrize(("base", "name", "body", "patch", "list_key", "resource"), RESOURCES,
                         ids=["template", "alert target"])
async def test_named_resource_lifecycle_with_etags_lists_and_operation_log(
    api: Client, base: str, name: str, body: dict[str, Any], patch: dict[str, Any], list_key: str, resource: str
) -> None:
    assert await call(api, "GET", base) == (200, {list_key: []})
    async with api.put(f"{base}/{name}", json=body) as resp:
        assert resp.status == 201
        created = await resp.json()
        assert resp.headers["ETag"] == f'"{created["revision"]}"'
    assert created["name"] == name and all(created[k] == v for k, v in body.items())
    assert await call(api, "GET", f"{base}/{name}") == (200, created)
    assert await call(api, "GET", base) == (200, {list_key: [created]})
    status, again = await call(api, "PUT", f"{base}/{name}", created)  # what GET gave can be PUT back
    assert status == 200 and again["revision"] > created["revision"]
    status, patched = await call(api, "PATCH", f"{base}/{name}", patch, headers={"If-Match": str(again["revision"])})
    assert status == 200 and all(patched[k] == v for k, v in patch.items())
    assert await call(api, "DELETE", f"{base}/{name}") == (204, None)
    assert (await call(api, "GET", f"{base}/{name}"))[0] == 404
    assert await _operations(api) == [("PUT", resource, name), ("PUT", resource, name),
                                      ("PATCH", resource, name), ("DELETE", resource, name)]


async def test_topology_is_empty_at_revision_0_until_set_then_put_and_got(api: Client, nc: NatsClient) -> None:
    assert await call(api, "GET", "/api/v1/topology") == (200, {"entries": [], "revision": 0})
    async with api.put("/api/v1/topology", json={"entries": [{"cidr": "10.1.2.3/8", "region": "cn-east"}]}) as resp:
        assert resp.status == 201
        body = await resp.json()
        assert resp.headers["ETag"] == f'"{body["revision"]}"'
    assert body == {"entries": [{"cidr": "10.0.0.0/8", "region": "cn-east"}], "revision": body["revision"]}
    status, again = await call(api, "PUT", "/api/v1/topology", TOPOLOGY, headers={"If-Match": str(body["revision"])})
    assert status == 200 and again["entries"] == TOPOLOGY["entries"]
    assert await call(api, "GET", "/api/v1/topology") == (200, again)
    stored = await (await nc.jetstream().key_value(subjects.CONFIG_BUCKET)).get(subjects.TOPOLOGY_KEY)
    assert msgspec.json.decode(stored.value or b"")["entries"] == TOPOLOGY["entries"]
    assert await _operations(api) == [("PUT", "topology", "topology")] * 2
    ops = (await call(api, "GET", "/api/v1/events?kind=operation"))[1]["events"]
    assert ops[0]["path"] == "/api/v1/topology" and ops[0]["revision"] == again["revision"]


async def test_alert_target_defaults(api: Client) -> None:
    body = await _ok(api, "PUT", "/api/v1/alert-targets/ops", TARGET)
    assert {k: v for k, v in body.items() if k != "revision"} == {
        "url": TARGET["url"], "name": "ops", "enabled": True, "kinds": ["address", "pool", "domain"], "remarks": "",
        "type": "webhook", "smtp": "", "from": "", "to": [], "starttls": False, "username": "", "password": ""}


# -- bad input and errors, every new route ----------------------------------------------

BAD_WRITES: list[tuple[str, str, Any, str]] = [
    ("template refers to a template", "/api/v1/health-templates/web", WEB | {"template": "x"}, "template"),
    ("template with overrides", "/api/v1/health-templates/web", WEB | {"overrides": ["port"]}, "overrides"),
    ("template timeout not below interval", "/api/v1/health-templates/web", {"interval_s": 2, "timeout_s": 3},
     "timeout_s"),
    ("template tcp without port", "/api/v1/health-templates/web", {"protocol": "tcp"}, "port"),
    ("template unknown field", "/api/v1/health-templates/web", {"colour": "red"}, "colour"),
    ("template bad protocol", "/api/v1/health-templates/web", {"protocol": "gopher"}, "protocol"),
    ("template name differs", "/api/v1/health-templates/web", {"name": "other"}, "name"),
    ("template bad name in path", "/api/v1/health-templates/bad%20name", WEB, "name"),
    ("alert url not http", "/api/v1/alert-targets/ops", {"url": "ftp://example.com/x"}, "url"),
    ("alert url missing", "/api/v1/alert-targets/ops", {"enabled": True}, "url"),
    ("alert unknown kind", "/api/v1/alert-targets/ops", TARGET | {"kinds": ["pool", "moon"]}, "kinds[1]"),
    ("alert remarks too long", "/api/v1/alert-targets/ops", TARGET | {"remarks": "x" * 257}, "remarks"),
    ("topology bad cidr", "/api/v1/topology", {"entries": [{"cidr": "10.0.0.0/99", "region": "a"}]},
     "entries[0].cidr"),
    ("topology duplicate cidr", "/api/v1/topology",
     {"entries": [{"cidr": "10.0.0.0/8", "region": "a"}, {"cidr": "10.0.0.1/8", "region": "b"}]}, "entries[1].cidr"),
    ("topology bad region", "/api/v1/topology", {"entries": [{"cidr": "10.0.0.0/8", "region": "a b"}]},
     "entries[0].region"),
    ("topology empty region", "/api/v1/topology", {"entries": [{"cidr": "10.0.0.0/8", "region": ""}]},
     "entries[0].region"),
    ("topology unknown field", "/api/v1/topology", {"entries": [], "zone": 1}, "zone"),
    ("pool with a bad region", "/api/v1/pools/Primary-DC", POOL_V4 | {"region": "eu west"}, "region"),
    ("address with a bad region", "/api/v1/pools/Primary-DC",
     {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "region": "x" * 65}]},
     "addresses[0].region"),
    ("pool with a missing template", "/api/v1/pools/Primary-DC", _pool({"protocol": "tcp", "port": 1},
                                                                       {"template": "nope"}),
     "addresses[1].health_check.template"),
    ("override that breaks the check", "/api/v1/pools/Primary-DC", _pool({"template": "web", "timeout_s": 6}),
     "addresses[0].health_check.timeout_s"),
    ("override of a bad type", "/api/v1/pools/Primary-DC", _pool({"template": "web", "port": "http"}),
     "addresses[0].health_check.port"),
    ("overrides naming no field", "/api/v1/pools/Primary-DC", _pool({"template": "web", "overrides": ["x"]}),
     "addresses[0].health_check.overrides[0]"),
]


@pytest.mark.parametrize(("case", "path", "body", "field"), BAD_WRITES, ids=[c[0] for c in BAD_WRITES])
async def test_bad_writes_are_400_with_the_field_and_change_nothing(
    api: Client, nc: NatsClient, case: str, path: str, body: Any, field: str
) -> None:
    await _ok(api, "PUT", "/api/v1/health-templates/web", WEB)
    events = await events_in_stream(nc)
    before = await call(api, "GET", path)
    status, err = await call(api, "PUT", path, body)
    assert status == 400, err
    assert (err["error"]["code"], err["error"]["field"]) == ("invalid_argument", field)
    assert err["error"]["message"] and " - at `" not in err["error"]["message"]
    assert await call(api, "GET", path) == before
    assert await events_in_stream(nc) == events


STALE = [("/api/v1/health-templates/web", WEB, ("PUT", "PATCH", "DELETE")),
         ("/api/v1/alert-targets/ops", TARGET, ("PUT", "PATCH", "DELETE")),
         ("/api/v1/topology", TOPOLOGY, ("PUT",))]


@pytest.mark.parametrize(("path", "body", "method"), [(p, b, m) for p, b, ms in STALE for m in ms])
async def test_stale_if_match_or_body_revision_is_412_and_changes_nothing(
    api: Client, nc: NatsClient, path: str, body: dict[str, Any], method: str
) -> None:
    old = await _ok(api, "PUT", path, body)
    current = await _ok(api, "PUT", path, body)
    events = await events_in_stream(nc)
    payload = {"remarks": "x"} if method == "PATCH" else (body if method == "PUT" else None)
    status, err = await call(api, method, path, payload, headers={"If-Match": f'"{old["revision"]}"'})
    assert status == 412 and err["error"]["code"] == "precondition_failed"
    if method != "DELETE":
        status, _ = await call(api, method, path, {**(payload or {}), "revision": old["revision"]})
        assert status == 412
    assert await call(api, "GET", path) == (200, current)
    assert await events_in_stream(nc) == events


@pytest.mark.parametrize("path", ["/api/v1/health-templates/big", "/api/v1/alert-targets/big", "/api/v1/topology"])
async def test_new_routes_refuse_bodies_over_one_mib(api: Client, path: str) -> None:
    big = b'{"remarks": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, err = await call(api, "PUT", path, big)
    assert status == 413 and err["error"]["code"] == "payload_too_large"


async def test_new_routes_need_the_token(nats_url: str) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(token="s3cret"))
    async for client in _client(settings):
        for method, path, body in (("GET", "/api/v1/topology", None), ("PUT", "/api/v1/topology", TOPOLOGY),
                                   ("GET", "/api/v1/health-templates", None),
                                   ("PUT", "/api/v1/alert-targets/ops", TARGET)):
            status, err = await call(client, method, path, body)
            assert status == 401 and err["error"]["code"] == "unauthorized"
            ok = await call(client, method, path, body, headers={"Authorization": "Bearer s3cret"})
            assert ok[0] in (200, 201)


async def test_config_apply_reaches_the_new_resources(api: Client, nc: NatsClient) -> None:
    reply = await apply_request(nc, {"method": "PUT", "path": "health-templates/web", "body": WEB})
    assert reply["status"] == 201 and reply["body"]["port"] == 8080
    reply = await apply_request(nc, {"method": "PUT", "path": "/api/v1/topology", "body": TOPOLOGY})
    assert reply["status"] == 201 and "name" not in reply["body"]
    reply = await apply_request(nc, {"method": "DELETE", "path": "/api/v1/topology"})
    assert reply["status"] == 405 and reply["body"]["error"]["code"] == "method_not_allowed"
    reply = await apply_request(nc, {"method": "PUT", "path": "alert-targets/ops", "body": {"url": "gopher://x"}})
    assert reply["status"] == 400 and reply["body"]["error"]["field"] == "url"
    reply = await apply_request(nc, {"method": "GET", "path": "/api/v1/alert-targets"})
    assert reply == {"status": 200, "body": {"alert_targets": []}}


# -- template resolution ----------------------------------------------------------------


async def test_a_pool_is_stored_with_the_effective_check_and_its_template_and_overrides(
    api: Client, nc: NatsClient
) -> None:
    await _ok(api, "PUT", "/api/v1/health-templates/web", WEB)
    pool = await _ok(api, "PUT", "/api/v1/pools/Primary-DC",
                     _pool({"template": "web", "port": 8081}, {"template": "web"}, {"protocol": "tcp", "port": 22}))
    checks = [a["health_check"] for a in pool["addresses"]]
    assert checks[0] == checks[1] | {"port": 8081, "overrides": ["port"]}
    assert checks[1]["template"] == "web" and checks[1]["overrides"] == [] and checks[1]["path"] == "/health"
    assert (checks[1]["interval_s"], checks[1]["timeout_s"], checks[1]["expected_codes"]) == (5, 1, [200])
    assert checks[2]["template"] == "" and checks[2]["overrides"] == []
    assert (await call(api, "GET", "/api/v1/pools/Primary-DC"))[1] == pool
    stored = await (await nc.jetstream().key_value(subjects.CONFIG_BUCKET)).get(subjects.pool_key("Primary-DC"))
    assert msgspec.json.decode(stored.value or b"")["addresses"][0]["health_check"] == checks[0]


async def test_a_pool_read_back_and_written_again_keeps_its_template_link(api: Client) -> None:
    await _ok(api, "PUT", "/api/v1/health-templates/web", WEB)
    pool = await _ok(api, "PUT", "/api/v1/pools/Primary-DC", _pool({"template": "web", "port": 8081}))
    again = await _ok(api, "PUT", "/api/v1/pools/Primary-DC", pool)
    assert again["addresses"] == pool["addresses"]
    patched = await _ok(api, "PATCH", "/api/v1/pools/Primary-DC", {"remarks": "r"})
    assert patched["addresses"] == pool["addresses"]
    await _ok(api, "PATCH", "/api/v1/health-templates/web", {"path": "/v2"})
    got = (await call(api, "GET", "/api/v1/pools/Primary-DC"))[1]["addresses"][0]["health_check"]
    assert (got["path"], got["port"], got["overrides"]) == ("/v2", 8081, ["port"])


async def test_updating_a_template_re_resolves_every_pool_made_from_it(api: Client) -> None:
    await _ok(api, "PUT", "/api/v1/health-templates/web", WEB)
    await _ok(api, "PUT", "/api/v1/health-templates/other", WEB)
    one = await _ok(api, "PUT", "/api/v1/pools/one", _pool({"template": "web", "port": 8081}))
    two = await _ok(api, "PUT", "/api/v1/pools/two", _pool({"template": "web"}, {"template": "other"}))
    three = await _ok(api, "PUT", "/api/v1/pools/three", _pool({"template": "other"}))
    await _ok(api, "PATCH", "/api/v1/health-templates/web", {"port": 9000, "path": "/v2", "failures": 3})
    got = {p["name"]: p for p in (await call(api, "GET", "/api/v1/pools"))[1]["pools"]}
    hc_one = got["one"]["addresses"][0]["health_check"]
    assert (hc_one["port"], hc_one["path"], hc_one["failures"]) == (8081, "/v2", 3)
    hc_two = got["two"]["addresses"][0]["health_check"]
    assert (hc_two["port"], hc_two["path"], hc_two["template"]) == (9000, "/v2", "web")
    assert got["two"]["addresses"][1] == two["addresses"][1]
    assert got["three"] == three  # untouched: not made from that template
    assert got["one"]["revision"] > one["revision"] and got["two"]["revision"] > two["revision"]
    ops = (await call(api, "GET", "/api/v1/events?kind=operation&limit=3"))[1]["events"]
    assert sorted((e["resource"], e["name"]) for e in ops) == [("pool", "one"), ("pool", "two"), ("template", "web")]
    pool_op = next(e for e in ops if e["name"] == "two")
    assert "health template 'web'" in pool_op["message"] and pool_op["revision"] == got["two"]["revision"]


async def test_a_template_change_that_breaks_a_pool_is_400_and_changes_nothing(api: Client, nc: NatsClient) -> None:
    await _ok(api, "PUT", "/api/v1/health-templates/web", WEB)
    await _ok(api, "PUT", "/api/v1/pools/Primary-DC", _pool({"template": "web", "timeout_s": 4}))
    before = (await call(api, "GET", "/api/v1/pools"))[1], (await call(api, "GET", "/api/v1/health-templates"))[1]
    events = await events_in_stream(nc)
    status, err = await call(api, "PATCH", "/api/v1/health-templates/web", {"interval_s": 3})
    assert status == 400 and err["error"]["field"] == "timeout_s" and "Primary-DC" in err["error"]["message"]
    after = (await call(api, "GET", "/api/v1/pools"))[1], (await call(api, "GET", "/api/v1/health-templates"))[1]
    assert after == before and await events_in_stream(nc) == events


async def test_deleting_a_template_in_use_is_409_naming_the_pools(api: Client) -> None:
    await _ok(api, "PUT", "/api/v1/health-templates/web", WEB)
    await _ok(api, "PUT", "/api/v1/pools/one", _pool({"template": "web"}))
    await _ok(api, "PUT", "/api/v1/pools/two", _pool(None, {"template": "web", "port": 1}))
    status, err = await call(api, "DELETE", "/api/v1/health-templates/web")
    assert status == 409 and err["error"]["code"] == "conflict"
    assert "one" in err["error"]["message"] and "two" in err["error"]["message"]
    await _ok(api, "PUT", "/api/v1/pools/one", _pool({"protocol": "http"}))
    await _ok(api, "DELETE", "/api/v1/pools/two")
    assert await call(api, "DELETE", "/api/v1/health-templates/web") == (204, None)


# -- status -----------------------------------------------------------------------------


async def _publish(nc: NatsClient, answer: AnswerSet | None = None, state: PoolState | None = None) -> None:
    js = nc.jetstream()
    if answer is not None:
        await js.publish(subjects.answers(answer.domain), encoder.encode(answer))
    if state is not None:
        await js.publish(subjects.pool_state(state.pool), encoder.encode(state))


async def _status(api: Client) -> dict[str, Any]:
    status, body = await call(api, "GET", "/api/v1/domains/www.example.com/status")
    assert status == 200
    result: dict[str, Any] = body
    return result


ANSWER = AnswerSet(domain="www.example.com", enabled=True, record_type="A", pool="Primary-DC",
                   records=["192.0.2.1"], published_at=1.0)


def _state(*, warming: bool = False) -> PoolState:
    return PoolState(pool="Primary-DC", available=True, warming=warming, at=1.0, addresses=[
        AddressState(name="a", address="192.0.2.1", available=True, waiting="failures 1/3"),
        AddressState(name="b", address="192.0.2.2", available=False, warming=True)])


@pytest.mark.parametrize(
    ("enabled", "answer", "state", "phase"),
    [(False, None, None, "disabled"), (True, None, None, "warming"), (True, None, _state(), "warming"),
     (True, ANSWER, _state(warming=True), "warming"), (True, ANSWER, _state(), "active"),
     (True, ANSWER, None, "active"), (False, ANSWER, _state(), "disabled")],
    ids=["disabled", "enabled, nothing published", "enabled, pool state only", "pool warming", "active",
         "answer only", "disabled with an answer"],
)
async def test_status_is_warming_until_the_first_answer_then_active_and_disabled_when_disabled(
    api: Client, nc: NatsClient, enabled: bool, answer: AnswerSet | None, state: PoolState | None, phase: str
) -> None:
    await _ok(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    await _ok(api, "PUT", "/api/v1/domains/www.example.com", DOMAIN_A | {"enabled": enabled})
    await _publish(nc, answer, state)
    assert (await _status(api))["status"] == phase


async def test_status_shows_waiting_warming_and_regions(api: Client, nc: NatsClient) -> None:
    addresses = [{"name": n, "address": f"192.0.2.{i + 1}", "region": "cn-east"} for i, n in enumerate("ab")]
    pool = {"type": "ipv4", "region": "cn-east", "lb_strategy": "source_nearest", "addresses": addresses}
    await _ok(api, "PUT", "/api/v1/pools/Primary-DC", pool)
    await _ok(api, "PUT", "/api/v1/domains/www.example.com", DOMAIN_A | {"enabled": True,
                                                                          "lb_strategy": "source_nearest"})
    await _publish(nc, ANSWER, _state(warming=True))
    body = await _status(api)
    assert body["status"] == "warming" and body["answer"]["records"] == ["192.0.2.1"]
    got = body["pools"][0]
    assert (got["name"], got["available"], got["warming"], got["region"]) == ("Primary-DC", True, True, "cn-east")
    assert [(a["name"], a["available"], a["waiting"], a["warming"], a["region"]) for a in got["addresses"]] == [
        ("a", True, "failures 1/3", False, "cn-east"), ("b", False, "", True, "cn-east")]
    assert all({"mode", "checks", "address"} <= set(a) for a in got["addresses"])
    await _publish(nc, state=msgspec.structs.replace(_state(), at=time.time()))
    assert (await _status(api))["status"] == "active"
