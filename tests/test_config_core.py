"""The config service's pure parts: error mapping, merge-patch, preconditions, views, policy."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.config.codec import (
    DOMAIN,
    POOL,
    check_preconditions,
    decode,
    etag,
    if_match_ok,
    merge_patch,
    parse_json,
    patchable,
    pop_revision,
    render,
)
from services.config.errors import (
    ApiError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    code_for_status,
    split_validation_message,
)
from services.config.security import check_listen, is_loopback, token_ok
from services.config.views import (
    EventLog,
    EventsQuery,
    ProbeTable,
    iso,
    parse_events_query,
    render_event,
    render_status,
)
from shared.messages import (
    AddressState,
    AnswerSet,
    OperationEvent,
    PoolState,
    ProbeResult,
    SwitchEvent,
)
from shared.resources import Address, Domain, Pool, PoolRef
from shared.settings import ApiSettings, Settings

# -- msgspec errors -> contract field paths ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "field"),
    [
        ("Expected `int` >= 1 - at `$.addresses[0].weight`", "Expected `int` >= 1", "addresses[0].weight"),
        ("Object contains unknown field `zz` - at `$.addresses[0]`", "Object contains unknown field `zz`",
         "addresses[0].zz"),
        ("Object contains unknown field `zz`", "Object contains unknown field `zz`", "zz"),
        ("Object missing required field `type`", "Object missing required field `type`", "type"),
        ("Object missing required field `address` - at `$.addresses[1]`",
         "Object missing required field `address`", "addresses[1].address"),
        ("Invalid enum value 'ipv5' - at `$.type`", "Invalid enum value 'ipv5'", "type"),
        ("Expected `object`, got `array`", "Expected `object`, got `array`", ""),
        ("Expected `str` of length <= 256 - at `$.remarks`", "Expected `str` of length <= 256", "remarks"),
        ("Expected `int`, got `str` - at `$.pools[2].weight`", "Expected `int`, got `str`", "pools[2].weight"),
    ],
)
def test_msgspec_error_text_becomes_message_and_field_path(text: str, message: str, field: str) -> None:
    assert split_validation_message(text) == (message, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "weight": 0}]}',
         "addresses[0].weight"),
        (b'{"type": "ipv4", "addresses": [{"name": "a", "address": "192.0.2.1", "zz": 1}]}', "addresses[0].zz"),
        (b'{"addresses": []}', "type"),
        (b'{"type": "ipv4", "enabled": "yes"}', "enabled"),
        (b'{"type": "ipv5"}', "type"),
        (b'{"type": "ipv4", "addresses": [{"name": "a", "address": "x", "health_check": {"failures": 11}}]}',
         "addresses[0].health_check.failures"),
        (b'{"type": "ipv4", "addresses": [{"name": "a", "address": "x", "health_check": {"failure_rate": 30}}]}',
         "addresses[0].health_check.failure_rate"),
        (b'{"type": ', ""),
        (b"[]", ""),
        (b"   ", ""),
    ],
)
def test_decoding_a_bad_pool_body_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        decode(POOL, body)
    assert err.value.field == field
    assert err.value.status == 400 and err.value.code == "invalid_argument"
    assert " - at " not in err.value.message


def test_malformed_json_says_so() -> None:
    with pytest.raises(InvalidArgument, match="malformed JSON"):
        parse_json(b"{nope")


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "invalid_argument"), (401, "unauthorized"), (404, "not_found"), (405, "method_not_allowed"),
     (409, "conflict"), (412, "precondition_failed"), (413, "payload_too_large"), (503, "unavailable"),
     (500, "internal"), (415, "invalid_argument")],
)
def test_http_status_maps_to_stable_error_code(status: int, code: str) -> None:
    assert code_for_status(status) == code


def test_api_error_body_has_code_message_and_field() -> None:
    assert NotFound("pool 'x' not found").body() == {
        "error": {"code": "not_found", "message": "pool 'x' not found", "field": ""}
    }
    assert ApiError("boom").status == 500


# -- merge-patch (RFC 7396, appendix A) -------------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == result
    assert target == before  # the target is not modified


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=2), children, max_size=3),
    max_leaves=10,
)


@given(target=_json, patch=_json)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


def test_pop_revision_takes_it_out_of_the_patch() -> None:
    patch: dict[str, Any] = {"enabled": True, "revision": 7}
    assert pop_revision(patch) == 7 and patch == {"enabled": True}
    assert pop_revision({"revision": None}) is None
    assert pop_revision(["not", "an", "object"]) is None
    with pytest.raises(InvalidArgument) as err:
        pop_revision({"revision": "7"})
    assert err.value.field == "revision"


# -- If-Match and preconditions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "current", "ok"),
    [
        ("3", 3, True),
        ('"3"', 3, True),
        ('W/"3"', 3, True),
        ('"2", "3"', 3, True),
        ("2", 3, False),
        ('"2"', 3, False),
        ("*", 3, True),
        ("*", None, False),
        ("3", None, False),
        ("abc", 3, False),
        ("", 3, False),
    ],
)
def test_if_match_matches_quoted_or_bare_revisions(header: str, current: int | None, ok: bool) -> None:
    assert if_match_ok(header, current) is ok


@pytest.mark.parametrize(
    ("if_match", "body_revision", "current", "must_exist", "error"),
    [
        (None, None, None, False, None),
        (None, None, None, True, NotFound),
        ("5", None, None, True, NotFound),
        ("5", None, 5, True, None),
        ("4", None, 5, True, PreconditionFailed),
        ("5", None, None, False, PreconditionFailed),
        (None, 5, 5, False, None),
        (None, 4, 5, False, PreconditionFailed),
        (None, 0, None, False, None),
        (None, 3, None, False, PreconditionFailed),
    ],
)
def test_preconditions(
    if_match: str | None, body_revision: int | None, current: int | None, must_exist: bool, error: type | None
) -> None:
    def run() -> None:
        check_preconditions(
            if_match=if_match, body_revision=body_revision, current=current, what="pool 'p'", must_exist=must_exist
        )

    if error is None:
        run()
    else:
        with pytest.raises(error):
            run()


# -- rendering --------------------------------------------------------------------------


def test_render_fills_in_every_default_plus_name_and_revision() -> None:
    domain = Domain(record_type="A", name="www.example.com")
    assert render(domain, "www.example.com", 9) == {
        "record_type": "A", "name": "www.example.com", "ttl": 30, "enabled": False, "remarks": "",
        "pools": [], "lb_strategy": "sequence", "sequence_mode": "preemptive", "all_down": "fail_open",
        "fallback_pool": None, "revision": 9,
    }
    assert etag(9) == '"9"'


def test_document_drops_name_and_revision_but_keeps_address_names() -> None:
    pool = Pool(type="ipv4", name="p", addresses=[Address(name="a", address="192.0.2.1")], revision=3)
    doc = patchable(pool)
    assert "name" not in doc and "revision" not in doc
    assert doc["addresses"][0]["name"] == "a"


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("WWW.Example.COM.", "www.example.com"), ("a.b", "a.b"), ("_dmarc.example.com", "_dmarc.example.com")],
)
def test_domain_names_from_the_path_are_normalized(raw: str, canonical: str) -> None:
    assert DOMAIN.canonical(raw) == canonical


@pytest.mark.parametrize(("kind", "raw"), [(DOMAIN, "nodot"), (DOMAIN, "-a.example.com"), (DOMAIN, "a..b"),
                                           (DOMAIN, "example.123"), (POOL, "bad name"), (POOL, "x" * 65),
                                           (POOL, "")])
def test_invalid_names_are_rejected_with_field_name(kind: Any, raw: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        kind.canonical(raw)
    assert err.value.field == "name"


# -- events -----------------------------------------------------------------------------


def _switch(domain: str = "www.example.com", at: float = 1.5) -> SwitchEvent:
    return SwitchEvent(domain=domain, at=at, from_pool="Primary-DC", to_pool="Backup-DC", reason="pool unavailable",
                       before=["192.0.2.1"], after=["198.51.100.1"])


def _op(name: str = "p", domain: str = "", revision: int = 1) -> OperationEvent:
    resource = "domain" if domain else "pool"
    path = f"/api/v1/{resource}s/{name}"
    return OperationEvent(at=2.0, method="PUT", path=path, resource=resource, name=name, revision=revision,
                          domain=domain, message=f"PUT {path}")


def test_iso_times_are_utc_with_milliseconds_and_z() -> None:
    assert iso(1795484360.123) == "2026-11-24T01:39:20.123Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"


def test_switch_event_view() -> None:
    assert render_event(_switch()) == {
        "kind": "switch", "domain": "www.example.com", "at": "1970-01-01T00:00:01.500Z",
        "message": "switched from Primary-DC to Backup-DC: pool unavailable",
        "from_pool": "Primary-DC", "to_pool": "Backup-DC", "reason": "pool unavailable",
        "before": ["192.0.2.1"], "after": ["198.51.100.1"], "fallback": False,
    }


def test_operation_event_view() -> None:
    view = render_event(_op("www.example.com", "www.example.com", 4))
    assert view == {
        "kind": "operation", "domain": "www.example.com", "at": "1970-01-01T00:00:02.000Z",
        "message": "PUT /api/v1/domains/www.example.com", "method": "PUT",
        "path": "/api/v1/domains/www.example.com", "resource": "domain", "name": "www.example.com", "revision": 4,
        "who": "", "via": "", "client": "", "changes": [],  # the audit fields (an event written before them)
    }


def test_event_log_is_newest_first_by_stream_sequence_and_filters() -> None:
    log = EventLog()
    log.add(3, _op("p", revision=3))
    log.add(1, _switch("a.example.com"))
    log.add(2, _op("b.example.com", "b.example.com", 2))
    log.add(3, _op("p", revision=3))  # the consumer delivers what the write already inserted
    assert [e["kind"] for e in log.query(EventsQuery())] == ["operation", "operation", "switch"]
    assert [e["revision"] for e in log.query(EventsQuery(kind="operation"))] == [3, 2]
    assert [e["domain"] for e in log.query(EventsQuery(kind="switch"))] == ["a.example.com"]
    assert [e["name"] for e in log.query(EventsQuery(domain="b.example.com"))] == ["b.example.com"]
    assert len(log.query(EventsQuery(limit=1))) == 1
    assert log.high_seq == 3


def test_event_log_keeps_only_the_newest_events_over_capacity() -> None:
    log = EventLog(capacity=10)
    for seq in range(1, 101):
        log.add(seq, _op(revision=seq))
    assert 10 <= len(log) <= 11
    assert log.query(EventsQuery(limit=1000))[-1]["revision"] >= 90
    assert log.query(EventsQuery(limit=1))[0]["revision"] == 100


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, EventsQuery(domain="", kind="", limit=100)),
        ({"limit": "1"}, EventsQuery(limit=1)),
        ({"limit": "1000", "kind": "switch"}, EventsQuery(kind="switch", limit=1000)),
        ({"domain": "WWW.Example.com.", "kind": "operation"}, EventsQuery(domain="www.example.com", kind="operation")),
    ],
)
def test_events_query_accepts(query: dict[str, str], expected: EventsQuery) -> None:
    assert parse_events_query(query) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
     ({"limit": "-1"}, "limit"), ({"kind": "audit"}, "kind")],
)
def test_events_query_rejects(query: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_events_query(query)
    assert err.value.field == field


# -- probe results and status -----------------------------------------------------------


def _probe(prober: str = "p1", region: str = "local", at: float = 10.0, ok: bool = True) -> ProbeResult:
    return ProbeResult(region=region, prober=prober, key="Primary-DC/a", pool="Primary-DC", address="a",
                       target="192.0.2.1", protocol="http", ok=ok, rtt_ms=1.5 if ok else None,
                       error="" if ok else "connection refused", at=at)


def test_probe_table_keeps_the_latest_result_per_region_and_prober() -> None:
    table = ProbeTable()
    table.add(_probe(at=10, ok=True))
    table.add(_probe(at=12, ok=False))
    table.add(_probe(at=11, ok=True))  # late, older: ignored
    table.add(_probe(prober="p0", region="eu", at=5))
    checks = table.checks("Primary-DC/a")
    assert [(c.region, c.prober, c.ok) for c in checks] == [("eu", "p0", True), ("local", "p1", False)]
    table.prune(now=5 + table.max_age_s + 1)
    assert [c.region for c in table.checks("Primary-DC/a")] == ["local"]


def test_status_combines_config_answer_pool_state_and_probes() -> None:
    pool = Pool(type="ipv4", name="Primary-DC", addresses=[Address(name="a", address="192.0.2.1"),
                                                           Address(name="b", address="192.0.2.2",
                                                                   mode="manual_unavailable")])
    domain = Domain(record_type="A", name="www.example.com", enabled=True, pools=[PoolRef(pool="Primary-DC"),
                                                                                  PoolRef(pool="Backup-DC")])
    state = PoolState(pool="Primary-DC", available=True,
                      addresses=[AddressState(name="a", address="192.0.2.1", available=True)])
    answer = AnswerSet(domain="www.example.com", enabled=True, record_type="A", ttl=30, pool="Primary-DC",
                       records=["192.0.2.1"], published_at=1.0)
    table = ProbeTable()
    table.add(_probe())
    status = msgspec.to_builtins(render_status(domain, answer, [("Primary-DC", pool, state), ("Backup-DC", None, None)], table))
    assert status == {
        "domain": "www.example.com",
        "enabled": True,
        "status": "active",
        "answer": {"pool": "Primary-DC", "records": ["192.0.2.1"], "ttl": 30, "fallback": False,
                   "published_at": "1970-01-01T00:00:01.000Z", "lines": []},
        "pools": [
            {"name": "Primary-DC", "available": True, "warming": False, "region": "", "lines": ["default"],
             "fallback_pool": False, "addresses": [
                {"name": "a", "address": "192.0.2.1", "available": True, "mode": "auto", "region": "",
                 "lines": ["default"], "waiting": "", "warming": False, "checks": [
                    {"region": "local", "prober": "p1", "ok": True, "rtt_ms": 1.5, "error": "",
                     "at": "1970-01-01T00:00:10.000Z", "check": 0, "protocol": "http", "loss_pct": None}],
                 "healthy": None, "health_reason": "", "mode_in_force": "auto", "maintenance_until": None,
                 "judgement": "all_ok"},
                {"name": "b", "address": "192.0.2.2", "available": None, "mode": "manual_unavailable",
                 "region": "", "lines": ["default"], "waiting": None, "warming": None, "checks": [],
                 "healthy": None, "health_reason": None, "mode_in_force": None, "maintenance_until": None,
                 "judgement": "all_ok"},
            ]},
            {"name": "Backup-DC", "available": None, "warming": None, "region": "", "lines": ["default"],
             "fallback_pool": False, "addresses": []},
        ],
    }


def test_status_answer_is_null_before_the_first_answer_and_after_a_tombstone() -> None:
    domain = Domain(record_type="A", name="www.example.com")
    assert render_status(domain, None, [], ProbeTable()).answer is None
    tomb = AnswerSet(domain="www.example.com", enabled=False, record_type="A", deleted=True)
    assert render_status(domain, tomb, [], ProbeTable()).answer is None


# -- listen policy and tokens -----------------------------------------------------------


def _settings(listen: str, token: str = "") -> Settings:
    return Settings(api=ApiSettings(listen=listen, token=token))


@pytest.mark.parametrize(
    ("listen", "token", "refuse", "warn"),
    [
        ("127.0.0.1:8080", "", False, True),
        ("127.0.0.2:8080", "", False, True),
        ("[::1]:8080", "", False, True),
        ("localhost:8080", "", False, True),
        ("0.0.0.0:8080", "", True, False),
        (":8080", "", True, False),
        ("[::]:8080", "", True, False),
        ("192.0.2.10:8080", "", True, False),
        ("api.example.com:8080", "", True, False),
        ("0.0.0.0:8080", "s3cret", False, False),
        ("127.0.0.1:8080", "s3cret", False, False),
    ],
)
def test_no_token_means_loopback_only(listen: str, token: str, refuse: bool, warn: bool) -> None:
    check = check_listen(_settings(listen, token))
    assert check.refuse is refuse
    assert bool(check.warning) is warn
    assert ("GTM_API_TOKEN" in check.error) is refuse


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.255.0.9", True), ("::1", True),
                                                ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
                                                ("10.0.0.1", False), ("example.com", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("header", "ok"),
    [("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer  s3cret ", True), ("Bearer wrong", False),
     ("Bearer s3cret2", False), ("Basic s3cret", False), ("s3cret", False), ("", False), (None, False)],
)
def test_bearer_token_check(header: str | None, ok: bool) -> None:
    assert token_ok(header, "s3cret") is ok


def test_decoded_resources_round_trip_through_storage_encoding() -> None:
    pool = decode(POOL, b'{"type": "ipv6", "addresses": [{"name": "a", "address": "2001:db8::1"}]}')
    assert msgspec.json.decode(msgspec.json.encode(pool), type=Pool) == pool
