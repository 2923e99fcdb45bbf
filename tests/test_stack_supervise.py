"""The supervisor in-process, with tiny shell children: restart, crash loop, stop, refusals."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from services.stack import preflight
from services.stack.plan import Plan, Proc
from services.stack.restart import RestartPolicy
from services.stack.supervise import REFUSED, supervise
from tests.support import free_port, until

FAST = RestartPolicy(first_delay_s=0.01, max_delay_s=0.05)


def _sh(name: str, script: str, tmp: Path) -> Proc:
    """A child that appends its pid to ``<tmp>/<name>.pids`` and then runs ``script``."""
    pids = tmp / f"{name}.pids"
    return Proc(name=name, argv=["/bin/sh", "-c", f'echo $$ >> "{pids}"; {script}'], env={})


def _plan(tmp: Path, *procs: Proc, data_dir: Path | None = None) -> Plan:
    # No edges and an API nobody serves: the stack never gets ready, which these tests never need.
    return Plan(
        nats=None,
        nats_url="nats://127.0.0.1:1",
        services=list(procs),
        api=("127.0.0.1", free_port()),
        edges=[],
        data_dir=str(data_dir or ""),
    )


def _pids(tmp: Path, name: str) -> list[int]:
    path = tmp / f"{name}.pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False




async def test_a_child_that_exits_is_restarted_and_its_sibling_keeps_running(tmp_path: Path) -> None:
    flaky = _sh("flaky", f'[ -e "{tmp_path}/flag" ] && exec sleep 60; touch "{tmp_path}/flag"; exit 3', tmp_path)
    steady = _sh("steady", "exec sleep 60", tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(supervise(_plan(tmp_path, flaky, steady), stop, policy=FAST))
    await until(lambda: len(_pids(tmp_path, "flaky")) == 2 and _alive(_pids(tmp_path, "flaky")[1]))
    await asyncio.sleep(0.3)  # nothing else happens meanwhile
    assert len(_pids(tmp_path, "flaky")) == 2
    assert len(_pids(tmp_path, "steady")) == 1 and _alive(_pids(tmp_path, "steady")[0])
    stop.set()
    assert await asyncio.wait_for(task, 30) == 0
    assert not any(_alive(p) for p in _pids(tmp_path, "flaky") + _pids(tmp_path, "steady"))


async def test_a_crash_loop_stops_the_whole_stack_with_an_error(tmp_path: Path) -> None:
    crasher = _sh("crasher", "exit 3", tmp_path)
    steady = _sh("steady", "exec sleep 60", tmp_path)
    policy = RestartPolicy(first_delay_s=0.01, max_delay_s=0.05, max_exits=4, window_s=60.0)
    code = await asyncio.wait_for(supervise(_plan(tmp_path, crasher, steady), asyncio.Event(), policy=policy), 30)
    assert code == 1
    assert len(_pids(tmp_path, "crasher")) == 4  # started, restarted three times, then given up
    assert not _alive(_pids(tmp_path, "steady")[0])


async def test_stop_during_a_backoff_restarts_nothing(tmp_path: Path) -> None:
    crasher = _sh("crasher", "exit 3", tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(supervise(_plan(tmp_path, crasher), stop, policy=RestartPolicy(first_delay_s=60.0)))
    await until(lambda: len(_pids(tmp_path, "crasher")) == 1)
    await asyncio.sleep(0.2)
    stop.set()
    assert await asyncio.wait_for(task, 30) == 0  # long before the 60 s backoff
    assert len(_pids(tmp_path, "crasher")) == 1


async def test_a_second_stack_on_the_same_data_dir_refuses_and_leaves_the_first_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    steady = _sh("steady", "exec sleep 60", tmp_path)
    stop = asyncio.Event()
    first = asyncio.create_task(supervise(_plan(tmp_path, steady, data_dir=data), stop, policy=FAST))
    await until(lambda: len(_pids(tmp_path, "steady")) == 1)
    other = _sh("other", "exec sleep 60", tmp_path)
    assert await asyncio.wait_for(supervise(_plan(tmp_path, other, data_dir=data), asyncio.Event()), 10) == REFUSED
    assert _pids(tmp_path, "other") == []
    assert _alive(_pids(tmp_path, "steady")[0]) and not first.done()
    stop.set()
    assert await asyncio.wait_for(first, 30) == 0
    fd = preflight.lock_data_dir(data)  # released on the way out
    assert fd is not None
    os.close(fd)


async def test_a_taken_port_refuses_before_starting_anything(tmp_path: Path) -> None:
    steady = _sh("steady", "exec sleep 60", tmp_path)
    plan = _plan(tmp_path, steady, data_dir=tmp_path / "data")
    with socket.create_server(plan.api):
        assert await asyncio.wait_for(supervise(plan, asyncio.Event()), 10) == REFUSED
    assert _pids(tmp_path, "steady") == []
    fd = preflight.lock_data_dir(tmp_path / "data")  # a refused start gives the lock back
    assert fd is not None
    os.close(fd)


async def test_a_child_that_cannot_start_stops_the_start_cleanly(tmp_path: Path) -> None:
    steady = _sh("steady", "exec sleep 60", tmp_path)
    missing = Proc(name="missing", argv=[str(tmp_path / "no-such-binary")], env={})
    code = await asyncio.wait_for(supervise(_plan(tmp_path, steady, missing), asyncio.Event()), 30)
    assert code == 1
    assert not _alive(_pids(tmp_path, "steady")[0])
