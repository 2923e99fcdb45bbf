"""The container files describe services and settings that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.settings import split_host_port

ROOT = Path(__file__).resolve().parent.parent
GTM_SERVICES = {"config", "scheduler", "prober", "edge"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _known_env_vars() -> set[str]:
    source = (ROOT / "shared" / "settings.py").read_text()
    return set(re.findall(r'"((?:GTM|NATS)_[A-Z_]+)"', source))


def _gtm_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("gtm") or "build" in s}


def test_compose_runs_nats_with_jetstream_on_a_volume() -> None:
    nats = _compose()["services"]["nats"]
    cmd = nats["command"]
    assert "-js" in cmd
    store = cmd[cmd.index("-sd") + 1]
    assert any(v.split(":")[1] == store for v in nats["volumes"])
    assert nats["volumes"][0].split(":")[0] in _compose()["volumes"]


def test_compose_has_every_service_and_two_edges() -> None:
    services = _gtm_services(_compose())
    kinds = sorted(s["command"][0] for s in services.values())
    assert kinds == ["config", "edge", "edge", "prober", "scheduler"]


@pytest.mark.parametrize("name", sorted(GTM_SERVICES))
def test_each_service_in_compose_is_a_runnable_package(name: str) -> None:
    assert (ROOT / "services" / name / "__main__.py").exists()
    assert f"{name}|" in (ROOT / "deploy" / "entrypoint.sh").read_text() or f"|{name})" in (
        ROOT / "deploy" / "entrypoint.sh"
    ).read_text()


def test_compose_sets_only_settings_that_the_services_read() -> None:
    known = _known_env_vars()
    for name, svc in _gtm_services(_compose()).items():
        for var in svc.get("environment", {}):
            assert var in known, f"{name} sets {var}, which no service reads"
        assert svc["environment"]["NATS_URL"] == "nats://nats:4222"
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy"


def test_compose_ports_match_what_the_services_listen_on() -> None:
    services = _gtm_services(_compose())
    host_ports = []
    for svc in services.values():
        env = svc["environment"]
        listen = env.get("GTM_DNS_LISTEN") or env.get("GTM_API_LISTEN")
        if not listen:
            continue
        _, port = split_host_port(listen, default_port=0)
        for mapping in svc["ports"]:
            host_side, container_side = mapping.rsplit(":", 1)[0], mapping.rsplit(":", 1)[1]
            assert int(container_side.split("/")[0]) == port
            host_ports.append((host_side.split(":")[-1], container_side.split("/")[-1] if "/" in container_side else "tcp"))
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"


def test_compose_exposed_api_requires_a_token() -> None:
    config = _compose()["services"]["config"]["environment"]
    assert config["GTM_API_LISTEN"].startswith("0.0.0.0")
    assert config["GTM_API_TOKEN"].startswith("${GTM_API_TOKEN:?")


def test_dockerfile_is_slim_non_root_and_runs_any_service() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert all("slim" in line for line in text.splitlines() if line.startswith("FROM"))
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert 'ENTRYPOINT ["gtm-entrypoint"]' in text


def test_entrypoint_refuses_an_unknown_service() -> None:
    result = subprocess.run(["sh", str(ROOT / "deploy" / "entrypoint.sh"), "bogus"], capture_output=True)
    assert result.returncode == 64
    assert b"usage" in result.stderr
