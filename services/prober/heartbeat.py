"""Membership of one region's probers over NATS: announce ourselves, hear the others.

The decisions (who is live, who owns what) are in :mod:`services.prober.membership`;
this shell only moves heartbeats and tells the prober when the live set changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client

from services.prober import membership
from shared import messages, subjects

log = structlog.get_logger(__name__)


class Membership:
    """This prober's view of the live probers of its region."""

    def __init__(
        self,
        *,
        nc: Client,
        region: str,
        prober: str,
        on_change: Callable[[], None] = lambda: None,
        heartbeat_s: float = membership.HEARTBEAT_S,
    ) -> None:
        self._nc = nc
        self._region = region
        self.me = prober
        self._on_change = on_change
        self._heartbeat_s = heartbeat_s
        self._subject = subjects.prober_members(region)
        self._expiries: dict[str, float] = {}
        self._live: frozenset[str] = frozenset([prober])
        self.joined = asyncio.Event()  # set once we have listened for one heartbeat period

    @property
    def live(self) -> frozenset[str]:
        """The live probers of the region, this one included."""
        return self._live

    def set_on_change(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` whenever the live set changes."""
        self._on_change = on_change

    async def run(self) -> None:
        """Listen and announce until cancelled; then say that we stop."""
        sub = await self._nc.subscribe(self._subject, cb=self._on_msg)
        loop = asyncio.get_running_loop()
        joined_at = loop.time() + membership.JOIN_WAIT_S
        next_send = loop.time()
        try:
            while True:
                now = loop.time()
                if now >= next_send:
                    await self._announce(stopping=False)
                    next_send = now + self._heartbeat_s
                if not self.joined.is_set() and now >= joined_at:
                    self.joined.set()
                self._refresh(now)
                wake = min([next_send, *self._expiries.values()])
                if not self.joined.is_set():
                    wake = min(wake, joined_at)
                await asyncio.sleep(max(0.0, wake - loop.time()) + 0.001)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def leave(self) -> None:
        """Tell the peers we stop, so they take our addresses over at once."""
        await self._announce(stopping=True)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=1)

    async def _announce(self, *, stopping: bool) -> None:
        beat = messages.ProberHeartbeat(
            region=self._region,
            prober=self.me,
            at=time.time(),
            interval_s=self._heartbeat_s,
            stopping=stopping,
        )
        try:
            await self._nc.publish(self._subject, messages.encoder.encode(beat))
        except Exception as exc:  # noqa: BLE001 - NATS away: the next beat tries again
            log.debug("heartbeat_failed", error=str(exc))

    async def _on_msg(self, msg: Any) -> None:
        try:
            beat = messages.heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("heartbeat_decode_failed", error=str(exc))
            return
        if beat.prober == self.me or beat.region != self._region:
            return
        now = asyncio.get_running_loop().time()
        self._expiries = membership.observe(
            self._expiries,
            prober=beat.prober,
            now=now,
            interval_s=beat.interval_s,
            stopping=beat.stopping,
        )
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        self._expiries = membership.prune(self._expiries, now)
        live = membership.live_members(self._expiries, now, self.me)
        if live == self._live:
            return
        joined, left = sorted(live - self._live), sorted(self._live - live)
        self._live = live
        log.info("members_changed", region=self._region, live=sorted(live), joined=joined, left=left)
        try:
            self._on_change()
        except Exception:
            log.exception("members_change_failed")
