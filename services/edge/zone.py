"""The optional zone the edge is authoritative for: SOA and NS at its apex, SOA in negative answers.

The SOA and NS records are built by dnslib once, when the edge starts.
"""

from __future__ import annotations

import dnslib  # type: ignore[import-untyped]  # ships no type hints

from services.edge import wire
from services.edge.compile import REFUSED, Answer, dns_name, make_variant, pack
from services.edge.wire import QType, Rcode

SERIAL = 1  # every edge serves the same SOA; nothing transfers the zone
REFRESH_S = 3600
RETRY_S = 600
EXPIRE_S = 1_209_600
NEGATIVE_TTL = 60  # SOA MINIMUM: how long resolvers cache NXDOMAIN and NODATA (RFC 2308)
APEX_TTL = 3600  # TTL of the SOA and NS records answered at the apex


class Zone:
    """Answers for the apex and for names of the zone that are not access domains."""

    __slots__ = ("apex", "name", "nodata", "nxdomain", "text")

    def __init__(self, zone: str, nameservers: list[str]) -> None:
        self.text = zone.strip().rstrip(".").lower()
        self.name = wire.name_to_wire(self.text)
        apex = dns_name(self.text)
        ns = [dns_name(n) for n in nameservers] or [dns_name(f"ns1.{self.text}")]
        times = (SERIAL, REFRESH_S, RETRY_S, EXPIRE_S, NEGATIVE_TTL)
        soa_record = dnslib.SOA(ns[0], dns_name(f"hostmaster.{self.text}"), times)
        soa_rdata = pack(soa_record)
        # In an authority section the SOA's TTL is the negative TTL (RFC 2308 section 3).
        negative = (pack(dnslib.RR(apex, QType.SOA, wire.CLASS_IN, NEGATIVE_TTL, soa_record)),)
        self.nodata = Answer.fixed(make_variant(rcode=Rcode.NOERROR, aa=True, authority=negative))
        self.nxdomain = Answer.fixed(make_variant(rcode=Rcode.NXDOMAIN, aa=True, authority=negative))
        soa = Answer.fixed(
            make_variant(rcode=Rcode.NOERROR, aa=True, rrs=[wire.answer_rr(QType.SOA, APEX_TTL, soa_rdata)])
        )
        ns_rdata = dict.fromkeys(pack(dnslib.NS(n)) for n in ns)  # each once, in order
        ns_rrs = [wire.answer_rr(QType.NS, APEX_TTL, rdata) for rdata in ns_rdata]
        apex = {
            QType.SOA: soa,
            QType.NS: Answer.fixed(make_variant(rcode=Rcode.NOERROR, aa=True, rrs=ns_rrs)),
            QType.ANY: soa,  # RFC 8482: one RRset is enough
            QType.AXFR: REFUSED,
            QType.IXFR: REFUSED,
        }
        self.apex: dict[int, Answer] = {int(t): answer for t, answer in apex.items()}  # int keys: read per query

    @classmethod
    def from_settings(cls, zone: str, nameservers: str) -> Zone | None:
        """The zone of ``GTM_EDGE_ZONE`` / ``GTM_EDGE_NS`` (comma list), or None when no zone is set."""
        if not zone.strip().rstrip("."):
            return None
        return cls(zone, [n.strip() for n in nameservers.split(",") if n.strip()])

    def contains(self, name: bytes) -> bool:
        """Whether the lower-case wire ``name`` is the apex or below it."""
        zone, pos = self.name, 0
        while len(name) - pos > len(zone):
            pos += 1 + name[pos]
        return name[pos:] == zone

    def ancestors(self, name: bytes) -> list[bytes]:
        """The names strictly between ``name`` and the apex (empty when ``name`` is outside)."""
        out, pos = [], 1 + name[0] if name[0] else len(name)
        while len(name) - pos > len(self.name):
            out.append(name[pos:])
            pos += 1 + name[pos]
        return out if name[pos:] == self.name and pos < len(name) else []

    def negative(self, name: bytes, qtype: int, exists: bool) -> Answer:
        """The answer for ``name`` inside the zone that is not an access domain."""
        if name == self.name:
            return self.apex.get(qtype, self.nodata)
        if qtype in wire.TRANSFER_QTYPES:
            return REFUSED
        return self.nodata if exists else self.nxdomain
