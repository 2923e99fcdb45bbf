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


NATS_NODES = ["nats1", "nats2", "nats3"]


@pytest.mark.parametrize("node", NATS_NODES)
def test_compose_runs_a_three_node_nats_cluster_with_jetstream_on_volumes(node: str) -> None:
    nats = _compose()["services"][node]
    cmd = nats["command"]
    assert "-js" in cmd
    store = cmd[cmd.index("-sd") + 1]
    assert any(v.split(":")[1] == store for v in nats["volumes"])
    assert nats["volumes"][0].split(":")[0] in _compose()["volumes"]
    routes = cmd[cmd.index("--routes") + 1].split(",")
    assert sorted(r.split("//")[1].split(":")[0] for r in routes) == [n for n in NATS_NODES if n != node]


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
        urls = svc["environment"]["NATS_URL"].split(",")
        assert sorted(u.split("//")[1].split(":")[0] for u in urls) == NATS_NODES
        assert all(svc["depends_on"][n]["condition"] == "service_healthy" for n in NATS_NODES)


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


K8S = ROOT / "deploy" / "k8s"


def _k8s_docs() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        assert (K8S / name).exists(), f"kustomization lists missing {name}"
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _k8s_docs() if d["kind"] == kind}


def _gtm_containers() -> list[tuple[str, dict]]:
    out = []
    for name, dep in _by_kind("Deployment").items():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            out.append((name, c))
    return out


def test_k8s_runs_every_service_from_the_gtm_image() -> None:
    services = sorted({c["args"][0] for _, c in _gtm_containers()})
    assert services == ["config", "edge", "prober", "scheduler"]
    assert all(c["image"] == "gtm" for _, c in _gtm_containers())
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["images"][0]["name"] == "gtm"


def test_k8s_nats_is_a_three_node_jetstream_cluster() -> None:
    sts = _by_kind("StatefulSet")["nats"]
    assert sts["spec"]["replicas"] == 3
    conf = _by_kind("ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in conf and conf.count("nats://nats-") == 3
    for _, c in _gtm_containers():
        env = {e["name"]: e for e in c["env"]}
        assert env["NATS_URL"]["value"].count("nats://nats-") == 3


def test_k8s_sets_only_settings_that_the_services_read() -> None:
    known = _known_env_vars()
    for name, c in _gtm_containers():
        for e in c["env"]:
            assert e["name"] in known, f"{name} sets {e['name']}, which no service reads"


def test_k8s_probes_and_services_point_at_declared_ports() -> None:
    for name, c in _gtm_containers():
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        probe = c["readinessProbe"]["httpGet"]
        assert probe["path"] == "/readyz"
        assert probe["port"] in ports, f"{name} probes undeclared port {probe['port']}"
        env = {e["name"]: e.get("value", "") for e in c["env"]}
        for var in ("GTM_API_LISTEN", "GTM_DNS_LISTEN", "GTM_METRICS_LISTEN"):
            if env.get(var):
                assert split_host_port(env[var], default_port=0)[1] in ports.values(), f"{name}: {var}"
    deployments = _by_kind("Deployment")
    for svc_name, svc in _by_kind("Service").items():
        if svc_name == "nats":
            continue
        dep = deployments[svc["spec"]["selector"]["app"]]
        declared = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= declared


def test_k8s_edges_have_udp_and_tcp_a_disruption_budget_and_an_autoscaler() -> None:
    svc = _by_kind("Service")["edge"]
    assert {p["protocol"] for p in svc["spec"]["ports"]} == {"UDP", "TCP"}
    pdb = _by_kind("PodDisruptionBudget")["edge"]
    assert pdb["spec"]["selector"]["matchLabels"] == {"app": "edge"}
    hpa = _by_kind("HorizontalPodAutoscaler")["edge"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in _by_kind("Deployment")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_k8s_runs_two_schedulers_and_takes_the_api_token_from_a_secret() -> None:
    assert _by_kind("Deployment")["scheduler"]["spec"]["replicas"] == 2
    config = _by_kind("Deployment")["config"]["spec"]["template"]["spec"]["containers"][0]
    token = next(e for e in config["env"] if e["name"] == "GTM_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] in _by_kind("Secret")


def test_grafana_dashboard_only_uses_metrics_the_services_define() -> None:
    import json

    dash = json.loads((ROOT / "deploy" / "grafana" / "gtm-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(gtm_[a-z_]+?)(?:_bucket|_count|_sum)?\b[\[{)]", e)}
    source = "".join(p.read_text() for p in [*ROOT.glob("services/*/*.py"), *ROOT.glob("shared/*.py")])
    defined = set(re.findall(r'"(gtm_[a-z_]+)"', source))
    assert used, "no metrics found in the dashboard"
    missing = {m.removesuffix("_total") for m in used} - {d.removesuffix("_total") for d in defined}
    assert not missing, f"dashboard uses undefined metrics: {sorted(missing)}"
