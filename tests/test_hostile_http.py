"""Hostile requests at the HTTP level get a JSON 4xx, never a 5xx, and log no traceback; request ids.

Raw bytes over a real TCP connection to the app (real nats-server), so that headers reach it exactly
as sent: bytes that are not UTF-8, control bytes, 5,000 digits.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.config.codec import MAX_JSON_DEPTH, if_match_ok
from shared.settings import ApiSettings, NatsSettings, Settings
from tests.support import NatsServer
from tests.test_openapi import LiveApi

TOKEN = "hostile-test-token"
POOL = b'{"type": "ipv4"}'
# What aiohttp's parser refuses itself (before any handler): control bytes in a header value.
PARSER_REFUSED = {chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F)}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    """The app with a token on a private nats-server, with pool ``p``."""
    nats = NatsServer(tmp_path_factory.mktemp("nats-hostile"))
    nats.start()
    live = LiveApi(Settings(nats=NatsSettings(url=nats.url), api=ApiSettings(token=TOKEN))).start()
    try:
        assert send(live, raw("PUT", "/api/v1/pools/p", body=POOL))[0] in (200, 201)
        yield live
    finally:
        live.stop()
        nats.stop()


def raw(method: str, path: str, *, headers: bytes = b"", body: bytes = b"", token: bool = True) -> bytes:
    """An HTTP/1.1 request, byte for byte."""
    head = f"{method} {path} HTTP/1.1\r\n".encode()
    if b"host:" not in headers.lower():
        head += b"Host: 127.0.0.1\r\n"
    if token:
        head += f"Authorization: Bearer {TOKEN}\r\n".encode()
    head += b"Connection: close\r\n" + headers
    if body or method in ("PUT", "PATCH", "POST"):
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def send(api: LiveApi, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; (status, headers lower-cased, body) of the answer."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def json_error(answer: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    """The contract's error of an answer (asserting it is one)."""
    status, headers, body = answer
    assert 400 <= status < 500, (status, body)
    assert headers["content-type"] == "application/json", (status, headers, body)
    error: dict[str, Any] = json.loads(body)["error"]
    assert set(error) == {"code", "message", "field"}
    return error


@pytest.fixture
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[list[Any]]:
    """Fail the test if anything logs an error or a traceback (stdlib or structlog) while it runs."""
    caplog.set_level(logging.WARNING)
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        yield events
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    assert [e for e in events if e.get("log_level") in ("error", "critical") or "exc_info" in e] == []


# -- headers the API reads ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['"\xe9"'.encode("latin-1"), '"é"'.encode(), b"\xff\xfe", b"1\x80"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("PUT", "/api/v1/pools/p", POOL), ("PUT", "/api/v1/pools/new", POOL), ("PATCH", "/api/v1/pools/p", b"{}"),
     ("DELETE", "/api/v1/pools/none", b""), ("PUT", "/api/v1/topology", b"{}")],
)
def test_a_non_ascii_if_match_gets_a_json_400_naming_the_header(
    api: LiveApi, no_tracebacks: list[Any], value: bytes, method: str, path: str, body: bytes
) -> None:
    answer = send(api, raw(method, path, headers=b"If-Match: " + value + b"\r\n", body=body))
    assert answer[0] == 400
    assert json_error(answer) == {
        "code": "invalid_argument", "message": "the If-Match header must be printable ASCII", "field": "If-Match",
    }


@pytest.mark.parametrize("value", ["Bearer \xe9".encode("latin-1"), "Bearer é".encode(), b"\xff", b"Bearer " + b"\x80" * 64])
def test_a_non_ascii_authorization_gets_a_json_400_before_authentication(
    api: LiveApi, no_tracebacks: list[Any], value: bytes
) -> None:
    answer = send(api, raw("GET", "/api/v1/pools", headers=b"Authorization: " + value + b"\r\n", token=False))
    assert answer[0] == 400
    assert json_error(answer)["field"] == "Authorization"


def test_a_wrong_ascii_token_is_still_a_401(api: LiveApi) -> None:
    answer = send(api, raw("GET", "/api/v1/pools", headers=b"Authorization: Bearer nope\r\n", token=False))
    assert answer[0] == 401 and json_error(answer)["code"] == "unauthorized"


def test_an_if_match_of_5000_digits_is_a_stale_write_not_a_crash(api: LiveApi, no_tracebacks: list[Any]) -> None:
    answer = send(api, raw("PUT", "/api/v1/pools/p", headers=b"If-Match: " + b"9" * 5000 + b"\r\n", body=POOL))
    assert answer[0] == 412
    error = json_error(answer)
    assert error["code"] == "precondition_failed" and len(error["message"]) < 200


def test_if_match_tags_are_ascii_revisions_of_any_length() -> None:
    assert if_match_ok('W/"3", "4"', 4) and if_match_ok("*", 1) and if_match_ok('"0004"', 4)
    assert not if_match_ok("9" * 5000, 9) and not if_match_ok("²", 2) and not if_match_ok("١", 1)
    assert not if_match_ok("*", None)


# -- bodies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b'{"remarks": ' + b"[" * (MAX_JSON_DEPTH + 8) + b"]" * (MAX_JSON_DEPTH + 8) + b"}",  # under any recursion limit
    ],
    ids=["arrays-5000", "objects-3000", "arrays-40"],
)
def test_a_deeply_nested_patch_gets_a_json_400(api: LiveApi, no_tracebacks: list[Any], body: bytes) -> None:
    answer = send(api, raw("PATCH", "/api/v1/pools/p", body=body))
    assert answer[0] == 400
    assert json_error(answer)["message"] == f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"


@pytest.mark.parametrize("path", ["/api/v1/pools/p", "/api/v1/apply"])
def test_deeply_nested_put_and_apply_bodies_get_a_json_400(
    api: LiveApi, no_tracebacks: list[Any], path: str
) -> None:
    method = "POST" if path.endswith("apply") else "PUT"
    deep = b'{"document": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = send(api, raw(method, path, body=deep))
    assert answer[0] == 400 and json_error(answer)["code"] == "invalid_argument"


@pytest.mark.parametrize("coding", ["deflate", "gzip", "DEFLATE"])
def test_a_content_encoding_the_body_is_not_in_gets_a_json_400(
    api: LiveApi, no_tracebacks: list[Any], coding: str
) -> None:
    answer = send(api, raw("PUT", "/api/v1/pools/p", headers=f"Content-Encoding: {coding}\r\n".encode(), body=POOL))
    assert answer[0] == 400
    assert json_error(answer) == {
        "code": "invalid_argument", "message": f"the request body is not {coding} data", "field": "Content-Encoding",
    }


@pytest.mark.parametrize(("coding", "compress"), [("deflate", zlib.compress), ("gzip", gzip.compress)])
def test_a_body_compressed_as_it_says_is_read(api: LiveApi, coding: str, compress: Any) -> None:
    headers = f"Content-Encoding: {coding}\r\n".encode()
    status, _, body = send(api, raw("PUT", "/api/v1/pools/p", headers=headers, body=compress(POOL)))
    assert status == 200 and json.loads(body)["type"] == "ipv4"


def test_an_unknown_content_encoding_gets_a_json_400(api: LiveApi, no_tracebacks: list[Any]) -> None:
    answer = send(api, raw("PUT", "/api/v1/pools/p", headers=b"Content-Encoding: bogus\r\n", body=POOL))
    assert answer[0] == 400 and json_error(answer)["field"] == "Content-Encoding"


# -- what aiohttp's parser refuses before any handler (documented: its plain-text 400) --------------------


@pytest.mark.parametrize(
    "header",
    [b"X-Foo: a\x7fb", b"X-F\x7foo: ab", b"X-Foo: a\x00b", b"If-Match: \x01", b"Content-Encoding: br"],
    ids=["0x7f-value", "0x7f-name", "nul-value", "soh-if-match", "br-without-brotli"],
)
def test_bytes_the_http_parser_refuses_get_its_plain_400_and_one_log_line(
    api: LiveApi, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    """aiohttp's parser answers these itself: no middleware, signal or handler runs, so the body is its
    text/plain (not the contract's JSON) and no X-Request-Id is echoed; it is a 400, never a 5xx, and
    the refusal is logged as one warning line without a traceback."""
    caplog.set_level(logging.WARNING, logger="aiohttp.server")
    status, headers, _ = send(api, raw("GET", "/api/v1/pools", headers=header + b"\r\n"))
    assert status == 400 and headers["content-type"].startswith("text/plain")
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records and all(r.exc_info is None and r.levelno == logging.WARNING for r in records)
    assert "refused a malformed request from 127.0.0.1" in records[-1].getMessage()


# -- any value of any header the API reads, as latin-1 bytes ----------------------------------------------

READ = ["If-Match", "Authorization", "X-Request-Id", "Host", "Origin", "X-GTM-Via", "Content-Encoding"]
latin1_values = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40).map(str.strip)


@given(header=st.sampled_from(READ), value=latin1_values)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_value_of_a_header_the_api_reads_gets_json_and_never_a_5xx(api: LiveApi, header: str, value: str) -> None:
    line = f"{header}: {value}\r\n".encode("latin-1")
    status, headers, body = send(api, raw("PUT", "/api/v1/topology", headers=line, body=b"{}",
                                          token=header != "Authorization"))
    assert status < 500, body
    if headers["content-type"].startswith("text/plain"):  # the parser's own refusal
        assert status == 400 and set(value) & PARSER_REFUSED
    else:
        assert headers["content-type"] == "application/json" and json.loads(body)
        assert "x-request-id" in headers


# -- request ids and the access log -----------------------------------------------------------------------


def test_an_incoming_request_id_is_kept_and_echoed(api: LiveApi) -> None:
    _, headers, _ = send(api, raw("GET", "/api/v1/pools", headers=b"X-Request-Id: req-42/a:b\r\n"))
    assert headers["x-request-id"] == "req-42/a:b"


@pytest.mark.parametrize("sent", [b"", b"X-Request-Id: \xe9t\xe9\r\n", b"X-Request-Id: " + b"a" * 129 + b"\r\n",
                                  b"X-Request-Id: two words\r\n"])
def test_without_a_usable_request_id_one_is_made(api: LiveApi, sent: bytes) -> None:
    _, headers, _ = send(api, raw("GET", "/api/v1/pools", headers=sent))
    made = headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0


def test_errors_unknown_routes_and_public_paths_echo_the_request_id(api: LiveApi) -> None:
    for request in (raw("GET", "/nope"), raw("GET", "/healthz", token=False), raw("GET", "/api/v1/pools", token=False),
                    raw("PATCH", "/api/v1/pools/p", body=b"[" * 100 + b"]" * 100)):
        assert send(api, request.replace(b"Connection:", b"X-Request-Id: rid-7\r\nConnection:"))[1]["x-request-id"] == "rid-7"


def test_http_request_lines_carry_the_client_and_the_request_id(api: LiveApi) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        send(api, raw("PUT", "/api/v1/pools/p", headers=b"X-Request-Id: audit-1\r\n", body=POOL))
        send(api, raw("GET", "/api/v1/pools"))
    lines = [e for e in events if e["event"] == "http_request"]
    assert {"client": "127.0.0.1", "request_id": "audit-1", "status": 200}.items() <= lines[0].items()
    assert lines[1]["client"] == "127.0.0.1" and len(lines[1]["request_id"]) == 32
    changed = [e for e in events if e["event"] == "config_changed"]
    assert changed and changed[0]["request_id"] == "audit-1"  # every line written while serving it
