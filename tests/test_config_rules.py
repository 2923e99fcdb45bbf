"""Pure parts added for templates, topology, regions, alerts and the status phase."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.config import validation
from services.config.alerts import PoolWatch, domain_alert, wanted
from services.config.apply import parse_path
from services.config.codec import ALERT_TARGET, DOMAIN, POOL, TEMPLATE, TOPOLOGY
from services.config.errors import NotFound
from services.config.views import domain_phase
from shared.messages import AddressState, AnswerSet, PoolState, SwitchEvent
from shared.resources import (
    Address,
    AlertTarget,
    Domain,
    HealthCheck,
    HealthTemplate,
    Pool,
    ResourceError,
    Topology,
    TopologyEntry,
)

WEB = HealthCheck(protocol="http", port=8080, path="/health", interval_s=5, timeout_s=1)
TCP = HealthCheck(protocol="tcp", port=22)
TEMPLATES = {"web": WEB, "tcp": TCP}


def _pool_doc(*checks: Any) -> dict[str, Any]:
    return {"type": "ipv4", "addresses": [
        {"name": f"a{i}", "address": f"192.0.2.{i + 1}", "health_check": hc} for i, hc in enumerate(checks)]}


def _effective(doc: Any, i: int = 0) -> HealthCheck:
    pool = msgspec.convert(doc, Pool)
    check = pool.addresses[i].health_check
    assert check is not None
    return check


# -- template references ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "overrides", "changed"),
    [
        ({"template": "web"}, [], {}),
        ({"template": "web", "port": 8081}, ["port"], {"port": 8081}),
        ({"template": "web", "path": "/x", "failures": 3}, ["path", "failures"], {"path": "/x", "failures": 3}),
        # given beside the template without an overrides list: an override even when equal
        ({"template": "web", "port": 8080}, ["port"], {}),
        # read back from the API: listed fields stay, fields equal to the template do not count
        ({**msgspec.to_builtins(WEB), "template": "web", "overrides": []}, [], {}),
        ({**msgspec.to_builtins(WEB), "port": 9, "template": "web", "overrides": ["port"]}, ["port"], {"port": 9}),
        # an edit made without updating the list still counts
        ({**msgspec.to_builtins(WEB), "path": "/y", "template": "web", "overrides": []}, ["path"], {"path": "/y"}),
        # listed but not given: nothing to override with
        ({"template": "web", "overrides": ["port"]}, [], {}),
    ],
    ids=["bare", "one field", "two fields", "equal but given", "round trip", "round trip override",
         "edited without list", "listed not given"],
)
def test_fields_beside_a_template_override_it_field_by_field(
    given: dict[str, Any], overrides: list[str], changed: dict[str, Any]
) -> None:
    check = _effective(validation.expand_templates(_pool_doc(given), TEMPLATES))
    assert check == msgspec.structs.replace(WEB, template="web", overrides=overrides, **changed)


def test_checks_without_a_template_are_kept_and_lose_stray_overrides() -> None:
    doc = _pool_doc({"protocol": "tcp", "port": 5, "overrides": ["port"]}, None, {"template": "tcp"})
    out = validation.expand_templates(doc, TEMPLATES)
    assert _effective(out, 0) == HealthCheck(protocol="tcp", port=5)
    assert out["addresses"][1]["health_check"] is None
    assert _effective(out, 2) == msgspec.structs.replace(TCP, template="tcp")
    assert doc["addresses"][0]["health_check"]["overrides"] == ["port"]  # the input is not modified


@pytest.mark.parametrize(
    ("check", "field"),
    [({"template": "nope"}, "addresses[1].health_check.template"),
     ({"template": "web", "overrides": ["colour"]}, "addresses[1].health_check.overrides[0]")],
)
def test_bad_template_references_name_the_field(check: dict[str, Any], field: str) -> None:
    with pytest.raises(ResourceError) as err:
        validation.expand_templates(_pool_doc({"template": "web"}, check), TEMPLATES)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("doc", "refs"),
    [(_pool_doc({"template": "web"}, {"template": "tcp"}, {"template": "web"}), {"web", "tcp"}),
     (_pool_doc({"protocol": "http"}, None, {"template": ""}), set()),
     ({"type": "ipv4", "addresses": "not a list"}, set()), ([1, 2], set()), (None, set())],
)
def test_template_refs_finds_every_referenced_template(doc: Any, refs: set[str]) -> None:
    assert validation.template_refs(doc) == refs
    if not refs:
        assert validation.expand_templates(doc, {}) == doc


def test_reresolve_rebuilds_only_checks_of_that_template_keeping_their_overrides() -> None:
    own = HealthCheck(protocol="tcp", port=1)
    pool = msgspec.convert(validation.expand_templates(_pool_doc({"template": "web", "port": 81}, {"template": "tcp"},
                                                      msgspec.to_builtins(own)), TEMPLATES), Pool)
    new_web = msgspec.structs.replace(WEB, port=9000, path="/v2")
    again = validation.reresolve(pool, "web", new_web)
    assert again.addresses[0].health_check == msgspec.structs.replace(new_web, port=81, template="web",
                                                                      overrides=["port"])
    assert again.addresses[1:] == pool.addresses[1:]
    assert validation.uses_template(pool, "web") and validation.uses_template(pool, "tcp") and not validation.uses_template(pool, "other")


# -- templates, alert targets, topology, regions ----------------------------------------


@pytest.mark.parametrize(
    ("template", "field"),
    [(HealthTemplate(template="web"), "template"), (HealthTemplate(overrides=["port"]), "overrides"),
     (HealthTemplate(interval_s=2, timeout_s=2), "timeout_s"), (HealthTemplate(protocol="tcp"), "port"),
     (HealthTemplate(expected_codes=["2xz"]), "expected_codes[0]"), (HealthTemplate(name="other"), "name")],
)
def test_invalid_templates_name_the_field(template: HealthTemplate, field: str) -> None:
    with pytest.raises(ResourceError) as err:
        validation.validate_template(template, "web")
    assert err.value.field == field


def test_a_template_is_stored_as_a_plain_health_check() -> None:
    stored = validation.validate_template(HealthTemplate(name="web", revision=3, port=8080), "web")
    assert type(stored) is HealthCheck and stored == HealthCheck(port=8080)


@pytest.mark.parametrize(
    ("url", "ok"),
    [("http://127.0.0.1:9000/hook", True), ("https://hooks.example.com/x?y=1", True), ("ftp://example.com", False),
     ("example.com/hook", False), ("http://", False), ("http://host:99999/", False), ("javascript:alert(1)", False)],
)
def test_alert_target_urls_must_be_http_or_https(url: str, ok: bool) -> None:
    target = AlertTarget(url=url, kinds=["pool", "pool", "domain"])
    if ok:
        assert validation.validate_alert_target(target, "ops") == AlertTarget(url=url, name="ops", kinds=["pool", "domain"])
        return
    with pytest.raises(ResourceError) as err:
        validation.validate_alert_target(target, "ops")
    assert err.value.field == "url"


def _topology(*entries: tuple[str, str]) -> Topology:
    return Topology(entries=[TopologyEntry(cidr=c, region=r) for c, r in entries])


def test_topology_cidrs_are_stored_canonical() -> None:
    got = validation.validate_topology(_topology(("10.1.2.3/8", "cn-east"), ("2001:DB8::/32", "eu.west_1"), ("192.0.2.7", "x")))
    assert [(e.cidr, e.region) for e in got.entries] == [
        ("10.0.0.0/8", "cn-east"), ("2001:db8::/32", "eu.west_1"), ("192.0.2.7/32", "x")]


@pytest.mark.parametrize(
    ("entries", "field"),
    [([("10.0.0.0/33", "a")], "entries[0].cidr"), ([("10.0.0.0/8", "a"), ("nonsense", "b")], "entries[1].cidr"),
     ([("10.0.0.0/8", "a"), ("10.9.9.9/8", "b")], "entries[1].cidr"), ([("10.0.0.0/8", "bad region")],
                                                                         "entries[0].region"),
     ([("10.0.0.0/8", "r" * 65)], "entries[0].region")],
    ids=["prefix too long", "not a cidr", "duplicate", "region with a space", "region too long"],
)
def test_bad_topology_entries_name_the_field(entries: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(ResourceError) as err:
        validation.validate_topology(_topology(*entries))
    assert err.value.field == field


@pytest.mark.parametrize(
    ("pool", "field"),
    [(Pool(type="ipv4", region="eu west"), "region"),
     (Pool(type="ipv4", addresses=[Address(name="a", address="192.0.2.1", region="eu/1")]), "addresses[0].region"),
     (Pool(type="ipv4", region="eu-west", addresses=[Address(name="a", address="192.0.2.1", region="")]), "")],
)
def test_regions_of_pools_and_addresses_are_names_or_empty(pool: Pool, field: str) -> None:
    if not field:
        validation.validate_regions(pool)
        return
    with pytest.raises(ResourceError) as err:
        validation.validate_regions(pool)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("path", "kind", "name"),
    [("/api/v1/health-templates/web", TEMPLATE, "web"), ("health-templates", TEMPLATE, None),
     ("/api/v1/alert-targets/ops", ALERT_TARGET, "ops"), ("/api/v1/topology", TOPOLOGY, "topology"),
     ("topology/", TOPOLOGY, "topology"), ("/api/v1/pools/p", POOL, "p"), ("domains", DOMAIN, None)],
)
def test_config_apply_paths_reach_every_resource(path: str, kind: Any, name: str | None) -> None:
    assert parse_path(path) == (kind, name)


@pytest.mark.parametrize("path", ["/api/v1/topology/x", "/api/v1/templates/web", "/api/v1/nothing"])
def test_config_apply_unknown_paths_are_not_found(path: str) -> None:
    with pytest.raises(NotFound):
        parse_path(path)


# -- status phase -----------------------------------------------------------------------

ANSWER = AnswerSet(domain="www.example.com", enabled=True, record_type="A", records=["192.0.2.1"])


@pytest.mark.parametrize(
    ("enabled", "answer", "warming", "phase"),
    [(False, None, [], "disabled"), (False, ANSWER, [True], "disabled"), (True, None, [], "warming"),
     (True, msgspec.structs.replace(ANSWER, enabled=False), [False], "warming"),
     (True, msgspec.structs.replace(ANSWER, deleted=True), [False], "warming"),
     (True, ANSWER, [False, True], "warming"), (True, ANSWER, [False, None], "active"), (True, ANSWER, [], "active")],
)
def test_domain_phase(enabled: bool, answer: AnswerSet | None, warming: list[bool | None], phase: str) -> None:
    states = [None if w is None else PoolState(pool=f"p{i}", available=True, warming=w) for i, w in enumerate(warming)]
    assert domain_phase(Domain(record_type="A", enabled=enabled), answer, states) == phase


# -- alerts -----------------------------------------------------------------------------


def _state(available: bool, *addresses: tuple[str, bool], pool: str = "Primary-DC", at: float = 1.0) -> PoolState:
    return PoolState(pool=pool, available=available, at=at, addresses=[
        AddressState(name=n, address=f"192.0.2.{i + 1}", available=up, reason="" if up else "http connection refused")
        for i, (n, up) in enumerate(addresses)])


def test_the_first_state_of_a_pool_is_a_baseline_not_a_switch() -> None:
    watch = PoolWatch()
    assert watch.observe(_state(False, ("a", False))) == []
    assert watch.observe(_state(True, ("a", True), pool="Other")) == []
    assert watch.observe(_state(False, ("a", False), at=2.0)) == []  # nothing changed


def test_an_address_going_down_then_its_pool_give_two_alerts_in_that_order() -> None:
    watch = PoolWatch()
    watch.observe(_state(True, ("a", True), ("b", False)))
    alerts = watch.observe(_state(False, ("a", False), ("b", False), at=2.0))
    assert [a["kind"] for a in alerts] == ["address", "pool"]
    address, pool = alerts
    assert address == {
        "kind": "address", "at": "1970-01-01T00:00:02.000Z", "pool": "Primary-DC", "address": "a",
        "target": "192.0.2.1", "available": False, "reason": "http connection refused",
        "before": ["192.0.2.1"], "after": [],
        "message": "address Primary-DC/a (192.0.2.1) is unavailable: http connection refused",
        "healthy": None, "mode": "auto",
    }
    assert (pool["pool"], pool["available"], pool["before"], pool["after"]) == ("Primary-DC", False, ["192.0.2.1"], [])
    assert pool["reason"] == "0 of 2 enabled addresses available" and pool["message"].startswith("pool Primary-DC is ")
    back = watch.observe(_state(False, ("a", False), ("b", True), at=3.0))
    assert [(a["kind"], a["address"], a["available"], a["reason"]) for a in back] == [("address", "b", True, "checks ok")]


def test_a_new_address_in_a_known_pool_is_no_switch() -> None:
    watch = PoolWatch()
    watch.observe(_state(True, ("a", True)))
    assert watch.observe(_state(True, ("a", True), ("b", False))) == []


def test_domain_alert_carries_the_switch_and_its_records() -> None:
    event = SwitchEvent(domain="www.example.com", at=1.5, from_pool="Primary-DC", to_pool="Backup-DC",
                        reason="Primary-DC unavailable", before=["192.0.2.1"], after=["198.51.100.1"])
    assert domain_alert(event) == {
        "kind": "domain", "at": "1970-01-01T00:00:01.500Z", "domain": "www.example.com", "from_pool": "Primary-DC",
        "to_pool": "Backup-DC", "fallback": False, "reason": "Primary-DC unavailable", "before": ["192.0.2.1"],
        "after": ["198.51.100.1"], "message": "switched from Primary-DC to Backup-DC: Primary-DC unavailable",
    }


@pytest.mark.parametrize(
    ("target", "kind", "sent"),
    [(AlertTarget(url="http://x"), "address", True), (AlertTarget(url="http://x", kinds=["domain"]), "pool", False),
     (AlertTarget(url="http://x", enabled=False), "domain", False)],
)
def test_targets_receive_only_enabled_kinds(target: AlertTarget, kind: str, sent: bool) -> None:
    assert wanted(target, {"kind": kind}) is sent
