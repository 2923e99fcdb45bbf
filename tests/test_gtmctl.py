"""gtmctl against a real config service: declarative apply, dry-run, prune, errors, get/status/events/explain."""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.gtmctl.cli import check_line, main
from shared import manifest
from tests.support import ROOT, Api, Service, free_port

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
    assert run(api, "get", "domain", "www.example.com", "-o", "json") == 0
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


# -- apply over POST /api/v1/apply: checked whole by the server, all-or-nothing -----------------

ONE_BAD_POOL = DOC.split("domains:")[0].replace("address: 192.0.2.2", "address: 300.0.0.1")


def pools(api: str) -> list[str]:
    return [p["name"] for p in Api(api + "/api/v1").get("/pools")[1]["pools"]]


def test_a_document_with_one_bad_pool_writes_nothing(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(api, "apply", "-f", write(tmp_path, ONE_BAD_POOL)) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: 400 invalid_argument: '300.0.0.1' is not a valid ipv4 address "
        "(field pools.Backup-DC.addresses[0].address)",
        "nothing was written",
    ]
    assert pools(api) == []  # not even the valid Primary-DC


def test_a_dry_run_is_checked_by_the_server(api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = DOC.replace("  Primary-DC:\n    type: ipv4\n    addresses:", "  Primary-DC:\n    type: ipv4\n    adresses:")
    assert run(api, "apply", "--dry-run", "-f", write(tmp_path, typo)) == 1
    err = capsys.readouterr().err
    assert "unknown field `adresses` (field pools.Primary-DC.adresses)" in err
    assert run(api, "apply", "--dry-run", "--detailed-exitcode", "-f", write(tmp_path, ONE_BAD_POOL)) == 1


def test_detailed_exitcode_tells_changes_pending_from_no_changes(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, DOC)
    assert run(api, "apply", "--dry-run", "-f", f) == 0  # without the flag: 0 whatever the plan
    assert run(api, "apply", "--dry-run", "--detailed-exitcode", "-f", f) == 2
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "3 changes pending (dry run: nothing written)"
    assert pools(api) == []
    assert run(api, "apply", "--detailed-exitcode", "-f", f) == 2  # changes applied
    assert capsys.readouterr().out.splitlines()[-1] == "3 changes applied"
    assert run(api, "apply", "--dry-run", "--detailed-exitcode", "-f", f) == 0
    assert run(api, "apply", "--detailed-exitcode", "-f", f) == 0
    assert capsys.readouterr().out.splitlines() == ["no changes", "no changes"]


def test_apply_reads_the_document_from_stdin(
    api: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(DOC))
    assert run(api, "apply", "-f", "-") == 0
    assert pools(api) == ["Backup-DC", "Primary-DC"]


def test_a_field_changed_outside_the_document_is_marked_before_it_is_reset(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, DOC)  # DOC says nothing of sequence_mode
    assert run(api, "apply", "-f", f) == 0
    assert Api(api + "/api/v1").patch("/domains/www.example.com", {"sequence_mode": "non_preemptive"})[0] == 200
    capsys.readouterr()
    assert run(api, "apply", "--dry-run", "--detailed-exitcode", "-f", f) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[:2] == [
        "~ update domain www.example.com",
        '    ! sequence_mode: "non_preemptive" -> "preemptive"'
        "  (not in the document, changed outside it: reset to the default)",
    ]
    assert err == ("warning: 1 field changed outside the document would be reset to the default "
                   "(lines marked !); write the value into the document to keep it\n")
    assert run(api, "apply", "-f", f) == 0
    out, err = capsys.readouterr()
    assert "! sequence_mode" in out and "1 field changed outside the document was reset" in err
    assert Api(api + "/api/v1").get("/domains/www.example.com")[1]["sequence_mode"] == "preemptive"


def readme_document() -> str:
    """The gtm.yaml of the README's gtmctl section."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"cat > gtm.yaml <<'YAML'\n(.*?)\nYAML\n", text, re.DOTALL)
    assert found, "the README has no gtm.yaml example"
    return found.group(1)


def test_the_readme_document_after_the_walkthrough_shows_its_sequence_mode_change(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path, readme_document())
    assert run(api, "apply", "-f", f) == 0
    domain = Api(api + "/api/v1").get("/domains/www.example.com")[1]
    assert (domain["enabled"], domain["lb_strategy"], domain["sequence_mode"]) == (True, "sequence", "preemptive")
    # the walkthrough's step 5
    assert Api(api + "/api/v1").patch("/domains/www.example.com", {"sequence_mode": "non_preemptive"})[0] == 200
    capsys.readouterr()
    assert run(api, "apply", "--dry-run", "--detailed-exitcode", "-f", f) == 2
    out, err = capsys.readouterr()
    # the document names sequence_mode, so the change is an ordinary, visible update
    assert '-  "sequence_mode": "non_preemptive",' in out and '+  "sequence_mode": "preemptive",' in out
    assert "!" not in out and err == ""
    pinned = write(tmp_path, readme_document().replace("sequence_mode: preemptive", "sequence_mode: non_preemptive"))
    assert run(api, "apply", "--dry-run", "--detailed-exitcode", "-f", pinned) == 0


def test_the_example_document_names_every_field_the_walkthrough_changes() -> None:
    for text in (readme_document(), (ROOT / "deploy" / "examples" / "gtm.yaml").read_text()):
        domain = manifest.load(text)["domains"]["www.example.com"]
        assert {"enabled", "lb_strategy", "sequence_mode", "ttl"} <= set(domain)


# -- polish: --version, connection errors, get -o, units ------------------------------------------


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gtmctl {importlib.metadata.version('gtm')}\n"
    installed = Path(sys.executable).parent / "gtmctl"
    if installed.exists():
        done = subprocess.run([str(installed), "--version"], capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout) == (0, f"gtmctl {importlib.metadata.version('gtm')}\n")


def test_a_connection_error_names_the_api_url(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--api", url, "get", "pools"]) == 1
    assert capsys.readouterr().err == (
        f"error: cannot reach the GTM API at {url}: connection refused (set --api or GTM_API_URL)\n")


def test_a_usage_error_exits_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply"]) == 1  # 2 would read as "changes pending" to --detailed-exitcode
    assert "the following arguments are required: -f/--file" in capsys.readouterr().err
    assert main(["get", "zones"]) == 1
    assert "unknown kind 'zones'" in capsys.readouterr().err


def test_get_prints_a_table_json_or_yaml(api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(api, "apply", "-f", write(tmp_path, DOC)) == 0
    capsys.readouterr()
    assert run(api, "get", "pools") == 0  # JSON into a pipe (as here), what scripts parse
    piped = json.loads(capsys.readouterr().out)
    assert run(api, "get", "pools", "-o", "table") == 0  # a table on a terminal
    assert capsys.readouterr().out.splitlines() == [
        "NAME        TYPE  ENABLED  STRATEGY     CONDITION  ADDRESSES  REVISION",
        "Backup-DC   ipv4  true     round_robin  any_ok     1          2",
        "Primary-DC  ipv4  true     round_robin  any_ok     1          1",
    ]
    assert run(api, "get", "domain", "www.example.com", "-o", "table") == 0
    assert capsys.readouterr().out.splitlines() == [
        "NAME             TYPE  TTL  ENABLED  STRATEGY             POOLS                 REVISION",
        "www.example.com  A     60s  false    sequence/preemptive  Primary-DC,Backup-DC  3",
    ]
    assert run(api, "get", "pools", "-o", "json") == 0
    as_json = json.loads(capsys.readouterr().out)
    assert run(api, "get", "pools", "-o", "yaml") == 0
    as_yaml = yaml.safe_load(capsys.readouterr().out)
    assert piped == as_json == as_yaml == Api(api + "/api/v1").get("/pools")[1]
    assert run(api, "get", "topology", "-o", "table") == 0
    assert capsys.readouterr().out == "CIDR  REGION\n"


@pytest.mark.parametrize(
    ("check", "line"),
    [
        ({"region": "eu", "ok": True, "rtt_ms": 1.437, "error": ""}, "eu: ok 1.4 ms"),
        ({"region": "eu", "ok": False, "rtt_ms": 2000.0, "error": "timeout"}, "eu: timeout 2000.0 ms"),
        ({"region": "eu", "ok": False, "rtt_ms": 0.0, "error": "connection refused"}, "eu: connection refused"),
        ({"region": "eu", "ok": False, "rtt_ms": None, "error": ""}, "eu: failed"),
    ],
)
def test_status_prints_a_check_with_its_rtt_in_ms(check: dict[str, object], line: str) -> None:
    assert check_line(check) == line
