"""Request-source lines in the console, in a real Chromium against the whole GTM: lines typed in the pool and
domain forms, a bad line's error beside its field, the all_down policy, and the per-line answers on the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser import Page
from tests.support import BACKUP_IP, DOMAIN, PRIMARY_IP, HttpBackend, Stack
from tests.test_console import _screens, browser  # noqa: F401 - the fixture

CHECK_FIELDS = {"interval_s": "1", "timeout_s": "0.5", "failures": "1", "successes": "1"}


def test_lines_are_typed_in_the_forms_shown_on_the_domain_page_and_a_bad_line_is_refused_beside_its_field(
    stack: Stack, backends: tuple[HttpBackend, HttpBackend], browser: Any, tmp_path: Path  # noqa: F811
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    primary, _ = backends
    stack.start()
    api = stack.api  # read only: every write below is made in the console
    port = stack.api_port
    screens = _screens(tmp_path)
    wait = WebDriverWait(browser, 20, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
    page = Page(browser)
    text, shown, field, fill, error_beside = page.text, page.shown, page.field, page.fill, page.error_beside

    def create_pool(name: str, ip: str, lines: str) -> None:
        browser.get(f"http://127.0.0.1:{port}/#/pools/new")
        wait.until(lambda d: shown("#pool-form"))
        fill("name", name)
        fill("addresses[0].name", name.lower() + "-1")
        fill("addresses[0].address", ip)
        fill("addresses[0].lines", lines)
        fill("addresses[0].health_check.port", str(primary.port))
        for path, value in CHECK_FIELDS.items():
            fill(f"addresses[0].health_check.{path}", value)
        browser.find_element(By.ID, "save").click()

    # The pool form: a bad line of an address is refused, its error beside that address's Lines input.
    create_pool("CN-DC", PRIMARY_IP, "default, planet:mars")
    wait.until(lambda d: error_beside("addresses[0].lines") != "")
    assert "planet:mars" in error_beside("addresses[0].lines")
    assert field("addresses[0].lines").get_attribute("aria-invalid") == "true"
    assert api.get("/pools/CN-DC")[0] == 404
    # the suggestions come from GET /lines: continents, countries and default
    options = "return [...document.querySelectorAll('#line-options option')].map(o => [o.dataset.line, o.value]);"
    got = dict(browser.execute_script(options))
    assert {"default", "continent:EU", "country:CN"} <= set(got)
    # a suggestion completes the line being typed: it carries the lines typed before it
    assert got["country:CN"] == "default, country:CN"
    fill("addresses[0].lines", "default, country:CN")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown('#pools-list tr[data-pool="CN-DC"]'))
    assert api.get("/pools/CN-DC")[1]["addresses"][0]["lines"] == ["default", "country:CN"]

    create_pool("Backup-DC", BACKUP_IP, "")  # empty: the default line
    wait.until(lambda d: shown('#pools-list tr[data-pool="Backup-DC"]'))
    assert api.get("/pools/Backup-DC")[1]["addresses"][0]["lines"] == ["default"]

    # The domain form: CN-DC answers the clients of China, Backup-DC everyone else.
    browser.get(f"http://127.0.0.1:{port}/#/domains/new")
    wait.until(lambda d: shown("#domain-form"))
    fill("name", DOMAIN)
    Select(field("pools[0].pool")).select_by_value("CN-DC")
    fill("pools[0].lines", "country:CN, country:cn")  # the second is lower case: refused
    browser.find_element(By.ID, "add-pool").click()
    Select(field("pools[1].pool")).select_by_value("Backup-DC")
    assert not shown('[data-for="fallback_pool"]')
    Select(field("all_down")).select_by_value("fallback_pool")
    assert shown('[data-for="fallback_pool"]')
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: error_beside("pools[0].lines") != "")
    assert "country:cn" in error_beside("pools[0].lines") and error_beside("pools[1].lines") == ""
    assert api.get(f"/domains/{DOMAIN}")[0] == 404
    browser.save_screenshot(str(screens / "console-lines-form-error.png"))

    # The line fixed, the fallback pool is still missing: its error sits beside the fallback pool select.
    fill("pools[0].lines", "country:CN")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: error_beside("fallback_pool") != "")
    assert error_beside("pools[0].lines") == ""
    Select(field("fallback_pool")).select_by_value("Backup-DC")
    browser.find_element(By.ID, "save").click()
    wait.until(lambda d: shown("#domain-enabled"))
    got = api.get(f"/domains/{DOMAIN}")[1]
    assert [(r["pool"], r["lines"]) for r in got["pools"]] == [("CN-DC", ["country:CN"]), ("Backup-DC", ["default"])]
    assert (got["all_down"], got["fallback_pool"]) == ("fallback_pool", "Backup-DC")

    # The domain page: each pool's lines, the address's lines, the all_down policy.
    chips = "return [...document.querySelectorAll(arguments[0] + ' .chip')].map(c => c.textContent);"
    pool_lines = '#pools article[data-pool="{}"] .pool-lines'
    wait.until(lambda d: d.execute_script(chips, pool_lines.format("CN-DC")) == ["country:CN"])
    assert browser.execute_script(chips, pool_lines.format("Backup-DC")) == ["default"]
    assert browser.execute_script(chips, 'tr[data-address="cn-dc-1"] .address-lines') == ["default", "country:CN"]
    assert not browser.find_elements(By.CSS_SELECTOR, 'tr[data-address="backup-dc-1"] .address-lines')
    assert "fallback_pool" in text("#all-down") and "Backup-DC" in text("#all-down")

    # Enabled: the clients of country:CN get CN-DC's address, everyone else Backup-DC's (the first pool of
    # the default line).
    browser.find_element(By.ID, "toggle-enabled").click()
    wait.until(lambda d: shown("#confirm-ok"))
    browser.find_element(By.ID, "confirm-ok").click()
    line_answer = '#line-answers li[data-line="country:CN"]'
    wait.until(lambda d: PRIMARY_IP in text(line_answer), "no answer for the country:CN line")
    assert "clients of country:CN get" in text(line_answer) and "from CN-DC" in text(line_answer)
    wait.until(lambda d: text("#answer-pool") == "Backup-DC" and text("#answer-records") == BACKUP_IP)
    browser.execute_script("window.scrollTo(0, 0);")
    browser.save_screenshot(str(screens / "console-lines-domain.png"))

    # Editing keeps the lines: the form shows them as typed.
    browser.get(f"http://127.0.0.1:{port}/#/domains/{DOMAIN}/edit")
    wait.until(lambda d: shown("#domain-form"))
    assert field("pools[0].lines").get_attribute("value") == "country:CN"
    assert field("pools[1].lines").get_attribute("value") == ""
    assert Select(field("all_down")).first_selected_option.get_attribute("value") == "fallback_pool"
    assert shown('[data-for="fallback_pool"]')
