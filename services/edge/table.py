"""The edge's answer table: AnswerSets compiled, on arrival, into ready wire responses (no I/O).

A response to a known name is ``id + head + question + body``: the question is
copied from the query as sent, everything else is precomputed here.  A
:data:`Variant` holds the heads (RD clear / RD set) and body, without and with
EDNS; an :class:`Answer` cycles through its variants (rotations of a
round-robin group, a weighted table of single records, or groups by weight).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple

from services.edge import wire
from shared.messages import AnswerGroup, AnswerSet

# (head rd=0, head rd=1, body, edns head rd=0, edns head rd=1, edns body)
Variant = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
Picker = Callable[[], Variant]

# Query types whose responses sit in the fast-path dicts; others take the slow path.
FAST_QTYPES = (1, 2, 5, 6, 12, 15, 16, 28, 33, 64, 65, 255, 257)
MAX_TTL = 2**31 - 1
MAX_TABLE = 10_000  # cap on a weighted table's length


def make_variant(*, rcode: int, aa: bool, rrs: Sequence[bytes] = ()) -> Variant:
    """Precompute the heads and bodies of one response, without and with EDNS."""
    flags = wire.QR | (wire.AA if aa else 0)
    body = b"".join(rrs)
    an = len(rrs)
    return (
        wire.header_tail(flags=flags, rcode=rcode, ancount=an, arcount=0),
        wire.header_tail(flags=flags | wire.RD, rcode=rcode, ancount=an, arcount=0),
        body,
        wire.header_tail(flags=flags, rcode=rcode, ancount=an, arcount=1),
        wire.header_tail(flags=flags | wire.RD, rcode=rcode, ancount=an, arcount=1),
        body + wire.OPT,
    )


class Answer:
    """A response for one name: ``pick()`` returns the variant for the next query."""

    __slots__ = ("max_body", "pick")

    def __init__(self, pick: Picker, variants: Sequence[Variant]) -> None:
        self.pick = pick
        self.max_body = max(len(v[5]) for v in variants)  # EDNS body: the longest

    @classmethod
    def fixed(cls, variant: Variant) -> Answer:
        """An answer that never changes."""
        return cls(itertools.repeat(variant).__next__, [variant])


REFUSED = Answer.fixed(make_variant(rcode=wire.REFUSED, aa=False))
NODATA = Answer.fixed(make_variant(rcode=wire.NOERROR, aa=True))


class Compiled(NamedTuple):
    """One domain's responses: per query type, and a default for the other types."""

    domain: str
    name: bytes  # lower-case wire name
    by_qtype: dict[int, Answer]
    default: Answer
    skipped: tuple[str, ...] = ()  # records that could not be encoded


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


def _rotations(n: int) -> list[int]:
    """Rotation start indices 0..n-1, from a random first one (edges need not agree)."""
    start = random.randrange(n)
    return [(start + i) % n for i in range(n)]


def _encode_group(group: AnswerGroup, rtype: int, ttl: int, skipped: list[str]) -> tuple[list[bytes], list[int]]:
    """Encode a group's records as answer RRs with their weights; collect bad records."""
    rrs: list[bytes] = []
    weights: list[int] = []
    padded = list(group.record_weights) + [1] * (len(group.records) - len(group.record_weights))
    for record, weight in zip(group.records, padded, strict=False):
        try:
            rrs.append(wire.answer_rr(rtype, ttl, wire.rdata(rtype, record)))
        except wire.Malformed:
            skipped.append(record)
            continue
        weights.append(weight)
    return rrs, weights


def _group_answer(group: AnswerGroup, rrs: list[bytes], weights: list[int], cname: bool) -> Answer:
    """Variants of one group and the order to cycle through them."""
    if group.record_weights:
        variants = [make_variant(rcode=wire.NOERROR, aa=True, rrs=[rr]) for rr in rrs]
        order = weighted_table(weights)
    elif group.rotate and len(rrs) > 1:
        variants = [
            make_variant(rcode=wire.NOERROR, aa=True, rrs=(rrs[i:] + rrs[:i])[: 1 if cname else None])
            for i in range(len(rrs))
        ]
        order = _rotations(len(rrs))
    else:
        variants = [make_variant(rcode=wire.NOERROR, aa=True, rrs=rrs[:1] if cname else rrs)]
        order = [0]
    if len(order) == 1:
        return Answer.fixed(variants[order[0]])
    return Answer(itertools.cycle([variants[i] for i in order]).__next__, variants)


def _by_weight(answers: list[Answer], weights: list[int]) -> Answer:
    """Choose one of several group answers per query, by group weight."""
    if len(answers) == 1:
        return answers[0]
    order = itertools.cycle(weighted_table(weights)).__next__
    picks = [a.pick for a in answers]

    def pick() -> Variant:
        return picks[order()]()

    answer = Answer(pick, [make_variant(rcode=0, aa=True)])
    answer.max_body = max(a.max_body for a in answers)
    return answer


def compile_answer_set(aset: AnswerSet) -> Compiled:
    """Compile one AnswerSet; raise :class:`wire.Malformed` if its name or type is unusable."""
    name = wire.name_to_wire(aset.domain)
    domain = aset.domain.rstrip(".").lower()
    refuse_xfr = {wire.TYPE_AXFR: REFUSED, wire.TYPE_IXFR: REFUSED}
    if not aset.enabled:
        return Compiled(domain, name, {}, REFUSED)
    rtype = wire.RECORD_TYPES.get(aset.record_type.upper())
    if rtype is None:
        raise wire.Malformed(f"unsupported record type {aset.record_type!r}")
    ttl = min(max(aset.ttl, 0), MAX_TTL)
    skipped: list[str] = []
    answers: list[Answer] = []
    group_weights: list[int] = []
    for group in aset.groups:
        rrs, weights = _encode_group(group, rtype, ttl, skipped)
        if rrs:
            answers.append(_group_answer(group, rrs, weights, rtype == wire.TYPE_CNAME))
            group_weights.append(group.weight)
    if not answers:
        return Compiled(domain, name, refuse_xfr, NODATA, tuple(skipped))
    answer = _by_weight(answers, group_weights)
    if rtype == wire.TYPE_CNAME:
        return Compiled(domain, name, refuse_xfr, answer, tuple(skipped))
    by_qtype = {**refuse_xfr, rtype: answer, wire.TYPE_ANY: answer}
    return Compiled(domain, name, by_qtype, NODATA, tuple(skipped))


_QTAIL = struct.Struct("!HH")


class AnswerTable:
    """Compiled domains plus the fast-path dicts keyed by the lower-cased question bytes.

    ``plain`` and ``edns`` only hold responses that fit 512 bytes, so the fast
    path never needs to truncate.  The dicts are mutated in place, never
    replaced, so a responder may keep references to them.
    """

    def __init__(self) -> None:
        self.plain: dict[bytes, Picker] = {}
        self.edns: dict[bytes, Picker] = {}
        self.names: dict[bytes, Compiled] = {}

    def __len__(self) -> int:
        return len(self.names)

    def apply(self, aset: AnswerSet) -> Compiled | None:
        """Install (or, for a tombstone, remove) one domain's answers in one synchronous step."""
        if aset.deleted:
            self.remove(aset.domain)
            return None
        compiled = compile_answer_set(aset)
        self._drop(compiled.name)
        self.names[compiled.name] = compiled
        for qtype in FAST_QTYPES:
            answer = compiled.by_qtype.get(qtype, compiled.default)
            key = (compiled.name + _QTAIL.pack(qtype, wire.CLASS_IN)).lower()
            size = wire.HEADER_LEN + len(key) + answer.max_body
            if size <= wire.MIN_PAYLOAD:
                self.edns[key] = answer.pick
            if size - len(wire.OPT) <= wire.MIN_PAYLOAD:
                self.plain[key] = answer.pick
        return compiled

    def remove(self, domain: str) -> None:
        """Forget a domain (its name is then REFUSED)."""
        with contextlib.suppress(wire.Malformed):
            self._drop(wire.name_to_wire(domain))

    def _drop(self, name: bytes) -> None:
        if self.names.pop(name, None) is None:
            return
        for qtype in FAST_QTYPES:
            key = (name + _QTAIL.pack(qtype, wire.CLASS_IN)).lower()
            self.plain.pop(key, None)
            self.edns.pop(key, None)
