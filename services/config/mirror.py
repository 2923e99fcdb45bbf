"""Every live key of the config bucket, kept current by one ordered consumer.

Lists and scans (``GET /pools``, a delete that checks what uses a pool, a
document applied as a whole) read from here instead of opening a consumer per
request: NATS caps consumers per stream, and ephemeral ones linger for seconds.
A read first asks the stream for its last sequence and waits until the view
has seen it, so a list made right after a write (by any config replica)
includes it.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from services.config.errors import Unavailable
from shared import bus, subjects

log = structlog.get_logger(__name__)

CATCH_UP_TIMEOUT_S = 3.0
IDLE_HEARTBEAT_S = 1.0


class ConfigView:
    """``key -> (value, revision)`` of every live key of ``gtm_config``, following the bucket's stream."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._prefix = subjects.kv_subject_prefix(subjects.CONFIG_BUCKET)
        self._stream = subjects.kv_stream(subjects.CONFIG_BUCKET)
        self.entries: dict[str, tuple[bytes, int]] = {}
        self.seq = 0  # the highest stream sequence applied
        self._moved = asyncio.Event()  # set (and replaced) whenever ``seq`` rises
        self._sub: JetStreamContext.PushSubscription | None = None

    async def start(self) -> None:
        """Subscribe: the last message of every key, then every change."""
        self._sub = await self._js.subscribe(
            f"{self._prefix}>",
            stream=self._stream,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=IDLE_HEARTBEAT_S,  # a lost consumer is noticed (and recreated) within 2 s
        )

    async def stop(self) -> None:
        """Unsubscribe (best effort: NATS may be away)."""
        await bus.unsubscribe(self._sub)

    async def _on_message(self, msg: Msg) -> None:
        try:
            self.apply(msg.subject[len(self._prefix) :], msg.data, msg.headers, msg.metadata.sequence.stream)
        except Exception:  # noqa: BLE001 - a callback never dies on one message
            log.exception("config_view_update_failed", subject=msg.subject)

    def apply(self, key: str, value: bytes, headers: dict[str, str] | None, seq: int) -> None:
        """Apply one message of the bucket's stream (a value, or a delete or purge marker)."""
        if bus.is_delete(headers) or not value:
            self.entries.pop(key, None)
        else:
            self.entries[key] = (value, seq)
        if seq > self.seq:
            self.seq = seq
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()

    def scan(self, prefix: str) -> list[tuple[str, bytes, int]]:
        """(key, value, revision) of every live key under ``prefix``, as of now."""
        return [(k, v, rev) for k, (v, rev) in self.entries.items() if k.startswith(prefix)]

    async def caught_up(self) -> None:
        """Wait until the view holds everything the stream held when this was called."""
        info = await self._js.stream_info(self._stream)
        target = info.state.last_seq
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while self.seq < target:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("config_view_behind", seq=self.seq, last_seq=target)
                raise Unavailable("the config view is behind the store; try again")
            moved = self._moved
            try:
                await asyncio.wait_for(moved.wait(), left)
            except TimeoutError:
                continue
