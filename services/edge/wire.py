"""DNS wire format for the edge: names, headers and query parsing (no I/O), written by hand.

Only what an authoritative server for a handful of record types needs; every
read is bounds-checked and malformed input raises :class:`Malformed`.  This is
the per-query path, so it stays plain slicing and ``struct``; the records the
replies carry are built by dnslib when an answer set is compiled
(:mod:`services.edge.compile`, :mod:`services.edge.zone`).
"""

from __future__ import annotations

import enum
import struct
from functools import lru_cache
from typing import NamedTuple

HEADER_LEN = 12
QR = 0x80
AA = 0x04
TC = 0x02
RD = 0x01
OPCODE_MASK = 0x78

CLASS_IN = 1


class QType(enum.IntEnum):
    """The query and record types the edge names (members compare and hash as their ints)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    MX = 15
    TXT = 16
    AAAA = 28
    OPT = 41  # EDNS pseudo-RR (RFC 6891)
    HTTPS = 65  # RFC 9460, asked beside A and AAAA by browsers
    IXFR = 251
    AXFR = 252
    ANY = 255


class Rcode(enum.IntEnum):
    """Response codes (members compare and hash as their ints)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended rcode: 1 in the OPT's upper bits, 0 in the header


EDNS_PAYLOAD = 1232  # what we advertise (DNS flag day 2020)
MIN_PAYLOAD = 512
MAX_TCP = 65535
MAX_NAME = 255

# Zone transfers, refused (plain ints: read per query, where looking an enum member up costs ~0.1 us).
TRANSFER_QTYPES = (int(QType.AXFR), int(QType.IXFR))

# The record types an access domain may have, by the name an AnswerSet gives them (plain ints:
# a domain's type is compared per query, where a member compares slower than an int).
RECORD_TYPES: dict[str, int] = {t.name: int(t) for t in (QType.A, QType.AAAA, QType.CNAME)}

OPTION_ECS = 8  # EDNS Client Subnet, RFC 7871
FAMILY_IPV4 = 1
FAMILY_IPV6 = 2
ADDRESS_BITS = {FAMILY_IPV4: 32, FAMILY_IPV6: 128}

_COUNTS = struct.Struct("!HHHH")
_RR_FIXED = struct.Struct("!HHHIH")  # pointer, type, class, ttl, rdlength
_TYPE_OPT = int(QType.OPT)  # per query: a plain int, no enum attribute lookup


class Malformed(ValueError):
    """A packet cannot be parsed."""


def opt_rr(ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT pseudo-RR: root name, payload 1232, version 0, no flags, ``options`` as given."""
    return b"\x00" + struct.pack("!HHBBHH", _TYPE_OPT, EDNS_PAYLOAD, ext_rcode, 0, 0, len(options)) + options


OPT = opt_rr()


_LABEL_LEN = [bytes((n,)) for n in range(64)]


def name_to_wire(name: str) -> bytes:
    """Encode a dotted name (any case, optional trailing dot) as lower-case wire labels."""
    text = name.strip().rstrip(".").lower()
    if not text:
        return b"\x00"
    try:
        labels = text.encode("ascii").split(b".")
    except UnicodeEncodeError:
        raise Malformed(f"non-ASCII name {name!r}") from None
    try:
        out = b"".join([_LABEL_LEN[len(label) or 64] + label for label in labels]) + b"\x00"
    except IndexError:
        raise Malformed(f"bad label in {name!r}") from None
    if len(out) > MAX_NAME:
        raise Malformed(f"name too long: {name!r}")
    return out


def name_labels(name: bytes) -> tuple[bytes, ...]:
    """The labels of a wire name (uncompressed, as :func:`name_to_wire` made it), root excluded."""
    out, pos = [], 0
    while name[pos]:
        out.append(name[pos + 1 : pos + 1 + name[pos]])
        pos += 1 + name[pos]
    return tuple(out)


def wire_to_text(name: bytes) -> str:
    """An uncompressed wire name as a dotted domain, without the trailing dot ("" for the root)."""
    return b".".join(name_labels(name)).decode("ascii", "backslashreplace")


def answer_rr(rtype: int, ttl: int, data: bytes) -> bytes:
    """One answer RR whose owner is a pointer to the question name (offset 12)."""
    return _RR_FIXED.pack(0xC000 | HEADER_LEN, rtype, CLASS_IN, ttl, len(data)) + data


@lru_cache(maxsize=4096)
def header_tail(*, flags: int, rcode: int, ancount: int, arcount: int, qdcount: int = 1, nscount: int = 0) -> bytes:
    """Header bytes 2..11 (flags, rcode and counts) of a response (cached: shared, immutable)."""
    return bytes((flags, rcode & 0x0F)) + _COUNTS.pack(qdcount, ancount, nscount, arcount)


class ClientSubnet(NamedTuple):
    """An EDNS Client Subnet option of a query (RFC 7871), as sent."""

    family: int  # FAMILY_IPV4 | FAMILY_IPV6
    source: int  # SOURCE PREFIX-LENGTH
    address: bytes  # ADDRESS: ceil(source / 8) bytes

    def option(self, scope: int) -> bytes:
        """The option to echo in the response, with SCOPE PREFIX-LENGTH ``scope``."""
        body = struct.pack("!HBB", self.family, self.source, scope) + self.address
        return struct.pack("!HH", OPTION_ECS, len(body)) + body

    def padded(self) -> bytes:
        """The address zero-padded to the family's full length (4 or 16 bytes)."""
        return self.address.ljust(ADDRESS_BITS[self.family] // 8, b"\x00")


class Query(NamedTuple):
    """The parts of a parsed query that a reply needs."""

    question: bytes  # question section exactly as sent
    qtype: int
    qclass: int
    edns: bool
    payload: int
    version: int
    ecs: ClientSubnet | None = None
    ecs_error: str = ""  # why the ECS option is malformed (answer FORMERR), "" when it is not


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


def parse_ecs(value: bytes) -> ClientSubnet:
    """Parse an ECS option's value; raise :class:`ValueError` with the reason if malformed (RFC 7871 6)."""
    if len(value) < 4:
        raise ValueError("ECS option shorter than 4 bytes")
    family, source, scope = struct.unpack_from("!HBB", value)
    bits = ADDRESS_BITS.get(family)
    if bits is None:
        raise ValueError(f"unknown ECS family {family}")
    if source > bits:
        raise ValueError(f"ECS source prefix /{source} too long")
    if scope:
        raise ValueError("ECS scope prefix must be 0 in a query")
    address = value[4:]
    if len(address) != (source + 7) // 8:
        raise ValueError("ECS address length does not match its source prefix")
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise ValueError("ECS address has bits set beyond its source prefix")
    return ClientSubnet(family, source, address)


def _read_options(data: bytes, pos: int, end: int) -> tuple[ClientSubnet | None, str]:
    """Walk EDNS options (others ignored) checking their framing; return (ECS, ECS error)."""
    ecs, error = None, ""
    while pos < end:
        if pos + 4 > end:
            raise Malformed("truncated EDNS option")
        code, length = struct.unpack_from("!HH", data, pos)
        pos += 4 + length
        if code == OPTION_ECS and pos <= end and not error:
            try:
                if ecs is not None:
                    raise ValueError("more than one ECS option")
                ecs = parse_ecs(data[pos - length : pos])
            except ValueError as exc:
                ecs, error = None, str(exc)
    if pos != end:
        raise Malformed("EDNS option overruns the OPT record")
    return ecs, error


class _Edns(NamedTuple):
    edns: bool = False
    payload: int = MIN_PAYLOAD
    version: int = 0
    ecs: ClientSubnet | None = None
    ecs_error: str = ""


def parse_sections(data: bytes, pos: int, skip: int, additional: int) -> _Edns:
    """Skip ``skip`` RRs, then read the additional section's OPT (if any)."""
    for _ in range(skip):
        pos = _read_rr(data, pos)[4]
    found = _Edns()
    for _ in range(additional):
        owner = pos
        rtype, rclass, ttl, rd_start, pos = _read_rr(data, pos)
        if rtype != _TYPE_OPT:
            continue  # e.g. TSIG: not supported, not fatal
        if found.edns or data[owner] != 0:
            raise Malformed("second OPT or OPT not at the root")
        found = _Edns(True, rclass, (ttl >> 16) & 0xFF, *_read_options(data, rd_start, pos))
    return found


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
    return Query(data[HEADER_LEN:q_end], qtype, qclass, *parse_sections(data, q_end, ancount + nscount, arcount))


def udp_limit(query: Query) -> int:
    """Largest UDP reply for ``query``: 512, or the client's EDNS size capped at ours."""
    if not query.edns:
        return MIN_PAYLOAD
    return max(MIN_PAYLOAD, min(query.payload, EDNS_PAYLOAD))
