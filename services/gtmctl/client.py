"""A small blocking client of the REST API (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class RequestFailed(Exception):
    """The API answered a request with an error status (and, usually, the contract's error body)."""

    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = err.get("code", "error")
        self.field = err.get("field", "")
        self.message = err.get("message", str(body))
        where = f" (field {self.field})" if self.field else ""
        super().__init__(f"{status} {self.code}: {self.message}{where}")


class Client:
    """JSON over HTTP to ``base`` (e.g. http://127.0.0.1:8080), with an optional Bearer token."""

    def __init__(self, base: str, token: str = "", timeout_s: float = 10.0) -> None:
        self.base = base.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; return the decoded body or raise :class:`RequestFailed`."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise RequestFailed(err.code, parsed) from None
        return json.loads(raw) if raw else None
