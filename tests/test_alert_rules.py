"""deploy/prometheus: alert rules promtool accepts and whose unit tests pass; the dashboard's queries.

promtool (Debian's ``prometheus`` package; ``make test`` installs it when it can) checks the
rules, runs their unit tests (gtm-alerts.test.yml) and checks the example Prometheus config;
without it those tests skip and say why.  The metric-name checks need nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "gtm-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "gtm-dashboard.json"
ALERTS = {"GtmPoolDown", "GtmDomainAllPoolsDown", "GtmEdgeStale", "GtmProberRegionSilent", "GtmNatsDisconnected"}

promtool_missing = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus; make test installs it)"
)


def _promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _defined_metrics() -> set[str]:
    """Every gtm_* metric name the services define (as a string literal in their source)."""
    source = "".join(p.read_text() for p in [*ROOT.glob("services/*/*.py"), *ROOT.glob("shared/*.py")])
    return set(re.findall(r'"(gtm_[a-z_]+)"', source))


def _used_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b(gtm_[a-z_]+)\b", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}


def test_the_rules_are_the_alerts_the_issue_asks_for_each_with_severity_and_text() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
        assert rule.get("for"), rule  # nothing fires on one bad scrape


def test_rules_and_dashboard_only_use_metrics_the_services_define() -> None:
    defined = {d.removesuffix("_total") for d in _defined_metrics()}
    exprs = [r["expr"] for r in _rules()] + _dashboard_exprs()
    used = {m.removesuffix("_total") for e in exprs for m in _used_metrics(e)}
    assert used, "no metrics found"
    assert not used - defined, f"undefined metrics: {sorted(used - defined)}"
    # The dashboard has the pool/address health and rate limiting panels.
    dashboard = " ".join(_dashboard_exprs())
    for name in ("gtm_pool_available", "gtm_address_available", "gtm_edge_rrl_total", "gtm_domain_pools_available"):
        assert name in dashboard, name


def test_the_dashboard_parses_and_every_panel_has_a_unique_id() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["targets"] for p in dash["panels"] if p["type"] != "row")


@promtool_missing
def test_promtool_accepts_the_rules_and_the_example_config() -> None:
    assert "SUCCESS: 5 rules found" in _promtool("check", "rules", RULES.name)
    _promtool("check", "config", "prometheus.yml")


@promtool_missing
def test_the_alert_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "gtm-alerts.test.yml")


@promtool_missing
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each expression of a rule file: one recording rule per panel query.
    rules = [{"record": f"gtm:dashboard_query_{i}", "expr": e} for i, e in enumerate(_dashboard_exprs())]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in _promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
