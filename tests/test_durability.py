"""Nothing acknowledged is lost: a 2xx from the API means the write survives any crash after it."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.support import Service, Stack, wait_until

pytestmark = pytest.mark.e2e


class Writer(threading.Thread):
    """Creates pools one after another and remembers every one the API acknowledged."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.prefix = stack, prefix
        self.acked: list[str] = []
        self.refused = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            name = f"{self.prefix}{n}"
            try:
                status, _ = self.stack.api.put(f"/pools/{name}", {"type": "ipv4"})
            except OSError:  # the service is down: no answer, no promise
                status = 0
            if status in (200, 201):
                self.acked.append(name)
                n += 1
            else:
                self.refused += 1
                time.sleep(0.01)


def _stored(stack: Stack) -> set[str]:
    status, body = wait_until(lambda: (r := stack.api.get("/pools"))[0] == 200 and r, timeout=30)
    return {p["name"] for p in body["pools"]}


def _config(stack: Stack) -> Service:
    return next(p for p in stack.procs if p.name == "config")


def test_kill_9_of_the_config_service_in_a_write_loop_loses_no_acknowledged_write(stack: Stack) -> None:
    stack.start()
    writer = Writer(stack, "k")
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 50, timeout=30)
        config = _config(stack)
        config.stop(signal.SIGKILL)  # mid-write: some request is always in flight
        acked_before_kill = len(writer.acked)
        config.start().wait_for_event("service_ready", timeout=30)
        wait_until(lambda: len(writer.acked) >= acked_before_kill + 20, timeout=30)
    finally:
        writer.stopping.set()
        writer.join(15)
    assert not set(writer.acked) - _stored(stack)
    assert writer.refused > 0  # the kill really happened while writing


def test_a_full_stop_and_start_under_writes_loses_no_acknowledged_write(stack: Stack) -> None:
    stack.start()
    writer = Writer(stack, "f")
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 50, timeout=30)
        stack.stop()  # services first, then NATS, while the writer keeps writing
        stack.start()
        acked_before = len(writer.acked)
        wait_until(lambda: len(writer.acked) >= acked_before + 20, timeout=30)
    finally:
        writer.stopping.set()
        writer.join(15)
    assert not set(writer.acked) - _stored(stack)


def test_kill_9_of_nats_in_a_write_loop_loses_no_acknowledged_write(stack: Stack) -> None:
    # JetStream has written an acknowledged message to its file store: a killed server (not a
    # lost machine: that is what replicas are for) finds it again at start.
    stack.start()
    writer = Writer(stack, "n")
    writer.start()
    try:
        wait_until(lambda: len(writer.acked) >= 50, timeout=30)
        assert stack.nats.proc is not None
        stack.nats.proc.kill()
        stack.nats.proc.wait()
        acked_before_kill = len(writer.acked)
        stack.nats.start()
        wait_until(lambda: len(writer.acked) >= acked_before_kill + 20, timeout=30)
    finally:
        writer.stopping.set()
        writer.join(15)
    assert not set(writer.acked) - _stored(stack)
