"""Turn one DNS query packet into one reply packet (or None), from an AnswerTable (no I/O).

The fast path handles the common shape (QUERY, one question, no other RRs but
perhaps one plain OPT) with slicing and one dict lookup; everything else goes
through :meth:`Responder.answer_slow`, which parses the packet fully.
"""

from __future__ import annotations

import struct

from services.edge import wire
from services.edge.table import REFUSED, AnswerTable, Variant

_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_OPT_START = b"\x00\x00\x29"  # root owner, type OPT
_NO_RDATA = b"\x00\x00"
_NOT_PLAIN_QUERY = wire.QR | wire.OPCODE_MASK


class Responder:
    """Answers queries from an :class:`AnswerTable` (which it reads live)."""

    __slots__ = ("_edns", "_plain", "_table")

    def __init__(self, table: AnswerTable) -> None:
        self._table = table
        self._plain = table.plain
        self._edns = table.edns

    def answer(self, data: bytes, tcp: bool = False) -> bytes | None:
        """The reply to ``data``, or None when it deserves silence."""
        if len(data) > 16 and not data[2] & _NOT_PLAIN_QUERY:
            counts = data[4:12]
            if counts == _PLAIN_COUNTS:
                question = data[12:]
                pick = self._plain.get(question.lower())
                if pick is not None:
                    v = pick()
                    return data[:2] + v[data[2] & 1] + question + v[2]
            elif counts == _EDNS_COUNTS and data[-11:-8] == _OPT_START and not data[-5] and data[-2:] == _NO_RDATA:
                question = data[12:-11]
                pick = self._edns.get(question.lower())
                if pick is not None:
                    v = pick()
                    return data[:2] + v[3 + (data[2] & 1)] + question + v[5]
        return self.answer_slow(data, tcp)

    def answer_slow(self, data: bytes, tcp: bool = False) -> bytes | None:
        """The reply to ``data`` after parsing it fully (any packet, any shape)."""
        if len(data) < wire.HEADER_LEN or data[2] & wire.QR:
            return None
        qid, flags = data[:2], data[2]
        try:
            query: wire.Query | None = wire.parse_query(data)
        except (wire.Malformed, struct.error):
            query = None
        if flags & wire.OPCODE_MASK:
            # No question echoed: other opcodes give the section other meanings (UPDATE's zone).
            return _error(qid, flags, wire.NOTIMP, query, echo=False)
        if query is None:
            return _error(qid, flags, wire.FORMERR, None)
        if query.edns and query.version > 0:
            return _error(qid, flags, wire.BADVERS, query)
        compiled = None
        if query.qclass == wire.CLASS_IN:
            compiled = self._table.names.get(query.question[:-4].lower())
        answer = REFUSED if compiled is None else compiled.by_qtype.get(query.qtype, compiled.default)
        limit = wire.MAX_TCP if tcp else wire.udp_limit(query)
        return _render(qid, flags & wire.RD, query, answer.pick(), limit)


def _render(qid: bytes, rd: int, query: wire.Query, v: Variant, limit: int) -> bytes:
    """Assemble a reply; if it exceeds ``limit``, send it truncated (TC, no answers)."""
    head, body = (v[3 + rd], v[5]) if query.edns else (v[rd], v[2])
    if wire.HEADER_LEN + len(query.question) + len(body) <= limit:
        return qid + head + query.question + body
    tc_head = wire.header_tail(flags=head[0] | wire.TC, rcode=head[1], ancount=0, arcount=1 if query.edns else 0)
    return qid + tc_head + query.question + (wire.OPT if query.edns else b"")


def _error(qid: bytes, flags: int, rcode: int, query: wire.Query | None, *, echo: bool = True) -> bytes:
    """An error reply: question (if ``echo``) and OPT when the query parsed, else a bare header."""
    reply_flags = wire.QR | (flags & (wire.OPCODE_MASK | wire.RD))
    if query is None:
        return qid + wire.header_tail(flags=reply_flags, rcode=rcode, ancount=0, arcount=0, qdcount=0)
    question = query.question if echo else b""
    head = wire.header_tail(
        flags=reply_flags, rcode=rcode, ancount=0, arcount=1 if query.edns else 0, qdcount=1 if echo else 0
    )
    opt = wire.opt_rr(rcode >> 4) if query.edns else b""
    return qid + head + question + opt
