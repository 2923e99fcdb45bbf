"""Follow NATS into an AnswerTable: the ANSWERS stream (last AnswerSet per domain, then live
updates) and the topology key of the config bucket (client subnet -> region, live)."""

from __future__ import annotations

import asyncio
import gc
import logging

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from services.edge.table import AnswerTable, StaleAnswer, StaleTerm
from services.edge.topology import RegionMap
from shared import bus, messages, subjects

log = structlog.get_logger(__name__)

# Heartbeats let nats-py's ordered consumer notice a lost consumer (e.g. a NATS
# restart) and recreate it from the last stream sequence it saw.
IDLE_HEARTBEAT_S = 1.0
SNAPSHOT_RECHECK_S = 2.0


class AnswerFeed:
    """An ordered JetStream consumer (deliver last per subject) applying AnswerSets to a table.

    With ``resync`` the table already holds answers (from a disk snapshot): once the
    stream's snapshot is in, the names it did not carry are dropped, so live data wins.
    """

    def __init__(self, js: JetStreamContext, table: AnswerTable, *, resync: bool = False) -> None:
        self._js = js
        self._table = table
        self._resync = resync
        self.loaded = asyncio.Event()
        self.sequence = 0  # the highest ANSWERS stream sequence delivered (applied, or rightly skipped)
        self._sub: JetStreamContext.PushSubscription | None = None
        # Asked once: a filtered-out debug call still costs a lookup per message of the snapshot.
        self._debug = bool(getattr(log, "is_enabled_for", lambda level: True)(logging.DEBUG))

    async def start(self) -> None:
        """Subscribe; :attr:`loaded` is set once the snapshot has been applied."""
        if not self.loaded.is_set():
            # Terms count in stream order: a disk snapshot's answers came in no particular order.
            self._table.forget_terms()
        if self._resync and not self.loaded.is_set():
            self._table.begin_resync()
        if await self._stream_empty():
            self._set_loaded()
        else:
            # The snapshot builds ~10 objects per domain and frees none: the cyclic GC would scan
            # the growing table again and again for nothing.
            gc.disable()
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
                self._set_loaded()
        return self.loaded.is_set()

    def _set_loaded(self) -> None:
        """The snapshot is in: move the table out of the GC's sight for good, and turn the GC back on.

        No full collection first: it would walk the whole table once more for the odd cycle.
        """
        if not self.loaded.is_set():
            if self._resync:
                gone = self._table.end_resync()
                if gone:
                    log.info("answers_dropped_not_live", domains=len(gone), sample=gone[:10])
            self.loaded.set()
            gc.freeze()
            gc.enable()

    async def stop(self) -> None:
        """Unsubscribe (best effort: NATS may be away)."""
        await bus.unsubscribe(self._sub)

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
            try:
                sequence, pending = stream_position(msg.reply or "")
            except ValueError as exc:
                log.warning("bad_metadata", subject=msg.subject, error=str(exc))
            else:
                self.sequence = max(self.sequence, sequence)
                if pending == 0 and not self.loaded.is_set():
                    self._set_loaded()

    def apply(self, data: bytes, subject: str) -> None:
        """Decode and apply one AnswerSet; log and skip it if it is bad or older than the installed one."""
        try:
            aset = messages.answer_set_decoder.decode(data)
            compiled = self._table.apply(aset, data)
        except StaleTerm as stale:
            log.info("answer_ignored_stale_term", domain=stale.domain, term=stale.offered, highest=stale.installed)
            return
        except StaleAnswer as stale:
            log.info("answer_ignored_older", domain=stale.domain, revision=stale.offered, installed=stale.installed)
            return
        except ValueError as exc:  # msgspec.DecodeError (ValidationError too) and wire.Malformed both are
            log.warning("answer_rejected", subject=subject, error=str(exc))
            return
        except Exception:
            log.exception("answer_rejected", subject=subject)
            return
        if compiled is None:
            log.debug("answer_removed", domain=aset.domain)
            return
        if compiled.skipped:
            log.warning("records_skipped", domain=aset.domain, records=list(compiled.skipped))
        if self._debug:
            log.debug("answer_applied", domain=aset.domain, enabled=aset.enabled, records=len(aset.records))


class TopologyFeed:
    """Follows KV key ``topology`` of ``gtm_config`` into ``table.regions`` (missing: an empty map)."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, table: AnswerTable) -> None:
        self._js = js
        self._kv = kv
        self._table = table
        self._revision = -1
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        """Load the current table, then follow its changes."""
        try:
            entry = await self._kv.get(subjects.TOPOLOGY_KEY)
        except KeyNotFoundError:  # never written, or deleted
            self.apply(None, 0)
        else:
            self.apply(entry.value, entry.revision or 0)
        self._sub = await self._js.subscribe(
            f"{subjects.kv_subject_prefix(subjects.CONFIG_BUCKET)}{subjects.TOPOLOGY_KEY}",
            stream=subjects.kv_stream(subjects.CONFIG_BUCKET),
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=IDLE_HEARTBEAT_S,
        )

    async def stop(self) -> None:
        """Unsubscribe (best effort: NATS may be away)."""
        await bus.unsubscribe(self._sub)

    async def _on_message(self, msg: Msg) -> None:
        try:
            self.apply(None if bus.is_delete(msg.headers) else msg.data, msg.metadata.sequence.stream)
        except Exception:
            log.exception("topology_rejected")

    def apply(self, value: bytes | None, revision: int) -> None:
        """Install the topology stored at ``revision`` (None or empty: deleted); keep the old one if bad."""
        if revision and revision == self._revision:
            return  # the subscription delivers again what start() read
        try:
            regions = RegionMap.from_value(value)
        except msgspec.DecodeError as exc:  # not JSON, or not a Topology (a ValidationError)
            log.warning("topology_rejected", revision=revision, error=str(exc))
            return
        self._revision = revision
        self._table.set_topology(value, regions)
        if regions.skipped:
            log.warning("topology_entries_skipped", cidrs=regions.skipped)
        log.info("topology_applied", entries=regions.size, revision=revision)


def stream_position(reply: str) -> tuple[int, int]:
    """(stream sequence, messages left after this one) from a JetStream reply subject.

    Cheaper than ``msg.metadata``: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``
    or, with a domain and account hash, ``$JS.ACK.<domain>.<hash>.<stream>...<pending>.<token>``.
    """
    tokens = reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS":
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11 and tokens[0] == "$JS":
        return int(tokens[7]), int(tokens[10])
    raise ValueError(f"not a JetStream reply subject: {reply!r}")
