"""The plan of a document (pure): which differences are fields the document leaves out, and YAML parsing."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import pytest

from shared import manifest

ADDRESS = {"name": "a1", "address": "192.0.2.1"}
LIVE_POOL: dict[str, Any] = {"type": "ipv4", "name": "p", "revision": 4, "addresses": [ADDRESS]}


def resets(kind: str, written: dict[str, Any], live: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    [change] = manifest.plan({kind: {"p": written}}, {kind: {"p": live}})
    assert change.action == "update"
    return [(r.field, r.current, r.default) for r in change.resets]


@pytest.mark.parametrize(
    ("written", "live", "expected"),
    [
        # a top-level field set outside the document
        ({"type": "ipv4", "addresses": [ADDRESS]}, {**LIVE_POOL, "lb_strategy": "weight"},
         [("lb_strategy", "weight", "round_robin")]),
        # an address's field, found by the address's name even when the order differs
        ({"type": "ipv4", "addresses": [{"name": "a2", "address": "192.0.2.2"}, ADDRESS]},
         {**LIVE_POOL, "addresses": [{**ADDRESS, "mode": "manual_unavailable"}, {"name": "a2", "address": "192.0.2.2"}]},
         [("addresses[1].mode", "manual_unavailable", "auto")]),
        # a whole health check the document does not have
        ({"type": "ipv4", "addresses": [ADDRESS]},
         {**LIVE_POOL, "addresses": [{**ADDRESS, "health_check": {"protocol": "tcp", "port": 22}}]},
         [("addresses[0].health_check", ANY, None)]),
        # one field of a check the document has
        ({"type": "ipv4", "addresses": [{**ADDRESS, "health_check": {"port": 8081}}]},
         {**LIVE_POOL, "addresses": [{**ADDRESS, "health_check": {"port": 8081, "failures": 5}}]},
         [("addresses[0].health_check.failures", 5, 2)]),
    ],
)
def test_a_field_the_document_leaves_out_is_a_reset(
    written: dict[str, Any], live: dict[str, Any], expected: list[tuple[str, Any, Any]]
) -> None:
    assert resets("pools", written, live) == expected


@pytest.mark.parametrize(
    ("written", "live"),
    [
        # the document writes the field: an ordinary update
        ({"type": "ipv4", "lb_strategy": "round_robin", "addresses": [ADDRESS]}, {**LIVE_POOL, "lb_strategy": "weight"}),
        # a new address, a removed address, a changed address value: the document says so itself
        ({"type": "ipv4", "addresses": [ADDRESS, {"name": "a2", "address": "192.0.2.2"}]}, LIVE_POOL),
        ({"type": "ipv4", "addresses": []}, LIVE_POOL),
        ({"type": "ipv4", "addresses": [{"name": "a1", "address": "192.0.2.9"}]}, LIVE_POOL),
    ],
)
def test_a_difference_the_document_writes_is_no_reset(written: dict[str, Any], live: dict[str, Any]) -> None:
    assert resets("pools", written, live) == []


def test_the_diff_starts_with_one_marked_line_per_reset() -> None:
    live = {"record_type": "A", "name": "p", "enabled": True, "sequence_mode": "non_preemptive", "ttl": 60}
    [change] = manifest.plan({"domains": {"p": {"record_type": "A", "ttl": 60}}}, {"domains": {"p": live}})
    assert change.diff.splitlines()[:3] == [
        '! enabled: true -> false  (not in the document, changed outside it: reset to the default)',
        '! sequence_mode: "non_preemptive" -> "preemptive"  (not in the document, changed outside it: reset to the default)',
        "--- current",
    ]


def test_an_unchanged_resource_is_no_change_whatever_the_document_leaves_out() -> None:
    assert manifest.plan({"pools": {"p": {"type": "ipv4", "addresses": [ADDRESS]}}}, {"pools": {"p": LIVE_POOL}}) == []


def test_yaml_timestamps_stay_the_strings_written() -> None:
    raw = manifest.parse("pools:\n  p:\n    remarks: 2024-05-01T10:00:00Z\n    day: 2024-05-01\n")
    assert raw == {"pools": {"p": {"remarks": "2024-05-01T10:00:00Z", "day": "2024-05-01"}}}


def test_text_that_is_not_yaml_is_a_manifest_error() -> None:
    with pytest.raises(manifest.ManifestError, match="not YAML or JSON"):
        manifest.parse("pools: [")
