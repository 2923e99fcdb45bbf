"""AnswerSets compiled into ready wire responses (no I/O).

A response to a known name is ``id + head + question + body``: the question is
copied from the query as sent, everything else is precomputed here.  A
:data:`Variant` holds the heads (RD clear / RD set) and body, without and with
EDNS; an :class:`Answer` cycles through its variants (rotations of a
round-robin group, a weighted table of single records, or groups by weight).

Heads are cached and shared by every domain; a domain with one record costs
one variant.  ``source_nearest`` answers get one :class:`Answer` per client
region that would be served something other than the default.

The records' RDATA are built by dnslib, here and once per answer set; the
values are validated first by the edge's own rules (dnslib's text parsers are
laxer), and nothing of dnslib runs per query.
"""

from __future__ import annotations

import itertools
import math
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import dnslib  # type: ignore[import-untyped]  # ships no type hints

from services.edge import wire
from services.edge.wire import QType, Rcode
from shared.messages import AnswerGroup, AnswerSet

# (head rd=0, head rd=1, body, edns head rd=0, edns head rd=1, edns body)
Variant = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
Picker = Callable[[], Variant]

MAX_TTL = 2**31 - 1
MAX_TABLE = 10_000  # cap on a weighted table's length
SELECT_NEAREST = "nearest"


# -- records: built by dnslib, validated by the edge's rules -----------------------------------


class _Uncompressed(dnslib.DNSBuffer):  # type: ignore[misc]  # dnslib is untyped
    """A dnslib buffer that writes every name in full.

    What is built here is spliced into replies behind a question of any length, so a
    name in it must not point into its own buffer, as dnslib's compression would.
    """

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


def pack(record: Any) -> bytes:
    """The wire bytes of a dnslib ``RD`` (RDATA) or ``RR``, names uncompressed."""
    buffer = _Uncompressed()
    record.pack(buffer)
    return bytes(buffer.data)


def dns_name(name: str) -> Any:
    """``name`` as a dnslib ``DNSLabel``, validated and lower-cased by :func:`wire.name_to_wire`.

    dnslib would take names the edge refuses: an empty label (which it encodes as an
    early root), non-ASCII (which it IDNA-encodes), ``\\DDD`` escapes.
    """
    return dnslib.DNSLabel(wire.name_labels(wire.name_to_wire(name)))


def _address(family: int, value: str) -> tuple[int, ...]:
    """The bytes of an address, parsed by ``inet_pton``."""
    # Not by dnslib: its parsers take "1.2.3.4.", " 1.2.3.4" and "01.2.3.4", and misread "1::2::3".
    try:
        return tuple(socket.inet_pton(family, value))
    except (OSError, ValueError):
        kind = "IPv4" if family == socket.AF_INET else "IPv6"
        raise wire.Malformed(f"{value!r} is not a valid {kind} address") from None


# The RDATA of each record type an access domain may have, from the record as text.
_RDATA: dict[int, Callable[[str], Any]] = {
    QType.A: lambda value: dnslib.A(_address(socket.AF_INET, value)),
    QType.AAAA: lambda value: dnslib.AAAA(_address(socket.AF_INET6, value)),
    QType.CNAME: lambda value: dnslib.CNAME(dns_name(value)),
}


def rdata(rtype: int, value: str) -> bytes:
    """The RDATA of a record of type ``rtype`` written ``value``; raise :class:`wire.Malformed` if invalid."""
    build = _RDATA.get(rtype)
    if build is None:
        raise wire.Malformed(f"unsupported record type {rtype}")
    return pack(build(value))


# -- responses ----------------------------------------------------------------------------------


_HEADS: dict[tuple[int, bool, int, int], tuple[bytes, bytes, bytes, bytes]] = {}


def _heads(rcode: int, aa: bool, an: int, ns: int) -> tuple[bytes, bytes, bytes, bytes]:
    """The four heads (RD clear/set, without/with EDNS) of a response shape, shared by all domains."""
    heads = _HEADS.get((rcode, aa, an, ns))
    if heads is None:
        flags = wire.QR | (wire.AA if aa else 0)
        heads = _HEADS[rcode, aa, an, ns] = (
            wire.header_tail(flags=flags, rcode=rcode, ancount=an, nscount=ns, arcount=0),
            wire.header_tail(flags=flags | wire.RD, rcode=rcode, ancount=an, nscount=ns, arcount=0),
            wire.header_tail(flags=flags, rcode=rcode, ancount=an, nscount=ns, arcount=1),
            wire.header_tail(flags=flags | wire.RD, rcode=rcode, ancount=an, nscount=ns, arcount=1),
        )
    return heads


def make_variant(*, rcode: int, aa: bool, rrs: Sequence[bytes] = (), authority: Sequence[bytes] = ()) -> Variant:
    """Precompute the heads and bodies of one response, without and with EDNS."""
    body = b"".join(rrs) + b"".join(authority) if authority else b"".join(rrs)
    h = _heads(rcode, aa, len(rrs), len(authority))
    return (h[0], h[1], body, h[2], h[3], body + wire.OPT)


class Answer:
    """A response for one name: ``pick()`` returns the variant for the next query."""

    __slots__ = ("max_body", "pick")

    def __init__(self, pick: Picker, max_body: int) -> None:
        self.pick = pick
        self.max_body = max_body  # the longest EDNS body

    @classmethod
    def fixed(cls, variant: Variant) -> Answer:
        """An answer that never changes."""
        return cls(itertools.repeat(variant).__next__, len(variant[5]))

    @classmethod
    def cycling(cls, variants: Sequence[Variant], order: Sequence[int]) -> Answer:
        """An answer that serves ``variants[i]`` for each ``i`` of ``order``, round and round."""
        if len(order) == 1:
            return cls.fixed(variants[order[0]])
        longest = max(len(v[5]) for v in variants)
        return cls(itertools.cycle([variants[i] for i in order]).__next__, longest)


# Read per query or per record compiled: bound once (looking an enum member up costs ~0.1 us each time).
_ANY, _CNAME, _NOERROR = int(QType.ANY), int(QType.CNAME), int(Rcode.NOERROR)
_TRANSFERS = wire.TRANSFER_QTYPES

REFUSED = Answer.fixed(make_variant(rcode=Rcode.REFUSED, aa=False))
NODATA = Answer.fixed(make_variant(rcode=_NOERROR, aa=True))


class Compiled:
    """One domain's responses: the answer for its type, NODATA for the others, per-region answers."""

    __slots__ = ("answer", "by_region", "name", "nodata", "raw", "revision", "rtype", "skipped")

    def __init__(
        self,
        name: bytes,
        rtype: int,
        answer: Answer | None,
        nodata: Answer,
        by_region: dict[str, Answer] | None = None,
        skipped: tuple[str, ...] = (),
    ) -> None:
        self.name = name  # lower-case wire name
        self.rtype = rtype  # 0: disabled (REFUSED)
        self.answer = answer  # None: no records (NODATA)
        self.nodata = nodata
        self.by_region = by_region  # region -> answer when the client's location matters
        self.skipped = skipped  # records that could not be encoded
        self.revision = 0  # of the AnswerSet compiled (0: its publisher did not say)
        self.raw = b""  # that AnswerSet encoded, as the disk snapshot stores it

    def answer_for(self, qtype: int) -> Answer:
        """The (location-independent) answer to a query of type ``qtype``."""
        if not self.rtype or qtype in _TRANSFERS:
            return REFUSED
        if self.answer is not None and (qtype == self.rtype or qtype == _ANY or self.rtype == _CNAME):
            return self.answer
        return self.nodata


def weighted_table(weights: Sequence[int]) -> list[int]:
    """Indices repeated by weight (reduced by their gcd), shuffled: cycle it to choose by weight."""
    ws = [max(0, int(w)) for w in weights]
    if not any(ws):
        ws = [1] * len(ws)
    g = math.gcd(*ws)
    ws = [w // g for w in ws]
    total = sum(ws)
    if total > MAX_TABLE:
        ws = [max(1, w * MAX_TABLE // total) if w else 0 for w in ws]
    table = [i for i, w in enumerate(ws) for _ in range(w)]
    random.shuffle(table)
    return table


class _Group(NamedTuple):
    """One AnswerGroup with its records encoded (bad records dropped)."""

    rrs: list[bytes]
    weights: list[int]
    regions: list[str]  # per record, "" when none
    source: AnswerGroup

    def subset(self, region: str | None) -> tuple[int, ...]:
        """Indices of the records served to a client of ``region``: its own, else all."""
        if region:
            mine = tuple(i for i, r in enumerate(self.regions) if r == region)
            if mine:
                return mine
        return tuple(range(len(self.rrs)))


def _encode_record(record: str, rtype: int, ttl: int, skipped: list[str]) -> bytes | None:
    """One record as an answer RR; None (and the record in ``skipped``) when it cannot be encoded."""
    try:
        return wire.answer_rr(rtype, ttl, rdata(rtype, record))
    except wire.Malformed:
        skipped.append(record)
        return None


def _encode_records(records: list[str], rtype: int, ttl: int, skipped: list[str]) -> list[bytes]:
    """Encode records as answer RRs; collect the bad ones in ``skipped``."""
    rrs = []
    for record in records:
        rr = _encode_record(record, rtype, ttl, skipped)
        if rr is not None:
            rrs.append(rr)
    return rrs


def _encode_group(group: AnswerGroup, rtype: int, ttl: int, skipped: list[str]) -> _Group:
    """Encode a group's records as answer RRs with their weights and regions; collect bad records."""
    n = len(group.records)
    if not group.record_weights and not group.record_regions:  # the common shape: records only
        encoded = _encode_records(group.records, rtype, ttl, skipped)
        return _Group(encoded, [1] * len(encoded), [""] * len(encoded), group)
    rrs: list[bytes] = []
    weights: list[int] = []
    regions: list[str] = []
    padded_w = list(group.record_weights[:n]) + [1] * (n - len(group.record_weights))
    padded_r = list(group.record_regions[:n]) + [""] * (n - len(group.record_regions))
    for record, weight, region in zip(group.records, padded_w, padded_r, strict=True):
        rr = _encode_record(record, rtype, ttl, skipped)
        if rr is not None:
            rrs.append(rr)
            weights.append(weight)
            regions.append(region)
    return _Group(rrs, weights, regions, group)


def _group_answer(group: _Group, subset: tuple[int, ...] | None, cname: bool) -> Answer:
    """The answer of the records ``subset`` (None: all) of one group, by its mode (weights, rotation, fixed)."""
    rrs = group.rrs if subset is None else [group.rrs[i] for i in subset]
    if group.source.record_weights:
        variants = [make_variant(rcode=_NOERROR, aa=True, rrs=(rr,)) for rr in rrs]
        weights = group.weights if subset is None else [group.weights[i] for i in subset]
        return Answer.cycling(variants, weighted_table(weights))
    if group.source.rotate and len(rrs) > 1:
        n = len(rrs)
        variants = [
            make_variant(rcode=_NOERROR, aa=True, rrs=(rrs[i:] + rrs[:i])[: 1 if cname else None])
            for i in range(n)
        ]
        start = random.randrange(n)  # edges need not agree on where they start
        return Answer.cycling(variants, [(start + i) % n for i in range(n)])
    return Answer.fixed(make_variant(rcode=_NOERROR, aa=True, rrs=rrs[:1] if cname else rrs))


def _by_weight(answers: list[Answer], weights: list[int]) -> Answer:
    """Choose one of several group answers per query, by group weight."""
    if len(answers) == 1:
        return answers[0]
    order = itertools.cycle(weighted_table(weights)).__next__
    picks = [a.pick for a in answers]

    def pick() -> Variant:
        return picks[order()]()

    return Answer(pick, max(a.max_body for a in answers))


Selection = tuple[tuple[int, tuple[int, ...]], ...]  # (group index, record subset) per group served


def _selection(groups: list[_Group], region: str | None, nearest: bool) -> Selection:
    """Which groups and records a client of ``region`` (None: unknown) is served."""
    if nearest:
        index = next((i for i, g in enumerate(groups) if region and g.source.region == region), 0)
        return ((index, groups[index].subset(region)),)
    return tuple((i, g.subset(region)) for i, g in enumerate(groups))


def _select(groups: list[_Group], selection: Selection, cname: bool) -> Answer:
    """The answer serving ``selection``."""
    answers = [_group_answer(groups[i], subset, cname) for i, subset in selection]
    return _by_weight(answers, [groups[i].source.weight for i, _ in selection])


def _regional(groups: list[_Group], nearest: bool, cname: bool) -> tuple[Answer, dict[str, Answer] | None]:
    """The default answer, and the answers of the regions served something else (None if none)."""
    default = _selection(groups, None, nearest)
    regions = {r for g in groups for r in g.regions if r}
    if nearest and len(groups) > 1:
        regions.update(g.source.region for g in groups if g.source.region)
    by_region: dict[str, Answer] = {}
    for region in sorted(regions):
        chosen = _selection(groups, region, nearest)
        if chosen != default:
            by_region[region] = _select(groups, chosen, cname)
    return _select(groups, default, cname), by_region or None


def _is_fixed(group: AnswerGroup) -> bool:
    """Whether a group always answers the same records, whoever asks."""
    return not group.record_weights and not group.record_regions and (not group.rotate or len(group.records) < 2)


def compile_answer_set(aset: AnswerSet, nodata: Answer = NODATA, *, name: bytes | None = None) -> Compiled:
    """Compile one AnswerSet (``name``: its wire name, when known); raise :class:`wire.Malformed` if unusable."""
    if name is None:
        name = wire.name_to_wire(aset.domain)
    if not aset.enabled:
        return Compiled(name, 0, None, nodata)
    rtype = wire.RECORD_TYPES.get(aset.record_type.upper())
    if rtype is None:
        raise wire.Malformed(f"unsupported record type {aset.record_type!r}")
    ttl = min(max(aset.ttl, 0), MAX_TTL)
    skipped: list[str] = []
    if len(aset.groups) == 1 and _is_fixed(aset.groups[0]):  # the common shape, compiled in one go
        rrs = _encode_records(aset.groups[0].records, rtype, ttl, skipped)
        if rtype == _CNAME:
            rrs = rrs[:1]
        answer = Answer.fixed(make_variant(rcode=_NOERROR, aa=True, rrs=rrs)) if rrs else None
        return Compiled(name, rtype, answer, nodata, None, tuple(skipped) if skipped else ())
    groups = [g for g in (_encode_group(group, rtype, ttl, skipped) for group in aset.groups) if g.rrs]
    if not groups:
        return Compiled(name, rtype, None, nodata, None, tuple(skipped))
    cname = rtype == _CNAME
    nearest = aset.select == SELECT_NEAREST
    if (nearest and len(groups) > 1) or any(g.source.record_regions for g in groups):
        answer, by_region = _regional(groups, nearest, cname)
        return Compiled(name, rtype, answer, nodata, by_region, tuple(skipped))
    if nearest:  # one group: nothing to choose
        return Compiled(name, rtype, _group_answer(groups[0], None, cname), nodata, None, tuple(skipped))
    answers = [_group_answer(g, None, cname) for g in groups]
    return Compiled(name, rtype, _by_weight(answers, [g.source.weight for g in groups]), nodata, None, tuple(skipped))
