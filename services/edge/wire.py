"""DNS wire format for the edge: names, resource records and query parsing (no I/O).

Only what an authoritative server for a handful of record types needs; every
read is bounds-checked and malformed input raises :class:`Malformed`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

HEADER_LEN = 12
QR = 0x80
AA = 0x04
TC = 0x02
RD = 0x01
OPCODE_MASK = 0x78

TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_OPT = 41
TYPE_AAAA = 28
TYPE_IXFR = 251
TYPE_AXFR = 252
TYPE_ANY = 255
CLASS_IN = 1

NOERROR = 0
FORMERR = 1
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # extended rcode: 1 in the OPT's upper bits, 0 in the header

EDNS_PAYLOAD = 1232  # what we advertise (DNS flag day 2020)
MIN_PAYLOAD = 512
MAX_TCP = 65535
MAX_NAME = 255

RECORD_TYPES: dict[str, int] = {"A": TYPE_A, "AAAA": TYPE_AAAA, "CNAME": TYPE_CNAME}

_U16 = struct.Struct("!H")
_COUNTS = struct.Struct("!HHHH")
_RR_FIXED = struct.Struct("!HHHIH")  # pointer, type, class, ttl, rdlength


class Malformed(ValueError):
    """A packet cannot be parsed."""


def opt_rr(ext_rcode: int = 0) -> bytes:
    """Our OPT pseudo-RR: root name, payload 1232, version 0, no flags, no options."""
    return b"\x00" + struct.pack("!HHBBHH", TYPE_OPT, EDNS_PAYLOAD, ext_rcode, 0, 0, 0)


OPT = opt_rr()


def name_to_wire(name: str) -> bytes:
    """Encode a dotted name (any case, optional trailing dot) as lower-case wire labels."""
    text = name.strip().rstrip(".").lower()
    if not text:
        return b"\x00"
    out = bytearray()
    for label in text.split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            raise Malformed(f"non-ASCII name {name!r}") from None
        if not 0 < len(raw) <= 63:
            raise Malformed(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise Malformed(f"name too long: {name!r}")
    return bytes(out)


def rdata(rtype: int, value: str) -> bytes:
    """Encode the rdata of an A, AAAA or CNAME record; raise :class:`Malformed` if invalid."""
    try:
        if rtype == TYPE_A:
            return ipaddress.IPv4Address(value).packed
        if rtype == TYPE_AAAA:
            return ipaddress.IPv6Address(value).packed
    except ValueError as exc:
        raise Malformed(str(exc)) from None
    if rtype == TYPE_CNAME:
        return name_to_wire(value)
    raise Malformed(f"unsupported record type {rtype}")


def answer_rr(rtype: int, ttl: int, data: bytes) -> bytes:
    """One answer RR whose owner is a pointer to the question name (offset 12)."""
    return _RR_FIXED.pack(0xC000 | HEADER_LEN, rtype, CLASS_IN, ttl, len(data)) + data


def header_tail(*, flags: int, rcode: int, ancount: int, arcount: int, qdcount: int = 1) -> bytes:
    """Header bytes 2..11 (flags, rcode and counts) of a response."""
    return bytes((flags, rcode & 0x0F)) + _COUNTS.pack(qdcount, ancount, 0, arcount)


class Query(NamedTuple):
    """The parts of a parsed query that a reply needs."""

    question: bytes  # question section exactly as sent
    qtype: int
    qclass: int
    edns: bool
    payload: int
    version: int


def scan_name(data: bytes, pos: int) -> int:
    """Return the offset just after an uncompressed name starting at ``pos``."""
    end = len(data)
    start = pos
    while True:
        if pos >= end:
            raise Malformed("name runs past the packet")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:
            raise Malformed("compressed or extended label")
        pos += 1 + length
    if pos - start > MAX_NAME:
        raise Malformed("name too long")
    return pos


def skip_name(data: bytes, pos: int) -> int:
    """Return the offset after a possibly compressed name (pointers not followed)."""
    end = len(data)
    while True:
        if pos >= end:
            raise Malformed("name runs past the packet")
        length = data[pos]
        if length & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise Malformed("pointer runs past the packet")
            return pos + 2
        if length > 63:
            raise Malformed("extended label")
        if length == 0:
            return pos + 1
        pos += 1 + length


def _read_rr(data: bytes, pos: int) -> tuple[int, int, int, int, int]:
    """Return (type, class, ttl, rdata offset, next offset) of the RR at ``pos``."""
    owner_end = skip_name(data, pos)
    fixed_end = owner_end + 10
    if fixed_end > len(data):
        raise Malformed("truncated RR")
    rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, owner_end)
    if fixed_end + rdlen > len(data):
        raise Malformed("truncated rdata")
    return rtype, rclass, ttl, fixed_end, fixed_end + rdlen


def _check_options(data: bytes, pos: int, end: int) -> None:
    """Walk EDNS options (all ignored) to check they are well formed."""
    while pos < end:
        if pos + 4 > end:
            raise Malformed("truncated EDNS option")
        (length,) = _U16.unpack_from(data, pos + 2)
        pos += 4 + length
    if pos != end:
        raise Malformed("EDNS option overruns the OPT record")


def parse_sections(data: bytes, pos: int, skip: int, additional: int) -> tuple[bool, int, int]:
    """Skip ``skip`` RRs, then read the additional section: return (edns, payload, version)."""
    for _ in range(skip):
        pos = _read_rr(data, pos)[4]
    edns, payload, version = False, MIN_PAYLOAD, 0
    for _ in range(additional):
        owner = pos
        rtype, rclass, ttl, rd_start, pos = _read_rr(data, pos)
        if rtype != TYPE_OPT:
            continue  # e.g. TSIG: not supported, not fatal
        if edns or data[owner] != 0:
            raise Malformed("second OPT or OPT not at the root")
        _check_options(data, rd_start, pos)
        edns, payload, version = True, rclass, (ttl >> 16) & 0xFF
    return edns, payload, version


def parse_query(data: bytes) -> Query:
    """Parse a query with exactly one question; raise :class:`Malformed` otherwise."""
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(data, 4)
    if qdcount != 1:
        raise Malformed("QDCOUNT must be 1")
    name_end = scan_name(data, HEADER_LEN)
    q_end = name_end + 4
    if q_end > len(data):
        raise Malformed("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, name_end)
    edns, payload, version = parse_sections(data, q_end, ancount + nscount, arcount)
    return Query(data[HEADER_LEN:q_end], qtype, qclass, edns, payload, version)


def udp_limit(query: Query) -> int:
    """Largest UDP reply for ``query``: 512, or the client's EDNS size capped at ours."""
    if not query.edns:
        return MIN_PAYLOAD
    return max(MIN_PAYLOAD, min(query.payload, EDNS_PAYLOAD))
