"""``make run`` refuses to start, in one clear line, when a port or the data directory is taken."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.stack import preflight
from services.stack.plan import build_plan
from tests.support import ROOT, free_port


def _env(tmp: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k != "NATS_URL"},
        "GTM_LOG_FORMAT": "json",
        "GTM_NATS_PORT": str(free_port()),
        "GTM_DATA_DIR": str(tmp / "data"),
        "GTM_API_LISTEN": f"127.0.0.1:{free_port()}",
        "GTM_EDGES": f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
        "GTM_METRICS_BASE_PORT": "0",  # no fixed metrics ports (tests/test_metrics_targets.py covers them)
    }


def _run_stack(env: dict[str, str]) -> tuple[int, list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    out = (done.stdout + done.stderr).decode(errors="replace")
    events = []
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return done.returncode, events, out


@contextlib.contextmanager
def _hold(kind: int, port: int) -> Iterator[None]:
    """Hold 127.0.0.1:port the way another program would (a TCP listener or a bound UDP socket)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        yield


def _port(env: dict[str, str], which: str) -> int:
    if which == "nats":
        return int(env["GTM_NATS_PORT"])
    if which == "api":
        return int(env["GTM_API_LISTEN"].rsplit(":", 1)[1])
    return int(env["GTM_EDGES"].split(",")[1].rsplit(":", 1)[1])  # the second edge's


def test_the_plan_lists_every_address_the_stack_listens_on(tmp_path: Path) -> None:
    env = _env(tmp_path)
    plan = build_plan(env, data_dir=tmp_path)
    assert [str(e) for e in preflight.endpoints(plan)] == [
        f"nats tcp 127.0.0.1:{_port(env, 'nats')}",
        f"config tcp {env['GTM_API_LISTEN']}",
        *(f"edge{i} {t} {listen}" for i, listen in enumerate(env["GTM_EDGES"].split(","), 1) for t in ("udp", "tcp")),
    ]
    external = build_plan({**env, "NATS_URL": "nats://10.0.0.1:4222"}, data_dir=tmp_path)
    assert "nats" not in [e.owner for e in preflight.endpoints(external)]


def test_free_addresses_pass_and_a_taken_one_is_named_with_the_reason(tmp_path: Path) -> None:
    env = _env(tmp_path)
    plan = build_plan(env, data_dir=tmp_path)
    assert preflight.taken(plan) == []
    with _hold(socket.SOCK_DGRAM, _port(env, "edge")):
        assert preflight.taken(plan) == [f"edge2 udp 127.0.0.1:{_port(env, 'edge')} (Address already in use)"]


def test_the_data_dir_lock_is_exclusive_and_released_with_its_descriptor(tmp_path: Path) -> None:
    first = preflight.lock_data_dir(tmp_path / "data")
    assert first is not None
    assert preflight.lock_data_dir(tmp_path / "data") is None
    preflight.release(first)
    again = preflight.lock_data_dir(tmp_path / "data")
    assert again is not None
    preflight.release(again)


@pytest.mark.parametrize(
    ("which", "kind"),
    [
        ("nats", socket.SOCK_STREAM),
        ("api", socket.SOCK_STREAM),
        ("edge", socket.SOCK_DGRAM),
        ("edge", socket.SOCK_STREAM),
    ],
    ids=["nats-port", "api-port", "edge-udp-port", "edge-tcp-port"],
)
def test_a_taken_port_stops_the_start_with_one_line_naming_it(tmp_path: Path, which: str, kind: int) -> None:
    env = _env(tmp_path)
    port = _port(env, which)
    with _hold(kind, port):
        code, events, out = _run_stack(env)
    assert code != 0, out
    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1 and errors[0]["event"] == "ports_in_use", out
    transport = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    assert errors[0]["ports"] == [f"{_owner(which)} {transport} 127.0.0.1:{port} (Address already in use)"], out
    assert not [e for e in events if e.get("event") == "process_started"], out
    assert not (tmp_path / "data" / "nats").exists()


def _owner(which: str) -> str:
    return {"nats": "nats", "api": "config", "edge": "edge2"}[which]


def test_a_data_dir_in_use_stops_the_start_with_one_line_naming_it(tmp_path: Path) -> None:
    env = _env(tmp_path)
    lock = preflight.lock_data_dir(tmp_path / "data")  # as a running stack holds it
    try:
        code, events, out = _run_stack(env)
    finally:
        preflight.release(lock)
    assert code != 0, out
    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1 and errors[0]["event"] == "data_dir_in_use", out
    assert errors[0]["data_dir"] == str((tmp_path / "data").resolve())
    assert not [e for e in events if e.get("event") == "process_started"], out
