"""The web console: live-event core, page and static files, the token on the stream, and a real Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.config.app import BACKEND, create_app
from services.config.console import CONSOLE
from services.config.console.live import (
    CheckChanges,
    LiveHub,
    changes_pools,
    sse_frame,
    summarize,
    wanted,
)
from services.config.security import request_allowed
from shared import subjects
from shared.messages import (
    AddressState,
    AnswerSet,
    OperationEvent,
    PoolState,
    ProbeResult,
    SwitchEvent,
    encoder,
)
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.browser import Page
from tests.support import BACKUP_IP, DOMAIN, PRIMARY_IP, Api, HttpBackend, Service, Stack, free_port, wait_until

Client = TestClient[web.Request, web.Application]

CHECK = {"protocol": "http", "path": "/", "interval_s": 1, "timeout_s": 0.5, "failures": 1, "successes": 1}
TOKEN = "s3cret"

# -- pure core: events, filters, frames, fan-out ----------------------------------------------------

POOL_EVENT = {"type": "pool", "pool": "Primary-DC", "available": False, "warming": False}


def _result(
    *, ok: bool = True, error: str = "", region: str = "local", prober: str = "p1", at: float = 1.0
) -> ProbeResult:
    return ProbeResult(region=region, prober=prober, key=subjects.address_key("Primary-DC", "a"), pool="Primary-DC",
                       address="a", target="192.0.2.1", protocol="http", ok=ok, error=error, at=at)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (PoolState(pool="Primary-DC", available=False), POOL_EVENT),
        (
            AnswerSet(domain=DOMAIN, enabled=True, record_type="A", pool="Backup-DC", records=[BACKUP_IP]),
            {"type": "answer", "domain": DOMAIN, "pool": "Backup-DC", "records": [BACKUP_IP], "fallback": False,
             "enabled": True},
        ),
        (
            AnswerSet(domain=DOMAIN, enabled=True, record_type="A", deleted=True),
            {"type": "answer", "domain": DOMAIN, "pool": "", "records": [], "fallback": False, "enabled": False},
        ),
        (
            SwitchEvent(domain=DOMAIN, at=0.5, from_pool="Primary-DC", to_pool="Backup-DC", reason="down"),
            {"type": "switch", "domain": DOMAIN, "from_pool": "Primary-DC", "to_pool": "Backup-DC", "reason": "down",
             "at": "1970-01-01T00:00:00.500Z"},
        ),
        (
            _result(ok=False, error="connection refused"),
            {"type": "check", "pool": "Primary-DC", "address": "a", "region": "local", "ok": False,
             "error": "connection refused"},
        ),
        (
            OperationEvent(at=1.0, method="PATCH", path="/p", resource="pool", name="Primary-DC", revision=7),
            {"type": "operation", "domain": "", "resource": "pool", "name": "Primary-DC", "revision": 7},
        ),
    ],
)
def test_each_nats_message_becomes_one_small_live_event(message: Any, expected: dict[str, Any]) -> None:
    assert summarize(message) == expected


OP_POOL = {"type": "operation", "domain": "", "resource": "pool", "name": "Primary-DC", "revision": 2}
OP_DOMAIN = {"type": "operation", "domain": DOMAIN, "resource": "domain", "name": DOMAIN, "revision": 3}
PRIMARY = frozenset({"Primary-DC"})


@pytest.mark.parametrize(
    ("event", "domain", "pools", "passes"),
    [
        (POOL_EVENT, "", frozenset(), True),  # no filter: everything
        (POOL_EVENT, DOMAIN, PRIMARY, True),  # a pool the domain uses
        (POOL_EVENT, DOMAIN, frozenset({"Other"}), False),
        ({"type": "check", "pool": "Primary-DC"}, DOMAIN, PRIMARY, True),
        ({"type": "check", "pool": "Other"}, DOMAIN, PRIMARY, False),
        ({"type": "answer", "domain": DOMAIN}, DOMAIN, frozenset(), True),
        ({"type": "answer", "domain": "other.example.com"}, DOMAIN, PRIMARY, False),
        ({"type": "switch", "domain": "other.example.com"}, DOMAIN, PRIMARY, False),
        (OP_POOL, DOMAIN, PRIMARY, True),  # someone edited one of its pools
        (OP_POOL, DOMAIN, frozenset(), False),
        (OP_DOMAIN, DOMAIN, frozenset(), True),
    ],
)
def test_a_domain_stream_passes_its_own_events_and_its_pools(
    event: dict[str, Any], domain: str, pools: frozenset[str], passes: bool
) -> None:
    assert wanted(event, domain, pools) is passes


def test_only_a_write_of_the_domain_itself_refreshes_its_pool_list() -> None:
    assert changes_pools(OP_DOMAIN, DOMAIN)
    assert not changes_pools(OP_POOL, DOMAIN)
    assert not changes_pools({"type": "answer", "domain": DOMAIN}, DOMAIN)


def test_a_check_is_pushed_only_when_its_outcome_changes_per_region_and_prober() -> None:
    checks = CheckChanges()
    seen = [
        checks.changed(r)
        for r in (
            _result(at=1), _result(at=2),  # ok, ok again: one push
            _result(ok=False, error="connection reset", at=3), _result(ok=False, error="connection refused", at=4),
            _result(ok=False, error="connection refused", at=5),
            _result(ok=False, error="connection refused", region="eu", at=5),  # another region: its own slot
            _result(ok=False, error="connection refused", prober="p2", at=5),  # another prober too
            _result(at=6),
        )
    ]
    assert seen == [True, False, True, True, False, True, True, True]


def test_check_memory_is_bounded() -> None:
    checks = CheckChanges(max_slots=2)
    for region in ("a", "b", "c"):
        assert checks.changed(_result(region=region))
    assert checks.changed(_result(region="a"))  # forgotten when the table was full: pushed again, harmlessly


def test_sse_frame_is_one_data_line_with_an_optional_retry() -> None:
    assert sse_frame({"type": "hello"}) == b'data: {"type":"hello"}\n\n'
    assert sse_frame({"a": "x\ny"}, retry_ms=1000) == b'retry: 1000\ndata: {"a":"x\\ny"}\n\n'


async def test_hub_ends_a_stream_that_falls_behind_and_all_streams_on_close() -> None:
    hub = LiveHub(queue_size=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    for n in range(3):
        hub.publish({"n": n})
        if n < 2:
            assert fast.get_nowait() == {"n": n}
    assert slow.get_nowait() is None and len(hub) == 1  # fell behind: ended, the browser reconnects
    assert fast.get_nowait() == {"n": 2}
    hub.close()
    assert fast.get_nowait() is None and len(hub) == 0
    assert hub.subscribe().get_nowait() is None  # closed: a new stream ends at once


@pytest.mark.parametrize(
    ("path", "authorization", "query_token", "allowed"),
    [
        ("/api/v1/pools", None, None, False),
        ("/api/v1/pools", f"Bearer {TOKEN}", None, True),
        ("/api/v1/pools", None, TOKEN, False),  # ?token= only on the stream
        ("/api/v1/stream", None, None, False),
        ("/api/v1/stream", None, "wrong", False),
        ("/api/v1/stream", None, "", False),
        ("/api/v1/stream", None, TOKEN, True),
        ("/api/v1/stream", f"Bearer {TOKEN}", None, True),
        ("/", None, None, True),  # the page and its static files hold no data
        ("/console/console.js", None, None, True),
        ("/healthz", None, None, True),
        ("/nothing", None, TOKEN, False),
    ],
)
def test_token_policy_of_console_and_stream(
    path: str, authorization: str | None, query_token: str | None, allowed: bool
) -> None:
    assert request_allowed(path, authorization, query_token, TOKEN) is allowed
    assert request_allowed(path, authorization, query_token, "") is True  # no token configured


# -- the app in-process: page, static files, stream ----------------------------------------------


async def _client(nats_url: str, token: str = "") -> AsyncIterator[Client]:
    app = create_app(Settings(nats=NatsSettings(url=nats_url), api=ApiSettings(token=token)))
    async with TestClient(TestServer(app)) as client:
        await asyncio.wait_for(app[BACKEND].ready.wait(), 15)
        await asyncio.wait_for(app[CONSOLE].following.wait(), 15)
        yield client


@pytest.fixture
async def api(nats_url: str) -> AsyncIterator[Client]:
    async for client in _client(nats_url):
        yield client


@pytest.fixture
async def locked(nats_url: str) -> AsyncIterator[Client]:
    async for client in _client(nats_url, TOKEN):
        yield client


async def test_root_serves_the_console_page_with_a_strict_csp(api: Client) -> None:
    async with api.get("/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        html = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert '<script src="/console/console.js"' in html and "/console/console.css" in html
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "http://" not in html and "https://" not in html  # no CDN, no external fonts


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/console/console.js", "text/javascript"), ("/console/console.css", "text/css"),
     ("/console/favicon.svg", "image/svg+xml")],
)
async def test_static_files_are_served_with_their_content_type(api: Client, path: str, content_type: str) -> None:
    async with api.get(path) as resp:
        assert resp.status == 200 and resp.content_type == content_type
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert len(await resp.read()) > 0


@pytest.mark.parametrize("path", ["/console/index.html", "/console/../app.py", "/console/nope.js"])
async def test_only_the_listed_static_files_are_served(api: Client, path: str) -> None:
    async with api.get(path) as resp:
        assert resp.status == 404


def test_console_script_never_uses_inner_html() -> None:
    script = (Path(__file__).parent.parent / "services/config/console/console.js").read_text()
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script


async def test_with_a_token_the_page_is_public_but_the_stream_and_api_are_not(locked: Client) -> None:
    for path in ("/", "/console/console.js", "/console/console.css"):
        assert (await locked.get(path)).status == 200
    for path in ("/api/v1/stream", f"/api/v1/stream?token=wrong&domain={DOMAIN}", f"/api/v1/domains?token={TOKEN}"):
        async with locked.get(path) as resp:
            assert resp.status == 401, path
            assert (await resp.json())["error"]["code"] == "unauthorized"
    for kwargs in ({"params": {"token": TOKEN}}, {"headers": {"Authorization": f"Bearer {TOKEN}"}}):
        async with locked.get("/api/v1/stream", **kwargs) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            assert await _frame(resp) == {"type": "hello", "domain": ""}


async def _frame(resp: Any) -> dict[str, Any]:
    """The next data frame of an SSE response."""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        assert line, "stream ended"
        if line.startswith(b"data: "):
            return json.loads(line[len(b"data: ") :])


SMALL_POOL = {"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1"}]}
ON_PRIMARY = {"record_type": "A", "pools": [{"pool": "Primary-DC"}]}


async def test_domain_stream_pushes_its_pool_states_answers_and_switches_only(api: Client, nc: Any) -> None:
    assert (await api.put("/api/v1/pools/Primary-DC", json=SMALL_POOL)).status == 201
    assert (await api.put(f"/api/v1/domains/{DOMAIN}", json=ON_PRIMARY)).status == 201
    async with api.get("/api/v1/stream", params={"domain": DOMAIN.upper() + "."}) as resp:
        assert await _frame(resp) == {"type": "hello", "domain": DOMAIN}
        down = [AddressState(name="a", address="192.0.2.1", available=False)]
        other = "other.example.com"
        published = [
            (subjects.pool_state("Unrelated"), PoolState(pool="Unrelated", available=True)),
            (subjects.answers(other), AnswerSet(domain=other, enabled=True, record_type="A")),
            (subjects.pool_state("Primary-DC"), PoolState(pool="Primary-DC", available=False, addresses=down)),
            (subjects.switch_event(DOMAIN), SwitchEvent(domain=DOMAIN, at=1.0, from_pool="Primary-DC", to_pool="",
                                                        reason="down")),
            (subjects.answers(DOMAIN), AnswerSet(domain=DOMAIN, enabled=True, record_type="A", pool="Primary-DC",
                                                 fallback=True)),
            (subjects.probe_result("local", _result().key), _result(ok=False, error="timeout")),
        ]
        for subject, message in published:
            await nc.publish(subject, encoder.encode(message))
        await nc.flush()
        got = [await _frame(resp) for _ in range(4)]
    by_type = {e["type"]: e for e in got}  # one subscription per subject: no order across them
    assert sorted(by_type) == ["answer", "check", "pool", "switch"]
    assert by_type["check"]["error"] == "timeout"
    assert by_type["pool"]["pool"] == by_type["answer"]["pool"] == "Primary-DC"
    assert by_type["answer"]["fallback"] is True and by_type["switch"]["reason"] == "down"


async def test_a_pool_added_to_the_domain_is_followed_without_reconnecting(api: Client, nc: Any) -> None:
    for name in ("Primary-DC", "Backup-DC"):
        assert (await api.put(f"/api/v1/pools/{name}", json=SMALL_POOL)).status == 201
    assert (await api.put(f"/api/v1/domains/{DOMAIN}", json=ON_PRIMARY)).status == 201
    async with api.get("/api/v1/stream", params={"domain": DOMAIN}) as resp:
        await _frame(resp)
        body = {"pools": [{"pool": "Primary-DC"}, {"pool": "Backup-DC", "sequence": 2}]}
        assert (await api.patch(f"/api/v1/domains/{DOMAIN}", json=body)).status == 200
        assert (await _frame(resp))["type"] == "operation"
        await nc.publish(subjects.pool_state("Backup-DC"), encoder.encode(PoolState(pool="Backup-DC", available=True)))
        assert (await _frame(resp))["pool"] == "Backup-DC"


async def test_an_open_stream_does_not_hold_up_shutdown(nats_url: str) -> None:
    app = create_app(Settings(nats=NatsSettings(url=nats_url)))
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    await asyncio.wait_for(app[CONSOLE].following.wait(), 15)
    resp = await client.get("/api/v1/stream")
    assert (await _frame(resp))["type"] == "hello"
    await asyncio.wait_for(client.close(), 5)
    assert len(app[CONSOLE].hub) == 0


# -- a real Chromium on a real stack -------------------------------------------------------------


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    return found or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by selenium; skipped only when chromium or chromedriver is not installed."""
    chromium, chromedriver = _binary("chromium"), _binary("chromedriver")
    if not chromium or not chromedriver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1100,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = DriverService(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _pool(server: str, ip: str, port: int) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [{"name": server, "address": ip, "health_check": {**CHECK, "port": port}}]}


def _screens(tmp_path: Path) -> Path:
    """Where screenshots go: $GTM_CONSOLE_SCREENSHOTS (e.g. docs/screenshots) or the test's tmp dir."""
    out = Path(os.environ.get("GTM_CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_console_walkthrough_from_an_empty_stack_creates_reviews_enables_and_follows_a_failover(
    stack: Stack, backends: tuple[HttpBackend, HttpBackend], browser: Any, tmp_path: Path
) -> None:
    """The GTM 3.0 guide clicked through: pools with addresses and checks, the domain, review, enable, failover."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    primary, _ = backends
    stack.start()
    api = stack.api  # read only: every write below is made by clicking in the console
    screens = _screens(tmp_path)
    # The page redraws itself on every live event: read it in one script call, retry actions on a redraw.
    wait = WebDriverWait(browser, 20, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])

    page = Page(browser)
    text, shown = page.text, page.shown

    def health(address: str) -> str:
        script = "const e = document.querySelector(arguments[0]); return e && e.dataset.health;"
        return str(browser.execute_script(script, f'tr[data-address="{address}"] .dot'))

    def pool_order() -> list[str]:
        script = "return [...document.querySelectorAll('article.pool')].map(p => p.dataset.pool);"
        return list(browser.execute_script(script))

    def act(action: Any) -> None:
        wait.until(lambda d: action() or True)  # retried while the element is redrawn under our feet

    def serving() -> list[str]:
        """The diagram's marked pool and addresses."""
        script = "return [...document.querySelectorAll('#diagram [data-serving]')].map(e => e.dataset.pool || e.dataset.address);"
        return list(browser.execute_script(script))

    def click(by: str, value: str) -> None:
        act(lambda: browser.find_element(by, value).click())

    def css(value: str) -> None:
        click(By.CSS_SELECTOR, value)

    def select(selector: str, value: str) -> None:
        act(lambda: Select(browser.find_element(By.CSS_SELECTOR, selector)).select_by_value(value))

    def fill(path: str, value: str) -> None:
        def typed() -> None:
            element = browser.find_element(By.CSS_SELECTOR, f'[data-field="{path}"]')
            element.clear()
            element.send_keys(value)
        act(typed)

    def create_pool(name: str, server: str, ip: str, port: int) -> None:
        click(By.LINK_TEXT, "Address pools")
        css("#new-pool")
        wait.until(lambda d: shown("#pool-form"))
        fill("name", name)
        fill("addresses[0].name", server)
        fill("addresses[0].address", ip)
        for path, value in (("port", str(port)), ("interval_s", "1"), ("timeout_s", "0.5"), ("failures", "1"),
                            ("successes", "1")):
            fill(f"addresses[0].health_check.{path}", value)
        css("#save")
        wait.until(lambda d: text(f'#pools-list tr[data-pool="{name}"]') not in ("None", ""))

    # An empty stack: the console says what to do next.
    browser.get(f"http://127.0.0.1:{stack.api_port}/")
    wait.until(lambda d: "No access domain yet" in text("main"))
    browser.save_screenshot(str(screens / "console-empty.png"))

    # A pool with a bad address: the API's error lands beside that field and nothing is created.
    click(By.LINK_TEXT, "Address pools")
    css("#new-pool")
    fill("name", "Primary-DC")
    fill("addresses[0].name", "Primary-Server-01")
    fill("addresses[0].address", "not-an-ip")
    css("#save")
    error = '[data-for="addresses[0].address"] .field-error'
    wait.until(lambda d: shown(error) and text(error) != "")
    assert api.get("/pools/Primary-DC")[0] == 404
    browser.save_screenshot(str(screens / "console-field-error.png"))

    # Steps 1-3 of the guide: the two pools, each with an address and its HTTP health check.
    create_pool("Primary-DC", "Primary-Server-01", PRIMARY_IP, primary.port)
    create_pool("Backup-DC", "Backup-Server-01", BACKUP_IP, primary.port)
    check = api.get("/pools/Primary-DC")[1]["addresses"][0]["health_check"]
    assert (check["protocol"], check["port"], check["interval_s"], check["failures"]) == ("http", primary.port, 1, 1)

    # Steps 4-5: the access domain with both pools in sequence; it starts disabled.
    click(By.LINK_TEXT, "Access domains")
    css("#new-domain")
    fill("name", DOMAIN)
    fill("ttl", "60")
    select('[data-field="pools[0].pool"]', "Primary-DC")
    css("#add-pool")
    select('[data-field="pools[1].pool"]', "Backup-DC")
    css("#save")
    wait.until(lambda d: text("#domain-enabled") == "disabled")
    assert pool_order() == ["Primary-DC", "Backup-DC"]
    got = api.get(f"/domains/{DOMAIN}")[1]
    assert (got["ttl"], got["enabled"], [(p["pool"], p["sequence"]) for p in got["pools"]]) == (
        60, False, [("Primary-DC", 1), ("Backup-DC", 2)])

    # Step 6: Enable shows a review first; Cancel leaves it disabled, confirming enables it.
    wait.until(lambda d: health("Primary-Server-01") == "green" and health("Backup-Server-01") == "green")
    css("#toggle-enabled")
    wait.until(lambda d: shown("#confirm #review") and "Primary-DC" in text("#review"))
    browser.save_screenshot(str(screens / "console-review.png"))
    css("#confirm-cancel")
    assert api.get(f"/domains/{DOMAIN}")[1]["enabled"] is False
    css("#toggle-enabled")
    css("#confirm-ok")
    wait.until(lambda d: text("#domain-enabled") == "enabled")
    wait.until(lambda d: text("#answer-pool") == "Primary-DC" and text("#answer-records") == PRIMARY_IP)
    assert api.get(f"/domains/{DOMAIN}")[1]["enabled"] is True
    wait.until(lambda d: serving() == ["Primary-DC", "Primary-Server-01"])
    wait.until(lambda d: "ok" in text('tr[data-address="Primary-Server-01"] table.checks'))
    browser.save_screenshot(str(screens / "console-domain-healthy.png"))

    click(By.LINK_TEXT, "← Access domains")
    wait.until(lambda d: text(f'tr[data-domain="{DOMAIN}"] .answer-pool') == "Primary-DC")
    browser.save_screenshot(str(screens / "console-domains.png"))
    click(By.LINK_TEXT, DOMAIN)
    wait.until(lambda d: health("Primary-Server-01") == "green")

    # The primary dies: without a reload, its indicator turns red and the answer moves to the backup.
    browser.execute_script("window.notReloaded = true;")
    primary.stop()
    wait.until(lambda d: health("Primary-Server-01") == "red")
    wait.until(lambda d: text("#answer-pool") == "Backup-DC" and text("#answer-records") == BACKUP_IP)
    wait.until(lambda d: "Primary-DC unavailable" in text("#switch-log"))
    wait.until(lambda d: serving() == ["Backup-DC", "Backup-Server-01"])
    assert browser.execute_script(
        "return document.querySelector('#diagram [data-address=\"Primary-Server-01\"]').dataset.health;") == "red"
    wait.until(lambda d: "connection refused" in text('tr[data-address="Primary-Server-01"] table.checks'))
    assert browser.execute_script("return window.notReloaded;") is True
    assert text("#live") == "live"
    browser.save_screenshot(str(screens / "console-domain-failover.png"))
    browser.set_window_size(420, 1000)  # a phone: the page fits, the tables scroll inside themselves
    wait.until(lambda d: d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth;"))
    browser.save_screenshot(str(screens / "console-domain-420px.png"))
    browser.set_window_size(1100, 1000)

    # The last available address made manual_unavailable: the console asks; Cancel changes nothing.
    select('tr[data-address="Backup-Server-01"] select.mode', "manual_unavailable")
    wait.until(lambda d: shown("#confirm") and "last available address" in text("#confirm"))
    css("#confirm-cancel")
    assert api.get("/pools/Backup-DC")[1]["addresses"][0]["mode"] == "auto"

    # Disable asks too; Cancel keeps it enabled.
    css("#toggle-enabled")
    wait.until(lambda d: shown("#confirm") and "REFUSED" in text("#confirm"))
    css("#confirm-cancel")
    assert api.get(f"/domains/{DOMAIN}")[1]["enabled"] is True

    # Sequence mode switched in the UI is what the API says.
    select("#sequence-mode", "non_preemptive")
    wait_until(lambda: api.get(f"/domains/{DOMAIN}")[1]["sequence_mode"] == "non_preemptive", timeout=10)
    wait.until(lambda d: d.execute_script("return document.getElementById('sequence-mode').value") == "non_preemptive")

    # Reorder: the backup moves up, written as the pools' sequence.
    css('article[data-pool="Backup-DC"] button[data-action="up"]')
    wait.until(lambda d: pool_order() == ["Backup-DC", "Primary-DC"])
    got = sorted(api.get(f"/domains/{DOMAIN}")[1]["pools"], key=lambda p: p["sequence"])
    assert [(p["pool"], p["sequence"]) for p in got] == [("Backup-DC", 1), ("Primary-DC", 2)]

    # Drag and drop: the primary's card dropped on the backup's takes its place again. (Chromium's
    # driver cannot drive HTML5 drag and drop, so the test dispatches the events a mouse drag fires.)
    browser.execute_script(
        """const card = (n) => document.querySelector(`article[data-pool="${n}"]`);
        const data = new DataTransfer();
        card(arguments[0]).dispatchEvent(new DragEvent("dragstart", {bubbles: true, dataTransfer: data}));
        card(arguments[1]).dispatchEvent(new DragEvent("dragover", {bubbles: true, cancelable: true, dataTransfer: data}));
        card(arguments[1]).dispatchEvent(new DragEvent("drop", {bubbles: true, cancelable: true, dataTransfer: data}));""",
        "Primary-DC",
        "Backup-DC",
    )
    wait.until(lambda d: pool_order() == ["Primary-DC", "Backup-DC"])
    got = sorted(api.get(f"/domains/{DOMAIN}")[1]["pools"], key=lambda p: p["sequence"])
    assert [(p["pool"], p["sequence"]) for p in got] == [("Primary-DC", 1), ("Backup-DC", 2)]

    # An address's mode: forcing the dead primary available turns it green again.
    select('tr[data-address="Primary-Server-01"] select.mode', "manual_available")
    wait.until(lambda d: health("Primary-Server-01") == "green")
    assert api.get("/pools/Primary-DC")[1]["addresses"][0]["mode"] == "manual_available"
    assert browser.execute_script("return window.notReloaded;") is True

    # Delete asks and says what follows; the deleted domain's page is a not-found page, nothing else.
    css("#delete-domain")
    wait.until(lambda d: shown("#confirm") and "REFUSED" in text("#confirm"))
    css("#confirm-ok")
    wait.until(lambda d: "No access domain yet" in text("main"))
    assert api.get(f"/domains/{DOMAIN}")[0] == 404
    browser.execute_script("location.hash = arguments[0];", f"#/domains/{DOMAIN}")
    wait.until(lambda d: shown("#not-found"))
    assert not browser.find_elements(By.ID, "toggle-enabled") and not browser.find_elements(By.ID, "pools")

    # The config service stops cleanly even with the browser's stream open; then the console says the API is down.
    assert all(code == 0 for code in stack.stop())
    browser.execute_script("location.hash = '#/pools';")
    wait.until(lambda d: shown("#api-down"))
    assert browser.execute_script("return document.getElementById('main').inert;") is True
    assert "Failed to fetch" not in text("body")


def test_console_takes_the_token_from_the_url_or_the_login_field(nats_url: str, log_dir: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}", "GTM_API_TOKEN": TOKEN}
    config = Service("config", env, log_dir).start()
    try:
        config.wait_for_event("service_ready")
        api = Api(f"http://127.0.0.1:{port}/api/v1")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert api.request("PUT", "/pools/p", _pool("a", "192.0.2.1", 80), headers=bearer)[0] == 201
        domain = {"record_type": "A", "pools": [{"pool": "p"}]}
        assert api.request("PUT", f"/domains/{DOMAIN}", domain, headers=bearer)[0] == 201
        wait = WebDriverWait(browser, 15, poll_frequency=0.05)
        listed = f'tr[data-domain="{DOMAIN}"]'

        # ?token= in the page URL: kept in sessionStorage, dropped from the address bar; the live stream is up.
        browser.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, listed))
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        assert "token" not in browser.current_url

        # Without it: the login field shows; the token typed there opens the page.
        browser.execute_script("sessionStorage.clear();")
        browser.refresh()
        wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
        assert not browser.find_elements(By.CSS_SELECTOR, listed)
        browser.find_element(By.ID, "token-input").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, listed))
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        assert not browser.find_element(By.ID, "login").is_displayed()

        # A wrong token: the console says so instead of "Loading…" for ever.
        browser.execute_script("sessionStorage.setItem('gtm-token', 'wrong');")
        browser.refresh()
        wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
        wait.until(lambda d: "refused" in d.find_element(By.ID, "main").text)
        assert "Loading" not in browser.find_element(By.ID, "main").text
    finally:
        assert config.stop() == 0
