"""Several edge processes on one port (SO_REUSEPORT): fork them, forward signals, wait.

The DNS port is shared; the metrics port is not.  The supervisor serves ``GTM_METRICS_LISTEN``
itself, as one Prometheus target: each worker serves its own metrics on a private loopback
port (bound here, before the fork) and the supervisor adds them up at scrape time
(:mod:`services.edge.aggregate`).  Nothing is added to the path of a DNS query.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.server
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from services.edge import aggregate
from services.edge.service import run as run_edge
from shared import ops
from shared.process import run
from shared.settings import Settings

log = structlog.get_logger(__name__)

KILL_AFTER_S = 8.0
SCRAPE_TIMEOUT_S = 2.0  # for one worker's /metrics or /readyz
WORKER_LISTEN = "127.0.0.1:0"
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (best effort)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _worker(settings: Settings, index: int, ready_fd: int, parent: int, metrics: socket.socket | None) -> int:
    """Body of one forked worker: a whole edge, reporting readiness on ``ready_fd``.

    ``metrics``: its private metrics listener (bound by the supervisor), if metrics are on.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent(parent)
    structlog.contextvars.bind_contextvars(worker=index)
    if metrics is not None:
        host, port = metrics.getsockname()[:2]
        private = f"{host}:{port}"
        ops.adopt(private, metrics)
        settings = msgspec.structs.replace(settings, metrics_listen=private)

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


def _fork_workers(
    settings: Settings, sockets: list[socket.socket], own: socket.socket | None
) -> tuple[dict[int, int], dict[int, int]]:
    """Fork the workers (worker i gets ``sockets[i]``, if any); return ({pid: index}, {ready read fd: index})."""
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
            mine = sockets[index] if sockets else None
            for sock in [*sockets, *([own] if own else [])]:
                if sock is not mine:
                    sock.close()  # the supervisor's and the other workers' listeners
            code = _worker(settings, index, w, parent, mine)
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
    listen = settings.metrics_listen
    own: socket.socket | None = None
    sockets: list[socket.socket] = []
    if listen:  # bound before any worker exists: a taken port stops the edge before it starts
        try:
            own = ops.bind(listen)
        except OSError as exc:
            ops.listen_failed(listen, exc)
            return ops.LISTEN_FAILED_EXIT
        sockets = [ops.bind(WORKER_LISTEN) for _ in range(settings.edge.workers)]
    ports = [sock.getsockname()[1] for sock in sockets]
    children, ready_fds = _fork_workers(settings, sockets, own)
    for sock in sockets:
        sock.close()
    server = _OpsServer(own, ports) if own is not None else None
    try:
        return _wait(settings, children, ready_fds)
    finally:
        if server is not None:
            server.close()


def _wait(settings: Settings, children: dict[int, int], ready_fds: dict[int, int]) -> int:
    """Forward signals to the workers and reap them; return the exit code."""
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


class _OpsServer:
    """The edge's one ops target: /metrics added up over the workers, /readyz when all are ready."""

    def __init__(self, sock: socket.socket, ports: list[int]) -> None:
        self.ports = ports
        self.pool = ThreadPoolExecutor(max_workers=min(len(ports), 16), thread_name_prefix="scrape")
        handler = _handler(self)
        self.http = http.server.ThreadingHTTPServer(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.http.socket.close()
        self.http.socket = sock
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, name="ops", daemon=True)
        self.thread.start()
        host, port = sock.getsockname()[:2]
        log.info("ops_listening", listen=f"{host}:{port}", workers=len(ports))

    def close(self) -> None:
        """Stop serving (the workers are gone by now)."""
        self.http.shutdown()
        self.http.server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, path: str) -> list[tuple[int, bytes]]:
        """(status, body) of ``path`` from every worker, in worker order (status 0: no answer)."""

        def one(port: int) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=SCRAPE_TIMEOUT_S) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()
            except OSError as exc:
                return 0, str(exc).encode()

        return list(self.pool.map(one, self.ports))

    def metrics(self) -> tuple[int, str, bytes]:
        """All workers' metrics added up; 503 when one does not answer (a partial sum would look like a reset)."""
        answers = self._fetch("/metrics")
        missing = [f"worker {i}: {body.decode(errors='replace')}" for i, (st, body) in enumerate(answers) if st != 200]
        if missing:
            return 503, "text/plain; charset=utf-8", ("\n".join(missing) + "\n").encode()
        texts = [body.decode() for _, body in answers]
        return 200, CONTENT_TYPE_LATEST, aggregate.merge(texts, extra=[aggregate.workers_gauge(len(texts))])

    def readyz(self) -> tuple[int, str, bytes]:
        """Ready when every worker is; the answers' source is "disk" while any worker serves from disk."""
        answers = self._fetch("/readyz")
        ready = sum(1 for st, _ in answers if st == 200)
        sources = set()
        for _, text in answers:
            with contextlib.suppress(ValueError, AttributeError):
                sources.add(json.loads(text).get("source", ""))
        out: dict[str, Any] = {"status": "ready" if ready == len(answers) else "not_ready"}
        if sources & {"disk", "live"}:
            out["source"] = "disk" if "disk" in sources else "live"
        out.update(workers=len(answers), workers_ready=ready)
        return (200 if ready == len(answers) else 503), "application/json", json.dumps(out).encode()


def _handler(server: _OpsServer) -> type[http.server.BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": server.metrics,
        "/readyz": server.readyz,
        "/healthz": lambda: (200, "application/json", b'{"status": "ok"}'),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, kind, body = 404, "text/plain; charset=utf-8", b"404: Not Found\n"
            else:
                try:
                    status, kind, body = route()
                except Exception as exc:  # noqa: BLE001 - one bad scrape must not kill the server
                    log.exception("ops_request_failed", path=self.path)
                    status, kind, body = 500, "text/plain; charset=utf-8", f"{exc}\n".encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass  # no access log, as the other services' ops endpoints

    return Handler
