"""The audit trail: every operation says who (a token's name or the client), through what, and what changed.

Named tokens (GTM_API_TOKENS), the legacy GTM_API_TOKEN, the console's mark, ``POST /api/v1/apply``,
``config.apply`` over NATS; the field changes, before -> after; ``GET /events?resource=&name=``;
events written before the audit fields still read; the EVENTS stream keeps 90 days.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NatsClient

from services.config import security
from services.config.app import create_app
from services.config.audit import NAMES_MAX, Actor, acting, current_actor, diff
from services.config.backend import Backend, nats_actor
from services.config.views import EventsQuery, parse_events_query
from shared import subjects
from shared.bus import EVENTS_MAX_AGE_S
from shared.messages import FieldChange, OperationEvent, encoder, event_decoder
from shared.resources import Address, Pool
from shared.settings import ApiSettings, NatsSettings, Settings, SettingsError, load
from tests.support import Api, Service, config_client, free_port, until, wait_until
from tests.test_console import browser  # noqa: F401 - the headless Chromium fixture

Client = TestClient[web.Request, web.Application]

TOKENS = ("alice:al1ce-secret", "ci-bot:b0t:with:colons")
ALICE = {"Authorization": "Bearer al1ce-secret"}
BOT = {"Authorization": "Bearer b0t:with:colons"}
POOL = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1"}, {"name": "b", "address": "192.0.2.2"}]}


_client = config_client


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    """The API with two named tokens."""
    async for client in _client(Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(tokens=TOKENS))):
        yield client


@pytest.fixture
async def open_api(nats_url: str) -> AsyncIterator[Client]:
    """The API without a token (loopback, unauthenticated)."""
    async for client in _client(Settings(nats=NatsSettings(url=nats_url))):
        yield client


async def call(client: Client, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    if body is not None:
        kw["json"] = body
    async with client.request(method, path, **kw) as resp:
        text = await resp.text()
        return resp.status, (msgspec.json.decode(text) if text else None)


async def events(client: Client, query: str = "", headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    status, body = await call(client, "GET", "/api/v1/events?kind=operation&" + query, headers=headers)
    assert status == 200, body
    out: list[dict[str, Any]] = body["events"]
    return out


# -- settings: GTM_API_TOKENS ----------------------------------------------------------------------


def test_named_tokens_are_read_with_the_legacy_token_beside_them() -> None:
    s = load("config", {"GTM_API_TOKENS": " alice:al1ce-secret , ci-bot:b0t:with:colons", "GTM_API_TOKEN": "old"})
    assert s.api.credentials() == (("default", "old"), ("alice", "al1ce-secret"), ("ci-bot", "b0t:with:colons"))
    assert load("config", {"GTM_API_TOKEN": "old"}).api.credentials() == (("default", "old"),)
    assert load("config", {"GTM_API_TOKENS": ""}).api.credentials() == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GTM_API_TOKENS": "alice"}, "GTM_API_TOKENS: entry 1 is not name:secret"),
        ({"GTM_API_TOKENS": "alice:x,:y"}, "GTM_API_TOKENS: entry 2: the name '' is not 1-64 of A-Za-z0-9._-"),
        ({"GTM_API_TOKENS": "a b:x"}, "GTM_API_TOKENS: entry 1: the name 'a b' is not"),
        ({"GTM_API_TOKENS": "alice:"}, "GTM_API_TOKENS: token 'alice' has an empty secret"),
        ({"GTM_API_TOKENS": "alice:x,alice:y"}, "GTM_API_TOKENS: the name 'alice' is listed twice"),
        ({"GTM_API_TOKENS": "alice:same,bob:same"}, "GTM_API_TOKENS: tokens 'alice' and 'bob' have the same secret"),
        ({"GTM_API_TOKENS": "default:x", "GTM_API_TOKEN": "y"}, "the name 'default' is GTM_API_TOKEN's name"),
        ({"GTM_API_TOKENS": "bob:y", "GTM_API_TOKEN": "y"}, "tokens 'default' and 'bob' have the same secret"),
    ],
)
def test_bad_tokens_are_refused_naming_the_variable_and_never_the_secret(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load("config", env)
    assert str(caught.value).startswith("GTM_API_TOKENS") and message in str(caught.value)
    assert "same" not in str(caught.value).replace("the same secret", "")  # no secret shown


def test_the_service_stops_at_start_on_bad_tokens() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.config"],
        env={**os.environ, "NATS_URL": "nats://127.0.0.1:1", "GTM_API_TOKENS": "alice:x,alice:y"},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("gtm-config: GTM_API_TOKENS"), done.stderr


def test_named_tokens_allow_listening_beyond_loopback() -> None:
    settings = Settings(api=ApiSettings(listen="0.0.0.0:8080", tokens=("alice:x",)))
    assert not security.check_listen(settings).refuse


# -- the token check -------------------------------------------------------------------------------


def test_each_token_is_named_and_every_one_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    creds = (("alice", "one"), ("bob", "two"), ("carol", "three"))
    compared: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(len(a) + len(b))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for given, name in (("one", "alice"), ("two", "bob"), ("three", "carol"), ("four", None), ("on", None)):
        compared.clear()
        assert security.token_name(given, creds) == name
        assert compared == [64, 64, 64]  # all three, always over 32-byte digests: no early exit, no length leak


async def test_who_is_the_tokens_name_and_a_wrong_token_is_401(api: Client) -> None:
    assert (await call(api, "PUT", "/api/v1/pools/P", POOL))[0] == 401
    assert (await call(api, "PUT", "/api/v1/pools/P", POOL, headers={"Authorization": "Bearer al1ce"}))[0] == 401
    assert (await call(api, "PUT", "/api/v1/pools/P", POOL, headers=ALICE))[0] == 201
    assert (await call(api, "PATCH", "/api/v1/pools/P", {"remarks": "bot"}, headers=BOT))[0] == 200
    got = await events(api, headers=ALICE)
    assert [(e["method"], e["who"], e["via"], e["client"]) for e in got] == [
        ("PATCH", "ci-bot", "rest", "127.0.0.1"), ("PUT", "alice", "rest", "127.0.0.1")]


async def test_the_legacy_token_keeps_working_and_is_named_default(nats_url: str) -> None:
    settings = Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(token="s3cret"))
    async for client in _client(settings):
        ok = {"Authorization": "Bearer s3cret"}
        assert (await call(client, "PUT", "/api/v1/pools/P", POOL, headers=ok))[0] == 201
        assert [(e["who"], e["via"]) for e in await events(client, headers=ok)] == [("default", "rest")]


async def test_without_a_token_who_is_the_client_address(open_api: Client) -> None:
    assert (await call(open_api, "PUT", "/api/v1/pools/P", POOL))[0] == 201
    assert [(e["who"], e["client"]) for e in await events(open_api)] == [("127.0.0.1", "127.0.0.1")]


# -- through what ----------------------------------------------------------------------------------


async def test_the_console_marks_its_writes(api: Client) -> None:
    console = {**ALICE, "X-GTM-Via": "console"}
    assert (await call(api, "PUT", "/api/v1/pools/P", POOL, headers=console))[0] == 201
    assert (await call(api, "PATCH", "/api/v1/pools/P", {"remarks": "x"}, headers={**ALICE, "X-GTM-Via": "me"}))[0]
    assert [e["via"] for e in await events(api, headers=ALICE)] == ["rest", "console"]  # only "console" counts


def test_the_console_script_sends_the_mark_on_every_api_call() -> None:
    script = (Path(__file__).parent.parent / "services/config/console/console.js").read_text()
    assert '{ "X-GTM-Via": "console" }' in script


async def test_post_apply_writes_are_via_apply(api: Client) -> None:
    doc = {"document": {"pools": {"P": POOL}}}
    status, body = await call(api, "POST", "/api/v1/apply", doc, headers=BOT)
    assert status == 200, body
    assert [(e["who"], e["via"], e["name"]) for e in await events(api, headers=ALICE)] == [("ci-bot", "apply", "P")]


def test_admission_names_the_route_and_the_mark() -> None:
    settings = Settings(api=ApiSettings(tokens=TOKENS))
    admitted = security.admit(settings, "/api/v1/apply", {**BOT, "X-GTM-Via": "console"}, None, "10.0.0.9")
    assert admitted.actor == Actor(who="ci-bot", via="apply", client="10.0.0.9")
    admitted = security.admit(settings, "/api/v1/pools/P", {**ALICE, "X-GTM-Via": "console"}, None, "10.0.0.9")
    assert admitted.actor == Actor(who="alice", via="console", client="10.0.0.9")
    refused = security.admit(settings, "/api/v1/pools", {}, None, "10.0.0.9").error
    assert refused is not None and (refused.status, refused.code) == (401, "unauthorized")
    assert security.admit(settings, "/healthz", {}, None, "10.0.0.9").actor == Actor("10.0.0.9", "rest", "10.0.0.9")


async def _apply(nc: NatsClient, request: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    reply = await nc.request(subjects.CONFIG_APPLY, msgspec.json.encode(request), timeout=10, headers=headers)
    out: dict[str, Any] = msgspec.json.decode(reply.data)
    return out


async def test_config_apply_over_nats_is_via_config_apply_by_nats(api: Client, nc: NatsClient) -> None:
    assert (await _apply(nc, {"method": "PUT", "path": "pools/P", "body": POOL}))["status"] == 201
    assert (await _apply(nc, {"document": {"pools": {"Q": POOL}}}))["status"] == 200
    got = await events(api, headers=ALICE)
    assert [(e["name"], e["who"], e["via"], e["client"]) for e in got] == [
        ("Q", "nats", "config.apply", ""), ("P", "nats", "config.apply", "")]


def test_the_nats_user_is_named_when_the_server_says_who_sent_it() -> None:
    assert nats_actor({"Nats-Request-Info": '{"acc":"APP","user":"deployer"}'}) == Actor("deployer", "config.apply")
    assert nats_actor(None) == nats_actor({"Nats-Request-Info": "not json"}) == Actor("nats", "config.apply")


async def test_the_actor_is_per_task_and_restored() -> None:
    seen: list[str] = []

    async def other() -> None:
        await asyncio.sleep(0.01)
        seen.append(current_actor().who)

    with acting(Actor(who="alice")):
        task = asyncio.create_task(other())  # copies the context: alice
        with acting(Actor(who="bob")):
            seen.append(current_actor().who)
        seen.append(current_actor().who)
        await task
    seen.append(current_actor().who)
    assert seen == ["bob", "alice", "alice", ""]


# -- what changed ----------------------------------------------------------------------------------


def _pool(*names: str, **fields: Any) -> Pool:
    return Pool(type="ipv4", addresses=[Address(name=n, address="192.0.2.1") for n in names], **fields)


def test_diff_lists_changed_top_level_fields_before_and_after() -> None:
    assert diff(_pool("a"), _pool("a", remarks="x", lb_strategy="weight")) == [
        FieldChange(field="lb_strategy", before="round_robin", after="weight"),
        FieldChange(field="remarks", before="", after="x"),
    ]
    assert diff(_pool("a"), _pool("a")) == []


def test_diff_summarises_addresses_by_name() -> None:
    before = _pool("a", "b", "c")
    after = Pool(type="ipv4", addresses=[
        Address(name="a", address="192.0.2.1"), Address(name="c", address="192.0.2.1", weight=5),
        Address(name="d", address="192.0.2.9"),
    ])
    assert diff(before, after) == [
        FieldChange(field="addresses", before=3, after=3, added=["d"], removed=["b"], changed=["c"])]
    assert diff(_pool("a", "b"), _pool("b", "a")) == [FieldChange(field="addresses", before=2, after=2, reordered=True)]


def test_diff_of_a_huge_change_stays_small() -> None:
    big = _pool(*(f"n{i}" for i in range(5000)))
    (change,) = [c for c in diff(None, big) if c.field == "addresses"]
    assert (change.before, change.after, len(change.added)) == (0, 5000, NAMES_MAX + 1)
    assert change.added[-1] == f"(+{5000 - NAMES_MAX} more)"
    event = OperationEvent(at=0, method="PUT", path="/", resource="pool", name="n", revision=1, changes=diff(None, big))
    assert len(encoder.encode(event)) < 2048
    long = diff(_pool(remarks=""), _pool(remarks="x" * 256))[0]
    assert long.after == "x" * 256  # fits: shown whole
    assert diff(None, {"url": "https://h/" + "u" * 2000})[0].after == ("https://h/" + "u" * 2000)[:512] + "…"
    assert diff({"password": "old"}, {"password": "new"}) == [
        FieldChange(field="password", before="(secret)", after="(secret)")]  # never the value
    assert diff(None, _pool())[0] == FieldChange(field="type", before=None, after="ipv4")  # a create: every field


async def test_a_write_records_its_changes_before_and_after(api: Client) -> None:
    await call(api, "PUT", "/api/v1/pools/P", POOL, headers=ALICE)
    patch = {"remarks": "maintenance", "addresses": [POOL["addresses"][0], {"name": "c", "address": "192.0.2.3"}]}
    await call(api, "PATCH", "/api/v1/pools/P", patch, headers=ALICE)
    await call(api, "DELETE", "/api/v1/pools/P", headers=ALICE)
    deleted, patched, created = await events(api, "resource=pool&name=P", headers=ALICE)
    assert patched["changes"] == [
        {"field": "remarks", "before": "", "after": "maintenance"},
        {"field": "addresses", "before": 2, "after": 2, "added": ["c"], "removed": ["b"]},
    ]
    assert {"field": "addresses", "before": 0, "after": 2, "added": ["a", "b"]} in created["changes"]
    assert {"field": "type", "before": "ipv4", "after": None} in deleted["changes"]
    assert (deleted["method"], deleted["who"]) == ("DELETE", "alice")


async def test_a_template_change_records_each_pool_it_rewrites(api: Client) -> None:
    template = {"protocol": "http", "path": "/health"}
    await call(api, "PUT", "/api/v1/health-templates/web", template, headers=ALICE)
    pool = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "health_check": {"template": "web"}}]}
    await call(api, "PUT", "/api/v1/pools/P", pool, headers=ALICE)
    await call(api, "PATCH", "/api/v1/health-templates/web", {"path": "/ready"}, headers=BOT)
    rewritten = (await events(api, "resource=pool&name=P", headers=ALICE))[0]
    assert (rewritten["who"], rewritten["via"]) == ("ci-bot", "rest")
    assert rewritten["changes"] == [{"field": "addresses", "before": 1, "after": 1, "changed": ["a"]}]
    (template_event,) = await events(api, "resource=template&name=web&limit=1", headers=ALICE)
    assert template_event["changes"] == [{"field": "path", "before": "/health", "after": "/ready"}]


# -- filtering, old events, retention --------------------------------------------------------------


async def test_events_filter_by_resource_and_name(api: Client) -> None:
    await call(api, "PUT", "/api/v1/pools/P", POOL, headers=ALICE)
    await call(api, "PUT", "/api/v1/pools/Q", POOL, headers=ALICE)
    await call(api, "PUT", "/api/v1/domains/www.example.com", {"record_type": "A", "pools": [{"pool": "P"}]},
               headers=ALICE)
    await call(api, "PATCH", "/api/v1/pools/P", {"remarks": "r"}, headers=ALICE)
    assert [(e["method"], e["name"]) for e in await events(api, "resource=pool&name=P", headers=ALICE)] == [
        ("PATCH", "P"), ("PUT", "P")]
    assert [e["name"] for e in await events(api, "resource=pool", headers=ALICE)] == ["P", "Q", "P"]
    assert [e["name"] for e in await events(api, "resource=domain&name=WWW.Example.com.", headers=ALICE)] == [
        "www.example.com"]
    assert [e["name"] for e in await events(api, "name=Q", headers=ALICE)] == ["Q"]
    for query, field in (("resource=pools", "resource"), ("name=" + "x" * 254, "name")):
        status, err = await call(api, "GET", "/api/v1/events?" + query, headers=ALICE)
        assert (status, err["error"]["code"], err["error"]["field"]) == (400, "invalid_argument", field)


def test_a_resource_filter_leaves_switches_out() -> None:
    q = parse_events_query({"resource": "domain", "name": "www.example.com"})
    switch = event_decoder.decode(b'{"type":"switch_event.v1","domain":"www.example.com","at":1,'
                                  b'"from_pool":"a","to_pool":"b","reason":"r"}')
    assert not q.matches(switch)


def test_an_event_written_before_the_audit_fields_still_reads() -> None:
    old = (b'{"type":"operation_event.v1","at":1.0,"method":"PUT","path":"/api/v1/pools/P",'
           b'"resource":"pool","name":"P","revision":3,"domain":"","message":"PUT /api/v1/pools/P"}')
    event = event_decoder.decode(old)
    assert isinstance(event, OperationEvent)
    assert (event.who, event.via, event.client, event.changes) == ("", "", "", [])


async def test_one_resources_log_reaches_back_past_the_cache_to_the_stream(nats_url: str, nc: NatsClient) -> None:
    backend = Backend(Settings(nats=NatsSettings(url=nats_url)), event_capacity=5)
    app = create_app(Settings(nats=NatsSettings(url=nats_url)), backend=backend)
    async with TestClient(TestServer(app)) as client:
        await asyncio.wait_for(backend.ready.wait(), 15)
        await call(client, "PUT", "/api/v1/pools/Old", POOL)
        for i in range(12):  # 12 more events push Old's out of a 5-event cache
            await call(client, "PUT", f"/api/v1/pools/N{i}", POOL)
        await until(lambda: len(backend.events) <= 6 and backend.events.high_seq >= 13)
        assert backend.events.query(EventsQuery(resource="pool", name="Old")) == []
        got = await backend.query_events(EventsQuery(resource="pool", name="Old"))
        assert [(e["name"], e["method"], e["who"]) for e in got] == [("Old", "PUT", "127.0.0.1")]
        got = await backend.query_events(EventsQuery(resource="pool", name="N11"))
        assert [e["name"] for e in got] == ["N11"]  # in the cache: read there
        assert await backend.query_events(EventsQuery(resource="pool", name="never")) == []


async def test_the_stream_read_is_allowed_to_the_config_user_of_the_deployed_nats(tmp_path: Path) -> None:
    from tests.test_nats_permissions import SecuredNats

    server = SecuredNats(tmp_path).start()
    try:
        server.init_streams()
        env = server.env("config")
        nats_settings = NatsSettings(url=env["NATS_URL"], user=env["GTM_NATS_USER"], password=env["GTM_NATS_PASSWORD"])
        backend = Backend(Settings(nats=nats_settings), event_capacity=2)
        app = create_app(Settings(nats=nats_settings), backend=backend)
        async with TestClient(TestServer(app)) as client:
            await asyncio.wait_for(backend.ready.wait(), 15)
            for name in ("Old", "N1", "N2", "N3"):
                assert (await call(client, "PUT", f"/api/v1/pools/{name}", POOL))[0] == 201
            await until(lambda: backend.events.low_seq > 1)
            got = await backend.query_events(EventsQuery(resource="pool", name="Old"))
            assert [e["name"] for e in got] == ["Old"]
    finally:
        server.stop()


async def test_the_operation_log_is_still_kept_90_days(api: Client, nc: NatsClient) -> None:
    await call(api, "PUT", "/api/v1/pools/P", POOL, headers=ALICE)
    info = await nc.jetstream().stream_info(subjects.STREAM_EVENTS)
    assert info.config.max_age == EVENTS_MAX_AGE_S == 90 * 24 * 3600
    assert info.config.subjects == [subjects.EVENTS_ALL]  # operation events included


# -- the real process and the console in a browser -------------------------------------------------


def test_the_process_records_the_token_name_from_gtm_api_tokens(nats_url: str, log_dir: Path) -> None:
    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}", "GTM_API_TOKENS": ",".join(TOKENS)}
    svc = Service("config", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        api = Api(f"http://127.0.0.1:{port}/api/v1")
        assert api.request("PUT", "/pools/P", POOL)[0] == 401
        assert api.request("PUT", "/pools/P", POOL, headers=BOT)[0] == 201
        status, body = api.request("GET", "/events?resource=pool&name=P", headers=ALICE)
        assert status == 200 and [(e["who"], e["via"]) for e in body["events"]] == [("ci-bot", "rest")]
        changed = wait_until(lambda: [e for e in svc.events() if e.get("event") == "config_changed"])
        assert (changed[0]["who"], changed[0]["via"]) == ("ci-bot", "rest")
    finally:
        assert svc.stop() == 0


def test_a_console_click_is_recorded_as_via_console_and_shown(nats_url: str, log_dir: Path, browser: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}", "GTM_API_TOKENS": ",".join(TOKENS)}
    svc = Service("config", env, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        api = Api(f"http://127.0.0.1:{port}/api/v1")
        assert api.request("PUT", "/pools/P", POOL, headers=BOT)[0] == 201
        domain = {"record_type": "A", "pools": [{"pool": "P"}]}
        assert api.request("PUT", "/domains/www.example.com", domain, headers=BOT)[0] == 201
        # The page redraws itself on live events: retry a click whose element was redrawn under it.
        wait = WebDriverWait(browser, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
        browser.get(f"http://127.0.0.1:{port}/?token=al1ce-secret#/domains/www.example.com")
        wait.until(lambda d: d.find_element(By.ID, "domain-enabled").text == "disabled")
        wait.until(lambda d: d.find_element(By.ID, "toggle-enabled").click() or True)
        wait.until(lambda d: d.find_element(By.ID, "confirm-ok").click() or True)  # the review, then enable

        def newest() -> dict[str, Any] | None:
            status, body = api.request("GET", "/events?resource=domain&name=www.example.com&limit=1", headers=ALICE)
            got: dict[str, Any] = body["events"][0]
            return got if got["method"] == "PATCH" else None

        event = wait_until(newest)
        assert (event["who"], event["via"]) == ("alice", "console")
        assert event["changes"] == [{"field": "enabled", "before": False, "after": True}]
        script = "const e = document.getElementById('change-log'); return e && e.innerText;"
        wait.until(lambda d: "enabled: false → true" in (d.execute_script(script) or ""))
        log_text = browser.execute_script(script)
        assert "alice" in log_text and "console" in log_text and "ci-bot" in log_text
    finally:
        assert svc.stop() == 0

