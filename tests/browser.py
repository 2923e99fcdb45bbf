"""What the console's browser tests read and type through Selenium: one home for the small helpers."""

from __future__ import annotations

from typing import Any

_TEXT = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
_SHOWN = "const e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;"


class Page:
    """The console page in a Selenium ``driver``, read in one script call each (it redraws on live events)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def text(self, css: str) -> str:
        """The text of the first element matching ``css`` ("" when there is none)."""
        return str(self.driver.execute_script(_TEXT, css))

    def shown(self, css: str) -> bool:
        """Whether an element matching ``css`` is on screen."""
        return bool(self.driver.execute_script(_SHOWN, css))

    def field(self, path: str) -> Any:
        """The input of a form field by its API path (``data-field``)."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f'[data-field="{path}"]')

    def fill(self, path: str, value: str) -> None:
        """Clear the field at ``path`` and type ``value`` (nothing, for "")."""
        self.field(path).clear()
        if value:
            self.field(path).send_keys(value)

    def error_beside(self, path: str) -> str:
        """The API error shown beside the field at ``path``."""
        return self.text(f'[data-for="{path}"] .field-error')
