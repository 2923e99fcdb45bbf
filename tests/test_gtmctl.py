"""gtmctl against a real config service: declarative apply, dry-run, prune, errors, get/status/events/explain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.gtmctl.cli import main
from shared import manifest
from tests.support import Api, Service, free_port

DOC = """
pools:
  Primary-DC:
    type: ipv4
    addresses:
      - {name: Primary-Server-01, address: 192.0.2.1}
  Backup-DC:
    type: ipv4
    addresses:
      - {name: Backup-Server-01, address: 192.0.2.2}
domains:
  - name: www.example.com
    record_type: A
    ttl: 60
    pools:
      - {pool: Primary-DC, sequence: 1}
      - {pool: Backup-DC, sequence: 2}
"""


@pytest.fixture
def api(nats_url: str, log_dir: Path) -> Iterator[str]:
    port = free_port()
    svc = Service("config", {"NATS_URL": nats_url, "GTM_API_LISTEN": f"127.0.0.1:{port}"}, log_dir).start()
    try:
        svc.wait_for_event("service_ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        svc.stop()


def run(api: str, *argv: str) -> int:
    return main(["--api", api, *argv])


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gtm.yaml"
    path.write_text(text)
    return str(path)


def test_apply_creates_then_is_idempotent(api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, DOC)
    assert run(api, "apply", "-f", f) == 0
    out = capsys.readouterr().out
    assert "+ create pool Primary-DC" in out and "+ create domain www.example.com" in out
    assert Api(api + "/api/v1").get("/domains/www.example.com")[1]["ttl"] == 60
    assert run(api, "apply", "-f", f) == 0
    assert capsys.readouterr().out.strip() == "no changes"


def test_dry_run_shows_the_diff_and_changes_nothing(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(api, "apply", "-f", write(tmp_path, DOC)) == 0
    capsys.readouterr()
    changed = DOC.replace("ttl: 60", "ttl: 120")
    assert run(api, "apply", "--dry-run", "-f", write(tmp_path, changed)) == 0
    out = capsys.readouterr().out
    assert "~ update domain www.example.com" in out
    assert '-  "ttl": 60' in out and '+  "ttl": 120' in out
    assert Api(api + "/api/v1").get("/domains/www.example.com")[1]["ttl"] == 60


def test_prune_deletes_what_the_document_no_longer_lists(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(api, "apply", "-f", write(tmp_path, DOC)) == 0
    smaller = DOC.split("domains:")[0].replace(
        "  Backup-DC:\n    type: ipv4\n    addresses:\n      - {name: Backup-Server-01, address: 192.0.2.2}\n", ""
    )
    assert run(api, "apply", "--prune", "-f", write(tmp_path, smaller)) == 0
    out = capsys.readouterr().out
    assert "- delete domain www.example.com" in out and "- delete pool Backup-DC" in out
    assert [p["name"] for p in Api(api + "/api/v1").get("/pools")[1]["pools"]] == ["Primary-DC"]


def test_an_invalid_document_reports_the_api_field_and_fails(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = DOC.replace("address: 192.0.2.2", "address: 300.0.0.1")
    assert run(api, "apply", "-f", write(tmp_path, bad)) == 1
    assert "addresses[0].address" in capsys.readouterr().err


def test_status_events_and_explain_print_the_domain(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(api, "apply", "-f", write(tmp_path, DOC)) == 0
    capsys.readouterr()
    assert run(api, "status", "www.example.com") == 0
    assert "Primary-DC" in capsys.readouterr().out
    assert run(api, "events", "--kind", "operation") == 0
    assert "PUT /api/v1/domains/www.example.com" in capsys.readouterr().out
    assert run(api, "explain", "www.example.com", "--client-subnet", "10.1.2.0/24") == 0
    out = capsys.readouterr().out
    assert "disabled" in out and "client 10.1.2.0/24" in out
    assert run(api, "get", "domain", "www.example.com") == 0
    assert '"record_type": "A"' in capsys.readouterr().out


def test_explain_finds_the_region_of_a_client_when_the_topology_holds_both_address_families(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(api, "apply", "-f", write(tmp_path, DOC)) == 0
    topology = {"entries": [{"cidr": "2001:db8::/32", "region": "v6"}, {"cidr": "10.0.0.0/8", "region": "cn-east"}]}
    assert Api(f"{api}/api/v1").put("/topology", topology)[0] in (200, 201)
    capsys.readouterr()
    assert run(api, "explain", "www.example.com", "--client-subnet", "10.1.2.0/24") == 0
    assert "region cn-east via 10.0.0.0/8" in capsys.readouterr().out
    assert run(api, "explain", "www.example.com", "--client-subnet", "2001:db8:1::/48") == 0
    assert "region v6" in capsys.readouterr().out


def test_unknown_kinds_in_a_document_are_refused() -> None:
    with pytest.raises(manifest.ManifestError, match="unknown kinds: zones"):
        manifest.load("zones: {}")


def test_plan_orders_creates_by_dependency_and_deletes_in_reverse() -> None:
    desired = manifest.load(DOC)
    changes = manifest.plan(desired, {}, prune=True)
    assert [(c.action, c.kind) for c in changes][:3] == [
        ("create", "pools"), ("create", "pools"), ("create", "domains")
    ]
    current = {"pools": {"Old": {"type": "ipv4"}}, "domains": {"old.example.com": {"record_type": "A"}}}
    deletes = [c for c in manifest.plan({}, current, prune=True) if c.action == "delete"]
    assert [c.kind for c in deletes] == ["domains", "pools"]
