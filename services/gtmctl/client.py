"""A small blocking client of the REST API (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class GtmctlError(Exception):
    """Base of what a gtmctl command reports as ``error: ...`` (exit code 1)."""


class RequestFailed(GtmctlError):
    """The API answered a request with an error status (and, usually, the contract's error body)."""

    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.body = body
        self.code = err.get("code", "error")
        self.field = err.get("field", "")
        self.message = err.get("message", str(body))
        where = f" (field {self.field})" if self.field else ""
        super().__init__(f"{status} {self.code}: {self.message}{where}")


class Unreachable(GtmctlError):
    """No GTM API answered at the URL: connection refused, timeout, or something else answering."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the GTM API at {url}: {reason} (set --api or GTM_API_URL)")
        self.url = url


class Client:
    """JSON over HTTP to ``base`` (e.g. http://127.0.0.1:8080), with an optional Bearer token."""

    def __init__(self, base: str, token: str = "", timeout_s: float = 10.0) -> None:
        self.root = base.rstrip("/")
        self.base = self.root + "/api/v1"
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded body or raise :class:`RequestFailed` or :class:`Unreachable`."""
        data = None if body is None else json.dumps(body).encode()
        url = self.base + path
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise RequestFailed(err.code, self._error_body(err)) from None
        except urllib.error.URLError as err:
            raise Unreachable(self.root, _reason(err.reason)) from None
        except (TimeoutError, OSError) as err:
            raise Unreachable(self.root, _reason(err)) from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise Unreachable(self.root, f"{method} {url} answered something that is not JSON") from None

    def _error_body(self, err: urllib.error.HTTPError) -> Any:
        raw = err.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            # not the GTM API's error body: say who answered instead of printing a web page
            return {"error": {"code": "error", "message": f"{err.url} answered {err.code} {err.reason} (not JSON)"}}


def _reason(reason: object) -> str:
    """A socket error in words: ``connection refused``, ``timed out``, ``name or service not known``."""
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = getattr(reason, "strerror", None) or str(reason)
    return str(text)[:1].lower() + str(text)[1:]
