"""Hostile resources and requests: each hole of issue 7 (resource level) pinned.

- a resource too big for one NATS message: 413 before the write (was 503, which invites retries);
- names ``.`` and ``..`` (browsers and curl drop them from URLs): 400 ``name``;
- CR/LF or any control character in a check's ``path``/``host`` or an alert ``url``: 400 with the field;
- without a token, a Host or Origin that is not loopback (DNS rebinding): 403 ``forbidden``;
- a stale If-Match against two config replicas: always 412, never 409.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from nats.aio.client import Client as NatsClient

from services.config.app import BACKEND
from services.config.security import browser_refusal
from services.config.store import ConfigStore
from services.config.validation import MAX_STORED_BYTES
from shared import subjects
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.support import config_client

Client = TestClient[web.Request, web.Application]
POOL = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1"}]}


_client = config_client


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    async for client in _client(Settings(nats=NatsSettings(url=nats_url))):
        yield client


async def call(client: Client, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    if body is not None:
        kw["data"] = body if isinstance(body, bytes) else json.dumps(body)
    async with client.request(method, path, **kw) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


def error(body: Any) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["field"]


async def operations(client: Client) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await call(client, "GET", "/api/v1/events?kind=operation"))[1]["events"]
    return events


async def apply_request(nc: NatsClient, request: Any) -> dict[str, Any]:
    reply = await nc.request(subjects.CONFIG_APPLY, json.dumps(request).encode(), timeout=10)
    out: dict[str, Any] = json.loads(reply.data)
    return out


# -- too big for the bus: 413 before the write -----------------------------------------------------


def _addresses(n: int, name_len: int = 0) -> list[dict[str, Any]]:
    return [{"name": f"a{i}".ljust(name_len, "x"), "address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"}
            for i in range(n)]


async def test_a_pool_too_big_to_store_is_413_naming_the_field_and_writes_nothing(api: Client) -> None:
    body = json.dumps({"type": "ipv4", "addresses": _addresses(10_000)}).encode()
    assert 400_000 < len(body) < 1 << 20  # the 429 KB of the issue: under the body limit
    status, err = await call(api, "PUT", "/api/v1/pools/Big", body)
    assert status == 413 and error(err) == ("payload_too_large", "addresses"), err
    assert f"over the limit of {MAX_STORED_BYTES}" in err["error"]["message"]
    assert (await call(api, "GET", "/api/v1/pools/Big"))[0] == 404
    assert await operations(api) == []
    # a PATCH that grows a pool over the limit is refused the same way
    assert (await call(api, "PUT", "/api/v1/pools/Big", {"type": "ipv4", "addresses": _addresses(10)}))[0] == 201
    status, err = await call(api, "PATCH", "/api/v1/pools/Big", body)
    assert status == 413 and error(err) == ("payload_too_large", "addresses")
    assert len((await call(api, "GET", "/api/v1/pools/Big"))[1]["addresses"]) == 10


async def test_the_largest_pool_under_the_limit_is_stored(api: Client, nc: NatsClient) -> None:
    # 4,000 addresses with names padded so that the stored form lands just under the limit
    n, pad = 4000, 1
    while True:
        probe = {"type": "ipv4", "addresses": _addresses(n, pad + 1)}
        if _stored_size(probe) > MAX_STORED_BYTES:
            break
        pad += 1
    fits = {"type": "ipv4", "addresses": _addresses(n, pad)}
    assert MAX_STORED_BYTES - n < _stored_size(fits) <= MAX_STORED_BYTES
    status, body = await call(api, "PUT", "/api/v1/pools/Edge", fits)
    assert status == 201, body
    entry = await nc.jetstream().key_value(subjects.CONFIG_BUCKET)
    stored = await entry.get(subjects.pool_key("Edge"))
    assert stored.value is not None and len(stored.value) <= MAX_STORED_BYTES < nc.max_payload
    status, err = await call(api, "PUT", "/api/v1/pools/Over", {"type": "ipv4", "addresses": _addresses(n, pad + 1)})
    assert status == 413 and error(err) == ("payload_too_large", "addresses")


def _stored_size(doc: dict[str, Any]) -> int:
    from services.config.codec import POOL as KIND
    from services.config.codec import decode
    from shared.resources import validate_pool

    pool = validate_pool(decode(KIND, json.dumps(doc).encode()), "x")  # type: ignore[arg-type]
    return len(msgspec.json.encode(pool))


async def test_a_document_with_a_pool_too_big_is_refused_whole(api: Client, nc: NatsClient) -> None:
    big = {"type": "ipv4", "addresses": _addresses(10_000)}
    reply = await apply_request(nc, {"document": {"pools": {"Small": POOL, "Big": big}}})
    assert reply["status"] == 413 and error(reply["body"]) == ("payload_too_large", "pools.Big.addresses")
    assert (await call(api, "GET", "/api/v1/pools"))[1]["pools"] == []  # all-or-nothing
    reply = await apply_request(nc, {"method": "PUT", "path": "pools/Big", "body": big})
    assert reply["status"] == 413


async def test_a_template_change_that_would_grow_its_pools_too_big_is_413(api: Client) -> None:
    assert (await call(api, "PUT", "/api/v1/health-templates/web", {"protocol": "http"}))[0] == 201
    addresses = [{**a, "health_check": {"template": "web"}} for a in _addresses(1500)]
    assert (await call(api, "PUT", "/api/v1/pools/P", {"type": "ipv4", "addresses": addresses}))[0] == 201
    status, err = await call(api, "PATCH", "/api/v1/health-templates/web", {"body_match": "x" * 1024})
    assert status == 413 and err["error"]["code"] == "payload_too_large" and "pool 'P'" in err["error"]["message"]
    assert (await call(api, "GET", "/api/v1/health-templates/web"))[1]["body_match"] == ""


# -- names that are dot segments ---------------------------------------------------------------------


async def _raw(client: Client, method: str, target: str, body: bytes = b"") -> tuple[int, Any]:
    """One HTTP/1.1 request with ``target`` sent as is (clients would remove its dot segments)."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{client.server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload) if payload.strip() else None


@pytest.mark.parametrize("name", [".", "..", "%2E", "%2e%2E", ".%2e"])
@pytest.mark.parametrize(("collection", "body"), [
    ("pools", POOL), ("health-templates", {"protocol": "http"}), ("alert-targets", {"url": "http://h/"}),
])
async def test_dot_segment_names_are_refused(api: Client, name: str, collection: str, body: Any) -> None:
    status, err = await _raw(api, "PUT", f"/api/v1/{collection}/{name}", json.dumps(body).encode())
    assert status == 400 and error(err) == ("invalid_argument", "name"), err
    assert (await call(api, "GET", f"/api/v1/{collection}"))[1] == {
        "pools": {"pools": []}, "health-templates": {"templates": []}, "alert-targets": {"alert_targets": []},
    }[collection]


async def test_dot_segment_names_are_refused_over_nats_and_in_documents(api: Client, nc: NatsClient) -> None:
    for name in (".", ".."):
        reply = await apply_request(nc, {"method": "PUT", "path": f"pools/{name}", "body": POOL})
        assert reply["status"] == 400 and error(reply["body"]) == ("invalid_argument", "name"), reply
        reply = await apply_request(nc, {"document": {"pools": {name: POOL}}})
        assert reply["status"] == 400 and error(reply["body"]) == ("invalid_argument", f"pools.{name}.name"), reply
    bad_address = {"type": "ipv4", "addresses": [{"name": "..", "address": "192.0.2.1"}]}
    status, err = await call(api, "PUT", "/api/v1/pools/P", bad_address)
    assert status == 400 and error(err) == ("invalid_argument", "addresses[0].name")
    assert (await call(api, "PUT", "/api/v1/pools/...", POOL))[0] == 201  # three dots is a name like any other
    assert (await call(api, "PUT", "/api/v1/pools/.hidden", POOL))[0] == 201


# -- control characters --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["/x\r\nX-Injected: 1", "/x\n", "/\x00", "/\t", "/\x7f", "/\x85"])
@pytest.mark.parametrize("field", ["path", "host"])
async def test_control_characters_in_a_checks_path_or_host_are_400(api: Client, bad: str, field: str) -> None:
    value = bad if field == "path" else "example.com" + bad.lstrip("/")
    check = {"protocol": "http", field: value}
    pool = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "health_check": check}]}
    status, err = await call(api, "PUT", "/api/v1/pools/P", pool)
    assert status == 400 and error(err) == ("invalid_argument", f"addresses[0].health_check.{field}"), err
    status, err = await call(api, "PUT", "/api/v1/health-templates/t", check)
    assert status == 400 and error(err) == ("invalid_argument", field), err
    assert (await call(api, "GET", "/api/v1/pools/P"))[0] == 404


@pytest.mark.parametrize("url", ["http://hooks.example/x\r\nHost: evil", "http://hooks\n.example/", "http://h/\x00"])
async def test_control_characters_in_an_alert_url_are_400(api: Client, url: str) -> None:
    status, err = await call(api, "PUT", "/api/v1/alert-targets/ops", {"url": url})
    assert status == 400 and error(err) == ("invalid_argument", "url"), err


async def test_ordinary_paths_hosts_and_urls_still_pass(api: Client) -> None:
    check = {"protocol": "https", "path": "/health?x=1&y=%0D", "host": "www.example.com"}
    pool = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "health_check": check}]}
    assert (await call(api, "PUT", "/api/v1/pools/P", pool))[0] == 201
    assert (await call(api, "PUT", "/api/v1/alert-targets/ops", {"url": "https://hooks.example/a?b=c"}))[0] == 201


# -- DNS rebinding: an unauthenticated API answers loopback names only -----------------------------


@pytest.mark.parametrize(
    ("host", "origin", "refused"),
    [
        ("127.0.0.1:8080", None, None),
        ("localhost:8080", "http://localhost:8080", None),
        ("[::1]:8080", "http://[::1]:8080", None),
        ("127.0.0.2", None, None),
        ("LOCALHOST:8080", None, None),
        (None, None, None),  # no Host: not a browser
        ("evil.example:8080", None, "Host"),
        ("evil.example", "http://evil.example", "Host"),
        ("127.0.0.1.nip.io:8080", None, "Host"),
        ("localhost.:8080", None, "Host"),
        ("127.0.0.1:8080", "http://evil.example", "Origin"),
        ("127.0.0.1:8080", "http://127.0.0.1:3000", "Origin"),  # another local page
        ("127.0.0.1:8080", "null", "Origin"),
        ("127.0.0.1:8080", "https://127.0.0.1", "Origin"),  # port 443
        ("127.0.0.1:x", None, "Host"),
    ],
)
def test_browser_policy(host: str | None, origin: str | None, refused: str | None) -> None:
    got = browser_refusal(host, origin, "127.0.0.1")
    assert (got[0] if got else None) == refused


def test_the_listen_host_itself_is_allowed() -> None:
    assert browser_refusal("gtm.internal:8080", None, "gtm.internal") is None
    assert browser_refusal("gtm.internal:8080", None, "127.0.0.1") is not None


async def test_a_rebinding_page_cannot_patch_the_unauthenticated_api(api: Client) -> None:
    assert (await call(api, "PUT", "/api/v1/pools/P", POOL))[0] == 201
    port = api.server.port
    rebinding = {"Host": f"attacker.example:{port}", "Origin": f"http://attacker.example:{port}"}
    status, err = await call(api, "PATCH", "/api/v1/pools/P", {"remarks": "pwned"}, headers=rebinding)
    assert status == 403 and error(err) == ("forbidden", "Host"), err
    assert (await call(api, "GET", "/api/v1/pools", headers=rebinding))[0] == 403  # nor read it
    assert (await call(api, "GET", "/", headers=rebinding))[0] == 403
    cross = {"Origin": "http://attacker.example"}  # a simple cross-site POST (text/plain needs no preflight)
    status, err = await call(api, "POST", "/api/v1/apply", {"document": {"pools": {"Q": POOL}}}, headers=cross)
    assert status == 403 and error(err) == ("forbidden", "Origin")
    assert (await call(api, "GET", "/healthz", headers=rebinding))[0] == 200  # health stays open
    _, pool = await call(api, "GET", "/api/v1/pools/P")
    assert pool["remarks"] == ""
    own = {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert (await call(api, "PATCH", "/api/v1/pools/P", {"remarks": "ok"}, headers=own))[0] == 200


async def test_with_a_token_any_host_is_served(nats_url: str) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(token="s3cret"))
    async for client in _client(settings):
        headers = {"Host": "gtm.example.com", "Origin": "https://console.example.com",
                   "Authorization": "Bearer s3cret"}
        assert (await call(client, "PUT", "/api/v1/pools/P", POOL, headers=headers))[0] == 201


# -- two replicas: a stale If-Match is 412 -------------------------------------------------------------


@pytest.fixture
async def replicas(nats_url: str) -> AsyncIterator[tuple[Client, Client]]:
    """Two config services on one NATS: each with its own store (and lock)."""
    settings = Settings(nats=NatsSettings(url=nats_url))
    async for a in _client(settings):
        async for b in _client(settings):
            yield a, b


def _store(client: Client) -> ConfigStore:
    app: web.Application = client.server.app  # type: ignore[assignment]
    return app[BACKEND].store


def _interleave(client: Client, other: Client, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``client``'s next write lose to a write through ``other`` made between its check and its store."""
    store = _store(client)
    real_store, real_kv_delete = store._store, store.kv.delete
    done = False

    async def first_other() -> None:
        nonlocal done
        if not done:
            done = True
            assert (await call(other, "PATCH", path, {"remarks": "other replica"}))[0] == 200

    async def late_store(*args: Any, **kw: Any) -> int:
        await first_other()
        return await real_store(*args, **kw)

    async def late_delete(*args: Any, **kw: Any) -> bool:
        await first_other()
        return await real_kv_delete(*args, **kw)

    monkeypatch.setattr(store, "_store", late_store)
    monkeypatch.setattr(store.kv, "delete", late_delete)


@pytest.mark.parametrize(("method", "body"), [("PATCH", {"remarks": "mine"}), ("PUT", POOL), ("DELETE", None)])
async def test_a_write_overtaken_by_another_replica_is_412_with_if_match(
    replicas: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, method: str, body: Any
) -> None:
    a, b = replicas
    _, created = await call(a, "PUT", "/api/v1/pools/P", POOL)
    _interleave(a, b, "/api/v1/pools/P", monkeypatch)
    status, err = await call(a, method, "/api/v1/pools/P", body, headers={"If-Match": f'"{created["revision"]}"'})
    assert status == 412 and err["error"]["code"] == "precondition_failed", err
    assert f'at revision {created["revision"] + 1}, not "{created["revision"]}"' in err["error"]["message"]
    _, now = await call(a, "GET", "/api/v1/pools/P")
    assert now["remarks"] == "other replica"  # the other replica's write stands, nothing of ours


async def test_a_body_revision_overtaken_is_412_and_without_a_precondition_409(
    replicas: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    _, created = await call(a, "PUT", "/api/v1/pools/P", POOL)
    _interleave(a, b, "/api/v1/pools/P", monkeypatch)
    status, _ = await call(a, "PATCH", "/api/v1/pools/P", {"remarks": "x", "revision": created["revision"]})
    assert status == 412
    monkeypatch.undo()
    _interleave(a, b, "/api/v1/pools/P", monkeypatch)
    status, err = await call(a, "PATCH", "/api/v1/pools/P", {"remarks": "x"})
    assert status == 409 and err["error"]["code"] == "conflict"  # no precondition: a concurrent change, retry
    monkeypatch.undo()
    _interleave(a, b, "/api/v1/pools/P", monkeypatch)
    status, _ = await call(a, "PATCH", "/api/v1/pools/P", {"remarks": "x"}, headers={"If-Match": "*"})
    assert status == 409  # "*" still matches: not stale


async def test_many_stale_if_matches_across_two_replicas_are_all_412(replicas: tuple[Client, Client]) -> None:
    a, b = replicas
    _, created = await call(a, "PUT", "/api/v1/pools/P", POOL)
    if_match = {"If-Match": f'"{created["revision"]}"'}
    for _round in range(5):
        writes = [call((a, b)[i % 2], "PATCH", "/api/v1/pools/P", {"remarks": f"w{i}"}, headers=if_match)
                  for i in range(16)]
        statuses = [status for status, _ in await asyncio.gather(*writes)]
        assert sorted(set(statuses)) == [200, 412] and statuses.count(200) == 1, statuses
        _, now = await call(a, "GET", "/api/v1/pools/P")
        if_match = {"If-Match": f'"{now["revision"]}"'}


@pytest.mark.parametrize("name", ["a\n", "s1\n"])
async def test_an_address_name_with_a_final_newline_is_400(api: Client, name: str) -> None:
    body = {"type": "ipv4", "addresses": [{"name": name, "address": "192.0.2.1"}]}
    status, err = await call(api, "PUT", "/api/v1/pools/P", body)
    assert status == 400 and error(err) == ("invalid_argument", "addresses[0].name"), err
    assert (await call(api, "GET", "/api/v1/pools"))[1] == {"pools": []}
