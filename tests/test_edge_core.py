"""The edge's pure core: AnswerSets compiled into wire responses, queries answered (no I/O)."""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.edge import wire
from services.edge.responder import Responder
from services.edge.table import AnswerTable, weighted_table
from shared.messages import AnswerGroup, AnswerSet

V6 = [f"2001:db8::{i:x}" for i in range(1, 41)]


def answer_set(domain: str, record_type: str = "A", *groups: AnswerGroup, **kw: object) -> AnswerSet:
    """An enabled AnswerSet of ``domain`` with ``groups``."""
    kw.setdefault("enabled", True)
    return AnswerSet(domain=domain, record_type=record_type, groups=list(groups), **kw)  # type: ignore[arg-type]


def group(*records: str, **kw: object) -> AnswerGroup:
    """One answer group of ``records``."""
    return AnswerGroup(pool="p", records=list(records), **kw)  # type: ignore[arg-type]


def responder(*sets: AnswerSet) -> Responder:
    """A responder over a table holding ``sets``."""
    table = AnswerTable()
    for s in sets:
        table.apply(s)
    return Responder(table)


def query(name: str, qtype: str = "A", *, edns: int = -1, payload: int = 1232, rd: bool = True) -> bytes:
    """A query in wire format, as dnspython builds it."""
    q = dns.message.make_query(name, dns.rdatatype.from_text(qtype), use_edns=edns, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q.to_wire()


def ask(r: Responder, wire_query: bytes, *, tcp: bool = False) -> dns.message.Message:
    """Send ``wire_query`` to ``r`` and parse the reply with dnspython."""
    reply = r.answer(wire_query, tcp)
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert reply[:2] == wire_query[:2]
    return msg


def records(msg: dns.message.Message) -> list[str]:
    """Answer section as 'TYPE value' strings, in order."""
    return [f"{dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}" for rrset in msg.answer for rd in rrset]


ZONE = [
    answer_set("www.example.com", "A", group("192.0.2.1", "192.0.2.2"), ttl=60),
    answer_set("v6.example.com", "AAAA", group("2001:db8::1")),
    answer_set("alias.example.com", "CNAME", group("target.example.net", "other.example.net"), ttl=300),
    answer_set("empty.example.com", "A"),
    answer_set("off.example.com", "A", group("192.0.2.9"), enabled=False),
    answer_set("big.example.com", "AAAA", group(*V6)),
]


@dataclass(frozen=True)
class Case:
    name: str
    qtype: str
    rcode: int
    answers: list[str] = field(default_factory=list)
    ttl: int | None = None

    @property
    def aa(self) -> bool:
        return self.rcode == dns.rcode.NOERROR


CASES = [
    Case("www.example.com", "A", 0, ["A 192.0.2.1", "A 192.0.2.2"], ttl=60),
    Case("WwW.ExAmPlE.cOm", "A", 0, ["A 192.0.2.1", "A 192.0.2.2"], ttl=60),
    Case("www.example.com.", "ANY", 0, ["A 192.0.2.1", "A 192.0.2.2"]),
    Case("www.example.com", "AAAA", 0),
    Case("www.example.com", "TXT", 0),
    Case("www.example.com", "HTTPS", 0),
    Case("www.example.com", "NAPTR", 0),
    Case("v6.example.com", "AAAA", 0, ["AAAA 2001:db8::1"], ttl=30),
    Case("v6.example.com", "A", 0),
    Case("alias.example.com", "A", 0, ["CNAME target.example.net."], ttl=300),
    Case("ALIAS.example.com", "AAAA", 0, ["CNAME target.example.net."]),
    Case("alias.example.com", "MX", 0, ["CNAME target.example.net."]),
    Case("alias.example.com", "CNAME", 0, ["CNAME target.example.net."]),
    Case("alias.example.com", "ANY", 0, ["CNAME target.example.net."]),
    Case("alias.example.com", "NAPTR", 0, ["CNAME target.example.net."]),
    Case("empty.example.com", "A", 0),
    Case("off.example.com", "A", dns.rcode.REFUSED),
    Case("off.example.com", "AAAA", dns.rcode.REFUSED),
    Case("nope.example.com", "A", dns.rcode.REFUSED),
    Case("example.com", "A", dns.rcode.REFUSED),
    Case("sub.www.example.com", "A", dns.rcode.REFUSED),
    Case("www.example.com", "AXFR", dns.rcode.REFUSED),
]


@pytest.mark.parametrize("edns", [-1, 0], ids=["plain", "edns"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}/{c.qtype}" for c in CASES])
def test_protocol_table(case: Case, edns: int) -> None:
    r = responder(*ZONE)
    sent = query(case.name, case.qtype, edns=edns)
    msg = ask(r, sent)
    assert msg.rcode() == case.rcode
    assert bool(msg.flags & dns.flags.AA) == case.aa
    assert msg.flags & dns.flags.QR and msg.flags & dns.flags.RD
    assert not msg.flags & dns.flags.TC
    assert sorted(records(msg)) == sorted(case.answers)
    assert msg.question[0].name.to_text() == dns.message.from_wire(sent).question[0].name.to_text()
    assert msg.edns == edns
    if edns == 0:
        assert msg.payload == wire.EDNS_PAYLOAD
    if case.ttl is not None:
        assert {rrset.ttl for rrset in msg.answer} == {case.ttl}


@pytest.mark.parametrize("edns", [-1, 0])
def test_question_bytes_are_echoed_exactly_as_sent(edns: int) -> None:
    sent = query("wWw.EXAMPLE.com", "A", edns=edns)
    reply = responder(*ZONE).answer(sent)
    assert reply is not None
    question_len = len("wWw.EXAMPLE.com") + 2 + 4
    assert reply[12 : 12 + question_len] == sent[12 : 12 + question_len]


@pytest.mark.parametrize("rd", [True, False])
def test_rd_is_copied(rd: bool) -> None:
    r = responder(*ZONE)
    for name in ("www.example.com", "nope.example.com"):
        msg = ask(r, query(name, rd=rd))
        assert bool(msg.flags & dns.flags.RD) == rd
        assert not msg.flags & dns.flags.RA


def test_tombstone_forgets_the_name() -> None:
    table = AnswerTable()
    table.apply(ZONE[0])
    r = Responder(table)
    assert ask(r, query("www.example.com")).rcode() == dns.rcode.NOERROR
    table.apply(AnswerSet(domain="www.example.com", enabled=False, record_type="A", deleted=True))
    assert ask(r, query("www.example.com")).rcode() == dns.rcode.REFUSED
    assert ask(r, query("www.example.com", edns=0)).rcode() == dns.rcode.REFUSED
    assert len(table) == 0 and not table.plain and not table.edns


def test_update_replaces_the_answer_and_disable_refuses() -> None:
    table = AnswerTable()
    r = Responder(table)
    table.apply(answer_set("www.example.com", "A", group("192.0.2.1")))
    table.apply(answer_set("www.example.com", "A", group("198.51.100.7"), ttl=5))
    msg = ask(r, query("www.example.com"))
    assert records(msg) == ["A 198.51.100.7"] and msg.answer[0].ttl == 5
    table.apply(answer_set("www.example.com", "A", group("198.51.100.7"), enabled=False))
    assert ask(r, query("www.example.com")).rcode() == dns.rcode.REFUSED


def test_round_robin_rotation_covers_every_rotation() -> None:
    addrs = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    r = responder(answer_set("rr.example.com", "A", group(*addrs, rotate=True)))
    seen = {tuple(records(ask(r, query("rr.example.com", edns=e)))) for e in (-1, 0, -1, 0, -1, 0)}
    expected = {tuple(f"A {a}" for a in addrs[i:] + addrs[:i]) for i in range(3)}
    assert seen == expected


def test_without_rotate_records_keep_their_order() -> None:
    r = responder(answer_set("fixed.example.com", "A", group("192.0.2.3", "192.0.2.1")))
    for _ in range(4):
        assert records(ask(r, query("fixed.example.com"))) == ["A 192.0.2.3", "A 192.0.2.1"]


def test_cname_rotation_answers_one_cname_each_time_covering_all() -> None:
    r = responder(answer_set("c.example.com", "CNAME", group("a.example.net", "b.example.net", rotate=True)))
    answers = [records(ask(r, query("c.example.com", "AAAA"))) for _ in range(4)]
    assert all(len(a) == 1 for a in answers)
    assert {a[0] for a in answers} == {"CNAME a.example.net.", "CNAME b.example.net."}


def test_weighted_records_answer_one_weighted_record_in_proportion() -> None:
    g = group("192.0.2.1", "192.0.2.2", "192.0.2.3", record_weights=[3, 0, 1])
    r = responder(answer_set("w.example.com", "A", g))
    counts = collections.Counter()
    for _ in range(400):
        answer = records(ask(r, query("w.example.com")))
        assert len(answer) == 1
        counts[answer[0]] += 1
    assert counts == {"A 192.0.2.1": 300, "A 192.0.2.3": 100}


def test_weighted_groups_answer_one_group_per_query_by_weight() -> None:
    s = answer_set("g.example.com", "A", group("192.0.2.1", "192.0.2.2", weight=1), group("198.51.100.1", weight=4))
    r = responder(s)
    counts = collections.Counter(tuple(records(ask(r, query("g.example.com")))) for _ in range(500))
    assert counts == {("A 192.0.2.1", "A 192.0.2.2"): 100, ("A 198.51.100.1",): 400}


def test_weighted_table_reduces_weights_and_ignores_zero() -> None:
    assert sorted(weighted_table([2, 0, 4])) == [0, 2, 2]
    assert sorted(weighted_table([0, 0])) == [0, 1]


def test_invalid_records_are_skipped_and_reported() -> None:
    table = AnswerTable()
    compiled = table.apply(answer_set("x.example.com", "A", group("192.0.2.1", "not-an-ip", "2001:db8::1")))
    assert compiled is not None and compiled.skipped == ("not-an-ip", "2001:db8::1")
    assert records(ask(Responder(table), query("x.example.com"))) == ["A 192.0.2.1"]


def test_unknown_record_type_is_rejected_without_touching_the_table() -> None:
    table = AnswerTable()
    table.apply(ZONE[0])
    with pytest.raises(wire.Malformed):
        table.apply(answer_set("www.example.com", "MX", group("mail.example.com")))
    assert records(ask(Responder(table), query("www.example.com"))) == ["A 192.0.2.1", "A 192.0.2.2"]


def test_edns_version_above_zero_gets_badvers_with_opt() -> None:
    msg = ask(responder(*ZONE), query("www.example.com", edns=1))
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0 and not msg.answer


def test_unknown_edns_options_are_ignored() -> None:
    q = dns.message.make_query("www.example.com", "A", use_edns=0, options=[dns.edns.GenericOption(65001, b"xyz")])
    q.want_dnssec(True)
    msg = ask(responder(*ZONE), q.to_wire())
    assert msg.rcode() == dns.rcode.NOERROR and len(msg.answer[0]) == 2 and msg.edns == 0


@pytest.mark.parametrize(
    ("edns", "payload", "tcp", "truncated"),
    [(-1, 0, False, True), (0, 512, False, True), (0, 100, False, True), (0, 4096, False, False), (-1, 0, True, False)],
    ids=["plain-udp", "edns-512", "edns-below-512", "edns-4096", "tcp"],
)
def test_answers_that_do_not_fit_are_truncated(edns: int, payload: int, tcp: bool, truncated: bool) -> None:
    msg = ask(responder(*ZONE), query("big.example.com", "AAAA", edns=edns, payload=payload), tcp=tcp)
    assert bool(msg.flags & dns.flags.TC) == truncated
    assert msg.flags & dns.flags.AA and msg.rcode() == dns.rcode.NOERROR
    assert len(records(msg)) == (0 if truncated else 40)
    assert msg.edns == edns


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS, 3, 15])
@pytest.mark.parametrize("edns", [-1, 0])
def test_other_opcodes_get_notimp(opcode: int, edns: int) -> None:
    q = dns.message.make_query("www.example.com", "A", use_edns=edns)
    q.set_opcode(opcode)
    msg = ask(responder(*ZONE), q.to_wire())
    assert msg.rcode() == dns.rcode.NOTIMP and msg.opcode() == opcode and msg.edns == edns
    assert not msg.answer


def _header(qd: int, ar: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qd, 0, 0, ar)


QUESTION = b"\x03www\x07example\x03com\x00\x00\x01\x00\x01"
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "packet",
    [
        _header(0),
        _header(2) + QUESTION + QUESTION,
        _header(1) + QUESTION[:7],
        _header(1) + QUESTION[:-2],
        _header(1) + b"\xc0\x0c\x00\x01\x00\x01",
        _header(1, ar=2) + QUESTION + OPT + OPT,
        _header(1, ar=1) + QUESTION + OPT[:-3],
        _header(1, ar=1) + QUESTION + OPT[:-2] + b"\x00\x03\xff",
    ],
    ids=["no-question", "two-questions", "cut-name", "cut-type", "pointer-name", "two-opts", "cut-opt", "bad-option"],
)
def test_malformed_queries_get_formerr(packet: bytes) -> None:
    msg = ask(responder(*ZONE), packet)
    assert msg.rcode() == dns.rcode.FORMERR and msg.id == 0x1234


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x12", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00", _header(1, flags=0x8100) + QUESTION],
    ids=["empty", "one-byte", "short-header", "qr-set"],
)
def test_garbage_and_responses_get_no_reply(packet: bytes) -> None:
    assert responder(*ZONE).answer(packet) is None
    assert responder(*ZONE).answer(packet, True) is None


def test_trailing_bytes_and_other_classes_take_the_slow_path_correctly() -> None:
    r = responder(*ZONE)
    assert records(ask(r, _header(1) + QUESTION + b"junk")) == ["A 192.0.2.1", "A 192.0.2.2"]
    chaos = _header(1) + QUESTION[:-2] + b"\x00\x03"
    assert ask(r, chaos).rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("edns", [-1, 0])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}/{c.qtype}" for c in CASES])
def test_fast_and_slow_paths_agree(case: Case, edns: int) -> None:
    r = responder(*ZONE)
    sent = query(case.name, case.qtype, edns=edns)
    assert r.answer(sent) == r.answer_slow(sent)


ROTATING = [
    *ZONE,
    answer_set("rr.example.com", "A", group("192.0.2.1", "192.0.2.2", rotate=True)),
    answer_set("w.example.com", "AAAA", group("2001:db8::1", "2001:db8::2", record_weights=[1, 2])),
]
NAMES = [s.domain for s in ROTATING] + ["nope.example.com", "Www.Example.Com"]
QTYPES = ["A", "AAAA", "CNAME", "MX", "TXT", "ANY", "HTTPS", "SOA"]


def _check_reply(r: Responder, packet: bytes) -> None:
    for tcp in (False, True):
        reply = r.answer(packet, tcp)
        if reply is None:
            continue
        assert reply[:2] == packet[:2]
        dns.message.from_wire(reply)
        assert tcp or len(reply) <= max(512, wire.EDNS_PAYLOAD)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_and_replies_parse(packet: bytes) -> None:
    _check_reply(responder(*ROTATING), packet)


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES))
    qtype = draw(st.sampled_from(QTYPES))
    edns = draw(st.sampled_from([-1, 0, 1]))
    packet = bytearray(query(name, qtype, edns=edns, payload=draw(st.integers(0, 65535))))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(packet) - 1)))
        if op == "flip" and packet:
            packet[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del packet[pos:]
        elif op == "insert":
            packet[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and packet:
            del packet[pos]
    return bytes(packet)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_queries())
def test_mutated_queries_never_raise_and_replies_parse(packet: bytes) -> None:
    _check_reply(responder(*ROTATING), packet)
