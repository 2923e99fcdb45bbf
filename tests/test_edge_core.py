"""The edge's pure core: AnswerSets compiled into wire responses, queries answered (no I/O)."""

from __future__ import annotations

import collections
import socket
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
from services.edge.compile import weighted_table
from services.edge.responder import Responder
from services.edge.table import AnswerTable
from services.edge.topology import RegionMap
from services.edge.zone import Zone
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
    assert len(table) == 0 and not table.fast


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


# -- EDNS Client Subnet (RFC 7871), source_nearest, topology -------------------------------------

TOPOLOGY = [
    ("192.0.2.0/24", "eu"),
    ("192.0.2.128/25", "ap"),  # more specific than the /24: wins for its half
    ("198.51.100.0/24", "us"),
    ("10.0.0.0/8", "eu"),
    ("2001:db8:1::/48", "us"),
    ("2001:db8:2::/48", "eu"),
]
EU, US, AP = ("192.0.2.7", 5353), ("198.51.100.9", 5353), ("192.0.2.200", 5353)
NEAREST = answer_set(
    "geo.example.com",
    "A",
    group("192.0.2.10", region="us"),
    group("192.0.2.20", region="eu"),
    group("192.0.2.30", region="ap"),
    select="nearest",
)
BY_ADDRESS = answer_set(
    "pool.example.com",
    "A",
    group("198.51.100.1", "198.51.100.2", "192.0.2.1", "192.0.2.2", rotate=True,
          record_regions=["us", "us", "eu", "eu"]),
)
BOTH = answer_set(
    "both.example.com",
    "AAAA",
    group("2001:db8::10", "2001:db8::11", region="us", rotate=True, record_regions=["us", "eu"]),
    group("2001:db8::20", region="eu"),
    select="nearest",
)


def geo_responder(*sets: AnswerSet, zone: Zone | None = None) -> Responder:
    """A responder over ``sets`` (plus the nearest examples) with the TOPOLOGY table."""
    table = AnswerTable(zone=zone)
    table.regions = RegionMap(TOPOLOGY)
    for s in (*ZONE, NEAREST, BY_ADDRESS, BOTH, *sets):
        table.apply(s)
    return Responder(table)


def ecs_query(name: str, address: str, source: int, qtype: str = "A", payload: int = 1232) -> bytes:
    """A query carrying an ECS option for ``address/source``."""
    ecs = dns.edns.ECSOption(address, source)
    return dns.message.make_query(name, qtype, use_edns=0, payload=payload, options=[ecs]).to_wire()


def ask_from(r: Responder, wire_query: bytes, client: object = None) -> dns.message.Message:
    """Like :func:`ask`, from the socket address ``client``."""
    reply = r.answer(wire_query, False, client)
    assert reply is not None and reply[:2] == wire_query[:2]
    return dns.message.from_wire(reply)


def ecs_echo(msg: dns.message.Message) -> tuple[str, int, int]:
    """(address, source, scope) of the reply's only ECS option."""
    (opt,) = [o for o in msg.options if o.otype == dns.edns.ECS]
    return opt.address, opt.srclen, opt.scopelen


@dataclass(frozen=True)
class EcsCase:
    name: str
    subnet: tuple[str, int]
    answers: list[str]
    scope: int

    @property
    def qtype(self) -> str:
        return self.answers[0].split()[0] if self.answers else "A"


ECS_CASES = [
    EcsCase("geo.example.com", ("192.0.2.0", 24), ["A 192.0.2.20"], 24),
    EcsCase("geo.example.com", ("192.0.2.128", 25), ["A 192.0.2.30"], 25),
    EcsCase("geo.example.com", ("192.0.2.128", 26), ["A 192.0.2.30"], 26),
    EcsCase("geo.example.com", ("198.51.100.0", 24), ["A 192.0.2.10"], 24),
    EcsCase("geo.example.com", ("10.1.0.0", 16), ["A 192.0.2.20"], 16),
    EcsCase("geo.example.com", ("10.0.0.0", 7), ["A 192.0.2.10"], 7),  # /7 does not say it is in 10/8
    EcsCase("geo.example.com", ("203.0.113.0", 24), ["A 192.0.2.10"], 24),  # unknown: first group
    EcsCase("geo.example.com", ("2001:db8:2::", 56), ["A 192.0.2.20"], 56),
    EcsCase("geo.example.com", ("2001:db8:1:ff00::", 56), ["A 192.0.2.10"], 56),
    EcsCase("pool.example.com", ("192.0.2.0", 24), ["A 192.0.2.1", "A 192.0.2.2"], 24),
    EcsCase("pool.example.com", ("198.51.100.0", 24), ["A 198.51.100.1", "A 198.51.100.2"], 24),
    EcsCase("pool.example.com", ("192.0.2.192", 26), ["A 192.0.2.1", "A 192.0.2.2", "A 198.51.100.1",
                                                      "A 198.51.100.2"], 26),  # ap: no record there, all
    EcsCase("both.example.com", ("198.51.100.0", 24), ["AAAA 2001:db8::10"], 24),
    EcsCase("both.example.com", ("192.0.2.0", 24), ["AAAA 2001:db8::20"], 24),
    EcsCase("both.example.com", ("203.0.113.0", 24), ["AAAA 2001:db8::10", "AAAA 2001:db8::11"], 24),
    EcsCase("www.example.com", ("192.0.2.0", 24), ["A 192.0.2.1", "A 192.0.2.2"], 0),
    EcsCase("www.example.com", ("2001:db8:1::", 48), ["A 192.0.2.1", "A 192.0.2.2"], 0),
    EcsCase("empty.example.com", ("192.0.2.0", 24), [], 0),
]


@pytest.mark.parametrize("case", ECS_CASES, ids=[f"{c.name}/{c.subnet[0]}/{c.subnet[1]}" for c in ECS_CASES])
def test_ecs_is_echoed_with_a_scope_and_picks_the_nearest_answer(case: EcsCase) -> None:
    r = geo_responder()
    msg = ask_from(r, ecs_query(case.name, *case.subnet, case.qtype), US)  # the resolver's own address must not matter
    assert msg.rcode() == dns.rcode.NOERROR and msg.flags & dns.flags.AA
    assert sorted(records(msg)) == sorted(case.answers)
    assert ecs_echo(msg) == (case.subnet[0], case.subnet[1], case.scope)


def test_answers_of_other_types_and_unknown_names_echo_ecs_with_scope_zero() -> None:
    r = geo_responder()
    for name, qtype, rcode in [("geo.example.com", "AAAA", 0), ("nope.example.com", "A", dns.rcode.REFUSED)]:
        msg = ask_from(r, ecs_query(name, "192.0.2.0", 24, qtype), EU)
        assert msg.rcode() == rcode and not msg.answer
        assert ecs_echo(msg) == ("192.0.2.0", 24, 0)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (EU, "192.0.2.20"),
        (US, "192.0.2.10"),
        (AP, "192.0.2.30"),
        (("203.0.113.5", 53), "192.0.2.10"),
        (("2001:db8:2::53", 53, 0, 0), "192.0.2.20"),
        (("::ffff:192.0.2.7", 53, 0, 0), "192.0.2.20"),  # IPv4 client seen by a dual-stack socket
        (None, "192.0.2.10"),
    ],
    ids=["eu", "us", "ap-longest-prefix", "unknown", "ipv6", "v4-mapped", "no-address"],
)
@pytest.mark.parametrize("edns", [-1, 0])
def test_without_ecs_the_source_address_picks_the_nearest_group(client: object, expected: str, edns: int) -> None:
    msg = ask_from(geo_responder(), query("geo.example.com", edns=edns), client)
    assert records(msg) == [f"A {expected}"]
    assert not [o for o in msg.options if o.otype == dns.edns.ECS]


def test_ecs_source_zero_falls_back_to_the_source_address_with_scope_zero() -> None:
    msg = ask_from(geo_responder(), ecs_query("geo.example.com", "0.0.0.0", 0), EU)
    assert records(msg) == ["A 192.0.2.20"]
    assert ecs_echo(msg) == ("0.0.0.0", 0, 0)


def test_record_regions_serve_the_clients_records_rotated_else_all() -> None:
    r = geo_responder()
    eu = {tuple(records(ask_from(r, query("pool.example.com"), EU))) for _ in range(4)}
    assert eu == {("A 192.0.2.1", "A 192.0.2.2"), ("A 192.0.2.2", "A 192.0.2.1")}
    elsewhere = {tuple(records(ask_from(r, query("pool.example.com"), ("203.0.113.1", 53)))) for _ in range(8)}
    assert len(elsewhere) == 4 and all(len(a) == 4 for a in elsewhere)


def test_nearest_with_one_region_or_none_stays_on_the_fast_path() -> None:
    table = AnswerTable()
    table.regions = RegionMap(TOPOLOGY)
    table.apply(answer_set("one.example.com", "A", group("192.0.2.1", region="eu"), select="nearest"))
    table.apply(NEAREST)
    fast = {key.split(b"\x00")[0] for key in table.fast}
    assert b"\x03one\x07example\x03com" in fast
    assert (wire.name_to_wire("geo.example.com") + b"\x00\x01\x00\x01") not in table.fast  # A: per client
    assert (wire.name_to_wire("geo.example.com") + b"\x00\x1c\x00\x01") in table.fast  # AAAA: NODATA for all


def test_topology_changes_apply_to_the_next_query() -> None:
    table = AnswerTable()
    table.apply(NEAREST)
    r = Responder(table)
    assert records(ask_from(r, query("geo.example.com"), EU)) == ["A 192.0.2.10"]  # empty table: first group
    table.regions = RegionMap([("192.0.2.0/24", "eu")])
    assert records(ask_from(r, query("geo.example.com"), EU)) == ["A 192.0.2.20"]


def _ecs_raw(value: bytes) -> bytes:
    return dns.message.make_query(
        "www.example.com", "A", use_edns=0, options=[dns.edns.GenericOption(dns.edns.ECS, value)]
    ).to_wire()


@pytest.mark.parametrize(
    "value",
    [
        b"\x00\x01\x18",  # shorter than family + prefixes
        b"\x00\x03\x18\x00\xc0\x00\x02",  # unknown family
        b"\x00\x01\x21\x00\xc0\x00\x02\x00\x00",  # /33 for IPv4
        b"\x00\x02\x81\x00" + b"\x20" + b"\x00" * 16,  # /129 for IPv6
        b"\x00\x01\x18\x18\xc0\x00\x02",  # scope set in a query
        b"\x00\x01\x18\x00\xc0\x00\x02\x00",  # too many address bytes
        b"\x00\x01\x18\x00\xc0\x00",  # too few address bytes
        b"\x00\x01\x17\x00\xc0\x00\x03",  # a bit set beyond /23
        b"\x00\x01\x00\x00\x00",  # /0 with an address byte
    ],
    ids=["short", "family", "v4-prefix", "v6-prefix", "scope", "long-address", "short-address", "stray-bits",
         "zero-with-address"],
)
def test_malformed_ecs_gets_formerr_with_question_and_opt(value: bytes) -> None:
    sent = _ecs_raw(value)
    msg = ask_from(geo_responder(), sent, EU)
    assert msg.rcode() == dns.rcode.FORMERR and not msg.answer and msg.edns == 0
    assert msg.question[0].name.to_text() == "www.example.com."
    assert not msg.options


def test_two_ecs_options_get_formerr() -> None:
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    sent = dns.message.make_query("www.example.com", "A", use_edns=0, options=[ecs, ecs]).to_wire()
    assert ask_from(geo_responder(), sent).rcode() == dns.rcode.FORMERR


def test_ecs_survives_truncation() -> None:
    msg = ask_from(geo_responder(), ecs_query("big.example.com", "192.0.2.0", 24, "AAAA", 512))
    assert msg.flags & dns.flags.TC and not msg.answer
    assert ecs_echo(msg) == ("192.0.2.0", 24, 0)


@pytest.mark.parametrize(
    ("address", "bits", "region"),
    [
        ("192.0.2.1", None, "eu"),
        ("192.0.2.129", None, "ap"),
        ("192.0.2.129", 24, "eu"),  # a /24 client may be anywhere in the /24
        ("192.0.2.129", 8, ""),
        ("10.200.0.1", None, "eu"),
        ("198.51.101.1", None, ""),
        ("2001:db8:1:abcd::1", None, "us"),
        ("2001:db8:3::1", None, ""),
    ],
)
def test_region_map_is_a_longest_prefix_match(address: str, bits: int | None, region: str) -> None:
    family, packed = (wire.FAMILY_IPV6, socket.inet_pton(socket.AF_INET6, address)) if ":" in address else (
        wire.FAMILY_IPV4, socket.inet_pton(socket.AF_INET, address))
    assert RegionMap(TOPOLOGY).lookup(family, packed, bits) == region


def test_region_map_skips_bad_cidrs_and_keeps_the_first_of_a_prefix() -> None:
    regions = RegionMap([("nonsense", "x"), ("192.0.2.0/24", "a"), ("192.0.2.9/24", "b")])
    assert regions.skipped == ["nonsense"] and regions.size == 1
    assert regions.lookup(wire.FAMILY_IPV4, bytes([192, 0, 2, 1])) == "a"


# -- zone apex: SOA and NS, NXDOMAIN and NODATA carry the SOA ------------------------------------

SOA = "SOA ns1.example.com. hostmaster.example.com. 1 3600 600 1209600 60"


def zone_responder(*sets: AnswerSet) -> Responder:
    """A responder authoritative for example.com holding ZONE plus ``sets``."""
    table = AnswerTable(zone=Zone.from_settings("example.com.", "ns1.example.com, ns2.example.net"))
    for s in (*ZONE, answer_set("a.b.example.com", "A", group("192.0.2.50")), *sets):
        table.apply(s)
    return Responder(table)


@dataclass(frozen=True)
class ZoneCase:
    name: str
    qtype: str
    rcode: int
    answers: list[str] = field(default_factory=list)
    soa: bool = False  # the SOA in the authority section, with the negative TTL


ZONE_CASES = [
    ZoneCase("example.com", "SOA", 0, [SOA]),
    ZoneCase("EXAMPLE.com.", "NS", 0, ["NS ns1.example.com.", "NS ns2.example.net."]),
    ZoneCase("example.com", "ANY", 0, [SOA]),
    ZoneCase("example.com", "A", 0, soa=True),
    ZoneCase("example.com", "AXFR", dns.rcode.REFUSED),
    ZoneCase("nope.example.com", "A", dns.rcode.NXDOMAIN, soa=True),
    ZoneCase("NoPe.Example.Com", "AAAA", dns.rcode.NXDOMAIN, soa=True),
    ZoneCase("sub.www.example.com", "A", dns.rcode.NXDOMAIN, soa=True),
    ZoneCase("b.example.com", "A", 0, soa=True),  # empty non-terminal above a.b.example.com
    ZoneCase("a.b.example.com", "A", 0, ["A 192.0.2.50"]),
    ZoneCase("www.example.com", "A", 0, ["A 192.0.2.1", "A 192.0.2.2"]),
    ZoneCase("www.example.com", "AAAA", 0, soa=True),
    ZoneCase("www.example.com", "HTTPS", 0, soa=True),
    ZoneCase("www.example.com", "MX", 0, soa=True),
    ZoneCase("empty.example.com", "A", 0, soa=True),
    ZoneCase("alias.example.com", "MX", 0, ["CNAME target.example.net."]),
    ZoneCase("off.example.com", "A", dns.rcode.REFUSED),
    ZoneCase("www.example.com", "AXFR", dns.rcode.REFUSED),
    ZoneCase("other.org", "A", dns.rcode.REFUSED),
    ZoneCase("badexample.com", "A", dns.rcode.REFUSED),
    ZoneCase("com", "SOA", dns.rcode.REFUSED),
]


@pytest.mark.parametrize("edns", [-1, 0], ids=["plain", "edns"])
@pytest.mark.parametrize("case", ZONE_CASES, ids=[f"{c.name}/{c.qtype}" for c in ZONE_CASES])
def test_zone_protocol_table(case: ZoneCase, edns: int) -> None:
    r = zone_responder()
    sent = query(case.name, case.qtype, edns=edns)
    msg = ask(r, sent)
    assert msg.rcode() == case.rcode
    assert bool(msg.flags & dns.flags.AA) == (case.rcode != dns.rcode.REFUSED)
    assert sorted(records(msg)) == sorted(case.answers)
    authority = [(rrset.name.to_text(), rrset.ttl, f"SOA {rd.to_text()}") for rrset in msg.authority for rd in rrset]
    assert authority == ([("example.com.", 60, SOA)] if case.soa else [])
    assert msg.edns == edns
    assert r.answer(sent) == r.answer_slow(sent)


def test_zone_apex_ttls_and_default_nameserver() -> None:
    r = Responder(AnswerTable(zone=Zone.from_settings("example.com", "")))
    assert [rrset.ttl for rrset in ask(r, query("example.com", "SOA")).answer] == [3600]
    assert records(ask(r, query("example.com", "NS"))) == ["NS ns1.example.com."]
    assert Zone.from_settings("", "ns1.example.com") is None


def test_an_access_domain_at_the_apex_keeps_soa_and_ns() -> None:
    r = zone_responder(answer_set("example.com", "A", group("192.0.2.99")))
    assert records(ask(r, query("example.com", "A"))) == ["A 192.0.2.99"]
    assert records(ask(r, query("example.com", "ANY"))) == ["A 192.0.2.99"]
    assert records(ask(r, query("example.com", "SOA"))) == [SOA]
    assert len(ask(r, query("example.com", "NS")).answer[0]) == 2
    nodata = ask(r, query("example.com", "AAAA"))
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and len(nodata.authority) == 1


def test_empty_non_terminals_follow_the_domains_below_them() -> None:
    table = AnswerTable(zone=Zone.from_settings("example.com", ""))
    r = Responder(table)
    table.apply(answer_set("x.y.z.example.com", "A", group("192.0.2.1")))
    table.apply(answer_set("w.z.example.com", "A", group("192.0.2.2")))
    assert [ask(r, query(n)).rcode() for n in ("y.z.example.com", "z.example.com")] == [0, 0]
    table.apply(AnswerSet(domain="x.y.z.example.com", enabled=False, record_type="A", deleted=True))
    assert ask(r, query("y.z.example.com")).rcode() == dns.rcode.NXDOMAIN
    assert ask(r, query("z.example.com")).rcode() == dns.rcode.NOERROR
    table.apply(AnswerSet(domain="w.z.example.com", enabled=False, record_type="A", deleted=True))
    assert ask(r, query("z.example.com")).rcode() == dns.rcode.NXDOMAIN


def test_zone_nxdomain_echoes_ecs_with_scope_zero() -> None:
    msg = ask_from(zone_responder(), ecs_query("nope.example.com", "192.0.2.0", 24))
    assert msg.rcode() == dns.rcode.NXDOMAIN and len(msg.authority) == 1
    assert ecs_echo(msg) == ("192.0.2.0", 24, 0)


# -- never an exception, every reply parses and echoes the ID -----------------------------------

ROTATING = [
    *ZONE,
    NEAREST,
    BY_ADDRESS,
    BOTH,
    answer_set("rr.example.com", "A", group("192.0.2.1", "192.0.2.2", rotate=True)),
    answer_set("w.example.com", "AAAA", group("2001:db8::1", "2001:db8::2", record_weights=[1, 2])),
    answer_set("a.b.example.com", "A", group("192.0.2.50")),
]
NAMES = [s.domain for s in ROTATING] + ["nope.example.com", "Www.Example.Com", "example.com", "b.example.com"]
QTYPES = ["A", "AAAA", "CNAME", "MX", "TXT", "ANY", "HTTPS", "SOA", "NS"]
CLIENTS = [EU, US, ("2001:db8:2::1", 53, 0, 0), None]


def fuzz_responder(zone: bool) -> Responder:
    """Every kind of answer, with a topology, authoritative for example.com or not."""
    table = AnswerTable(zone=Zone.from_settings("example.com", "") if zone else None)
    table.regions = RegionMap(TOPOLOGY)
    for s in ROTATING:
        table.apply(s)
    return Responder(table)


FUZZ = {zone: fuzz_responder(zone) for zone in (False, True)}


def _check_reply(r: Responder, packet: bytes, client: object = None) -> None:
    for tcp in (False, True):
        reply = r.answer(packet, tcp, client)
        if reply is None:
            continue
        assert reply[:2] == packet[:2]
        dns.message.from_wire(reply)
        assert tcp or len(reply) <= max(512, wire.EDNS_PAYLOAD)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.booleans())
def test_random_bytes_never_raise_and_replies_parse(packet: bytes, zone: bool) -> None:
    _check_reply(FUZZ[zone], packet, EU)


@st.composite
def ecs_options(draw: st.DrawFn) -> list[dns.edns.Option]:
    """No option, a valid ECS option, or an ECS option of random bytes."""
    kind = draw(st.sampled_from(["none", "valid", "random"]))
    if kind == "none":
        return []
    if kind == "random":
        return [dns.edns.GenericOption(dns.edns.ECS, draw(st.binary(max_size=20)))]
    if draw(st.booleans()):
        return [dns.edns.ECSOption(draw(st.sampled_from(["192.0.2.0", "198.51.100.0", "10.0.0.0"])),
                                   draw(st.integers(0, 32)))]
    return [dns.edns.ECSOption(draw(st.sampled_from(["2001:db8:1::", "2001:db8:2::"])), draw(st.integers(0, 128)))]


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(NAMES))
    qtype = draw(st.sampled_from(QTYPES))
    edns = draw(st.sampled_from([-1, 0, 1]))
    options = draw(ecs_options()) if edns >= 0 else []
    q = dns.message.make_query(name, qtype, use_edns=edns, payload=draw(st.integers(0, 65535)), options=options)
    packet = bytearray(q.to_wire())
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
@given(mutated_queries(), st.booleans(), st.sampled_from(CLIENTS))
def test_mutated_queries_never_raise_and_replies_parse(packet: bytes, zone: bool, client: object) -> None:
    _check_reply(FUZZ[zone], packet, client)
