"""The container files describe services and settings that exist, and deployments that survive.

Compose and Dockerfile are read as files (there is no container engine here); the Kubernetes
base is checked as ``kubectl kustomize`` renders it. tests/test_deploy_nats_cluster.py runs the
compose NATS nodes' configuration with a real nats-server.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import ENV_VARS, split_host_port
from tests.conftest import NATS_IMAGE

ROOT = Path(__file__).resolve().parent.parent
GTM_SERVICES = {"config", "scheduler", "prober", "edge"}
NATS_USERS = ("admin", "config", "scheduler", "prober", "edge")
# Every secret the deployments need from the operator, and nothing else.
SECRET_VARS = ("GTM_API_TOKEN", *(f"GTM_NATS_PASS_{u.upper()}" for u in (*NATS_USERS, "route")))
NATS_DIR = ROOT / "deploy" / "nats"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _known_env_vars() -> set[str]:
    return set(ENV_VARS)


def _gtm_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("gtm") or "build" in s}


def _one_shots(compose: dict) -> set[str]:
    """Services others wait for to *finish* (service_completed_successfully)."""
    return {
        dep
        for svc in compose["services"].values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond["condition"] == "service_completed_successfully"
    }


def _long_running(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in _gtm_services(compose).items() if n not in _one_shots(compose)}


def _nats_config_vars(conf: Path) -> set[str]:
    """The environment variables a nats-server config (with its includes) needs set."""
    text = conf.read_text()
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    code = "\n".join(lines)
    defined = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", code, re.M))
    used = set(re.findall(r"(?<![\w\"$])\$([A-Za-z_][A-Za-z0-9_]*)", code)) - defined
    for inc in re.findall(r"^\s*include\s+(\S+)", code, re.M):
        used |= _nats_config_vars(conf.parent / inc)
    return used


NATS_NODES = ["nats1", "nats2", "nats3"]


# --- compose: NATS ----------------------------------------------------------------------------


@pytest.mark.parametrize("node", NATS_NODES)
def test_compose_runs_a_three_node_nats_cluster_with_jetstream_on_volumes(node: str) -> None:
    compose = _compose()
    nats = compose["services"][node]
    cmd = nats["command"]
    assert cmd[cmd.index("-c") + 1] == "/etc/nats/cluster.conf"
    assert cmd[cmd.index("--name") + 1] == node
    assert "--cluster" not in cmd and "--cluster_listen" not in cmd, "the flag drops the routes' authorization"
    mounts = {v.split(":")[1]: v.split(":") for v in nats["volumes"]}
    store = cmd[cmd.index("-sd") + 1]
    assert mounts[store][0] in compose["volumes"]
    assert mounts["/etc/nats"][0] == "./deploy/nats" and mounts["/etc/nats"][2] == "ro"
    assert "jetstream: enabled" in (NATS_DIR / "nats.conf").read_text()
    routes = nats["environment"]["NATS_ROUTES"].strip("[]").split(",")
    hosts = sorted(r.strip().rsplit("@", 1)[1].split(":")[0] for r in routes)
    assert hosts == NATS_NODES  # its own too: nats-server ignores a route to itself
    assert split_host_port(nats["environment"]["NATS_CLUSTER_LISTEN"], default_port=0)[1] == 6222


@pytest.mark.parametrize("node", NATS_NODES)
def test_compose_nats_nodes_require_auth_on_clients_and_routes(node: str) -> None:
    conf = NATS_DIR / "cluster.conf"
    code = "\n".join(line.split("#", 1)[0] for line in conf.read_text().splitlines())
    cluster = code[code.index("cluster {") :]
    assert re.search(r"authorization\s*\{[^}]*user:\s*route[^}]*password:\s*\$GTM_NATS_PASS_ROUTE", cluster)
    assert "include ./nats.conf" in code and "include ./auth.conf" in (NATS_DIR / "nats.conf").read_text()
    auth = (NATS_DIR / "auth.conf").read_text()
    assert "no_auth_user" not in auth
    users = re.findall(r"\{user:\s*(\w+),\s*password:\s*\$(GTM_NATS_PASS_\w+)", auth)
    assert sorted(users) == sorted((u, f"GTM_NATS_PASS_{u.upper()}") for u in NATS_USERS)
    env = _compose()["services"][node]["environment"]
    missing = _nats_config_vars(conf) - set(env)
    assert not missing, f"{node} does not set {missing}: nats-server would not start"
    for route in env["NATS_ROUTES"].strip("[]").split(","):
        assert route.strip().startswith("nats://route:${GTM_NATS_PASS_ROUTE:?"), route


def test_compose_nats_nodes_are_healthy_only_with_a_jetstream_leader() -> None:
    http_port = re.search(r"^http_port:\s*(\d+)", (NATS_DIR / "nats.conf").read_text(), re.M)
    assert http_port
    for node in NATS_NODES:
        test = _compose()["services"][node]["healthcheck"]["test"]
        assert test[-1] == f"http://127.0.0.1:{http_port.group(1)}/healthz", "plain /healthz: meta leader known"


# --- compose: every service -------------------------------------------------------------------


def test_compose_has_every_service_two_edges_and_the_admin_init() -> None:
    services = _gtm_services(_compose())
    kinds = sorted(s["command"][0] for s in services.values())
    assert kinds == ["config", "edge", "edge", "init", "prober", "scheduler"]


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


def test_the_deployed_nats_is_the_version_the_tests_run() -> None:
    compose_images = {s["image"] for s in _compose()["services"].values() if s.get("image", "").startswith("nats:")}
    k8s_images = re.findall(r"image: (nats:\S+)", (ROOT / "deploy" / "k8s" / "nats.yaml").read_text())
    assert compose_images == set(k8s_images) == {NATS_IMAGE}


def test_every_compose_service_restarts_and_has_a_healthcheck() -> None:
    compose = _compose()
    one_shots = _one_shots(compose)
    for name, svc in compose["services"].items():
        if name in one_shots:
            # a job: retried until it succeeds, never restarted after; nothing to poll
            assert svc["restart"] == "on-failure", name
            assert svc["healthcheck"] == {"disable": True}, f"{name} would inherit the image's HEALTHCHECK"
            continue
        assert svc["restart"] in {"unless-stopped", "always"}, name
        check = svc["healthcheck"]
        assert check["test"][0] == "CMD" and not check.get("disable"), name
        assert all(k in check for k in ("interval", "timeout", "retries")), name


def test_compose_healthchecks_probe_the_port_each_service_listens_on() -> None:
    for name, svc in _long_running(_compose()).items():
        env = svc["environment"]
        listen = env.get("GTM_METRICS_LISTEN") or env["GTM_API_LISTEN"]  # config serves them on its API
        _, port = split_host_port(listen, default_port=0)
        code = svc["healthcheck"]["test"][-1]
        assert f"'http://127.0.0.1:{port}/readyz'" in code, name
        assert "timeout=" in code, name


class _Status(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_status() -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    server.status = 200  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _healthcheck_exit(cmd: list[str], port: int, actual_port: int) -> int:
    """Run a healthcheck's ``python -c`` against ``actual_port`` instead of ``port``."""
    assert cmd[:2] in (["CMD", "python"], ["python", "-c"]), cmd
    code = cmd[-1].replace(f"127.0.0.1:{port}/", f"127.0.0.1:{actual_port}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=10).returncode


def test_compose_healthchecks_fail_on_503_and_on_no_listener(http_status: http.server.HTTPServer) -> None:
    """The image has no curl: the python one-liner must exit non-zero when not ready."""
    svc = _compose()["services"]["edge1"]
    port = split_host_port(svc["environment"]["GTM_METRICS_LISTEN"], default_port=0)[1]
    actual = http_status.server_address[1]
    assert _healthcheck_exit(svc["healthcheck"]["test"], port, actual) == 0
    http_status.status = 503  # type: ignore[attr-defined]
    assert _healthcheck_exit(svc["healthcheck"]["test"], port, actual) != 0
    http_status.server_close()
    assert _healthcheck_exit(svc["healthcheck"]["test"], port, actual) != 0


def test_compose_services_log_in_as_their_own_nats_user_on_replicated_streams() -> None:
    for name, svc in _gtm_services(_compose()).items():
        env = svc["environment"]
        kind = svc["command"][0]
        user = "admin" if kind == "init" else kind
        assert env["GTM_NATS_USER"] == user, name
        assert env["GTM_NATS_PASSWORD"].startswith(f"${{GTM_NATS_PASS_{user.upper()}:?"), name
        assert env["GTM_NATS_REPLICAS"] == "3", name


def test_compose_services_start_after_the_admin_init() -> None:
    compose = _compose()
    init = next(n for n, s in _gtm_services(compose).items() if s["command"] == ["init"])
    assert _one_shots(compose) == {init}
    assert "init)" in (ROOT / "deploy" / "entrypoint.sh").read_text()
    for name, svc in _long_running(compose).items():
        assert svc["depends_on"][init]["condition"] == "service_completed_successfully", name


def test_compose_has_no_secret_and_fails_without_each_one() -> None:
    text = "\n".join(x for x in (ROOT / "docker-compose.yml").read_text().splitlines() if not x.lstrip().startswith("#"))
    refs = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text)
    assert refs
    for var, rest in refs:
        assert rest.startswith(":?") and len(rest) > 2, f"${{{var}{rest}}}: unset or empty must stop compose, with a reason"
    assert {v for v, _ in refs} == set(SECRET_VARS)
    assert not re.search(r"\$[A-Za-z_]", re.sub(r"\$\{[^}]*\}", "", text)), "a bare $VAR has no :? guard"
    # every value that carries a secret is interpolated, never written out
    for name, svc in _compose()["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if re.search(r"PASS|TOKEN|SECRET", var):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), f"{name}: {var} is not only a reference"


def test_compose_edges_keep_their_answers_on_their_own_volume() -> None:
    compose = _compose()
    volumes = []
    for name, svc in _gtm_services(compose).items():
        if svc["command"] != ["edge"]:
            continue
        state = svc["environment"]["GTM_EDGE_STATE_DIR"]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
        assert mounts.get(state) in compose["volumes"], f"{name}: {state} is not on a volume"
        volumes.append(mounts[state])
    assert len(volumes) == 2 and len(set(volumes)) == 2, "two edges share one state volume"


def test_compose_gtm_services_run_read_only_without_capabilities() -> None:
    for name, svc in _gtm_services(_compose()).items():
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name


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


def _docker_compose() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=20).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy and subprocess.run([legacy, "version"], capture_output=True, timeout=20).returncode == 0:
        return [legacy]
    pytest.skip("no docker compose on this machine (the checks above read the file instead)")


def test_docker_compose_accepts_the_file_and_refuses_it_without_a_secret() -> None:
    compose = _docker_compose()
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    given = {v: "p" + secrets.token_hex(8) for v in SECRET_VARS}
    ok = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env={**env, **given}, capture_output=True, timeout=60, cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    for missing in SECRET_VARS:
        done = subprocess.run(
            [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
            env={**env, **{k: v for k, v in given.items() if k != missing}}, capture_output=True, timeout=60, cwd=ROOT,
        )
        assert done.returncode != 0 and missing.encode() in done.stderr, missing


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_runs_any_service() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert all("slim" in line for line in text.splitlines() if line.startswith("FROM"))
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER")]
    # numeric, so that Kubernetes' runAsNonRoot can verify it without a runAsUser
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert 'ENTRYPOINT ["gtm-entrypoint"]' in text


def _dockerfile_healthcheck() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next((x for x in text.splitlines() if x.startswith("HEALTHCHECK")), None)
    assert line, "Dockerfile has no HEALTHCHECK"
    assert "--interval=" in line and "--timeout=" in line
    return json.loads(line.split(" CMD ", 1)[1])  # exec form: a JSON list


def test_dockerfile_healthcheck_checks_the_default_service(http_status: http.server.HTTPServer) -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["config"]' in text
    cmd = _dockerfile_healthcheck()
    port = split_host_port("127.0.0.1:8080", default_port=0)[1]  # config's default GTM_API_LISTEN
    assert f"'http://127.0.0.1:{port}/healthz'" in cmd[-1] and "EXPOSE 8080" in text
    actual = http_status.server_address[1]
    assert _healthcheck_exit(["CMD", *cmd], port, actual) == 0
    http_status.status = 503  # type: ignore[attr-defined]
    assert _healthcheck_exit(["CMD", *cmd], port, actual) != 0


def test_dockerfile_gives_the_edge_a_writable_state_dir() -> None:
    text = (ROOT / "Dockerfile").read_text()
    state = re.search(r"GTM_EDGE_STATE_DIR=(\S+)", text)
    assert state, "the default (.data/edge under /app, owned by root) is not writable"
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER")][-1]
    assert re.search(rf"mkdir -p {re.escape(state.group(1))}\b.*chown -R {re.escape(user)}", text, re.S)


def test_dockerignore_keeps_secret_files_out_of_the_build() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and "deploy/k8s/secrets.env" in ignored


def test_entrypoint_refuses_an_unknown_service() -> None:
    result = subprocess.run(["sh", str(ROOT / "deploy" / "entrypoint.sh"), "bogus"], capture_output=True)
    assert result.returncode == 64
    assert b"usage" in result.stderr


def test_entrypoint_init_runs_the_admin_step() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if not shutil.which("python", path=env["PATH"]):
        pytest.skip("no `python` on PATH to run the entrypoint with")
    result = subprocess.run(
        ["sh", str(ROOT / "deploy" / "entrypoint.sh"), "init", "--help"], capture_output=True, cwd=ROOT, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert b"shared.bus" in result.stdout and b"--init" in result.stdout


# --- Kubernetes, as kubectl kustomize renders it ------------------------------------------------

K8S = ROOT / "deploy" / "k8s"


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: cannot render deploy/k8s")
    return kubectl


def _copy_deploy(tmp: Path) -> Path:
    """deploy/k8s and deploy/nats in ``tmp``, without any secrets.env of the working copy."""
    for part in ("k8s", "nats"):
        shutil.copytree(ROOT / "deploy" / part, tmp / "deploy" / part)
    (tmp / "deploy" / "k8s" / "secrets.env").unlink(missing_ok=True)
    return tmp / "deploy" / "k8s"


class Rendered:
    def __init__(self, docs: list[dict], given: dict[str, str]) -> None:
        self.docs = docs
        self.given = given  # what the operator put in secrets.env

    def by_kind(self, kind: str) -> dict[str, dict]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def workloads(self) -> dict[str, dict]:
        return {
            f"{d['kind']}/{d['metadata']['name']}": d
            for d in self.docs
            if d["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}
        }

    def gtm_containers(self) -> list[tuple[str, dict]]:
        return [
            (name, c)
            for name, w in self.workloads().items()
            for c in w["spec"]["template"]["spec"]["containers"]
            if c["image"].startswith("gtm")
        ]

    def secret(self) -> dict:
        (secret,) = self.by_kind("Secret").values()
        return secret


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    kubectl = _kubectl()
    base = _copy_deploy(tmp_path_factory.mktemp("k8s"))
    given = {v: "p" + secrets.token_hex(12) for v in SECRET_VARS}
    (base / "secrets.env").write_text("".join(f"{k}={v}\n" for k, v in given.items()))
    done = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return Rendered([d for d in yaml.safe_load_all(done.stdout) if d], given)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_k8s_build_stops_without_the_operators_secrets(tmp_path: Path) -> None:
    kubectl = _kubectl()
    base = _copy_deploy(tmp_path)
    done = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "secrets.env" in done.stderr
    assert "secrets.env" in (K8S / ".gitignore").read_text().split()


def test_k8s_ships_no_secret_value(k8s: Rendered) -> None:
    for path in [*K8S.glob("*.yaml"), *NATS_DIR.glob("*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path.name} ships a Secret"
    secret = k8s.secret()
    assert "stringData" not in secret
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == k8s.given, "the Secret holds exactly what the operator wrote, nothing of its own"
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for w in k8s.workloads().values()
        for c in w["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs} == set(SECRET_VARS)
    for w in k8s.workloads().values():
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if re.search(r"PASS|TOKEN|SECRET", e["name"]):
                    assert "value" not in e, f"{e['name']} is written out instead of read from the Secret"


def test_k8s_every_pod_is_restricted(k8s: Rendered) -> None:
    for name, w in k8s.workloads().items():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["securityContext"].get("runAsUser", 1) != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
            assert sc["capabilities"] == {"drop": ["ALL"]}, f"{name}/{c['name']}"
            assert sc["runAsNonRoot"] is True, f"{name}/{c['name']}"
    ns = k8s.by_kind("Namespace")["gtm"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_k8s_writable_paths_are_volumes(k8s: Rendered) -> None:
    for name, w in k8s.workloads().items():
        pod = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if c["image"].startswith("gtm"):
                assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: no writable /tmp"
            state = _env(c).get("GTM_EDGE_STATE_DIR")
            if c.get("args") == ["edge"]:
                assert state, f"{name}: the edge keeps its snapshot under /app, which is read-only"
            if state:
                assert "emptyDir" in volumes[mounts[state["value"]]], f"{name}: {state['value']} is not an emptyDir"
        if w["kind"] == "StatefulSet":
            (c,) = pod["containers"]
            assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]}["/data"] in claims


def test_k8s_nats_spreads_over_hosts_and_keeps_a_quorum(k8s: Rendered) -> None:
    sts = k8s.by_kind("StatefulSet")["nats"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    anti = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [
        t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]
    ]
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname" and t["labelSelector"]["matchLabels"].items() <= labels.items()
        for t in terms
    )
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    svc = k8s.by_kind("Service")["nats"]
    assert svc["spec"]["publishNotReadyAddresses"] is True, "the nodes must resolve each other before ready"
    pdb = k8s.by_kind("PodDisruptionBudget")["nats"]["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") == 2


def test_k8s_every_replicated_workload_has_a_disruption_budget(k8s: Rendered) -> None:
    pdbs = k8s.by_kind("PodDisruptionBudget").values()
    for name, w in k8s.workloads().items():
        if w["spec"].get("replicas", 1) < 2:
            continue
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs), name


def test_k8s_nats_runs_the_deploy_nats_files_with_auth_on_clients_and_routes(k8s: Rendered) -> None:
    sts = k8s.by_kind("StatefulSet")["nats"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    script = c["command"][-1]
    assert "nats-server -c /etc/nats/cluster.conf" in script and "--cluster" not in script
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/nats")
    cm_name = next(v for v in pod["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
    (cm,) = [d for d in k8s.by_kind("ConfigMap").values() if d["metadata"]["name"] == cm_name]
    for file in ("cluster.conf", "nats.conf", "auth.conf"):
        assert cm["data"][file] == (NATS_DIR / file).read_text(), f"{file} differs from deploy/nats"
    env = _env(c)
    missing = _nats_config_vars(NATS_DIR / "cluster.conf") - set(env)
    assert not missing, f"nats-server would not start: {missing}"
    routes = env["NATS_ROUTES"]["value"].strip("[]").split(",")
    assert sorted(r.strip().split("@")[1] for r in routes) == [f"nats-{i}.nats:6222" for i in range(3)]
    assert all(r.strip().startswith("nats://route:$(GTM_NATS_PASS_ROUTE)@") for r in routes)
    names = [e["name"] for e in c["env"]]
    assert names.index("GTM_NATS_PASS_ROUTE") < names.index("NATS_ROUTES"), "$(VAR) needs VAR defined first"


def _run_nats_script(script: str, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """The NATS container's shell command, with a stand-in nats-server that prints its arguments."""
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "nats-server").write_text('#!/bin/sh\necho "nats-server $*"\n')
    (fake / "nats-server").chmod(0o755)
    return subprocess.run(
        ["sh", "-c", script], env={"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin", **env},
        capture_output=True, text=True, timeout=10,
    )


def test_k8s_nats_refuses_to_start_with_an_empty_password(k8s: Rendered, tmp_path: Path) -> None:
    """nats-server would take an empty $GTM_NATS_PASS_X for a user without a password."""
    (c,) = k8s.by_kind("StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"]
    script = c["command"][-1]
    full = {v: "p123" for v in SECRET_VARS if v.startswith("GTM_NATS_PASS_")} | {"POD_NAME": "nats-1"}
    started = _run_nats_script(script, full, tmp_path)
    assert started.returncode == 0 and started.stdout.split() == [
        "nats-server", "-c", "/etc/nats/cluster.conf", "--name", "nats-1", "-sd", "/data"
    ], started
    for var in full:
        if var == "POD_NAME":
            continue
        for broken in ({**full, var: ""}, {k: v for k, v in full.items() if k != var}):
            refused = _run_nats_script(script, broken, tmp_path)
            assert refused.returncode != 0 and var in refused.stderr and "nats-server" not in refused.stdout, var


def test_k8s_services_log_in_as_their_own_user_after_the_admin_init(k8s: Rendered) -> None:
    secret = k8s.secret()["metadata"]["name"]
    kinds = []
    for name, c in k8s.gtm_containers():
        env = _env(c)
        kind = c["args"][0]
        kinds.append(kind)
        user = "admin" if kind == "init" else kind
        assert env["GTM_NATS_USER"]["value"] == user, name
        ref = env["GTM_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret, "key": f"GTM_NATS_PASS_{user.upper()}"}, name
        assert env["GTM_NATS_REPLICAS"]["value"] == "3", name
    assert sorted(set(kinds)) == ["config", "edge", "init", "prober", "scheduler"]
    job = k8s.by_kind("Job")["nats-init"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["init"]
    assert job["spec"]["backoffLimit"] >= 3, "NATS may still be forming when it first runs"


def test_k8s_runs_every_service_from_the_gtm_image(k8s: Rendered) -> None:
    services = sorted({c["args"][0] for name, c in k8s.gtm_containers() if name.startswith("Deployment/")})
    assert services == ["config", "edge", "prober", "scheduler"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    image = kustomization["images"][0]
    assert image["name"] == "gtm"
    assert all(c["image"] == f"{image['newName']}:{image['newTag']}" for _, c in k8s.gtm_containers())


def test_k8s_nats_is_a_three_node_jetstream_cluster(k8s: Rendered) -> None:
    sts = k8s.by_kind("StatefulSet")["nats"]
    assert sts["spec"]["replicas"] == 3
    assert "jetstream: enabled" in (NATS_DIR / "nats.conf").read_text()
    for _, c in k8s.gtm_containers():
        assert _env(c)["NATS_URL"]["value"].count("nats://nats-") == 3


def test_k8s_sets_only_settings_that_the_services_read(k8s: Rendered) -> None:
    known = _known_env_vars()
    for name, c in k8s.gtm_containers():
        for e in c["env"]:
            assert e["name"] in known, f"{name} sets {e['name']}, which no service reads"


def test_k8s_probes_and_services_point_at_declared_ports(k8s: Rendered) -> None:
    for name, c in k8s.gtm_containers():
        if name.startswith("Job/"):
            continue
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: /healthz never needs NATS"
        for probe in ("readinessProbe", "livenessProbe"):
            port = c[probe]["httpGet"]["port"]
            assert port in ports, f"{name} probes undeclared port {port}"
        env = {e["name"]: e.get("value", "") for e in c["env"]}
        for var in ("GTM_API_LISTEN", "GTM_DNS_LISTEN", "GTM_METRICS_LISTEN"):
            if env.get(var):
                assert split_host_port(env[var], default_port=0)[1] in ports.values(), f"{name}: {var}"
    deployments = k8s.by_kind("Deployment")
    for svc_name, svc in k8s.by_kind("Service").items():
        if svc_name == "nats":
            continue
        dep = deployments[svc["spec"]["selector"]["app"]]
        declared = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= declared


def test_k8s_edges_have_udp_and_tcp_a_disruption_budget_and_an_autoscaler(k8s: Rendered) -> None:
    svc = k8s.by_kind("Service")["edge"]
    assert {p["protocol"] for p in svc["spec"]["ports"]} == {"UDP", "TCP"}
    pdb = k8s.by_kind("PodDisruptionBudget")["edge"]
    assert pdb["spec"]["selector"]["matchLabels"] == {"app": "edge"}
    hpa = k8s.by_kind("HorizontalPodAutoscaler")["edge"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in k8s.by_kind("Deployment")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_k8s_runs_two_schedulers_and_takes_the_api_token_from_the_secret(k8s: Rendered) -> None:
    assert k8s.by_kind("Deployment")["scheduler"]["spec"]["replicas"] == 2
    config = k8s.by_kind("Deployment")["config"]["spec"]["template"]["spec"]["containers"][0]
    token = _env(config)["GTM_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": k8s.secret()["metadata"]["name"], "key": "GTM_API_TOKEN"}


def test_grafana_dashboard_only_uses_metrics_the_services_define() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "gtm-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(gtm_[a-z_]+?)(?:_bucket|_count|_sum)?\b[\[{)]", e)}
    source = "".join(p.read_text() for p in [*ROOT.glob("services/*/*.py"), *ROOT.glob("shared/*.py")])
    defined = set(re.findall(r'"(gtm_[a-z_]+)"', source))
    assert used, "no metrics found in the dashboard"
    missing = {m.removesuffix("_total") for m in used} - {d.removesuffix("_total") for d in defined}
    assert not missing, f"dashboard uses undefined metrics: {sorted(missing)}"
