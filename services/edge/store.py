"""The disk snapshot's I/O: where it lives, reading it at start, keeping it current (atomic, debounced).

Several SO_REUSEPORT workers of one edge read the same file; only one writes it.
A write goes to a temporary file of its own, is fsynced and then renamed over
the old one, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import msgspec
import structlog

from services.edge import snapshot
from services.edge.snapshot import Snapshot, SnapshotError
from services.edge.table import AnswerTable, StaleAnswer
from services.edge.topology import RegionMap

log = structlog.get_logger(__name__)

WRITE_EVERY_S = 1.0  # at most one write per second while answers change
DUTY = 10  # and at most a tenth of the time: a big table under churn must not keep the disk busy
RETRY_AFTER_FAILURE_S = 30.0  # an unwritable directory is said once in a while, not every second
TEMP_MAX_AGE_S = 60.0  # older temporary files are leftovers of a writer that died mid-write


def path_for(state_dir: str, host: str, port: int) -> Path | None:
    """The snapshot file of the edge listening on ``host:port`` (None when ``state_dir`` is "")."""
    if not state_dir:
        return None
    return Path(state_dir) / f"answers-{re.sub(r'[^A-Za-z0-9.-]', '_', host)}-{port}.json"


def read(path: Path) -> Snapshot | None:
    """The snapshot stored at ``path``; None (and a log line) when there is none or it is damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        log.info("snapshot_absent", path=str(path))
        return None
    except OSError as exc:
        log.warning("snapshot_rejected", path=str(path), reason="unreadable", error=str(exc))
        return None
    try:
        return snapshot.decode(data)
    except SnapshotError as exc:
        log.warning("snapshot_rejected", path=str(path), reason=exc.reason, error=str(exc), bytes=len(data))
        return None


def restore(table: AnswerTable, snap: Snapshot) -> None:
    """Install a snapshot's answers and topology in ``table`` (one bad entry is logged and skipped)."""
    for aset in snap.answers:
        try:
            table.apply(aset)
        except (ValueError, StaleAnswer) as exc:
            log.warning("answer_rejected", domain=aset.domain, error=str(exc), source="disk")
    try:
        table.set_topology(snap.topology, RegionMap.from_value(snap.topology))
    except msgspec.DecodeError as exc:  # not JSON, or not a Topology (a ValidationError)
        log.warning("topology_rejected", error=str(exc), source="disk")


def write_atomic(path: Path, parts: Sequence[bytes]) -> int:
    """Write header and ``parts`` to ``path`` through a fsynced temporary file; return the size written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = snapshot.header(parts)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(head)
            for part in parts:
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # the rename itself must survive a power cut
    return len(head) + sum(len(p) for p in parts)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep_temporaries(path: Path, *, older_than_s: float = TEMP_MAX_AGE_S) -> None:
    """Remove temporary files a writer of ``path`` left behind when it died mid-write."""
    cutoff = time.time() - older_than_s
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()


class SnapshotWriter:
    """Keeps the snapshot file of a table current: written at once, then after changes, and at stop."""

    def __init__(self, path: Path, table: AnswerTable, sequence: Callable[[], int]) -> None:
        self._path = path
        self._table = table
        self._sequence = sequence
        self._written = -1  # table.changes at the last write
        self._pause = WRITE_EVERY_S
        self._stopping = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Write now and on every change (debounced) for the duration of the block, and once more at its end."""
        await asyncio.to_thread(sweep_temporaries, self._path)
        task = asyncio.create_task(self._loop())
        try:
            yield
        finally:
            # Not cancelled: a write cut short would go on in its thread and could land after the last one.
            self._stopping.set()
            await task
            if self._table.changes != self._written:
                await self.write()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            if self._table.changes != self._written:
                try:
                    await self.write()
                except Exception:  # a bug here must not stop the answers, nor later writes
                    log.exception("snapshot_write_failed", path=str(self._path))
                    self._pause = RETRY_AFTER_FAILURE_S
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._pause)

    async def write(self) -> bool:
        """Write the table as it is now; False (logged) when the file cannot be written."""
        started, changes = time.perf_counter(), self._table.changes
        meta = Snapshot(written_at=time.time(), stream_sequence=self._sequence(), topology=self._table.topology)
        entries = len(self._table) + len(self._table.tombstones)
        parts = []
        for part in snapshot.body_parts(meta, self._table.encoded()):
            parts.append(part)
            await asyncio.sleep(0)  # let queries in between pieces
        try:
            size = await asyncio.to_thread(write_atomic, self._path, parts)
        except OSError as exc:
            log.warning("snapshot_write_failed", path=str(self._path), error=str(exc))
            self._pause = RETRY_AFTER_FAILURE_S
            return False
        seconds = time.perf_counter() - started
        first = self._written < 0
        self._written, self._pause = changes, max(WRITE_EVERY_S, seconds * DUTY)
        (log.info if first else log.debug)(
            "snapshot_written", path=str(self._path), entries=entries, bytes=size, seconds=round(seconds, 3)
        )
        return True
