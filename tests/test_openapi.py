"""The OpenAPI document: valid OpenAPI 3.1, generated from the Structs, covering every route; and
schemathesis against the real app (real nats-server, real TCP): no 5xx, every response as documented."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import requests
import schemathesis
from aiohttp import web
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    ensure_resource_availability,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from services.config.app import BACKEND, AccessLogger, create_app
from services.config.codec import KINDS
from services.config.openapi import OPENAPI_PATH, document
from shared.resources import Pool
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.support import NatsServer, free_port

TOKEN = "openapi-test-token"
STREAM = "/api/v1/stream"  # an endless SSE response: not for a request/response fuzzer
MAX_EXAMPLES = 6  # per operation, fuzzing phase; the examples and coverage phases add their own
WRITE_EXAMPLES = 10  # writes take If-Match: more examples there, so that hostile header values come up
# What refuses bad data: schemathesis' defaults, plus a stale If-Match (412) and an oversized body (413).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "412", "413", "415", "422", "428", "429"]
# The checks that say a response is what the document says, and that bad input is refused. Not
# positive_data_acceptance: validation has rules across fields and resources that no schema says (an
# address of the pool's type, timeout_s < interval_s, a tcp check's port, a domain's pools existing
# and of its record type), so a schema-valid request may rightly get 400, 404 or 409.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
    ignored_auth,
    use_after_free,
    ensure_resource_availability,
]


class LiveApi:
    """The config app served on a real loopback port by an event loop of its own thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-api", daemon=True)

    def start(self) -> LiveApi:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the API did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = create_app(self.settings)
        runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            await asyncio.wait_for(app[BACKEND].ready.wait(), 20)
        except BaseException as exc:  # noqa: BLE001 - reported to start() in the test's thread
            self._error = exc
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The app with a token, on a private nats-server: the fuzzer's writes touch nothing else."""
    nats = NatsServer(tmp_path_factory.mktemp("nats-openapi"))
    nats.start()
    api = LiveApi(Settings(nats=NatsSettings(url=nats.url), api=ApiSettings(token=TOKEN)))
    try:
        yield api.start()
    finally:
        api.stop()
        nats.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


# -- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # openapi-spec-validator: raises on an invalid document


def test_every_route_of_the_app_is_in_the_document() -> None:
    app = create_app(Settings())
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "*"
    }
    documented = {(m, path) for path, ops in document()["paths"].items() for m in ops if m != "parameters"}
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the app does not serve"


def test_resource_schemas_follow_the_structs() -> None:
    schemas = document()["components"]["schemas"]
    for kind in KINDS.values():
        body = schemas[kind.body.__name__]
        assert set(body["properties"]) == {f.encode_name for f in msgspec.structs.fields(kind.body)}
        assert body["additionalProperties"] is False  # the API forbids unknown fields
    pool = schemas["PoolResource"]
    assert set(pool["required"]) == {f.encode_name for f in msgspec.structs.fields(Pool)}  # every field rendered
    assert pool["properties"]["revision"]["type"] == "integer"
    assert schemas["ErrorDetail"]["properties"]["code"]["enum"][0] == "invalid_argument"


def test_writes_document_if_match_and_answers_document_etag() -> None:
    item = document()["paths"]["/api/v1/pools/{name}"]
    for method in ("put", "patch", "delete"):
        assert "If-Match" in {p["name"] for p in item[method]["parameters"]}
    for method, status in (("get", "200"), ("put", "201"), ("patch", "200")):
        assert item[method]["responses"][status]["headers"]["ETag"]["required"] is True
    assert "412" in item["put"]["responses"] and "X-Request-Id" in item["get"]["responses"]["404"]["headers"]


def test_the_document_is_served_without_a_token_and_matches(live_api: LiveApi) -> None:
    resp = requests.get(live_api.url + OPENAPI_PATH, timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    assert resp.json() == msgspec.json.decode(msgspec.json.encode(document()))
    assert requests.get(live_api.url + "/api/v1/pools", timeout=10).status_code == 401  # the rest still needs it


# -- schemathesis: bounded property-based requests from the document ----------------------------------


# The document is generated in-process, so the schema loads at import (one test per operation);
# each case is sent to the live app with the token.
CONFIG = schemathesis.Config.from_dict(
    {
        "request-timeout": 10,
        # latin-1: header values then carry bytes 0x80-0xff too (the default codec keeps them ASCII)
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "codec": "latin-1"},
        "operations": [{"include-method": ["PUT", "PATCH", "DELETE"], "generation": {"max-examples": WRITE_EXAMPLES}}],
        "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
    }
)
schema = schemathesis.openapi.from_dict(document(), config=CONFIG).exclude(path=STREAM)


@schema.parametrize()
def test_every_operation_answers_as_documented(case: Any, live_api: LiveApi) -> None:
    case.call_and_validate(base_url=live_api.url, headers=auth(), checks=CHECKS)


# Headers on their own, with more examples: latin-1 values (bytes 0x80-0xff, not UTF-8) for If-Match and
# X-Request-Id on a write that reads If-Match whatever its body; and for Authorization, which the
# fuzzer draws itself (bearer scheme) when the test sends no token of its own.
HEADER_EXAMPLES = 50
HEADER_CONFIG = schemathesis.Config.from_dict(
    {
        "request-timeout": 10,
        "generation": {"max-examples": HEADER_EXAMPLES, "deterministic": True, "codec": "latin-1"},
        "phases": {"coverage": {"enabled": False}},  # the run above covered the edge values
        "checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}},
    }
)
headers_schema = schemathesis.openapi.from_dict(document(), config=HEADER_CONFIG)


@headers_schema.include(path="/api/v1/topology", method="PUT").parametrize()
def test_hostile_if_match_and_request_ids_get_documented_answers(case: Any, live_api: LiveApi) -> None:
    case.call_and_validate(base_url=live_api.url, headers=auth(), checks=CHECKS)


@headers_schema.include(path="/api/v1/pools", method="GET").parametrize()
def test_hostile_authorization_headers_get_documented_answers(case: Any, live_api: LiveApi) -> None:
    case.call_and_validate(base_url=live_api.url, checks=CHECKS)
