"""Pure live-update core of the console: small events from NATS messages, filters, SSE frames, fan-out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from services.config.views import iso
from shared.messages import (
    AnswerSet,
    OperationEvent,
    PoolState,
    ProbeResult,
    SwitchEvent,
)

LiveEvent = dict[str, Any]
QUEUE_SIZE = 256
RETRY_MS = 1000  # how soon a browser's EventSource reconnects
MAX_CHECK_SLOTS = 100_000
LiveMessage = PoolState | AnswerSet | SwitchEvent | OperationEvent | ProbeResult


def summarize(message: LiveMessage) -> LiveEvent:
    """The small event pushed to browsers for one NATS message (they re-fetch the status on it)."""
    if isinstance(message, ProbeResult):
        return {
            "type": "check",
            "pool": message.pool,
            "address": message.address,
            "region": message.region,
            "ok": message.ok,
            "error": message.error,
        }
    if isinstance(message, PoolState):
        return {"type": "pool", "pool": message.pool, "available": message.available, "warming": message.warming}
    if isinstance(message, AnswerSet):
        return {
            "type": "answer",
            "domain": message.domain,
            "pool": message.pool,
            "records": list(message.records),
            "fallback": message.fallback,
            "enabled": message.enabled and not message.deleted,
        }
    if isinstance(message, SwitchEvent):
        return {
            "type": "switch",
            "domain": message.domain,
            "from_pool": message.from_pool,
            "to_pool": message.to_pool,
            "reason": message.reason,
            "at": iso(message.at),
        }
    return {
        "type": "operation",
        "domain": message.domain,
        "resource": message.resource,
        "name": message.name,
        "revision": message.revision,
    }


def wanted(event: LiveEvent, domain: str, pools: frozenset[str]) -> bool:
    """Whether a stream filtered on ``domain`` (using ``pools``) passes ``event``; no domain passes all."""
    if not domain or event.get("domain") == domain:
        return True
    if event["type"] in ("pool", "check"):
        return event["pool"] in pools
    return event["type"] == "operation" and event.get("resource") == "pool" and event.get("name") in pools


def changes_pools(event: LiveEvent, domain: str) -> bool:
    """Whether ``event`` is a config write of ``domain`` itself (its pool list may have changed)."""
    return event["type"] == "operation" and event.get("resource") == "domain" and event.get("name") == domain


def sse_frame(event: LiveEvent, *, retry_ms: int | None = None) -> bytes:
    """One Server-Sent Events frame carrying ``event`` as JSON (one line)."""
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{head}data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


KEEPALIVE_FRAME = b": keepalive\n\n"


class CheckChanges:
    """The last outcome (ok, error) of each address per region and prober: only a change is worth a push."""

    def __init__(self, max_slots: int = MAX_CHECK_SLOTS) -> None:
        self.max_slots = max_slots
        self._last: dict[tuple[str, str, str], tuple[bool, str]] = {}

    def changed(self, result: ProbeResult) -> bool:
        """Whether ``result``'s outcome differs from the last one of its address, region and prober."""
        slot, outcome = (result.key, result.region, result.prober), (result.ok, result.error)
        if self._last.get(slot) == outcome:
            return False
        if len(self._last) >= self.max_slots:
            self._last.clear()  # addresses and probers that went away; at worst a few extra pushes
        self._last[slot] = outcome
        return True


class LiveHub:
    """Fans events out to every open stream; a stream that falls behind is ended (its browser reconnects)."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.closed = False
        self._queues: set[asyncio.Queue[LiveEvent | None]] = set()

    def __len__(self) -> int:
        return len(self._queues)

    def subscribe(self) -> asyncio.Queue[LiveEvent | None]:
        """A new stream's queue; ``None`` in it means: end the stream."""
        queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(self.queue_size)
        if self.closed:
            queue.put_nowait(None)
        else:
            self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[LiveEvent | None]) -> None:
        """Forget a stream's queue."""
        self._queues.discard(queue)

    def publish(self, event: LiveEvent) -> None:
        """Queue ``event`` for every stream; end the streams whose queue is full."""
        for queue in list(self._queues):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._end(queue)

    def close(self) -> None:
        """End every stream (at shutdown) and refuse new ones."""
        self.closed = True
        for queue in list(self._queues):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[LiveEvent | None]) -> None:
        self._queues.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
