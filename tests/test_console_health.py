"""Health in depth in the console, in a real Chromium against the whole GTM: an address with two checks (http +
tcp to real loopback backends) judged any_ok and a maintenance window, made in the pool form; its mode, maintenance
and real health on the domain page, its health history, and an overlapping window refused beside its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser import Page
from tests.support import DOMAIN, PRIMARY_IP, HttpBackend, Stack
from tests.test_console import _screens, browser  # noqa: F401 - the fixture
from tests.test_console_forms import CONTROLS_WITHOUT_A_NAME

FAST = {"interval_s": "1", "timeout_s": "0.5", "failures": "1", "successes": "1"}
# datetime-local values (local time) of now + the given minutes, computed in the browser with the console's helper
LOCAL_IN = "return localInputTime(new Date(Date.now() + arguments[0] * 60000).toISOString());"
SET_VALUE = """const e = document.querySelector(arguments[0]); e.value = arguments[1];
e.dispatchEvent(new Event('input', {bubbles: true})); e.dispatchEvent(new Event('change', {bubbles: true}));"""


def test_two_checks_any_ok_and_a_maintenance_window_made_in_the_form_shown_with_history_and_errors(
    stack: Stack, browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    web, tcp = HttpBackend(host=PRIMARY_IP).start(), HttpBackend(host=PRIMARY_IP).start()  # tcp: its port is open
    try:
        stack.start()
        api, port = stack.api, stack.api_port
        screens = _screens(tmp_path)
        wait = WebDriverWait(browser, 25, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
        page = Page(browser)
        text, shown, field, fill, error_beside = page.text, page.shown, page.field, page.fill, page.error_beside

        def click(css: str) -> None:
            browser.execute_script("document.querySelector(arguments[0]).click();", css)



        def set_time(path: str, minutes: int) -> None:
            browser.execute_script(SET_VALUE, f'[data-field="{path}"]', browser.execute_script(LOCAL_IN, minutes))


        # The pool form: one check as before, then a second one added (the paths become health_checks[j]).
        browser.get(f"http://127.0.0.1:{port}/#/pools/new")
        wait.until(lambda d: shown("#pool-form"))
        fill("name", "Web")
        fill("addresses[0].name", "w1")
        fill("addresses[0].address", PRIMARY_IP)
        fill("addresses[0].health_check.port", str(web.port))
        for path, value in FAST.items():
            fill(f"addresses[0].health_check.{path}", value)
        assert not shown('[data-for="addresses[0].judgement"]')  # one check: no judgement to make
        assert not shown('[data-for="addresses[0].health_check.packets"]')  # http: no ping fields
        click(".address-row .add-check")
        assert field("addresses[0].health_checks[0].port").get_attribute("value") == str(web.port)
        second = "addresses[0].health_checks[1]"
        Select(field(f"{second}.protocol")).select_by_value("ping")
        assert shown(f'[data-for="{second}.packets"]') and shown(f'[data-for="{second}.loss_rate"]')
        Select(field(f"{second}.protocol")).select_by_value("tcp")
        assert not shown(f'[data-for="{second}.packets"]')
        fill(f"{second}.port", str(tcp.port))
        for path, value in FAST.items():
            fill(f"{second}.{path}", value)
        assert shown('[data-for="addresses[0].judgement"]')
        Select(field("addresses[0].judgement")).select_by_value("any_ok")
        # A maintenance window in force now: the address is kept available whatever its checks say.
        click(".address-row .add-window")
        set_time("addresses[0].maintenance[0].from", -1)
        set_time("addresses[0].maintenance[0].until", 60)
        Select(field("addresses[0].maintenance[0].mode")).select_by_value("manual_available")
        assert browser.execute_script(CONTROLS_WITHOUT_A_NAME) == []
        browser.save_screenshot(str(screens / "console-health-form.png"))
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: shown('#pools-list tr[data-pool="Web"]'))
        address = api.get("/pools/Web")[1]["addresses"][0]
        assert address.get("health_check") is None and address["judgement"] == "any_ok"
        assert [(c["protocol"], c["port"]) for c in address["health_checks"]] == [("http", web.port), ("tcp", tcp.port)]
        [window] = address["maintenance"]
        assert window["mode"] == "manual_available" and window["from"].endswith("Z") and window["until"] > window["from"]

        domain = {"record_type": "A", "ttl": 5, "enabled": True, "pools": [{"pool": "Web"}]}
        assert api.put(f"/domains/{DOMAIN}", domain)[0] == 201

        # The domain page: the maintenance badge, the real health, each check's results grouped, the judgement.
        row = 'tr[data-address="w1"]'
        browser.get(f"http://127.0.0.1:{port}/#/domains/{DOMAIN}")
        wait.until(lambda d: "maintenance until" in text(f"{row} .maintenance-badge"))
        assert "manual_available" in text(f"{row} .maintenance-badge")
        wait.until(lambda d: text(f"{row} .real-health").startswith("checks: healthy"))
        wait.until(lambda d: shown(f'{row} tbody[data-check="0"] tr.ok') and shown(f'{row} tbody[data-check="1"] tr.ok'))
        assert "http" in text(f'{row} tbody[data-check="0"] .check-head')
        assert "tcp" in text(f'{row} tbody[data-check="1"] .check-head')
        assert "any_ok" in text(f"{row} .judgement")

        # The tcp backend stops: its check fails, any_ok keeps the address healthy; the history logs the failure.
        tcp.stop()
        wait.until(lambda d: shown(f'{row} tbody[data-check="1"] tr.fail'))
        assert shown(f'{row} tbody[data-check="0"] tr.ok')
        browser.save_screenshot(str(screens / "console-health-domain.png"))
        click(f"{row} button.history")
        wait.until(lambda d: shown("#history") and shown('#health-log tr[data-kind="check_failed"]'))
        assert "tcp" in text('#health-log tr[data-kind="check_failed"]')
        assert browser.execute_script(CONTROLS_WITHOUT_A_NAME) == []

        # The http one too: the checks say unhealthy, the maintenance window keeps it available (green); the
        # history, kept fresh while open, says the answer was not changed.
        web.stop()
        wait.until(lambda d: text(f"{row} .real-health").startswith("checks: unhealthy — "))
        assert browser.execute_script(f"return document.querySelector('{row} .dot').dataset.health;") == "green"
        wait.until(lambda d: "not changed" in text('#health-log tr[data-kind="address_changed"]'))
        browser.save_screenshot(str(screens / "console-health-history.png"))
        click("#history-close")
        wait.until(lambda d: not shown("#history"))

        # The pool form again: the checks and the window as saved; an overlapping window is refused beside it.
        browser.get(f"http://127.0.0.1:{port}/#/pools/Web")
        wait.until(lambda d: shown("#pool-form"))
        assert Select(field(f"{second}.protocol")).first_selected_option.get_attribute("value") == "tcp"
        assert Select(field("addresses[0].maintenance[0].mode")).first_selected_option.get_attribute("value") == (
            "manual_available")
        click(".address-row .add-window")
        set_time("addresses[0].maintenance[1].from", 10)
        set_time("addresses[0].maintenance[1].until", 120)
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: shown("#confirm-ok"))
        browser.find_element(By.ID, "confirm-ok").click()
        wait.until(lambda d: error_beside("addresses[0].maintenance[1].from") != "")
        assert "overlap" in error_beside("addresses[0].maintenance[1].from")
        assert field("addresses[0].maintenance[1].from").get_attribute("aria-invalid") == "true"
        assert len(api.get("/pools/Web")[1]["addresses"][0]["maintenance"]) == 1
        browser.save_screenshot(str(screens / "console-health-overlap.png"))

        # Down to one check and no window: sent as the health_check shorthand, as before.
        click('[data-for="addresses[0].maintenance[1].from"] ~ .remove-window')
        click('.maintenance-row .remove-window')
        click(".check-row:nth-child(2) .remove-check")
        assert field("addresses[0].health_check.protocol").get_attribute("value") == "http"
        browser.find_element(By.ID, "save").click()
        wait.until(lambda d: shown("#confirm-ok"))
        browser.find_element(By.ID, "confirm-ok").click()
        wait.until(lambda d: shown('#pools-list tr[data-pool="Web"]'))
        address = api.get("/pools/Web")[1]["addresses"][0]
        assert address["health_check"]["port"] == web.port and not address.get("health_checks")
        assert address["maintenance"] == []
    finally:
        web.stop()
        tcp.stop()
