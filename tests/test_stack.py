"""`make run`'s launcher: plans the stack, starts it, reports ready, stops it all on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dns.rcode
import pytest

from services.stack.plan import build_plan
from tests.support import ROOT, dns_query, free_port, wait_until


def test_plan_embeds_nats_and_two_edges_by_default(tmp_path: Path) -> None:
    plan = build_plan({}, data_dir=tmp_path)
    assert plan.nats is not None and "-js" in plan.nats.argv
    assert plan.nats_url == "nats://127.0.0.1:4222"
    assert str(tmp_path / "nats") in plan.nats.argv
    assert [p.name for p in plan.services] == ["config", "scheduler", "prober", "edge1", "edge2"]
    assert plan.edges == [("127.0.0.1", 5300), ("127.0.0.1", 5301)]
    assert plan.api == ("127.0.0.1", 8080)


def test_plan_uses_an_existing_nats_when_nats_url_is_set(tmp_path: Path) -> None:
    plan = build_plan({"NATS_URL": "nats://10.0.0.1:4222"}, data_dir=tmp_path)
    assert plan.nats is None
    assert all(p.env["NATS_URL"] == "nats://10.0.0.1:4222" for p in plan.services)


def test_plan_keeps_each_edges_answers_apart_under_the_data_dir(tmp_path: Path) -> None:
    plan = build_plan({}, data_dir=tmp_path)
    assert plan.data_dir == str(tmp_path)
    states = {p.name: p.env["GTM_EDGE_STATE_DIR"] for p in plan.services if p.name.startswith("edge")}
    assert states == {"edge1": str(tmp_path / "edge1"), "edge2": str(tmp_path / "edge2")}
    chosen = build_plan({"GTM_EDGE_STATE_DIR": "/var/lib/gtm"}, data_dir=tmp_path)
    assert {p.env["GTM_EDGE_STATE_DIR"] for p in chosen.services if p.name.startswith("edge")} == {"/var/lib/gtm"}


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize(
    "how", ["sigterm_to_stack", "ctrl_c_to_process_group"], ids=["SIGTERM", "Ctrl-C"]
)
def test_stack_starts_everything_answers_dns_and_stops_cleanly(tmp_path: Path, how: str) -> None:
    edges = [free_port(), free_port()]
    api = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "NATS_URL"},
        "GTM_LOG_FORMAT": "json",
        "GTM_NATS_PORT": str(free_port()),
        "GTM_DATA_DIR": str(tmp_path / "data"),
        "GTM_API_LISTEN": f"127.0.0.1:{api}",
        "GTM_EDGES": ",".join(f"127.0.0.1:{p}" for p in edges),
        "GTM_METRICS_BASE_PORT": "0",  # no fixed metrics ports (tests/test_metrics_targets.py covers them)
    }
    log = tmp_path / "stack.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready = wait_until(
                lambda: next((e for e in _events(log) if e.get("event") == "stack_ready"), None)
                or (proc.poll() is not None and {"exited": proc.returncode}),
                timeout=60,
            )
            assert "exited" not in ready, log.read_text()[-3000:]
            for port in edges:
                assert dns_query(port, "nothing.example.com").rcode() == dns.rcode.REFUSED
            assert (tmp_path / "data" / "nats").is_dir()
        finally:
            if how == "sigterm_to_stack":
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(30)
    assert code == 0, log.read_text()[-3000:]
    stopped = {e["process"]: e["code"] for e in _events(log) if e.get("event") == "process_stopped"}
    assert stopped == dict.fromkeys(["nats", "config", "scheduler", "prober", "edge1", "edge2"], 0)
    assert "Traceback" not in log.read_text()
