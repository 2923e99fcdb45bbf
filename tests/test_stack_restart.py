"""``make run`` heals itself: a killed child comes back alone, and no child outlives the stack.

Run with ``-s`` to see how long each child took to come back (printed, never asserted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import pytest

from services.stack import preflight
from services.stack.plan import build_plan
from tests.support import ROOT, Api, dns_query, free_port, wait_until

KINDS = ["nats", "config", "scheduler", "prober", "edge1"]
CHILDREN = ["nats", "config", "scheduler", "prober", "edge1", "edge2"]


class RunningStack:
    """``python -m services.stack`` on free ports and a private data dir, its log in a file."""

    def __init__(self, tmp: Path) -> None:
        self.edges = [free_port(), free_port()]
        self.api_port = free_port()
        self.nats_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "NATS_URL"},
            "GTM_LOG_FORMAT": "json",
            "GTM_EDGE_WORKERS": "1",
            "GTM_NATS_PORT": str(self.nats_port),
            "GTM_DATA_DIR": str(tmp / "data"),
            "GTM_API_LISTEN": f"127.0.0.1:{self.api_port}",
            "GTM_EDGES": ",".join(f"127.0.0.1:{p}" for p in self.edges),
            "GTM_METRICS_BASE_PORT": "0",  # no fixed metrics ports (tests/test_metrics_targets.py covers them)
        }
        self.log = tmp / "stack.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RunningStack:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.stack"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready = wait_until(
            lambda: self.find("stack_ready") or (self.proc and self.proc.poll() is not None and {"exited": 1}),
            timeout=60,
        )
        assert "exited" not in ready, self.tail()
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def find(self, event: str, since: int = 0, **fields: Any) -> dict[str, Any] | None:
        wanted = {"event": event, **fields}
        return next((e for e in self.events()[since:] if all(e.get(k) == v for k, v in wanted.items())), None)

    def pids(self) -> dict[str, int]:
        """The current pid of every child, from the stack's own log lines."""
        out: dict[str, int] = {}
        for e in self.events():
            if e.get("event") in ("process_started", "process_restarted") and e.get("service") == "stack":
                out[e["process"]] = e["pid"]
        return out

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def api_ready(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2) as resp,
        ):
            return bool(resp.status == 200)
        return False

    def nats_open(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.nats_port), timeout=0.5):
            return True
        return False

    def answering(self) -> bool:
        """The API is ready and both edges answer."""
        return self.api_ready() and all(_answers(p) for p in self.edges)


def _answers(port: int, tries: int = 1, timeout: float = 1.0) -> bool:
    """The edge on ``port`` answers a DNS query (any reply, REFUSED included)."""
    for _ in range(tries):
        with contextlib.suppress(dns.exception.DNSException, OSError):
            dns_query(port, "nothing.example.com", timeout=timeout)
            return True
    return False


class DnsWatch:
    """Query edges in a loop from a thread; count answers and note every query that got none."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.answered = 0
        self.missed: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DnsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for port in self.ports:
                # Three tries of a second each: a busy machine may drop one datagram, never three.
                if _answers(port, tries=3):
                    self.answered += 1
                else:
                    self.missed.append((port, time.monotonic()))
            self._stop.wait(0.05)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(tmp_path_factory.mktemp("stack")).start()
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, running.tail()


def _back(stack: RunningStack, kind: str, since: int) -> Callable[[], bool]:
    """Whether ``kind`` answers again: its port, its readiness or its own ``service_ready``."""
    if kind == "nats":
        return stack.nats_open
    if kind == "config":
        return stack.api_ready
    if kind == "edge1":
        return lambda: _answers(stack.edges[0], timeout=0.05)  # short: it measures, retries are free
    return lambda: stack.find("service_ready", since, service=kind) is not None


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_child_is_restarted_alone_while_the_other_edges_keep_answering(
    stack: RunningStack, kind: str
) -> None:
    before = stack.pids()
    assert sorted(before) == sorted(CHILDREN), stack.tail()
    since = len(stack.events())
    watched = [p for i, p in enumerate(stack.edges, start=1) if f"edge{i}" != kind]
    with DnsWatch(watched) as watch:
        killed_at = time.monotonic()
        os.kill(before[kind], signal.SIGKILL)
        wait_until(lambda: stack.pids()[kind] != before[kind], timeout=30)
        spawned_s = time.monotonic() - killed_at
        wait_until(_back(stack, kind, since), timeout=60, step=0.01)
        back_s = time.monotonic() - killed_at
        wait_until(stack.answering, timeout=60)
        answering_s = time.monotonic() - killed_at
        time.sleep(0.3)  # and the other edges go on answering a little after
    print(
        f"\nrestart {kind}: new process after {spawned_s:.2f} s, answering after {back_s:.2f} s, "
        f"whole stack answering after {answering_s:.2f} s (from kill -9)"
    )
    assert watch.missed == [] and watch.answered > 0, (watch.missed, stack.tail())
    after = stack.pids()
    assert {k: v for k, v in after.items() if k != kind} == {k: v for k, v in before.items() if k != kind}
    events = stack.events()[since:]
    exited = [e for e in events if e.get("event") == "process_exited"]
    assert [(e["process"], e["pid"], e["code"]) for e in exited] == [(kind, before[kind], -signal.SIGKILL)]
    restarted = [e for e in events if e.get("event") == "process_restarted"]
    assert [(e["process"], e["pid"], e["attempt"]) for e in restarted] == [(kind, after[kind], 1)]
    assert restarted[0]["delay_s"] > 0
    assert stack.proc is not None and stack.proc.poll() is None


def test_after_the_restarts_a_new_domain_still_reaches_both_edges(stack: RunningStack) -> None:
    api = Api(f"http://127.0.0.1:{stack.api_port}/api/v1")
    pool = {"type": "ipv4", "addresses": [{"name": "a1", "address": "192.0.2.7"}]}
    assert api.put("/pools/healed", pool)[0] in (200, 201)
    domain = {"record_type": "A", "enabled": True, "pools": [{"pool": "healed", "sequence": 1}]}
    assert api.put("/domains/healed.example.com", domain)[0] in (200, 201)

    def both_answer() -> bool:
        return all(
            [rd.to_text() for rrset in dns_query(p, "healed.example.com").answer for rd in rrset] == ["192.0.2.7"]
            for p in stack.edges
        )

    wait_until(both_answer, timeout=60)


def test_a_second_stack_on_the_same_data_dir_refuses_without_touching_the_first(
    stack: RunningStack, tmp_path: Path
) -> None:
    before = stack.pids()
    env = {
        **stack.env,
        "GTM_NATS_PORT": str(free_port()),
        "GTM_API_LISTEN": f"127.0.0.1:{free_port()}",
        "GTM_EDGES": f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
    }
    done = subprocess.run([sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, out
    assert '"data_dir_in_use"' in out and str(Path(stack.env["GTM_DATA_DIR"]).resolve()) in out, out
    assert '"process_started"' not in out, out
    assert stack.pids() == before and stack.answering()


def test_a_second_stack_on_the_same_ports_refuses_without_touching_the_first(
    stack: RunningStack, tmp_path: Path
) -> None:
    before = stack.pids()
    env = {**stack.env, "GTM_DATA_DIR": str(tmp_path / "other")}
    done = subprocess.run([sys.executable, "-m", "services.stack"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, out
    line = next(json.loads(x) for x in out.splitlines() if '"ports_in_use"' in x)
    named = " ".join(line["ports"])
    for port in [stack.nats_port, stack.api_port, *stack.edges]:
        assert f"127.0.0.1:{port} " in named, line
    assert '"process_started"' not in out, out
    assert stack.pids() == before and stack.answering()


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts: it holds nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_no_child_outlives_a_killed_stack(tmp_path: Path) -> None:
    running = RunningStack(tmp_path).start()
    assert running.proc is not None
    children = running.pids()
    assert sorted(children) == sorted(CHILDREN), running.tail()
    killed_at = time.monotonic()
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait(10)
    try:
        wait_until(lambda: all(_gone(p) for p in children.values()), timeout=20)
        print(f"\nkill -9 of the stack: every child gone after {time.monotonic() - killed_at:.2f} s")
    finally:
        for name, pid in children.items():  # never leave an orphan behind, even when failing
            if not _gone(pid):
                print(f"{name} ({pid}) outlived the stack")
                os.kill(pid, signal.SIGKILL)
    # What the next make run checks first is free again: every port and the data directory.
    plan = build_plan(running.env, data_dir=Path(running.env["GTM_DATA_DIR"]))
    wait_until(lambda: preflight.taken(plan) == [], timeout=10)
    lock = preflight.lock_data_dir(Path(running.env["GTM_DATA_DIR"]))
    assert lock is not None
    preflight.release(lock)
