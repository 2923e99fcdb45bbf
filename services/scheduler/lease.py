"""Leader election: one active scheduler through a revision-checked key in KV ``gtm_leases``.

The holder rewrites the key every ``lease_s / 3`` with ``update(last=revision)``.
A standby polls the key and takes it over, again with ``update(last=revision)``
so that only one standby wins, once the revision it sees has not moved for
``lease_s`` of its own monotonic clock: no clock is compared across machines.
A holder that cannot renew gives up before a standby may take over: it is
:meth:`Lease.valid` only until ``HOLDER_MARGIN`` of the lease has passed since
its last renewal was sent, whatever its loop is doing.

The revision written by a successful take-over is the holder's ``term``: every
later take-over writes a higher one, so it orders leaders (see
:mod:`services.scheduler.fencing`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
from msgspec import Struct
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import subjects

# A holder stops deciding once this share of the lease has passed since its last renewal was sent.
HOLDER_MARGIN = 0.75


class LeaseValue(Struct, kw_only=True, frozen=True):
    """What the lease key holds: who leads (``at``, unix seconds, is for humans only)."""

    holder: str
    at: float
    lease_s: float


_decoder = msgspec.json.Decoder(LeaseValue)


class StaleWatch:
    """A standby's view of the key: how long its revision has stood still (pure, no I/O)."""

    def __init__(self) -> None:
        self.revision: int | None = None
        self.since = 0.0

    def see(self, revision: int, now: float) -> float:
        """Record the revision seen at ``now``; return for how long it has not changed."""
        if revision != self.revision:
            self.revision, self.since = revision, now
        return now - self.since


class Lease:
    """The scheduler lease as seen by one scheduler."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        holder: str,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.holder = holder
        self.lease_s = lease_s
        self.clock = clock
        self.held = False
        self.revision = 0  # our revision of the key while held
        self.term = 0  # the revision our take-over wrote: rises with every take-over
        self.renewed_at = 0.0  # when the last successful renewal was sent
        self.watch = StaleWatch()
        self.last_error = ""
        self.previous_holder = ""  # who held the lease before we took it ("" = nobody)

    def valid(self) -> bool:
        """Whether we hold the lease now: held, and renewed less than ``HOLDER_MARGIN`` of it ago.

        Checked right before every publication, so that a holder whose loop has not yet
        noticed a failed renewal still stops in time.
        """
        return self.held and self.clock() < self.renewed_at + self.lease_s * HOLDER_MARGIN

    def lose(self, reason: str) -> None:
        """Stop holding the lease without touching the key (another leader has shown itself)."""
        self.held, self.last_error = False, reason

    def next_step_s(self) -> float:
        """How long to wait before the next :meth:`step`."""
        if not self.held:
            return max(0.02, self.lease_s / 20)
        deadline = self.renewed_at + self.lease_s * HOLDER_MARGIN
        return max(0.0, min(self.lease_s / 3, deadline - self.clock()))

    async def step(self) -> bool:
        """Renew the lease while held, else take over a missing or stale one; return whether held."""
        if self.held:
            await self._renew()
        else:
            await self._try_take()
        return self.held

    async def _renew(self) -> None:
        sent = self.clock()
        deadline = self.renewed_at + self.lease_s * HOLDER_MARGIN
        try:
            self.revision = await asyncio.wait_for(
                self.kv.update(subjects.SCHEDULER_LEASE_KEY, self._value(), last=self.revision),
                max(0.05, deadline - sent),
            )
            self.renewed_at = sent
        except KeyWrongLastSequenceError:
            self.held, self.last_error = False, "taken over"
        except (NatsError, TimeoutError) as exc:
            self.last_error = repr(exc)
            if self.clock() >= deadline:
                self.held = False

    async def _try_take(self) -> None:
        now = self.clock()
        # A request made while NATS is away would wait out the client's whole timeout: give up
        # early and try again on the next step, which comes every lease/20.
        patience = max(0.05, self.lease_s / 4)
        try:
            entry = await asyncio.wait_for(self.kv.get(subjects.SCHEDULER_LEASE_KEY), patience)
        except KeyNotFoundError as err:  # never written, or released (deleted)
            last, self.previous_holder = (err.entry.revision or 0) if err.entry is not None else 0, ""
        except (NatsError, TimeoutError) as exc:
            self.last_error = repr(exc)
            return
        else:
            # Still our own name (we lost it to an outage, and a renewal nats.py buffered meanwhile
            # may have landed since): nobody else has led in between, so take it back at once
            # instead of waiting for it to go stale.  Another taker would have written its name.
            holder = _holder(entry.value or b"")
            if holder != self.holder and self.watch.see(entry.revision or 0, now) < self.lease_s:
                return
            last, self.previous_holder = entry.revision or 0, holder
        sent = self.clock()  # the lease runs from the write (as for a renewal), not from the read
        try:
            self.revision = await asyncio.wait_for(
                self.kv.update(subjects.SCHEDULER_LEASE_KEY, self._value(), last=last), patience
            )
        except KeyWrongLastSequenceError:
            return  # another scheduler was faster
        except (NatsError, TimeoutError) as exc:
            self.last_error = repr(exc)
            return
        self.held, self.renewed_at, self.last_error = True, sent, ""
        self.term = self.revision

    async def release(self) -> None:
        """Give the lease up (on shutdown) so that a standby takes over at once."""
        if not self.held:
            return
        self.held = False
        try:
            await asyncio.wait_for(self.kv.delete(subjects.SCHEDULER_LEASE_KEY, last=self.revision), 1.0)
        except (NatsError, TimeoutError, KeyWrongLastSequenceError) as exc:
            self.last_error = repr(exc)

    def _value(self) -> bytes:
        return msgspec.json.encode(LeaseValue(holder=self.holder, at=time.time(), lease_s=self.lease_s))


def _holder(value: bytes) -> str:
    try:
        return _decoder.decode(value).holder
    except msgspec.DecodeError:  # not JSON, or not a LeaseValue (a ValidationError)
        return ""
