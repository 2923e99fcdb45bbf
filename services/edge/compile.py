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
from services.edge.locate import UNKNOWN, ClientClass
from services.edge.wire import QType, Rcode
from shared import lines as linespec
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

    __slots__ = ("max_body", "pick", "variant")

    def __init__(self, pick: Picker, max_body: int, variant: Variant | None = None) -> None:
        self.pick = pick
        self.max_body = max_body  # the longest EDNS body
        self.variant = variant  # what pick() always returns, for an answer that never changes (else None)

    @classmethod
    def fixed(cls, variant: Variant) -> Answer:
        """An answer that never changes."""
        return cls(itertools.repeat(variant).__next__, len(variant[5]), variant)

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
    """One domain's responses: the answer for its type, NODATA for the others, per-region or per-line answers.

    ``other`` answers the other query types when some records are CNAME in a domain of another
    type (a domain-name pool of an A domain): a CNAME whatever the type asked, NODATA beside
    the domain's own records.  ``lined`` resolves the answers of a domain with request-source
    lines per client (``answer``/``other`` are then the answers of a client matching no line).
    """

    __slots__ = ("answer", "by_region", "lined", "name", "nodata", "other", "raw", "revision", "rtype", "skipped")

    def __init__(
        self,
        name: bytes,
        rtype: int,
        answer: Answer | None,
        nodata: Answer,
        by_region: dict[str, Answer] | None = None,
        skipped: tuple[str, ...] = (),
        other: Answer | None = None,
        lined: Lined | None = None,
    ) -> None:
        self.name = name  # lower-case wire name
        self.rtype = rtype  # 0: disabled (REFUSED)
        self.answer = answer  # None: no records (NODATA)
        self.nodata = nodata
        self.by_region = by_region  # region -> answer when the client's location matters
        self.skipped = skipped  # records that could not be encoded
        self.other = other  # for the other query types (None: NODATA)
        self.lined = lined  # per-client answers of a domain with lines (None: none)
        self.revision = 0  # of the AnswerSet compiled (0: its publisher did not say)
        self.raw = b""  # that AnswerSet encoded, as the disk snapshot stores it

    def own_type(self, qtype: int) -> bool:
        """Whether a query of type ``qtype`` is answered with the domain's records (else ``other``/NODATA)."""
        return qtype == self.rtype or qtype == _ANY or self.rtype == _CNAME

    def answer_for(self, qtype: int) -> Answer:
        """The (location-independent) answer to a query of type ``qtype``."""
        if not self.rtype or qtype in _TRANSFERS:
            return REFUSED
        if self.own_type(qtype):
            return self.answer if self.answer is not None else self.nodata
        return self.other if self.other is not None else self.nodata


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
    lines: list[tuple[str, ...]] = []  # per record when the group has address lines, else empty
    cname: bool = False  # its records are CNAME (a domain-name pool of an A or AAAA domain, or a CNAME domain)

    def subset(self, region: str | None, matches: Sequence[linespec.Match] = ()) -> tuple[int, ...]:
        """Indices of the records served to a client of ``region`` and lines ``matches``.

        The records of the client's most specific line that has any (all when none has), and
        among those the ones of its region (all when none is).
        """
        chosen: Sequence[int] = range(len(self.rrs))
        if matches and self.lines:
            for m in matches:
                mine = [i for i in chosen if m.line in self.lines[i]]
                if mine:
                    chosen = mine
                    break
        if region:
            mine = [i for i in chosen if self.regions[i] == region]
            if mine:
                return tuple(mine)
        return tuple(chosen)

    def line_prefix(self, matches: Sequence[linespec.Match]) -> int:
        """The longest prefix among ``matches`` up to the first one whose line some record has (0: none)."""
        if not self.lines:
            return 0
        have = {line for lines in self.lines for line in lines}
        longest = 0
        for m in matches:
            longest = max(longest, m.prefix)
            if m.line in have:
                break
        return longest


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
    """Encode a group's records as answer RRs with their weights, regions and lines; collect bad records."""
    n = len(group.records)
    cname = rtype == _CNAME or group.record_type == "CNAME"
    if cname:
        rtype = _CNAME
    if not group.record_weights and not group.record_regions and not group.record_lines:  # the common shape
        encoded = _encode_records(group.records, rtype, ttl, skipped)
        return _Group(encoded, [1] * len(encoded), [""] * len(encoded), group, [], cname)
    rrs: list[bytes] = []
    weights: list[int] = []
    regions: list[str] = []
    lines: list[tuple[str, ...]] = []
    padded_w = list(group.record_weights[:n]) + [1] * (n - len(group.record_weights))
    padded_r = list(group.record_regions[:n]) + [""] * (n - len(group.record_regions))
    padded_l = [tuple(x) for x in group.record_lines[:n]] + [(linespec.DEFAULT,)] * (n - len(group.record_lines))
    for record, weight, region, line in zip(group.records, padded_w, padded_r, padded_l, strict=True):
        rr = _encode_record(record, rtype, ttl, skipped)
        if rr is not None:
            rrs.append(rr)
            weights.append(weight)
            regions.append(region)
            lines.append(line or (linespec.DEFAULT,))
    return _Group(rrs, weights, regions, group, lines if group.record_lines else [], cname)


def _group_answer(group: _Group, subset: tuple[int, ...] | None, cname: bool) -> Answer:
    """The answer of the records ``subset`` (None: all) of one group, by its mode (weights, rotation, fixed)."""
    cname = cname or group.cname
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


def _select_other(groups: list[_Group], selection: Selection) -> Answer | None:
    """The answer to the other query types for ``selection``: its CNAME groups, NODATA for the rest.

    None when all of it is NODATA.
    """
    if not any(groups[i].cname for i, _ in selection):
        return None
    answers = [_group_answer(groups[i], subset, True) if groups[i].cname else NODATA for i, subset in selection]
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
    return (
        not group.record_weights
        and not group.record_regions
        and not group.record_lines
        and (not group.rotate or len(group.records) < 2)
    )


# What a Lined answer resolves to for one client: (own-type answer, other-type answer, ECS scope).
Resolved = tuple[Answer | None, Answer | None, int]
LINED_CACHE = 4096  # client classes remembered per domain (then forgotten all at once)


class Lined:
    """A domain's answers per request-source line, resolved per client class and cached.

    The answer of a client is that of its most specific matching line that has one (a pool
    available), else the top level's; inside each group, the records of its most specific
    line that has any.  The scope is the longest prefix of the data entries that decided.
    """

    __slots__ = ("_by_line", "_cache", "_cname", "_kinds", "_top")

    def __init__(
        self,
        top: tuple[list[_Group], bool],
        by_line: dict[str, tuple[list[_Group], bool]],
        cname: bool,
    ) -> None:
        self._top = top  # (groups, nearest)
        self._by_line = by_line  # line -> (groups, nearest), most specific first
        self._cname = cname
        self._cache: dict[ClientClass, Resolved] = {}

    def resolve(self, cls: ClientClass) -> Resolved:
        """The answers and ECS scope for clients of ``cls`` (cached per class)."""
        hit = self._cache.get(cls)
        if hit is None:
            if len(self._cache) >= LINED_CACHE:
                self._cache.clear()
            hit = self._cache[cls] = self._resolve(cls)
        return hit

    def _resolve(self, cls: ClientClass) -> Resolved:
        groups, nearest = self._top
        scope = 0
        for m in cls.matches:
            scope = max(scope, m.prefix)
            if m.line in self._by_line:
                groups, nearest = self._by_line[m.line]
                break
        if not groups:
            return None, None, scope
        region = cls.region or None
        if nearest:
            index = next((i for i, g in enumerate(groups) if region and g.source.region == region), 0)
            picked = [index]
        else:
            picked = list(range(len(groups)))
        selection = tuple((i, groups[i].subset(region, cls.matches)) for i in picked)
        scope = max([scope] + [groups[i].line_prefix(cls.matches) for i in picked])
        return _select(groups, selection, self._cname), _select_other(groups, selection), scope


def _lined(
    aset: AnswerSet, rtype: int, ttl: int, skipped: list[str]
) -> tuple[list[_Group], dict[str, tuple[list[_Group], bool]]]:
    """The encoded groups of the top level and of each line of ``aset``."""
    top = [g for g in (_encode_group(group, rtype, ttl, skipped) for group in aset.groups) if g.rrs]
    by_line: dict[str, tuple[list[_Group], bool]] = {}
    for line in aset.lines:
        groups = [g for g in (_encode_group(group, rtype, ttl, skipped) for group in line.groups) if g.rrs]
        if groups and line.line not in by_line:
            by_line[line.line] = (groups, line.select == SELECT_NEAREST)
    return top, by_line


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
    cname = rtype == _CNAME
    if aset.lines or any(g.record_lines for g in aset.groups):
        top, by_line = _lined(aset, rtype, ttl, skipped)
        lined = Lined((top, aset.select == SELECT_NEAREST), by_line, cname)
        answer, other, _ = lined.resolve(UNKNOWN)
        return Compiled(name, rtype, answer, nodata, None, tuple(skipped), other, lined)
    if len(aset.groups) == 1 and _is_fixed(aset.groups[0]):  # the common shape, compiled in one go
        group = aset.groups[0]
        typed = _CNAME if group.record_type == "CNAME" else rtype
        rrs = _encode_records(group.records, typed, ttl, skipped)
        if typed == _CNAME:
            rrs = rrs[:1]
        answer = Answer.fixed(make_variant(rcode=_NOERROR, aa=True, rrs=rrs)) if rrs else None
        other = answer if typed != rtype else None  # a CNAME answers every type
        return Compiled(name, rtype, answer, nodata, None, tuple(skipped) if skipped else (), other)
    groups = [g for g in (_encode_group(group, rtype, ttl, skipped) for group in aset.groups) if g.rrs]
    if not groups:
        return Compiled(name, rtype, None, nodata, None, tuple(skipped))
    nearest = aset.select == SELECT_NEAREST
    default = _selection(groups, None, nearest)
    other = None if cname else _select_other(groups, default)
    if (nearest and len(groups) > 1) or any(g.source.record_regions for g in groups):
        answer, by_region = _regional(groups, nearest, cname)
        return Compiled(name, rtype, answer, nodata, by_region, tuple(skipped), other)
    if nearest:  # one group: nothing to choose
        return Compiled(name, rtype, _group_answer(groups[0], None, cname), nodata, None, tuple(skipped), other)
    answers = [_group_answer(g, None, cname) for g in groups]
    answer = _by_weight(answers, [g.source.weight for g in groups])
    return Compiled(name, rtype, answer, nodata, None, tuple(skipped), other)
