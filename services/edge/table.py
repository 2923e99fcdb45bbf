"""The edge's answer table: compiled domains and the fast-path dict (no I/O).

The fast path looks a query's question (lower-cased name, type, class) up in
one dict; it holds the common query types of every domain whose response fits
512 bytes with EDNS, and whose answer does not depend on where the client is.
Everything else goes through :meth:`AnswerTable.lookup` on the slow path.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Callable, Iterator

from services.edge import wire
from services.edge.compile import REFUSED, Answer, Compiled, Picker, Variant, compile_answer_set
from services.edge.locate import Locator
from services.edge.topology import EMPTY, RegionMap
from services.edge.wire import QType
from services.edge.zone import Zone
from shared.geo import GeoDatabase
from shared.messages import AnswerSet, encoder

# Query types answered on the fast path (others parse the packet): what resolvers ask most.
FAST_QTYPES = (QType.A, QType.AAAA, QType.HTTPS)  # HTTPS: asked beside A and AAAA by browsers
_FAST_TAILS = tuple((qtype, struct.pack("!HH", qtype, wire.CLASS_IN)) for qtype in FAST_QTYPES)
_CNAME_TAIL = struct.pack("!HH", QType.CNAME, wire.CLASS_IN)  # CNAME domains answer it too
_KEY_TAILS = (*(tail for _, tail in _FAST_TAILS), _CNAME_TAIL)  # every fast-path key a domain can have
_ANY = int(QType.ANY)  # read per query: a plain int
_ROOM = wire.MIN_PAYLOAD - wire.HEADER_LEN - 4  # for the name and the EDNS body


class StaleAnswer(Exception):
    """An AnswerSet older than the one installed for its domain: it must not replace it."""

    def __init__(self, domain: str, *, installed: int, offered: int) -> None:
        super().__init__(f"{domain}: revision {offered} is older than the installed {installed}")
        self.domain, self.installed, self.offered = domain, installed, offered


class StaleTerm(StaleAnswer):
    """An AnswerSet of a lower term than the highest seen, for a name already served: a deposed leader's."""

    def __init__(self, domain: str, *, highest: int, offered: int) -> None:
        super().__init__(domain, installed=highest, offered=offered)
        self.args = (f"{domain}: term {offered} is older than the highest term seen, {highest}",)


class AnswerTable:
    """Compiled domains, the fast-path dict keyed by lower-cased question bytes, zone and topology.

    ``fast`` is mutated in place, never replaced, so a responder may keep a
    reference to it.  ``regions`` is replaced whole when the topology changes.
    Beside the compiled answers it keeps what a disk snapshot needs to rebuild
    them: each domain's AnswerSet encoded, the tombstones with a revision, the
    raw topology value; ``changes`` counts every change so a writer can tell.
    Without ``keep_encoded`` (no snapshot on disk) the encoded AnswerSets are not kept.

    Fencing: ``highest_term`` is the highest scheduler term among the AnswerSets applied.
    In stream order a lower one can only come from a leader that has been replaced and
    whose publication landed late; for a name already served (or tombstoned) it is
    ignored.  For a name not served at all it is installed: a deposed leader's last
    decision beats no answer, and the current leader publishes over it.
    """

    def __init__(
        self,
        zone: Zone | None = None,
        *,
        keep_encoded: bool = True,
        geo: Callable[[], GeoDatabase | None] | None = None,
    ) -> None:
        self.fast: dict[bytes, Picker] = {}
        self.fixed: dict[bytes, Variant] = {}  # the keys of ``fast`` whose answer never changes: that answer
        # question -> the domain with lines it asks for, and whether it asks for the domain's own type:
        # answered without parsing when the query carries no ECS (see Responder.answer)
        self.lined: dict[bytes, tuple[Compiled, bool]] = {}
        self.locator = Locator(EMPTY, geo)  # client -> the lines it matches, for domains with lines
        self.keep_encoded = keep_encoded  # ~0.45 KB a domain
        self.names: dict[bytes, Compiled] = {}
        self.zone = zone
        self.regions: RegionMap = EMPTY
        self.topology: bytes | None = None  # the config bucket's topology value behind ``regions``
        # Deleted names and their tombstone (revision > 0 only): a late older answer must not
        # bring them back.  Bounded by the tombstones in the stream plus those deleted since start.
        self.tombstones: dict[bytes, AnswerSet] = {}
        self.changes = 0
        self.highest_term = 0
        self._below: dict[bytes, int] = {}  # names of the zone -> how many domains lie below them
        self._seen: set[bytes] | None = None  # names applied since begin_resync()

    def __len__(self) -> int:
        return len(self.names)

    def apply(self, aset: AnswerSet, raw: bytes | None = None) -> Compiled | None:
        """Install (or, for a tombstone, remove) one domain's answers in one synchronous step.

        ``raw`` is ``aset`` as received (encoded here when not given).  Raises
        :class:`StaleTerm` when ``aset`` comes from a replaced leader (see the class), and
        :class:`StaleAnswer` when ``aset`` has a revision lower than the installed one.
        """
        try:
            name = wire.name_to_wire(aset.domain)
        except wire.Malformed:
            if aset.deleted:
                return None  # nothing by that name can be installed
            raise
        if self._seen is not None:
            self._seen.add(name)
        current = self.names.get(name)
        if aset.term:
            if aset.term < self.highest_term and (current is not None or name in self.tombstones):
                raise StaleTerm(aset.domain, highest=self.highest_term, offered=aset.term)
            if aset.term > self.highest_term:
                self.highest_term = aset.term  # even if older by revision: a newer leader exists
        if aset.revision:
            installed = current.revision if current is not None else self.revision(name)
            if aset.revision < installed:
                raise StaleAnswer(aset.domain, installed=installed, offered=aset.revision)
        self.changes += 1
        if aset.deleted:
            self._remove(name)
            if aset.revision:
                self.tombstones[name] = aset
            else:
                self.tombstones.pop(name, None)  # revision 0 resets what we know of the name
            return None
        compiled = compile_answer_set(aset, name=name)
        compiled.revision = aset.revision
        if self.keep_encoded:
            compiled.raw = raw if raw is not None else encoder.encode(aset)
        if self.tombstones:
            self.tombstones.pop(name, None)
        if self.zone is not None and self.zone.contains(name):
            compiled.nodata = self.zone.nodata  # NODATA inside the zone carries its SOA
        if current is None:
            self._count(name, 1)
        else:
            self._drop_fast(name)
        self.names[name] = compiled
        if compiled.rtype:
            self._add_fast(compiled)
        return compiled

    def forget_terms(self) -> None:
        """Start counting terms again (before the stream replays its answers in stream order)."""
        self.highest_term = 0

    def set_topology(self, value: bytes | None, regions: RegionMap) -> None:
        """Serve ``regions``, decoded from the config bucket's topology ``value`` (kept for the snapshot)."""
        self.regions, self.topology = regions, value or None
        self.locator.set_regions(regions)
        self.changes += 1

    def revision(self, name: bytes) -> int:
        """The revision of what is installed for wire ``name``: its answer, else its tombstone (0: none)."""
        compiled = self.names.get(name)
        if compiled is not None:
            return compiled.revision
        tombstone = self.tombstones.get(name)
        return tombstone.revision if tombstone is not None else 0

    def begin_resync(self) -> None:
        """Start noting the names applied: :meth:`end_resync` then drops every other one."""
        self._seen = set()

    def end_resync(self) -> list[str]:
        """Forget the domains and tombstones not applied since :meth:`begin_resync`; return the domains."""
        seen, self._seen = self._seen or set(), None
        gone = [name for name in self.names if name not in seen]
        for name in gone:
            self._remove(name)
        for name in [name for name in self.tombstones if name not in seen]:
            del self.tombstones[name]
        if gone:
            self.changes += 1
        return [wire.wire_to_text(name) for name in gone]

    def encoded(self) -> Iterator[bytes]:
        """Every installed AnswerSet and kept tombstone, encoded (what a disk snapshot holds).

        Which ones is fixed when called; the iterator then reads them bit by bit, so that
        a writer can pause between pieces while the table changes.
        """
        compiled, tombstones = list(self.names.values()), list(self.tombstones.values())
        return itertools.chain((c.raw for c in compiled), map(encoder.encode, tombstones))

    def _add_fast(self, compiled: Compiled) -> None:
        """Put the fast-path responses of a domain in ``fast`` (those that fit and ignore the client).

        A domain with lines goes in ``lined`` instead: its answer is resolved per client.
        """
        name, rtype, nodata = compiled.name, compiled.rtype, compiled.nodata
        cname = rtype == QType.CNAME
        if compiled.lined is not None:
            for qtype, tail in _FAST_TAILS:
                self.lined[name + tail] = (compiled, compiled.own_type(qtype))
            if cname:
                self.lined[name + _CNAME_TAIL] = (compiled, True)
            return
        answer: Answer | None = compiled.answer
        other: Answer | None = compiled.other if compiled.other is not None else nodata
        if answer is None:
            answer = nodata  # no records: NODATA whatever the type (or the CNAME of ``other``)
        elif compiled.by_region is not None:
            answer = None  # depends on the client's location: slow path
            if compiled.other is not None:
                other = None
        room = _ROOM - len(name)
        for qtype, tail in _FAST_TAILS:
            chosen = answer if cname or qtype == rtype else other
            if chosen is not None and chosen.max_body <= room:
                self._put_fast(name + tail, chosen)
        if cname and answer is not None and answer.max_body <= room:
            self._put_fast(name + _CNAME_TAIL, answer)

    def _put_fast(self, key: bytes, answer: Answer) -> None:
        """Answer the question ``key`` on the fast path (and say so in ``fixed`` when the answer never changes)."""
        self.fast[key] = answer.pick
        if answer.variant is not None:
            self.fixed[key] = answer.variant

    def remove(self, domain: str) -> None:
        """Forget a domain (its name is then REFUSED, or NXDOMAIN inside the zone)."""
        with contextlib.suppress(wire.Malformed):
            self._remove(wire.name_to_wire(domain))
            self.changes += 1

    def _remove(self, name: bytes) -> None:
        if self.names.pop(name, None) is not None:
            self._drop_fast(name)
            self._count(name, -1)

    def lookup(self, name: bytes, qtype: int) -> tuple[Answer, Compiled | None]:
        """The location-independent answer for a lower-case wire ``name`` and its domain (if any)."""
        compiled = self.names.get(name)
        zone = self.zone
        if zone is not None:
            # The apex's SOA and NS come from the zone, even when the apex is also an access domain.
            if name == zone.name and qtype in zone.apex and (compiled is None or qtype != _ANY):
                return zone.apex[qtype], None
            if compiled is None and zone.contains(name):
                return zone.negative(name, qtype, self._below.get(name, 0) > 0), None
        if compiled is not None:
            return compiled.answer_for(qtype), compiled
        return REFUSED, None

    def _drop_fast(self, name: bytes) -> None:
        for tail in _KEY_TAILS:
            key = name + tail
            self.fast.pop(key, None)
            self.fixed.pop(key, None)
            self.lined.pop(key, None)

    def room(self, key: bytes) -> int:
        """The longest EDNS body a reply to the question ``key`` may carry and still fit 512 bytes."""
        return _ROOM - len(key) + 4

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
