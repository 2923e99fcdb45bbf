"""The config service's REST API against a real nats-server: in-process and as a real process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NatsClient

from shared import subjects
from shared.messages import (
    AddressState,
    AnswerSet,
    PoolState,
    ProbeResult,
    SwitchEvent,
    encoder,
)
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.support import Api, NatsServer, Service, config_client, free_port, until, wait_until

POOL_V4 = {
    "type": "ipv4",
    "addresses": [
        {"name": "a", "address": "192.0.2.1", "health_check": {"protocol": "http"}},
        {"name": "b", "address": "192.0.2.2"},
    ],
}
POOL_V6 = {"type": "ipv6", "addresses": [{"name": "a", "address": "2001:db8::1"}]}
DOMAIN_A = {"record_type": "A", "pools": [{"pool": "Primary-DC"}]}

Client = TestClient[web.Request, web.Application]


_client = config_client


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    """The API app in-process, its NATS side up."""
    async for client in _client(Settings(nats=NatsSettings(url=nats_url))):
        yield client


async def call(client: Client, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    """One request; the JSON body (or None)."""
    if body is not None:
        kw["json" if isinstance(body, dict | list) else "data"] = body
    async with client.request(method, path, **kw) as resp:
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None


async def events_in_stream(nc: NatsClient) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_EVENTS)
    return int(info.state.messages)


async def seed(api: Client) -> None:
    assert (await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4))[0] == 201
    assert (await call(api, "PUT", "/api/v1/domains/www.example.com", DOMAIN_A))[0] == 201


# -- writes and reads -------------------------------------------------------------------


async def test_put_creates_a_pool_with_defaults_filled_in_and_an_etag(api: Client) -> None:
    async with api.put("/api/v1/pools/Primary-DC", json=POOL_V4) as resp:
        assert resp.status == 201
        body = await resp.json()
        assert resp.headers["ETag"] == f'"{body["revision"]}"'
    assert body["name"] == "Primary-DC" and isinstance(body["revision"], int)
    assert body["enabled"] is True and body["health_condition"] == "any_ok"
    assert body["lb_strategy"] == "round_robin" and body["sequence_mode"] == "preemptive" and body["remarks"] == ""
    first = body["addresses"][0]
    assert (first["enabled"], first["mode"], first["weight"], first["sequence"]) == (True, "auto", 1, 1)
    hc = first["health_check"]
    assert hc["path"] == "/" and hc["expected_codes"] == [200] and hc["interval_s"] == 15
    assert (hc["timeout_s"], hc["failures"], hc["successes"], hc["failure_rate"]) == (2, 2, 1, 50)
    assert body["addresses"][1]["health_check"] is None
    assert await call(api, "GET", "/api/v1/pools/Primary-DC") == (200, body)


async def test_domain_defaults_disabled_ttl_30_sequence(api: Client) -> None:
    await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    status, body = await call(api, "PUT", "/api/v1/domains/www.example.com", DOMAIN_A)
    assert status == 201
    assert {k: v for k, v in body.items() if k != "revision"} == {
        "name": "www.example.com", "record_type": "A", "ttl": 30, "enabled": False, "remarks": "",
        "pools": [{"pool": "Primary-DC", "sequence": 1, "weight": 1, "lines": ["default"]}],
        "lb_strategy": "sequence", "sequence_mode": "preemptive", "all_down": "fail_open", "fallback_pool": None,
    }


async def test_put_over_an_existing_resource_replaces_it_with_200_and_a_new_revision(api: Client) -> None:
    _, first = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    status, second = await call(api, "PUT", "/api/v1/pools/Primary-DC", {"type": "ipv4", "remarks": "x"})
    assert status == 200 and second["revision"] > first["revision"]
    assert second["addresses"] == [] and second["remarks"] == "x"


async def test_domain_name_in_the_path_is_normalized(api: Client) -> None:
    await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    status, body = await call(api, "PUT", "/api/v1/domains/WWW.Example.COM.", DOMAIN_A)
    assert status == 201 and body["name"] == "www.example.com"
    assert (await call(api, "GET", "/api/v1/domains/www.example.com."))[1] == body


async def test_lists_are_sorted_by_name(api: Client) -> None:
    for name in ("zeta", "Alpha", "mid.dle"):
        await call(api, "PUT", f"/api/v1/pools/{name}", POOL_V4)
    await call(api, "PUT", "/api/v1/domains/b.example.com", DOMAIN_A | {"pools": [{"pool": "zeta"}]})
    await call(api, "PUT", "/api/v1/domains/a.example.com", DOMAIN_A | {"pools": [{"pool": "zeta"}]})
    _, pools = await call(api, "GET", "/api/v1/pools")
    assert [p["name"] for p in pools["pools"]] == ["Alpha", "mid.dle", "zeta"]
    _, domains = await call(api, "GET", "/api/v1/domains")
    assert [d["name"] for d in domains["domains"]] == ["a.example.com", "b.example.com"]
    assert all(isinstance(d["revision"], int) for d in domains["domains"])


async def test_empty_lists(api: Client) -> None:
    assert await call(api, "GET", "/api/v1/pools") == (200, {"pools": []})
    assert await call(api, "GET", "/api/v1/domains") == (200, {"domains": []})


# -- bad input: 400 with the field, and nothing changes ---------------------------------


def _addr(**kw: Any) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", **kw}]}


BAD_POOLS: list[tuple[str, Any, str]] = [
    ("malformed json", b'{"type": ', ""),
    ("not an object", b"[1, 2]", ""),
    ("empty body", b"", ""),
    ("missing type", {"addresses": []}, "type"),
    ("unknown type", {"type": "ipv5"}, "type"),
    ("wrong type of value", {"type": "ipv4", "enabled": "yes"}, "enabled"),
    ("unknown top-level field", {"type": "ipv4", "zz": 1}, "zz"),
    ("unknown address field", _addr(zz=1), "addresses[0].zz"),
    ("weight below range", _addr(weight=0), "addresses[0].weight"),
    ("weight above range", _addr(weight=101), "addresses[0].weight"),
    ("sequence above range", _addr(sequence=101), "addresses[0].sequence"),
    ("bad mode", _addr(mode="maybe"), "addresses[0].mode"),
    ("invalid ipv4", _addr(address="192.0.2.300"), "addresses[0].address"),
    ("ipv6 in an ipv4 pool", _addr(address="2001:db8::1"), "addresses[0].address"),
    ("ipv4 in an ipv6 pool", {"type": "ipv6", "addresses": [{"name": "a", "address": "192.0.2.1"}]},
     "addresses[0].address"),
    ("invalid domain name", {"type": "domain", "addresses": [{"name": "a", "address": "not a host"}]},
     "addresses[0].address"),
    ("duplicate address names", {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1"},
                                                              {"name": "a", "address": "192.0.2.2"}]},
     "addresses[1].name"),
    ("timeout not below interval", _addr(health_check={"interval_s": 2, "timeout_s": 2}),
     "addresses[0].health_check.timeout_s"),
    ("failures out of range", _addr(health_check={"failures": 0}), "addresses[0].health_check.failures"),
    ("failure rate not offered", _addr(health_check={"failure_rate": 30}), "addresses[0].health_check.failure_rate"),
    ("bad expected code", _addr(health_check={"expected_codes": ["2xz"]}),
     "addresses[0].health_check.expected_codes[0]"),
    ("tcp check without port", _addr(health_check={"protocol": "tcp"}), "addresses[0].health_check.port"),
    ("remarks too long", {"type": "ipv4", "remarks": "x" * 257}, "remarks"),
    ("name differs from the path", {"type": "ipv4", "name": "Other"}, "name"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_POOLS, ids=[c[0] for c in BAD_POOLS])
async def test_bad_pool_is_rejected_with_the_field_and_changes_nothing(
    api: Client, nc: NatsClient, case: str, body: Any, field: str
) -> None:
    _, before = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    events = await events_in_stream(nc)
    status, err = await call(api, "PUT", "/api/v1/pools/Primary-DC", body)
    assert status == 400, err
    assert err["error"]["code"] == "invalid_argument" and err["error"]["field"] == field
    assert err["error"]["message"] and " - at `" not in err["error"]["message"]
    assert await call(api, "GET", "/api/v1/pools/Primary-DC") == (200, before)
    assert await events_in_stream(nc) == events


BAD_DOMAINS: list[tuple[str, str, Any, str]] = [
    ("unknown record type", "www.example.com", {"record_type": "MX"}, "record_type"),
    ("ttl zero", "www.example.com", DOMAIN_A | {"ttl": 0}, "ttl"),
    ("ttl over a day", "www.example.com", DOMAIN_A | {"ttl": 86401}, "ttl"),
    ("missing pool", "www.example.com", {"record_type": "A", "pools": [{"pool": "nope"}]}, "pools[0].pool"),
    ("record type mismatch", "www.example.com", {"record_type": "AAAA", "pools": [{"pool": "Primary-DC"}]},
     "pools[0].pool"),
    ("pool listed twice", "www.example.com",
     {"record_type": "A", "pools": [{"pool": "Primary-DC"}, {"pool": "Primary-DC"}]}, "pools[1].pool"),
    ("unknown pool ref field", "www.example.com", {"record_type": "A", "pools": [{"pool": "Primary-DC", "zz": 1}]},
     "pools[0].zz"),
    ("weight out of range", "www.example.com",
     {"record_type": "A", "pools": [{"pool": "Primary-DC", "weight": 0}]}, "pools[0].weight"),
    ("bad strategy", "www.example.com", DOMAIN_A | {"lb_strategy": "random"}, "lb_strategy"),
    ("name differs from the path", "www.example.com", DOMAIN_A | {"name": "other.example.com"}, "name"),
    ("single-label name", "localhost", DOMAIN_A, "name"),
    ("label starting with a dash", "-bad.example.com", DOMAIN_A, "name"),
    ("numeric top-level label", "host.123", DOMAIN_A, "name"),
]


@pytest.mark.parametrize(("case", "fqdn", "body", "field"), BAD_DOMAINS, ids=[c[0] for c in BAD_DOMAINS])
async def test_bad_domain_is_rejected_with_the_field_and_changes_nothing(
    api: Client, nc: NatsClient, case: str, fqdn: str, body: Any, field: str
) -> None:
    await seed(api)
    _, before = await call(api, "GET", "/api/v1/domains")
    events = await events_in_stream(nc)
    status, err = await call(api, "PUT", f"/api/v1/domains/{fqdn}", body)
    assert status == 400, err
    assert err["error"]["code"] == "invalid_argument" and err["error"]["field"] == field
    assert await call(api, "GET", "/api/v1/domains") == (200, before)
    assert await events_in_stream(nc) == events


async def test_invalid_pool_name_in_the_path_is_400_name(api: Client) -> None:
    status, err = await call(api, "GET", "/api/v1/pools/bad%20name")
    assert status == 400 and err["error"]["field"] == "name"


# -- 404 / 405 / 409 / 413 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/v1/pools/nope", 404, "not_found"),
        ("GET", "/api/v1/domains/nope.example.com", 404, "not_found"),
        ("GET", "/api/v1/domains/nope.example.com/status", 404, "not_found"),
        ("PATCH", "/api/v1/pools/nope", 404, "not_found"),
        ("DELETE", "/api/v1/domains/nope.example.com", 404, "not_found"),
        ("GET", "/api/v1/nothing", 404, "not_found"),
        ("GET", "/nothing", 404, "not_found"),  # "/" is the console now
        ("POST", "/api/v1/pools", 405, "method_not_allowed"),
        ("DELETE", "/api/v1/domains", 405, "method_not_allowed"),
        ("POST", "/api/v1/pools/x", 405, "method_not_allowed"),
        ("GET", "/api/v1/health-templates/nope", 404, "not_found"),
        ("PATCH", "/api/v1/health-templates/nope", 404, "not_found"),
        ("DELETE", "/api/v1/health-templates/nope", 404, "not_found"),
        ("GET", "/api/v1/alert-targets/nope", 404, "not_found"),
        ("PATCH", "/api/v1/alert-targets/nope", 404, "not_found"),
        ("DELETE", "/api/v1/alert-targets/nope", 404, "not_found"),
        ("GET", "/api/v1/topology/x", 404, "not_found"),
        ("POST", "/api/v1/health-templates", 405, "method_not_allowed"),
        ("DELETE", "/api/v1/alert-targets", 405, "method_not_allowed"),
        ("PATCH", "/api/v1/topology", 405, "method_not_allowed"),
        ("DELETE", "/api/v1/topology", 405, "method_not_allowed"),
    ],
)
async def test_unknown_things_and_methods(api: Client, method: str, path: str, status: int, code: str) -> None:
    body = {"enabled": True} if method == "PATCH" else None
    got, err = await call(api, method, path, body)
    assert got == status and err["error"]["code"] == code and err["error"]["field"] == ""


async def test_deleting_a_pool_in_use_is_409_naming_the_domains(api: Client) -> None:
    await seed(api)
    await call(api, "PUT", "/api/v1/domains/api.example.com", DOMAIN_A)
    status, err = await call(api, "DELETE", "/api/v1/pools/Primary-DC")
    assert status == 409 and err["error"]["code"] == "conflict"
    assert "www.example.com" in err["error"]["message"] and "api.example.com" in err["error"]["message"]
    assert (await call(api, "GET", "/api/v1/pools/Primary-DC"))[0] == 200


async def test_delete_is_204_and_the_resource_is_gone(api: Client) -> None:
    await seed(api)
    assert await call(api, "DELETE", "/api/v1/domains/www.example.com") == (204, None)
    assert (await call(api, "GET", "/api/v1/domains/www.example.com"))[0] == 404
    assert await call(api, "DELETE", "/api/v1/pools/Primary-DC") == (204, None)
    assert (await call(api, "DELETE", "/api/v1/pools/Primary-DC"))[0] == 404
    # a deleted resource can be created again
    assert (await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4))[0] == 201


async def test_changing_the_type_of_a_pool_in_use_is_400_type(api: Client) -> None:
    await seed(api)
    status, err = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V6)
    assert status == 400 and err["error"]["field"] == "type" and "www.example.com" in err["error"]["message"]
    await call(api, "PUT", "/api/v1/pools/Spare", POOL_V4)
    assert (await call(api, "PUT", "/api/v1/pools/Spare", POOL_V6))[0] == 200  # unused: fine


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_over_one_mib_are_413(api: Client, chunked: bool) -> None:
    big = b'{"type": "ipv4", "remarks": "' + b"x" * (1 << 20) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    status, err = await call(api, "PUT", "/api/v1/pools/Big", chunks() if chunked else big)
    assert status == 413 and err["error"]["code"] == "payload_too_large"
    assert (await call(api, "GET", "/api/v1/pools/Big"))[0] == 404


# -- ETag / If-Match --------------------------------------------------------------------


@pytest.mark.parametrize("quote", [True, False], ids=["quoted", "bare"])
async def test_if_match_with_the_current_revision_writes(api: Client, quote: bool) -> None:
    _, pool = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    rev = f'"{pool["revision"]}"' if quote else str(pool["revision"])
    status, body = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4, headers={"If-Match": rev})
    assert status == 200
    status, body = await call(api, "PATCH", "/api/v1/pools/Primary-DC", {"remarks": "r"},
                              headers={"If-Match": f'"{body["revision"]}"'})
    assert status == 200 and body["remarks"] == "r"
    assert await call(api, "DELETE", "/api/v1/pools/Primary-DC", headers={"If-Match": str(body["revision"])}) == (
        204, None)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_stale_if_match_is_412_and_changes_nothing(
    api: Client, nc: NatsClient, method: str
) -> None:
    _, old = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    _, current = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4 | {"remarks": "now"})
    events = await events_in_stream(nc)
    body = {"remarks": "stale"} if method == "PATCH" else (POOL_V4 if method == "PUT" else None)
    status, err = await call(api, method, "/api/v1/pools/Primary-DC", body,
                             headers={"If-Match": f'"{old["revision"]}"'})
    assert status == 412 and err["error"]["code"] == "precondition_failed"
    assert await call(api, "GET", "/api/v1/pools/Primary-DC") == (200, current)
    assert await events_in_stream(nc) == events


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_stale_revision_in_the_body_acts_like_if_match(api: Client, method: str) -> None:
    _, old = await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    await call(api, "PUT", "/api/v1/pools/Primary-DC", POOL_V4)
    body = (POOL_V4 if method == "PUT" else {"remarks": "x"}) | {"revision": old["revision"]}
    assert (await call(api, method, "/api/v1/pools/Primary-DC", body))[0] == 412
    _, current = await call(api, "GET", "/api/v1/pools/Primary-DC")
    body["revision"] = current["revision"]
    assert (await call(api, method, "/api/v1/pools/Primary-DC", body))[0] == 200


async def test_if_match_on_a_missing_resource(api: Client) -> None:
    assert (await call(api, "PUT", "/api/v1/pools/New", POOL_V4, headers={"If-Match": '"3"'}))[0] == 412
    assert (await call(api, "PATCH", "/api/v1/pools/New", {"remarks": "x"}, headers={"If-Match": "3"}))[0] == 404
    assert (await call(api, "DELETE", "/api/v1/pools/New", headers={"If-Match": "3"}))[0] == 404


# -- merge-patch ------------------------------------------------------------------------


async def test_patch_merges_into_the_stored_document_and_validates(api: Client) -> None:
    await seed(api)
    status, body = await call(api, "PATCH", "/api/v1/domains/www.example.com",
                              {"enabled": True, "ttl": 60, "remarks": "hi"},
                              headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and (body["enabled"], body["ttl"], body["remarks"]) == (True, 60, "hi")
    assert body["pools"] == [{"pool": "Primary-DC", "sequence": 1, "weight": 1, "lines": ["default"]}]
    status, body = await call(api, "PATCH", "/api/v1/domains/www.example.com", {"remarks": None, "ttl": None})
    assert status == 200 and (body["remarks"], body["ttl"], body["enabled"]) == ("", 30, True)
    # arrays are replaced as a whole
    _, pool = await call(api, "PATCH", "/api/v1/pools/Primary-DC",
                         {"addresses": [{"name": "c", "address": "192.0.2.3"}]})
    assert [a["name"] for a in pool["addresses"]] == ["c"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"ttl": 0}, "ttl"), ({"zz": 1}, "zz"), ({"record_type": None}, "record_type"),
     ({"pools": [{"pool": "nope"}]}, "pools[0].pool"), ({"name": "other.example.com"}, "name"),
     ({"record_type": "AAAA"}, "pools[0].pool"), ([1], ""), ({"revision": "x"}, "revision")],
)
async def test_patch_that_makes_the_domain_invalid_is_400_and_changes_nothing(
    api: Client, patch: Any, field: str
) -> None:
    await seed(api)
    _, before = await call(api, "GET", "/api/v1/domains/www.example.com")
    status, err = await call(api, "PATCH", "/api/v1/domains/www.example.com", patch)
    assert status == 400 and err["error"]["field"] == field
    assert await call(api, "GET", "/api/v1/domains/www.example.com") == (200, before)


# -- operation and switch events --------------------------------------------------------


async def test_every_accepted_write_publishes_an_operation_event(api: Client, nc: NatsClient) -> None:
    received: list[bytes] = []

    async def on(msg: Any) -> None:
        received.append(msg.data)

    await nc.subscribe(subjects.OPERATION_EVENTS_ALL, cb=on)
    await nc.flush()
    await seed(api)
    _, patched = await call(api, "PATCH", "/api/v1/pools/Primary-DC", {"remarks": "r"})
    await call(api, "DELETE", "/api/v1/domains/www.example.com")
    async def four() -> bool:
        return len(received) >= 4

    await until(four)
    got = [msgspec.json.decode(r) for r in received]
    assert [(g["method"], g["resource"], g["name"], g["domain"]) for g in got] == [
        ("PUT", "pool", "Primary-DC", ""),
        ("PUT", "domain", "www.example.com", "www.example.com"),
        ("PATCH", "pool", "Primary-DC", ""),
        ("DELETE", "domain", "www.example.com", "www.example.com"),
    ]
    assert got[0]["message"] == "PUT /api/v1/pools/Primary-DC" and got[0]["path"] == "/api/v1/pools/Primary-DC"
    assert got[2]["revision"] == patched["revision"]
    assert got[3]["revision"] > patched["revision"]  # the delete marker's revision


async def test_events_lists_operations_newest_first_right_after_the_write(api: Client) -> None:
    await seed(api)
    status, body = await call(api, "GET", "/api/v1/events")
    assert status == 200
    ops = body["events"]
    assert [(e["kind"], e["method"], e["name"]) for e in ops] == [
        ("operation", "PUT", "www.example.com"), ("operation", "PUT", "Primary-DC")]
    assert ops[0]["path"] == "/api/v1/domains/www.example.com" and ops[0]["domain"] == "www.example.com"
    assert ops[0]["message"] == "PUT /api/v1/domains/www.example.com"
    assert ops[0]["at"].endswith("Z") and ops[0]["revision"] > ops[1]["revision"]


async def test_events_include_switches_from_the_scheduler_and_filter(
    api: Client, nc: NatsClient
) -> None:
    await seed(api)
    js = nc.jetstream()
    switch = SwitchEvent(domain="www.example.com", at=time.time(), from_pool="Primary-DC", to_pool="Backup-DC",
                         reason="Primary-DC unavailable", before=["192.0.2.1"], after=["198.51.100.1"])
    await js.publish(subjects.switch_event("www.example.com"), encoder.encode(switch))
    other = SwitchEvent(domain="other.example.com", at=time.time(), from_pool="x", to_pool="y", reason="r")
    await js.publish(subjects.switch_event("other.example.com"), encoder.encode(other))

    async def switches() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = (await call(api, "GET", "/api/v1/events?kind=switch"))[1]["events"]
        return events

    got = await until(lambda: _len_at_least(switches, 2))
    assert [e["domain"] for e in got] == ["other.example.com", "www.example.com"]
    www = got[1]
    assert www["message"] == "switched from Primary-DC to Backup-DC: Primary-DC unavailable"
    assert (www["from_pool"], www["to_pool"], www["before"], www["after"], www["fallback"]) == (
        "Primary-DC", "Backup-DC", ["192.0.2.1"], ["198.51.100.1"], False)

    _, body = await call(api, "GET", "/api/v1/events?domain=www.example.com")
    assert [e["kind"] for e in body["events"]] == ["switch", "operation"]
    _, body = await call(api, "GET", "/api/v1/events?kind=operation&limit=1")
    assert [(e["kind"], e["name"]) for e in body["events"]] == [("operation", "www.example.com")]
    _, body = await call(api, "GET", "/api/v1/events")
    assert [e["kind"] for e in body["events"]] == ["switch", "switch", "operation", "operation"]


async def _len_at_least(fetch: Callable[[], Awaitable[list[Any]]], n: int) -> list[Any] | None:
    items = await fetch()
    return items if len(items) >= n else None


@pytest.mark.parametrize(
    ("query", "field"),
    [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=many", "limit"), ("kind=audit", "kind")],
)
async def test_bad_events_query_is_400_naming_the_parameter(api: Client, query: str, field: str) -> None:
    status, err = await call(api, "GET", f"/api/v1/events?{query}")
    assert status == 400
    assert (err["error"]["code"], err["error"]["field"]) == ("invalid_argument", field)


# -- domain status ----------------------------------------------------------------------


async def test_status_before_the_scheduler_published_anything(api: Client) -> None:
    await seed(api)
    status, body = await call(api, "GET", "/api/v1/domains/WWW.example.com/status")
    assert status == 200
    unknown: dict[str, Any] = {"available": None, "mode": "auto", "region": "", "lines": ["default"],
                               "waiting": None, "warming": None, "checks": [], "healthy": None,
                               "health_reason": None, "mode_in_force": None, "maintenance_until": None,
                               "judgement": "all_ok"}
    assert body == {"domain": "www.example.com", "enabled": False, "status": "disabled", "answer": None, "pools": [
        {"name": "Primary-DC", "available": None, "warming": None, "region": "", "lines": ["default"],
         "fallback_pool": False, "addresses": [
            {"name": "a", "address": "192.0.2.1", **unknown},
            {"name": "b", "address": "192.0.2.2", **unknown},
        ]}]}


async def test_status_shows_answer_pool_state_and_latest_checks(api: Client, nc: NatsClient) -> None:
    await seed(api)
    js = nc.jetstream()
    now = time.time()
    answer = AnswerSet(domain="www.example.com", enabled=True, record_type="A", ttl=30, pool="Primary-DC",
                       records=["192.0.2.1"], published_at=now)
    await js.publish(subjects.answers("www.example.com"), encoder.encode(answer))
    state = PoolState(pool="Primary-DC", available=True, at=now, addresses=[
        AddressState(name="a", address="192.0.2.1", available=True),
        AddressState(name="b", address="192.0.2.2", available=False)])
    await js.publish(subjects.pool_state("Primary-DC"), encoder.encode(state))
    key = subjects.address_key("Primary-DC", "a")
    for ok, at in ((False, now - 1), (True, now)):
        probe = ProbeResult(region="local", prober="p1", key=key, pool="Primary-DC", address="a",
                            target="192.0.2.1", protocol="http", ok=ok, rtt_ms=2.5 if ok else None,
                            error="" if ok else "connection refused", at=at)
        await nc.publish(subjects.probe_result("local", key), encoder.encode(probe))
    await nc.flush()

    async def status() -> dict[str, Any] | None:
        body = (await call(api, "GET", "/api/v1/domains/www.example.com/status"))[1]
        checks = body["pools"][0]["addresses"][0]["checks"]
        return body if checks and checks[0]["ok"] else None

    body = await until(status)
    assert body["answer"]["pool"] == "Primary-DC" and body["answer"]["records"] == ["192.0.2.1"]
    assert body["answer"]["ttl"] == 30 and body["answer"]["fallback"] is False
    assert body["answer"]["published_at"].endswith("Z")
    pool = body["pools"][0]
    assert pool["available"] is True
    assert [(a["name"], a["available"]) for a in pool["addresses"]] == [("a", True), ("b", False)]
    check = pool["addresses"][0]["checks"]
    assert len(check) == 1
    assert {k: check[0][k] for k in ("region", "prober", "ok", "rtt_ms", "error")} == {
        "region": "local", "prober": "p1", "ok": True, "rtt_ms": 2.5, "error": ""}


# -- config.apply (NATS request/reply) --------------------------------------------------


async def apply_request(nc: NatsClient, request: Any) -> dict[str, Any]:
    data = request if isinstance(request, bytes) else msgspec.json.encode(request)
    reply = await nc.request(subjects.CONFIG_APPLY, data, timeout=5)
    result: dict[str, Any] = msgspec.json.decode(reply.data)
    return result


async def test_config_apply_writes_like_the_rest_api(api: Client, nc: NatsClient) -> None:
    reply = await apply_request(nc, {"method": "PUT", "path": "/api/v1/pools/Primary-DC", "body": POOL_V4})
    assert reply["status"] == 201 and reply["body"]["name"] == "Primary-DC"
    assert (await call(api, "GET", "/api/v1/pools/Primary-DC"))[1] == reply["body"]
    reply = await apply_request(nc, {"method": "PUT", "path": "domains/www.example.com", "body": DOMAIN_A})
    assert reply["status"] == 201
    reply = await apply_request(nc, {"method": "PATCH", "path": "/api/v1/domains/www.example.com",
                                     "body": {"enabled": True}, "if_match": str(reply["body"]["revision"])})
    assert reply["status"] == 200 and reply["body"]["enabled"] is True
    reply = await apply_request(nc, {"method": "GET", "path": "/api/v1/domains"})
    assert [d["name"] for d in reply["body"]["domains"]] == ["www.example.com"]
    _, events = await call(api, "GET", "/api/v1/events?kind=operation")
    assert [e["method"] for e in events["events"]] == ["PATCH", "PUT", "PUT"]


@pytest.mark.parametrize(
    ("request_", "status", "code", "field"),
    [
        ({"method": "PUT", "path": "/api/v1/pools/p", "body": _addr(weight=0)}, 400, "invalid_argument",
         "addresses[0].weight"),
        ({"method": "DELETE", "path": "/api/v1/pools/Primary-DC"}, 409, "conflict", ""),
        ({"method": "PATCH", "path": "/api/v1/pools/Primary-DC", "body": {}, "if_match": "1000"}, 412,
         "precondition_failed", ""),
        ({"method": "GET", "path": "/api/v1/pools/nope"}, 404, "not_found", ""),
        ({"method": "GET", "path": "/api/v1/nothing"}, 404, "not_found", ""),
        ({"method": "POST", "path": "/api/v1/pools/p"}, 400, "invalid_argument", "method"),
        ({"method": "PUT", "path": "/api/v1/pools/p", "zz": 1}, 400, "invalid_argument", "zz"),
        (b"not json", 400, "invalid_argument", ""),
    ],
)
async def test_config_apply_errors_are_the_rest_api_errors(
    api: Client, nc: NatsClient, request_: Any, status: int, code: str, field: str
) -> None:
    await seed(api)
    reply = await apply_request(nc, request_)
    assert reply["status"] == status
    assert (reply["body"]["error"]["code"], reply["body"]["error"]["field"]) == (code, field)


# -- health, readiness, auth, NATS away -------------------------------------------------


async def test_healthz_and_readyz(api: Client) -> None:
    assert await call(api, "GET", "/healthz") == (200, {"status": "ok"})
    assert await call(api, "GET", "/readyz") == (200, {"status": "ready"})


async def test_token_is_required_everywhere_but_health_endpoints(nats_url: str) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(token="s3cret"))
    async for client in _client(settings):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, err = await call(client, "GET", "/api/v1/pools", headers=headers)
            assert status == 401 and err["error"]["code"] == "unauthorized"
            assert (await call(client, "PUT", "/api/v1/pools/p", POOL_V4, headers=headers))[0] == 401
        assert (await call(client, "GET", "/api/v1/nothing"))[0] == 401
        assert (await call(client, "GET", "/healthz"))[0] == 200
        assert (await call(client, "GET", "/readyz"))[0] == 200
        ok = {"Authorization": "Bearer s3cret"}
        assert (await call(client, "PUT", "/api/v1/pools/p", POOL_V4, headers=ok))[0] == 201
        assert (await call(client, "GET", "/api/v1/pools", headers=ok))[0] == 200


async def test_without_nats_reads_and_writes_are_503_and_not_ready() -> None:
    settings = Settings(nats=NatsSettings(url=f"nats://127.0.0.1:{free_port()}"))
    async for client in _client(settings, wait_ready=False):
        assert await call(client, "GET", "/healthz") == (200, {"status": "ok"})
        status, body = await call(client, "GET", "/readyz")
        assert status == 503 and body["status"] == "not_ready" and body["reason"]
        for method, path, body in (("GET", "/api/v1/pools", None), ("PUT", "/api/v1/pools/p", POOL_V4),
                                   ("GET", "/api/v1/events", None)):
            status, err = await call(client, method, path, body)
            assert status == 503 and err["error"]["code"] == "unavailable"


# -- the real process -------------------------------------------------------------------


def _config(nats_url: str, log_dir: Path, port: int, **env: str) -> Service:
    return Service("config", {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}", **env}, log_dir)


@pytest.fixture
def process(nats_url: str, log_dir: Path) -> Iterator[tuple[Service, Api]]:
    port = free_port()
    svc = _config(nats_url, log_dir, port).start()
    try:
        svc.wait_for_event("service_ready")
        yield svc, Api(f"http://127.0.0.1:{port}")
    finally:
        svc.stop()


def test_process_logs_ready_with_its_address_and_one_access_line_per_request(
    process: tuple[Service, Api],
) -> None:
    svc, api = process
    ready = [e for e in svc.events() if e.get("event") == "service_ready"]
    assert len(ready) == 1 and ready[0]["listen"] == api.base.removeprefix("http://")
    assert any(e.get("event") == "api_unauthenticated" and e["level"] == "warning" for e in svc.events())
    assert api.get("/api/v1/pools/nope")[0] == 404
    line = wait_until(lambda: next((e for e in svc.events() if e.get("event") == "http_request"
                                    and e.get("path") == "/api/v1/pools/nope"), None))
    assert line["method"] == "GET" and line["status"] == 404 and line["level"] == "info"
    assert isinstance(line["duration_ms"], int | float)


def test_resources_and_revisions_survive_a_restart(nats_url: str, log_dir: Path) -> None:
    port = free_port()
    api = Api(f"http://127.0.0.1:{port}")
    first = _config(nats_url, log_dir, port).start()
    try:
        first.wait_for_event("service_ready")
        assert api.put("/api/v1/pools/Primary-DC", POOL_V4)[0] == 201
        assert api.put("/api/v1/domains/www.example.com", DOMAIN_A)[0] == 201
        assert api.patch("/api/v1/domains/www.example.com", {"enabled": True})[0] == 200
        before = (api.get("/api/v1/pools")[1], api.get("/api/v1/domains")[1], api.get("/api/v1/events")[1])
    finally:
        assert first.stop() == 0
    second = _config(nats_url, log_dir, port).start()
    try:
        second.wait_for_event("service_ready")
        after = (api.get("/api/v1/pools")[1], api.get("/api/v1/domains")[1], api.get("/api/v1/events")[1])
        assert after == before
        assert len(after[2]["events"]) == 3
    finally:
        assert second.stop() == 0


def test_refuses_to_listen_on_all_interfaces_without_a_token(nats_url: str, log_dir: Path) -> None:
    svc = Service("config", {"NATS_URL": nats_url, "GTM_API_LISTEN": f"0.0.0.0:{free_port()}"}, log_dir).start()
    try:
        assert svc.proc is not None
        code = svc.proc.wait(15)
        assert code != 0
        refusal = next(e for e in svc.events() if e.get("level") == "error")
        assert "GTM_API_TOKEN" in refusal["reason"]
        assert not any(e.get("event") == "service_ready" for e in svc.events())
    finally:
        svc.stop()


def test_all_interfaces_with_a_token_serves_and_checks_it(nats_url: str, log_dir: Path) -> None:
    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"0.0.0.0:{port}", "GTM_API_TOKEN": "s3cret"}
    svc = Service("config", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        api = Api(f"http://127.0.0.1:{port}")
        assert api.get("/api/v1/pools")[0] == 401
        assert api.request("GET", "/api/v1/pools", headers={"Authorization": "Bearer nope"})[0] == 401
        assert api.request("GET", "/api/v1/pools", headers={"Authorization": "Bearer s3cret"}) == (
            200, {"pools": []})
        assert api.get("/healthz") == (200, {"status": "ok"})
    finally:
        assert svc.stop() == 0


def test_readyz_follows_nats_going_away_and_coming_back(tmp_path: Path, log_dir: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    port = free_port()
    svc = _config(server.url, log_dir, port).start()
    api = Api(f"http://127.0.0.1:{port}")
    try:
        svc.wait_for_event("service_ready")
        assert api.put("/api/v1/pools/Primary-DC", POOL_V4)[0] == 201
        assert api.get("/readyz") == (200, {"status": "ready"})
        server.stop()
        status, body = wait_until(lambda: (r := api.get("/readyz"))[0] == 503 and r)
        assert body["status"] == "not_ready" and body["reason"]
        status, err = api.get("/api/v1/pools")
        assert status == 503 and err["error"]["code"] == "unavailable"
        server.start()
        wait_until(lambda: api.get("/readyz")[0] == 200, timeout=15)
        assert [p["name"] for p in api.get("/api/v1/pools")[1]["pools"]] == ["Primary-DC"]
    finally:
        assert svc.stop() == 0
        server.stop()
