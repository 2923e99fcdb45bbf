"""The console's forms in a real Chromium: edit round trips, who else a pool change touches, 412, templates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Page
from tests.support import DOMAIN, Api, Service, free_port
from tests.test_console import browser  # noqa: F401 - the fixture

CHECK = {"protocol": "http", "port": 8080, "path": "/health", "interval_s": 5, "timeout_s": 1}
POOL = {"type": "ipv4", "remarks": "kept", "addresses": [
    {"name": "a", "address": "192.0.2.1", "remarks": "kept too", "health_check": CHECK},
    {"name": "b", "address": "192.0.2.2"}]}


@pytest.fixture
def config(nats_url: str, log_dir: Path) -> Iterator[tuple[int, Api]]:
    port = free_port()
    service = Service("config", {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}"}, log_dir).start()
    try:
        service.wait_for_event("service_ready")
        yield port, Api(f"http://127.0.0.1:{port}/api/v1")
    finally:
        assert service.stop() == 0


def test_pool_and_domain_edits_round_trip_name_their_users_and_offer_a_reload_on_412(
    config: tuple[int, Api], browser: Any  # noqa: F811
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, api = config
    assert api.put("/pools/P1", POOL)[0] == 201
    assert api.put(f"/domains/{DOMAIN}", {"record_type": "A", "pools": [{"pool": "P1"}]})[0] == 201
    wait = WebDriverWait(browser, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])

    page = Page(browser)
    shown, field, fill = page.shown, page.field, page.fill

    # Edit a pool: the change is saved after a confirmation that names the domain using it; fields the
    # form does not show (remarks of an address) survive.
    browser.get(f"http://127.0.0.1:{port}/#/pools/P1")
    wait.until(lambda d: shown("#pool-form"))
    assert field("addresses[0].health_check.path").get_attribute("value") == "/health"
    fill("addresses[1].weight", "7")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown("#confirm") and DOMAIN in d.find_element(By.ID, "confirm").text)
    browser.find_element(By.ID, "confirm-ok").click()
    wait.until(lambda d: shown("#pools-list"))
    pool = api.get("/pools/P1")[1]
    assert pool["addresses"][1]["weight"] == 7 and pool["addresses"][0]["remarks"] == "kept too"
    assert pool["addresses"][0]["health_check"]["port"] == 8080 and pool["remarks"] == "kept"

    # Someone else writes meanwhile: the save is refused (412) and the console offers to reload.
    browser.get(f"http://127.0.0.1:{port}/#/pools/P1")
    wait.until(lambda d: shown("#pool-form"))
    assert api.patch("/pools/P1", {"remarks": "theirs"})[0] == 200
    fill("remarks", "mine")
    browser.find_element(By.ID, "save").click()
    browser.find_element(By.ID, "confirm-ok").click()
    wait.until(lambda d: shown("#flash #reload"))
    assert api.get("/pools/P1")[1]["remarks"] == "theirs"
    browser.find_element(By.ID, "reload").click()
    wait.until(lambda d: field("remarks").get_attribute("value") == "theirs")

    # Edit the domain: TTL changed, still disabled.
    browser.get(f"http://127.0.0.1:{port}/#/domains/{DOMAIN}/edit")
    wait.until(lambda d: shown("#domain-form"))
    fill("ttl", "120")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown("#domain-enabled"))
    got = api.get(f"/domains/{DOMAIN}")[1]
    assert got["ttl"] == 120 and got["enabled"] is False and got["pools"][0]["pool"] == "P1"

    # Deleting a pool a domain uses: the confirmation says so, and the API's refusal is shown.
    browser.get(f"http://127.0.0.1:{port}/#/pools/P1")
    wait.until(lambda d: shown("#pool-form"))
    browser.find_element(By.ID, "delete").click()
    wait.until(lambda d: shown("#confirm") and DOMAIN in d.find_element(By.ID, "confirm").text)
    browser.find_element(By.ID, "confirm-ok").click()
    wait.until(lambda d: d.find_element(By.ID, "flash").is_displayed())
    assert api.get("/pools/P1")[0] == 200

    # An unknown pool: a not-found page with the way back, nothing else.
    browser.get(f"http://127.0.0.1:{port}/#/pools/nope")
    wait.until(lambda d: shown("#not-found"))
    assert not browser.find_elements(By.ID, "pool-form")


def test_templates_alert_targets_and_topology_are_created_edited_and_deleted_in_the_browser(
    config: tuple[int, Api], browser: Any  # noqa: F811
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    port, api = config
    wait = WebDriverWait(browser, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])

    page = Page(browser)
    shown, field, fill = page.shown, page.field, page.fill

    browser.get(f"http://127.0.0.1:{port}/#/settings")
    wait.until(lambda d: shown("#new-template"))
    browser.find_element(By.ID, "new-template").click()
    wait.until(lambda d: shown("#template-form"))
    fill("name", "web")
    fill("path", "/healthz")
    fill("port", "8443")
    Select(field("protocol")).select_by_value("https")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown('#templates-list tr[data-name="web"]'))
    got = api.get("/health-templates/web")[1]
    assert (got["protocol"], got["port"], got["path"]) == ("https", 8443, "/healthz")

    # A pool address that refers to the template.
    browser.get(f"http://127.0.0.1:{port}/#/pools/new")
    wait.until(lambda d: shown("#pool-form"))
    fill("name", "P2")
    fill("addresses[0].name", "a")
    fill("addresses[0].address", "192.0.2.9")
    Select(field("addresses[0].health_check.template")).select_by_value("web")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown('#pools-list tr[data-pool="P2"]'))
    check = api.get("/pools/P2")[1]["addresses"][0]["health_check"]
    assert (check["template"], check["port"], check["path"]) == ("web", 8443, "/healthz")

    # An alert target with a bad URL: the error sits by the URL field; fixed, it is created.
    browser.get(f"http://127.0.0.1:{port}/#/alert-targets/new")
    wait.until(lambda d: shown("#target-form"))
    fill("name", "ops")
    fill("url", "not a url")
    field("kinds.address").click()
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown('[data-for="url"] .field-error') or shown('#flash'))
    if api.get("/alert-targets/ops")[0] == 404:
        fill("url", "http://127.0.0.1:9/hook")
        browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown('#targets-list tr[data-name="ops"]'))
    assert api.get("/alert-targets/ops")[1]["kinds"] == ["pool", "domain"]

    # Topology: one entry saved.
    css_add = "#add-entry"
    browser.find_element(By.CSS_SELECTOR, css_add).click()
    fill("entries[0].cidr", "192.0.2.0/24")
    fill("entries[0].region", "eu")
    browser.find_element(By.ID, "save-topology").click()
    wait_for = lambda: api.get("/topology")[1].get("entries") == [{"cidr": "192.0.2.0/24", "region": "eu"}]  # noqa: E731
    wait.until(lambda d: wait_for())

    # Delete the alert target: asked first.
    browser.get(f"http://127.0.0.1:{port}/#/alert-targets/ops")
    wait.until(lambda d: shown("#target-form"))
    browser.find_element(By.ID, "delete").click()
    wait.until(lambda d: shown("#confirm"))
    browser.find_element(By.ID, "confirm-ok").click()
    wait.until(lambda d: api.get("/alert-targets/ops")[0] == 404)


CONTROLS_WITHOUT_A_NAME = """
const named = (e) => (e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim();
return [...document.querySelectorAll('input, select, button, textarea')]
  .filter((e) => e.getClientRects().length && !named(e)).map((e) => e.outerHTML.slice(0, 80));
"""
PAGE_OVERFLOW = "return document.documentElement.scrollWidth - window.innerWidth;"


@pytest.mark.parametrize("width", [420, 1920])
def test_every_page_has_labelled_controls_and_fits_the_width_logs_filter(
    config: tuple[int, Api], browser: Any, width: int  # noqa: F811
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    port, api = config
    assert api.put("/pools/P1", POOL)[0] == 201
    assert api.put(f"/domains/{DOMAIN}", {"record_type": "A", "pools": [{"pool": "P1"}]})[0] == 201
    assert api.patch("/pools/P1", {"remarks": "again"})[0] == 200
    browser.set_window_size(width, 900)
    wait = WebDriverWait(browser, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
    pages = {
        "#/": "#domains", f"#/domains/{DOMAIN}": "#diagram", "#/pools": "#pools-list", "#/pools/P1": "#pool-form",
        "#/domains/new": "#domain-form", f"#/domains/{DOMAIN}/edit": "#domain-form", "#/settings": "#topology-form",
        "#/templates/new": "#template-form", "#/alert-targets/new": "#target-form",
        "#/events?kind=operation&resource=pool&name=P1": "#change-log",
    }
    for hash_, ready in pages.items():
        browser.get(f"http://127.0.0.1:{port}/{hash_}")
        wait.until(lambda d, r=ready: d.execute_script("return !!document.querySelector(arguments[0]);", r))
        assert browser.execute_script(CONTROLS_WITHOUT_A_NAME) == [], hash_
        assert browser.execute_script(PAGE_OVERFLOW) <= 0, hash_
    # The operation log filtered to pool P1: its two writes, no domain write.
    rows = browser.execute_script("return [...document.querySelectorAll('#change-log tbody tr')].map(r => r.innerText);")
    assert len(rows) == 2 and all("pool P1" in r for r in rows)


def test_a_live_redraw_keeps_the_keyboard_focus(config: tuple[int, Api], browser: Any) -> None:  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    port, api = config
    assert api.put("/pools/P1", POOL)[0] == 201
    assert api.put(f"/domains/{DOMAIN}", {"record_type": "A", "pools": [{"pool": "P1"}]})[0] == 201
    wait = WebDriverWait(browser, 15, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
    browser.get(f"http://127.0.0.1:{port}/#/domains/{DOMAIN}")
    wait.until(lambda d: d.execute_script("return document.getElementById('live').textContent") == "live")
    select = "tr[data-address=\"b\"] select.mode"
    wait.until(lambda d: d.execute_script("return !!document.querySelector(arguments[0]);", select))
    browser.execute_script("document.querySelector(arguments[0]).focus();", select)
    assert api.patch(f"/domains/{DOMAIN}", {"remarks": "redraw please"})[0] == 200
    wait.until(lambda d: "redraw please" in d.execute_script("return document.getElementById('change-log').innerText"))
    focused = "const e = document.activeElement; return e.closest('tr') && e.closest('tr').dataset.address;"
    assert browser.execute_script(focused) == "b"


def test_a_form_being_filled_in_keeps_what_was_typed_while_the_api_is_away(
    nats_url: str, log_dir: Path, browser: Any  # noqa: F811
) -> None:
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    env = {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}"}
    service = Service("config", env, log_dir).start()
    service.wait_for_event("service_ready")
    wait = WebDriverWait(browser, 15, poll_frequency=0.05)
    browser.get(f"http://127.0.0.1:{port}/#/pools/new")
    name = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#pool-form [data-field="name"]'))
    name.send_keys("Typed-Pool")
    assert service.stop() == 0
    browser.find_element(By.ID, "save").click()  # the save fails: the API is away
    banner = "return !document.getElementById('api-down').hidden;"
    wait.until(lambda d: d.execute_script(banner))
    time.sleep(3.5)  # a retry round (every 3 s) has passed: the form is still the one being typed in
    typed = "return document.querySelector('#pool-form [data-field=\"name\"]').value;"
    assert browser.execute_script(typed) == "Typed-Pool"
    service = Service("config", env, log_dir).start()
    try:
        service.wait_for_event("service_ready")
        wait.until(lambda d: not d.execute_script(banner))
        assert browser.execute_script(typed) == "Typed-Pool"
    finally:
        assert service.stop() == 0
