"""Follow the ANSWERS stream into an AnswerTable: the last AnswerSet per domain, then live updates."""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from services.edge.table import AnswerTable
from shared import messages, subjects

log = structlog.get_logger(__name__)

# Heartbeats let nats-py's ordered consumer notice a lost consumer (e.g. a NATS
# restart) and recreate it from the last stream sequence it saw.
IDLE_HEARTBEAT_S = 1.0
SNAPSHOT_RECHECK_S = 2.0


class AnswerFeed:
    """An ordered JetStream consumer (deliver last per subject) applying AnswerSets to a table."""

    def __init__(self, js: JetStreamContext, table: AnswerTable) -> None:
        self._js = js
        self._table = table
        self.loaded = asyncio.Event()
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        """Subscribe; :attr:`loaded` is set once the snapshot has been applied."""
        if await self._stream_empty():
            self.loaded.set()
        self._sub = await self._js.subscribe(
            subjects.ANSWERS_ALL,
            stream=subjects.STREAM_ANSWERS,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=IDLE_HEARTBEAT_S,
        )

    async def wait_loaded(self, stop: asyncio.Event) -> bool:
        """Wait for the snapshot (or ``stop``); True when loaded."""
        while not self.loaded.is_set() and not stop.is_set():
            waiters = {asyncio.ensure_future(self.loaded.wait()), asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(waiters, timeout=SNAPSHOT_RECHECK_S, return_when="FIRST_COMPLETED")
            for task in pending:
                task.cancel()
            # The stream may have been emptied after we looked: then there is nothing to wait for.
            if not self.loaded.is_set() and await self._stream_empty():
                self.loaded.set()
        return self.loaded.is_set()

    async def stop(self) -> None:
        """Unsubscribe (best effort: NATS may be away)."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                log.debug("unsubscribe_failed", error=str(exc))

    async def _stream_empty(self) -> bool:
        try:
            info = await self._js.stream_info(subjects.STREAM_ANSWERS)
        except Exception as exc:  # noqa: BLE001 - checked again later
            log.warning("stream_info_failed", error=str(exc))
            return False
        return info.state.messages == 0

    async def _on_message(self, msg: Msg) -> None:
        try:
            self.apply(msg.data, msg.subject)
        finally:
            if not self.loaded.is_set():
                try:
                    if msg.metadata.num_pending == 0:
                        self.loaded.set()
                except Exception as exc:  # noqa: BLE001 - not a JetStream message
                    log.warning("bad_metadata", subject=msg.subject, error=str(exc))

    def apply(self, data: bytes, subject: str) -> None:
        """Decode and apply one AnswerSet; log and skip it if it is bad."""
        try:
            aset = messages.answer_set_decoder.decode(data)
            compiled = self._table.apply(aset)
        except ValueError as exc:  # msgspec.ValidationError and wire.Malformed both are
            log.warning("answer_rejected", subject=subject, error=str(exc))
            return
        except Exception:
            log.exception("answer_rejected", subject=subject)
            return
        if compiled is None:
            log.debug("answer_removed", domain=aset.domain)
            return
        if compiled.skipped:
            log.warning("records_skipped", domain=compiled.domain, records=list(compiled.skipped))
        log.debug("answer_applied", domain=compiled.domain, enabled=aset.enabled, records=len(aset.records))
