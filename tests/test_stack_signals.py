"""A second SIGINT/SIGTERM never kills a process that is draining (``shared.process.run``).

A Ctrl-C reaches the whole process group and ``make`` (or a supervisor) then sends its own
SIGTERM: whichever comes second must find the process ignoring it, never at SIG_DFL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import ROOT

# A service whose main waits for the stop event, then drains for a while. The long stop
# deadline keeps the forced exit out of the way on a slow machine: every exit here is the
# service's own.
CHILD = """
import asyncio, sys
from shared import logs, process

async def main(stop: asyncio.Event) -> None:
    print("ready", flush=True)
    await stop.wait()
    await asyncio.sleep(float(sys.argv[1]))

logs.configure(service="signals", fmt="json")
process.run(main, stop_deadline_s=60)
"""

ROUNDS = 8
SECOND = {signal.SIGINT: signal.SIGTERM, signal.SIGTERM: signal.SIGINT}


def _start(drain_s: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(drain_s)],
        cwd=ROOT,
        env={**os.environ, "GTM_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready", "the child did not start"
    return proc


def _pair(proc: subprocess.Popen[bytes], first: int) -> None:
    """Two signals back to back, as a Ctrl-C followed by make's own SIGTERM."""
    os.kill(proc.pid, first)
    os.kill(proc.pid, SECOND[first])


def _storm(proc: subprocess.Popen[bytes], first: int, deadline_s: float = 30.0) -> None:
    """``first``, then both signals alternately as fast as we can, until the child exits."""
    signals = [first, SECOND[first]]
    deadline = time.monotonic() + deadline_s
    sent = 0
    # Only poll() reaps the child, so its pid cannot be reused while we signal it.
    while proc.poll() is None and time.monotonic() < deadline:
        os.kill(proc.pid, signals[sent % 2])
        sent += 1


def _stopped_cleanly(proc: subprocess.Popen[bytes], round_: int) -> None:
    try:
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"round {round_}: exit {proc.returncode}\n{out[-2000:]}"
    assert '"service_stopped"' in out, f"round {round_}:\n{out[-2000:]}"
    assert "Traceback" not in out and "race condition" not in out, out[-2000:]


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT-first", "SIGTERM-first"])
@pytest.mark.parametrize("send", [_pair, _storm], ids=["pair", "storm"])
def test_a_second_stop_signal_never_kills_a_draining_service(first: int, send: object) -> None:
    """Every round exits 0 with ``service_stopped``, signals arriving through the teardown too."""
    assert callable(send)
    for round_ in range(ROUNDS):
        # Half the rounds drain for a while, half tear down at once (the loop closing is a window too).
        proc = _start(0.3 if round_ % 2 else 0.0)
        send(proc, first)
        _stopped_cleanly(proc, round_)
