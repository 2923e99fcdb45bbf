"""Several edge processes on one port (SO_REUSEPORT): fork them, forward signals, wait."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import select
import signal
import sys
import time
from types import FrameType

import structlog

from services.edge.service import run as run_edge
from shared.process import run
from shared.settings import Settings

log = structlog.get_logger(__name__)

KILL_AFTER_S = 8.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (best effort)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _worker(settings: Settings, index: int, ready_fd: int, parent: int) -> int:
    """Body of one forked worker: a whole edge, reporting readiness on ``ready_fd``."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent(parent)
    structlog.contextvars.bind_contextvars(worker=index)

    def on_ready(listen: str, source: str) -> None:
        log.info("worker_ready", listen=listen, pid=os.getpid(), source=source)
        os.write(ready_fd, f"{listen} {source}".encode())
        os.close(ready_fd)

    try:
        # They all follow the same stream, so one keeps the shared snapshot file for all.
        run(functools.partial(run_edge, settings, on_ready=on_ready, persist=index == 0))
        return 0
    except BaseException:  # noqa: BLE001 - report, then exit non-zero
        log.exception("worker_failed")
        return 1


def _fork_workers(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    """Fork the workers; return ({pid: index}, {ready read fd: index})."""
    parent = os.getpid()
    children: dict[int, int] = {}
    ready_fds: dict[int, int] = {}
    for index in range(settings.edge.workers):
        r, w = os.pipe()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            for fd in ready_fds:
                os.close(fd)
            code = _worker(settings, index, w, parent)
            sys.stderr.flush()
            os._exit(code)
        os.close(w)
        children[pid] = index
        ready_fds[r] = index
    return children, ready_fds


def fork_if_asked(settings: Settings) -> int | None:
    """With ``GTM_EDGE_WORKERS`` above 1, run the workers and return the exit code; else None."""
    return supervise(settings) if settings.edge.workers > 1 else None


def supervise(settings: Settings) -> int:
    """Run ``settings.edge.workers`` edges sharing the listen port; return the exit code."""
    # print() writes a line and its newline separately: processes sharing stderr would interleave.
    structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=sys.stderr))
    children, ready_fds = _fork_workers(settings)
    stopping_since: list[float] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping_since:
            stopping_since.append(time.monotonic())
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("workers_started", workers=len(children), pids=sorted(children))
    ready: dict[int, str] = {}  # worker index -> where its answers come from
    code = 0
    while children:
        if ready_fds:
            readable, _, _ = select.select(list(ready_fds), [], [], 0.2)
        else:
            readable = []
            time.sleep(0.2)
        for fd in readable:
            listen, _, source = os.read(fd, 512).decode(errors="replace").partition(" ")
            index = ready_fds.pop(fd)
            os.close(fd)
            if listen:
                ready[index] = source
                if len(ready) == settings.edge.workers:
                    source = "disk" if "disk" in ready.values() else "live"
                    log.info("service_ready", listen=listen, workers=len(ready), source=source)
        code = max(code, _reap(children, stopping=bool(stopping_since)))
        if code and not stopping_since:
            on_signal(signal.SIGTERM, None)  # one worker died: stop all, let the supervisor restart us
        if stopping_since and time.monotonic() - stopping_since[0] > KILL_AFTER_S:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for fd in ready_fds:
        os.close(fd)
    return code


def _reap(children: dict[int, int], *, stopping: bool) -> int:
    """Collect exited workers; return 1 if one exited unexpectedly."""
    code = 0
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            break
        if pid == 0:
            break
        index = children.pop(pid, -1)
        exit_code = os.waitstatus_to_exitcode(status)
        if not stopping or exit_code not in (0, -signal.SIGTERM):
            log.error("worker_exited", worker=index, pid=pid, code=exit_code)
            code = 1
    return code
