"""The edge's answer table: compiled domains and the fast-path dict (no I/O).

The fast path looks a query's question (lower-cased name, type, class) up in
one dict; it holds the common query types of every domain whose response fits
512 bytes with EDNS, and whose answer does not depend on where the client is.
Everything else goes through :meth:`AnswerTable.lookup` on the slow path.
"""

from __future__ import annotations

import contextlib
import struct

from services.edge import wire
from services.edge.compile import REFUSED, Answer, Compiled, Picker, compile_answer_set
from services.edge.topology import EMPTY, RegionMap
from services.edge.zone import Zone
from shared.messages import AnswerSet

# Query types answered on the fast path (others parse the packet): what resolvers ask most.
FAST_QTYPES = (wire.TYPE_A, wire.TYPE_AAAA, 65)  # 65: HTTPS, asked beside A and AAAA by browsers
_FAST_TAILS = tuple((qtype, struct.pack("!HH", qtype, wire.CLASS_IN)) for qtype in FAST_QTYPES)
_CNAME_TAIL = struct.pack("!HH", wire.TYPE_CNAME, wire.CLASS_IN)  # CNAME domains answer it too
_ROOM = wire.MIN_PAYLOAD - wire.HEADER_LEN - 4  # for the name and the EDNS body


class AnswerTable:
    """Compiled domains, the fast-path dict keyed by lower-cased question bytes, zone and topology.

    ``fast`` is mutated in place, never replaced, so a responder may keep a
    reference to it.  ``regions`` is replaced whole when the topology changes.
    """

    def __init__(self, zone: Zone | None = None) -> None:
        self.fast: dict[bytes, Picker] = {}
        self.names: dict[bytes, Compiled] = {}
        self.zone = zone
        self.regions: RegionMap = EMPTY
        self._below: dict[bytes, int] = {}  # names of the zone -> how many domains lie below them

    def __len__(self) -> int:
        return len(self.names)

    def apply(self, aset: AnswerSet) -> Compiled | None:
        """Install (or, for a tombstone, remove) one domain's answers in one synchronous step."""
        if aset.deleted:
            self.remove(aset.domain)
            return None
        compiled = compile_answer_set(aset)
        name = compiled.name
        if self.zone is not None and self.zone.contains(name):
            compiled.nodata = self.zone.nodata  # NODATA inside the zone carries its SOA
        if self.names.get(name) is None:
            self._count(name, 1)
        else:
            self._drop_fast(name)
        self.names[name] = compiled
        if compiled.rtype:
            self._add_fast(compiled)
        return compiled

    def _add_fast(self, compiled: Compiled) -> None:
        """Put the fast-path responses of a domain in ``fast`` (those that fit and ignore the client)."""
        name, rtype, nodata = compiled.name, compiled.rtype, compiled.nodata
        answer: Answer | None = compiled.answer
        if answer is None:
            answer = nodata  # no records: NODATA whatever the type
        elif compiled.by_region is not None:
            answer = None  # depends on the client's location: slow path
        cname = rtype == wire.TYPE_CNAME
        room = _ROOM - len(name)
        fast = self.fast
        for qtype, tail in _FAST_TAILS:
            chosen = answer if cname or qtype == rtype else nodata
            if chosen is not None and chosen.max_body <= room:
                fast[name + tail] = chosen.pick
        if cname and answer is not None and answer.max_body <= room:
            fast[name + _CNAME_TAIL] = answer.pick

    def remove(self, domain: str) -> None:
        """Forget a domain (its name is then REFUSED, or NXDOMAIN inside the zone)."""
        with contextlib.suppress(wire.Malformed):
            name = wire.name_to_wire(domain)
            if self.names.pop(name, None) is not None:
                self._drop_fast(name)
                self._count(name, -1)

    def lookup(self, name: bytes, qtype: int) -> tuple[Answer, Compiled | None]:
        """The location-independent answer for a lower-case wire ``name`` and its domain (if any)."""
        compiled = self.names.get(name)
        zone = self.zone
        if zone is not None:
            # The apex's SOA and NS come from the zone, even when the apex is also an access domain.
            if name == zone.name and qtype in zone.apex and (compiled is None or qtype != wire.TYPE_ANY):
                return zone.apex[qtype], None
            if compiled is None and zone.contains(name):
                return zone.negative(name, qtype, self._below.get(name, 0) > 0), None
        if compiled is not None:
            return compiled.answer_for(qtype), compiled
        return REFUSED, None

    def _drop_fast(self, name: bytes) -> None:
        for _, tail in _FAST_TAILS:
            self.fast.pop(name + tail, None)
        self.fast.pop(name + _CNAME_TAIL, None)

    def _count(self, name: bytes, delta: int) -> None:
        """Track the empty non-terminals of the zone (they answer NODATA, not NXDOMAIN)."""
        if self.zone is None:
            return
        below = self._below
        for ancestor in self.zone.ancestors(name):
            count = below.get(ancestor, 0) + delta
            if count > 0:
                below[ancestor] = count
            else:
                below.pop(ancestor, None)
