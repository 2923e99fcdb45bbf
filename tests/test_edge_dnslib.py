"""dnslib builds the edge's records at compile time: byte for byte what the hand-written code built.

The reference encoders below are the code dnslib replaced (``wire.rdata``, ``wire.rr`` and the
zone's SOA), kept here as the oracle; dnspython parses what is built; and whole replies are
pinned as the bytes the edge sent before dnslib built its records.
"""

from __future__ import annotations

import ipaddress
import socket
import string
import struct

import dns.edns
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.edge import wire, zone
from services.edge.compile import MAX_TTL, compile_answer_set
from services.edge.compile import rdata as build_rdata
from services.edge.responder import Responder
from services.edge.table import AnswerTable
from services.edge.topology import RegionMap
from services.edge.zone import Zone
from shared.messages import AnswerGroup, AnswerSet

TYPES = {"A": wire.QType.A, "AAAA": wire.QType.AAAA, "CNAME": wire.QType.CNAME}

# -- the hand-written encoders dnslib replaced --------------------------------------------------


def reference_rdata(rtype: int, value: str) -> bytes:
    """The RDATA as the edge encoded it by hand."""
    try:
        if rtype == wire.QType.A:
            return socket.inet_pton(socket.AF_INET, value)
        if rtype == wire.QType.AAAA:
            return socket.inet_pton(socket.AF_INET6, value)
    except (OSError, ValueError):
        raise wire.Malformed(value) from None
    if rtype == wire.QType.CNAME:
        return wire.name_to_wire(value)
    raise wire.Malformed(f"unsupported record type {rtype}")


def reference_rr(owner: bytes, rtype: int, ttl: int, data: bytes) -> bytes:
    """An RR with an uncompressed owner, as the edge encoded it by hand."""
    return owner + struct.pack("!HHIH", rtype, wire.CLASS_IN, ttl, len(data)) + data


def reference_zone(text: str, nameservers: list[str]) -> tuple[bytes, bytes, list[bytes]]:
    """(SOA RDATA, the SOA RR of negative answers, the NS RDATA) as the zone encoded them by hand."""
    apex = text.strip().rstrip(".").lower()
    owner = wire.name_to_wire(apex)
    ns = [wire.name_to_wire(n) for n in nameservers] or [wire.name_to_wire(f"ns1.{apex}")]
    soa = ns[0] + wire.name_to_wire(f"hostmaster.{apex}")
    soa += struct.pack("!IIIII", zone.SERIAL, zone.REFRESH_S, zone.RETRY_S, zone.EXPIRE_S, zone.NEGATIVE_TTL)
    return soa, reference_rr(owner, wire.QType.SOA, zone.NEGATIVE_TTL, soa), list(dict.fromkeys(ns))


def outcome(fn: object, *args: object) -> bytes | str:
    """What ``fn(*args)`` returns, or "Malformed" when it refuses the input."""
    try:
        return fn(*args)
    except wire.Malformed:
        return "Malformed"


# -- inputs: valid values, their near misses (what dnslib's own parsers would take), noise ----

LABEL_CHARS = string.ascii_letters + string.digits + "-_*\\ é."
labels = st.text(LABEL_CHARS, max_size=64) | st.sampled_from(["", "a" * 63, "a" * 64, "xn--keh", "WWW"])
names = st.builds(
    lambda ls, tail: ".".join(ls) + tail,
    st.lists(labels, max_size=6) | st.lists(st.just("a" * 63), min_size=3, max_size=5),
    st.sampled_from(["", ".", "..", " ", "\t"]),
)
NEAR_MISSES = ["1.2.3.4.", " 1.2.3.4", "1.2.3.4 ", "01.2.3.4", "-0.1.2.3", "1.2.3", "256.1.1.1", "1.2.3.4\x00"]
NEAR_MISSES += ["1::2::3", "::ffff:1.2.3.4", "2001:DB8::A", "fe80::1%eth0", " ::1", "gggg::", "::", "a..b", "é.com"]
values = (
    st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(str)
    | st.ip_addresses(v=6).map(lambda a: a.exploded.upper())
    | st.sampled_from(NEAR_MISSES)
    | names
    | st.text(max_size=40)
)


@settings(max_examples=2000, deadline=None)
@given(rtype=st.sampled_from(sorted(TYPES.values())), value=values)
def test_rdata_is_the_hand_written_encoding_or_refused_alike(rtype: int, value: str) -> None:
    assert outcome(build_rdata, rtype, value) == outcome(reference_rdata, rtype, value)


@pytest.mark.parametrize(
    ("rtype", "value"),
    [(wire.QType.A, v) for v in NEAR_MISSES[:8]] + [(wire.QType.AAAA, v) for v in ("1::2::3", "gggg::", " ::1")],
)
def test_addresses_dnslib_would_take_are_still_refused(rtype: int, value: str) -> None:
    with pytest.raises(wire.Malformed):
        build_rdata(rtype, value)


@pytest.mark.parametrize("value", ["a..b.example", "é.example", "x" * 64 + ".example", ".".join(["a" * 63] * 4)])
def test_names_dnslib_would_take_are_still_refused(value: str) -> None:
    with pytest.raises(wire.Malformed):
        build_rdata(wire.QType.CNAME, value)


@settings(max_examples=300, deadline=None)
@given(address=st.ip_addresses())
def test_dnspython_reads_back_the_addresses(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    rtype = wire.QType.A if address.version == 4 else wire.QType.AAAA
    data = build_rdata(rtype, address.exploded)
    parsed = dns.rdata.from_wire(dns.rdataclass.IN, rtype, data, 0, len(data))
    assert ipaddress.ip_address(parsed.to_text()) == address


@settings(max_examples=300, deadline=None)
@given(name=names)
def test_dnspython_reads_back_the_names_lower_cased_and_absolute(name: str) -> None:
    try:
        data = build_rdata(wire.QType.CNAME, name)
    except wire.Malformed:
        return
    parsed = dns.rdata.from_wire(dns.rdataclass.IN, wire.QType.CNAME, data, 0, len(data))
    text = name.strip().rstrip(".").lower()
    assert parsed.target.labels == ((*text.encode().split(b"."), b"") if text else (b"",))


@settings(max_examples=300, deadline=None)
@given(
    rtype=st.sampled_from(sorted(TYPES)),
    records=st.lists(values, max_size=6),
    ttl=st.integers(-10, 2**32),
)
def test_compiled_records_are_the_hand_written_bytes(rtype: str, records: list[str], ttl: int) -> None:
    aset = AnswerSet(
        domain="x.example.com",
        enabled=True,
        record_type=rtype,
        ttl=ttl,
        groups=[AnswerGroup(pool="p", records=records)],
    )
    compiled = compile_answer_set(aset)
    code, kept = TYPES[rtype], []
    for record in records:
        data = outcome(reference_rdata, code, record)
        if isinstance(data, bytes):
            kept.append(wire.answer_rr(code, min(max(ttl, 0), MAX_TTL), data))
    kept = kept[:1] if code == wire.QType.CNAME else kept
    if not kept:
        assert compiled.answer is None
        return
    assert compiled.answer is not None and compiled.answer.pick()[2] == b"".join(kept)
    assert len(compiled.skipped) == len(records) - sum(
        isinstance(outcome(reference_rdata, code, r), bytes) for r in records
    )


@settings(max_examples=500, deadline=None)
@given(apex=names, nameservers=st.lists(names, max_size=4))
def test_zone_soa_and_ns_are_the_hand_written_bytes_or_refused_alike(apex: str, nameservers: list[str]) -> None:
    expected = outcome(reference_zone, apex, nameservers)
    try:
        z = Zone(apex, nameservers)
    except wire.Malformed:
        assert expected == "Malformed"
        return
    assert expected != "Malformed"
    soa, negative, ns = expected
    assert z.apex[wire.QType.SOA].pick()[2] == wire.answer_rr(wire.QType.SOA, zone.APEX_TTL, soa)
    assert z.nxdomain.pick()[2] == negative and z.nodata.pick()[2] == negative
    assert z.apex[wire.QType.NS].pick()[2] == b"".join(wire.answer_rr(wire.QType.NS, zone.APEX_TTL, n) for n in ns)


def test_zone_soa_parses_with_dnspython_uncompressed() -> None:
    z = Zone("Example.COM.", ["NS1.example.com", "ns2.example.net"])
    rr = z.nxdomain.pick()[2]
    owner_end = wire.scan_name(rr, 0)
    data = rr[owner_end + 10 :]
    soa = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.SOA, data, 0, len(data))
    assert soa.to_text() == "ns1.example.com. hostmaster.example.com. 1 3600 600 1209600 60"
    assert rr[:owner_end] == wire.name_to_wire("example.com") and b"\xc0" not in data[:-20]


# -- whole replies, as the edge sent them before dnslib built its records ------------------------

GOLDEN = [  # (name, type, EDNS: False | True | "ecs", reply to a query of id 0x1234)
    (
        "www.example.com",
        "A",
        False,
        "12348500000100020000000003777777076578616d706c6503636f6d0000010001c00c000100010000003c0004c0000201c00c000100010000003c0004c0000202",
    ),
    (
        "v6.example.com",
        "AAAA",
        False,
        "123485000001000200000000027636076578616d706c6503636f6d00001c0001c00c001c00010000012c001020010db8000000000000000000000001c00c001c00010000012c001000000000000000000000ffffc0000209",
    ),
    (
        "alias.example.com",
        "A",
        True,
        "12348500000100010000000105616c696173076578616d706c6503636f6d0000010001c00c000500010000001e00110363646e076578616d706c6503636f6d0000002904d0000000000000",
    ),
    (
        "example.com",
        "SOA",
        False,
        "123485000001000100000000076578616d706c6503636f6d0000060001c00c0006000100000e10003d036e7331076578616d706c6503636f6d000a686f73746d6173746572076578616d706c6503636f6d000000000100000e1000000258001275000000003c",
    ),
    (
        "example.com",
        "NS",
        True,
        "123485000001000200000001076578616d706c6503636f6d0000020001c00c0002000100000e100011036e7331076578616d706c6503636f6d00c00c0002000100000e100011036e7332076578616d706c65036e65740000002904d0000000000000",
    ),
    (
        "missing.example.com",
        "A",
        True,
        "123485030001000000010001076d697373696e67076578616d706c6503636f6d0000010001076578616d706c6503636f6d00000600010000003c003d036e7331076578616d706c6503636f6d000a686f73746d6173746572076578616d706c6503636f6d000000000100000e1000000258001275000000003c00002904d0000000000000",
    ),
    (
        "www.example.com",
        "TXT",
        False,
        "12348500000100000001000003777777076578616d706c6503636f6d0000100001076578616d706c6503636f6d00000600010000003c003d036e7331076578616d706c6503636f6d000a686f73746d6173746572076578616d706c6503636f6d000000000100000e1000000258001275000000003c",
    ),
    (
        "geo.example.com",
        "A",
        "ecs",
        "1234850000010001000000010367656f076578616d706c6503636f6d0000010001c00c000100010000001e00040a00000200002904d000000000000b0008000700011818c00002",
    ),
]


def golden_responder() -> Responder:
    table = AnswerTable(
        Zone("Example.COM.", ["ns1.example.com", "NS2.example.net.", "ns1.example.com"]), keep_encoded=False
    )
    group = AnswerGroup(pool="p", records=["192.0.2.1", "192.0.2.2", "bad"])
    table.apply(AnswerSet(domain="www.example.com", enabled=True, record_type="A", ttl=60, groups=[group]))
    group = AnswerGroup(pool="p", records=["2001:db8::1", "::ffff:192.0.2.9"])
    table.apply(AnswerSet(domain="v6.example.com", enabled=True, record_type="AAAA", ttl=300, groups=[group]))
    group = AnswerGroup(pool="p", records=["CDN.Example.com."])
    table.apply(AnswerSet(domain="alias.example.com", enabled=True, record_type="CNAME", groups=[group]))
    groups = [
        AnswerGroup(pool="us", records=["10.0.0.1"], region="us"),
        AnswerGroup(pool="eu", records=["10.0.0.2"], region="eu"),
    ]
    table.apply(AnswerSet(domain="geo.example.com", enabled=True, record_type="A", select="nearest", groups=groups))
    table.set_topology(None, RegionMap([("192.0.2.0/24", "eu")]))
    return Responder(table)


@pytest.mark.parametrize(("name", "qtype", "edns", "reply"), GOLDEN, ids=[f"{g[0]}/{g[1]}/{g[2]}" for g in GOLDEN])
def test_replies_are_the_bytes_sent_before(name: str, qtype: str, edns: bool | str, reply: str) -> None:
    options = [dns.edns.ECSOption("192.0.2.0", 24)] if edns == "ecs" else None
    query = dns.message.make_query(name, qtype, use_edns=0 if edns else None, options=options)
    query.id = 0x1234
    assert golden_responder().answer(query.to_wire(), False, ("127.0.0.1", 1)) == bytes.fromhex(reply)
