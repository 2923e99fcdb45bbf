"""docker-compose.yml's three NATS nodes, run on loopback with the real nats-server.

Each node gets what compose would give it - its command and environment from the compose file,
interpolated with the operator's passwords - with only the host names and ports moved onto
127.0.0.1. Then: the cluster forms (routes log in as `route`), a server without the route
password cannot join, clients must log in, and the admin step declares replicated streams.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from shared import bus, subjects
from tests.support import ROOT, free_port, nats_server_binary, wait_until

NODES = ("nats1", "nats2", "nats3")
PASSWORD_VARS = [f"GTM_NATS_PASS_{u}" for u in ("ADMIN", "CONFIG", "SCHEDULER", "PROBER", "EDGE", "ROUTE")]


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:?message}``: the variable's value, or an error when unset or empty."""

    def one(m: re.Match[str]) -> str:
        if not env.get(m.group(1)):
            raise AssertionError(f"compose would stop: {m.group(2)}")
        return env[m.group(1)]

    return re.sub(r"\$\{(\w+):\?([^}]*)\}", one, value)


class Node:
    """One nats-server started as compose starts a node, on loopback ports."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.port, self.cluster_port, self.http_port = free_port(), free_port(), free_port()
        self.store = tmp / name
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, args: list[str], env: dict[str, str]) -> Node:
        self.store.mkdir(parents=True, exist_ok=True)
        cmd = [nats_server_binary(), *args, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.http_port)]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, env={"PATH": os.environ.get("PATH", ""), **env}, stdout=out, stderr=out)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=1) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, None

    def route_names(self) -> set[str]:
        status, body = self.get("/routez")
        return {r.get("remote_name", "") for r in body["routes"]} if status == 200 else set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.passwords = {v: "p" + secrets.token_hex(16) for v in PASSWORD_VARS}
        self.nodes = {n: Node(n, tmp) for n in NODES}
        self.extra: list[Node] = []

    def compose_node(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The node's command and environment from docker-compose.yml, moved onto loopback."""
        svc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name]
        node = self.nodes[name]
        env = {k: _interpolate(str(v), self.passwords) for k, v in svc["environment"].items()}
        for other, n in self.nodes.items():
            env["NATS_ROUTES"] = env["NATS_ROUTES"].replace(f"@{other}:6222", f"@127.0.0.1:{n.cluster_port}")
        assert ":6222" not in env["NATS_ROUTES"], env["NATS_ROUTES"]
        env["NATS_CLUSTER_LISTEN"] = env["NATS_CLUSTER_LISTEN"].replace("0.0.0.0:6222", f"127.0.0.1:{node.cluster_port}")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert mounts["/etc/nats"] == "./deploy/nats"
        args = [
            a.replace("/etc/nats/", str(ROOT / "deploy" / "nats") + "/") if a.startswith("/etc/nats/") else a
            for a in svc["command"]
        ]
        args[args.index("-sd") + 1] = str(node.store)
        return args, env

    def start(self) -> Cluster:
        for name, node in self.nodes.items():
            node.start(*self.compose_node(name))
        return self

    def stop(self) -> None:
        for node in [*self.extra, *self.nodes.values()]:
            node.stop()

    def plain_server(self, name: str, route: str) -> Node:
        """A nats-server of someone else's: no config, soliciting a route to nats1."""
        node = Node(name, self.tmp)
        self.extra.append(node)
        return node.start(
            ["--name", name, "--cluster_name", "gtm", "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
             "--routes", route],
            {},
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("nats-cluster")).start()
    try:
        yield c
    finally:
        c.stop()


def test_the_three_nodes_form_a_jetstream_cluster_over_authenticated_routes(cluster: Cluster) -> None:
    def formed() -> bool:
        return all(
            n.get("/healthz")[0] == 200 and n.route_names() == set(NODES) - {name}
            for name, n in cluster.nodes.items()
        )

    try:
        wait_until(formed, timeout=15, step=0.1)
    except TimeoutError:
        raise AssertionError("\n".join(n.log()[-2000:] for n in cluster.nodes.values())) from None
    # every node's own routes logged in: none formed only because its peer dialled back
    for name, node in cluster.nodes.items():
        assert "Authorization Violation" not in node.log(), f"{name}:\n{node.log()[-2000:]}"
    _, varz = cluster.nodes["nats1"].get("/varz")
    assert varz["server_name"] == "nats1" and varz["cluster"]["name"] == "gtm"


async def test_clients_must_log_in_and_service_users_can(cluster: Cluster) -> None:
    url = cluster.nodes["nats2"].url
    route_user = {"user": "route", "password": cluster.passwords["GTM_NATS_PASS_ROUTE"]}  # routes only
    for kwargs in ({}, {"user": "edge", "password": "wrong"}, route_user):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **kwargs)
    nc = await nats.connect(url, user="edge", password=cluster.passwords["GTM_NATS_PASS_EDGE"], allow_reconnect=False)
    await nc.close()


async def test_a_server_without_the_route_password_cannot_join(cluster: Cluster) -> None:
    nats1 = cluster.nodes["nats1"]
    wait_until(lambda: nats1.route_names() == {"nats2", "nats3"}, timeout=15, step=0.1)
    seen = nats1.log().count("Authentication Failure")
    rogue = cluster.plain_server("rogue", f"nats://127.0.0.1:{nats1.cluster_port}")
    wait_until(lambda: nats1.log().count("Authentication Failure") > seen, timeout=10, step=0.05)
    assert "rogue" not in nats1.route_names()
    # and nothing published in the cluster reaches the rogue server's clients
    spy = await nats.connect(rogue.url, allow_reconnect=False)
    admin = await nats.connect(nats1.url, user="admin", password=cluster.passwords["GTM_NATS_PASS_ADMIN"])
    try:
        sub = await spy.subscribe("answers.publish.>")
        await spy.flush()
        await admin.publish("answers.publish.leak.example", b"x")
        await admin.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.next_msg(timeout=0.3)
    finally:
        await spy.close()
        await admin.close()
    rogue.stop()

    # The same server with the password in its route URL joins, and its clients do get the
    # messages: it was the password that kept the first one out.
    password = cluster.passwords["GTM_NATS_PASS_ROUTE"]
    friend = cluster.plain_server("friend", f"nats://route:{password}@127.0.0.1:{nats1.cluster_port}")
    wait_until(lambda: "friend" in nats1.route_names(), timeout=10, step=0.05)
    spy = await nats.connect(friend.url, allow_reconnect=False)
    admin = await nats.connect(nats1.url, user="admin", password=cluster.passwords["GTM_NATS_PASS_ADMIN"])
    try:
        sub = await spy.subscribe("answers.publish.>")
        await spy.flush()
        for _ in range(50):  # until the subscription's interest has crossed the route
            await admin.publish("answers.publish.joined.example", b"x")
            await admin.flush()
            try:
                await sub.next_msg(timeout=0.1)
                break
            except nats.errors.TimeoutError:
                continue
        else:
            raise AssertionError("a server with the route password never got a message")
    finally:
        await spy.close()
        await admin.close()
    friend.stop()


def test_the_logs_never_show_a_password(cluster: Cluster) -> None:
    logs = "".join(n.log() for n in cluster.nodes.values())
    assert "Server is ready" in logs
    for var, password in cluster.passwords.items():
        assert password not in logs, f"{var} is in a server log"


async def test_the_admin_step_declares_the_streams_replicated_on_all_three(cluster: Cluster) -> None:
    urls = ",".join(n.url for n in cluster.nodes.values())
    admin = cluster.passwords["GTM_NATS_PASS_ADMIN"]
    env = {
        **os.environ, "NATS_URL": urls, "GTM_NATS_USER": "admin", "GTM_NATS_PASSWORD": admin,
        "GTM_NATS_REPLICAS": "3", "GTM_LOG_FORMAT": "json",
    }
    wait_until(lambda: all(n.get("/healthz")[0] == 200 for n in cluster.nodes.values()), timeout=15, step=0.1)
    done = subprocess.run(
        [sys.executable, "-m", "shared.bus", "--init"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"streams_ready" in done.stdout + done.stderr
    nc = await nats.connect(urls.split(","), user="admin", password=admin, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        names = [*(c.name for c in bus.STREAMS), f"KV_{subjects.CONFIG_BUCKET}", f"KV_{subjects.LEASES_BUCKET}"]
        infos = {name: await js.stream_info(str(name)) for name in names}
    finally:
        await nc.close()
    for name, info in infos.items():
        assert info.config.num_replicas == 3, name
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2, name


def test_a_node_refuses_to_start_without_each_password(tmp_path: Path) -> None:
    """nats-server -t: a missing variable stops it (compose and nats.yaml also refuse empty ones)."""
    c = Cluster(tmp_path)
    args, env = c.compose_node("nats1")
    ok = subprocess.run([nats_server_binary(), *args, "-t"], env=env, capture_output=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    for var in PASSWORD_VARS:
        broken = {k: v for k, v in env.items() if k != var}
        done = subprocess.run([nats_server_binary(), *args, "-t"], env=broken, capture_output=True, timeout=10)
        assert done.returncode != 0 and var.encode() in done.stderr, var
