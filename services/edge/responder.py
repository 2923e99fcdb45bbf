"""Turn one DNS query packet into one reply packet (or None), from an AnswerTable (no I/O).

The fast path handles the common shape (QUERY, one question, no other RRs but
perhaps one OPT without options) with slicing and one dict lookup; everything
else goes through :meth:`Responder.answer_slow`, which parses the packet fully:
EDNS options (Client Subnet), names whose answer depends on the client's
location, the zone's apex and negative answers, truncation.
"""

from __future__ import annotations

import struct

from services.edge import wire
from services.edge.compile import REFUSED, Compiled, Variant
from services.edge.replies import ReplyCache
from services.edge.stats import QueryCounts
from services.edge.table import AnswerTable
from services.edge.wire import QType, Rcode

_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_OPT_START = b"\x00" + QType.OPT.to_bytes(2, "big")  # root owner, type OPT
_NO_RDATA = b"\x00\x00"
_NOT_PLAIN_QUERY = wire.QR | wire.OPCODE_MASK
# Read per query: plain ints (looking an enum member up costs ~0.1 us each time).
_FORMERR, _NOTIMP, _BADVERS = int(Rcode.FORMERR), int(Rcode.NOTIMP), int(Rcode.BADVERS)


class Responder:
    """Answers queries from an :class:`AnswerTable` (which it reads live)."""

    __slots__ = ("_counted", "_counts", "_fast", "_fixed", "_lined", "_replies", "_table")

    def __init__(self, table: AnswerTable, counts: QueryCounts | None = None) -> None:
        self._table = table
        self._fast = table.fast
        self._fixed = table.fixed
        self._lined = table.lined
        self._counts = counts if counts is not None else QueryCounts()
        self._counted = self._counts.fast
        self._replies: ReplyCache | None = None

    def reply_cache(self) -> ReplyCache:
        """The cache of whole replies this responder fills from now on (for a loop that reads it before asking)."""
        if self._replies is None:
            self._replies = ReplyCache(self._table, self._counts)
        return self._replies

    def answer(self, data: bytes, tcp: bool = False, client: object = None) -> bytes | None:
        """The reply to ``data`` from ``client``, or None when it deserves silence.

        ``client`` is the sender: a tuple whose first item is its address as the socket module shows it.
        """
        # Each shape repeats the lookup inline: sharing it costs the fast path ~5 % (measured).
        if len(data) > 16 and not data[2] & _NOT_PLAIN_QUERY:
            counts = data[4:12]
            if counts == _PLAIN_COUNTS:
                question = data[12:]
                key = question.lower()
                pick = self._fast.get(key)
                if pick is not None:
                    counted = self._counted
                    counted[key] = counted.get(key, 0) + 1
                    v = pick()
                    reply = data[:2] + v[data[2] & 1] + question + v[2]
                    if self._replies is not None and self._fixed.get(key) is v:
                        self._replies.put(data, reply, key)
                    return reply
                lined = self._lined.get(key)
                if lined is not None:
                    found = self._for_client(key, lined, client)
                    if found is not None:
                        return data[:2] + found[data[2] & 1] + question + found[2]
            elif counts == _EDNS_COUNTS and data[-11:-8] == _OPT_START and not data[-5] and data[-2:] == _NO_RDATA:
                question = data[12:-11]
                key = question.lower()
                pick = self._fast.get(key)
                if pick is not None:
                    counted = self._counted
                    counted[key] = counted.get(key, 0) + 1
                    v = pick()
                    reply = data[:2] + v[3 + (data[2] & 1)] + question + v[5]
                    if self._replies is not None and self._fixed.get(key) is v:
                        self._replies.put(data, reply, key)
                    return reply
                lined = self._lined.get(key)
                if lined is not None:
                    found = self._for_client(key, lined, client)
                    if found is not None:
                        return data[:2] + found[3 + (data[2] & 1)] + question + found[5]
        slow = self.answer_slow(data, tcp, client)
        if slow is not None:
            self._counts.count_reply(slow)
        return slow

    def _for_client(self, key: bytes, lined: tuple[Compiled, bool], client: object) -> Variant | None:
        """The variant for a query without ECS to a domain with lines, by the resolver's address
        (None: it does not fit 512 bytes, so the slow path truncates it)."""
        compiled, own = lined
        assert compiled.lined is not None
        locator = self._table.locator
        cls = locator.for_host(client[0]) if type(client) is tuple and client else locator.locate(None, client)
        mine, other, _ = compiled.lined.resolve(cls)
        answer = (mine if own else other) or compiled.nodata
        if answer.max_body > self._table.room(key):
            return None
        counted = self._counted
        counted[key] = counted.get(key, 0) + 1
        return answer.pick()

    def answer_slow(self, data: bytes, tcp: bool = False, client: object = None) -> bytes | None:
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
            return _error(qid, flags, _NOTIMP, query, echo=False)
        if query is None:
            return _error(qid, flags, _FORMERR, None)
        if query.edns and query.version > 0:  # options of another EDNS version mean what it says
            return _error(qid, flags, _BADVERS, query)
        if query.ecs_error:  # RFC 7871 section 6: reject a malformed Client Subnet
            return _error(qid, flags, _FORMERR, query)
        return self._reply(qid, flags & wire.RD, query, tcp, client)

    def _reply(self, qid: bytes, rd: int, query: wire.Query, tcp: bool, client: object) -> bytes:
        """The reply to a well-formed QUERY."""
        scope = 0
        if query.qclass == wire.CLASS_IN:
            table = self._table
            answer, compiled = table.lookup(query.question[:-4].lower(), query.qtype)
            if compiled is not None and compiled.lined is not None and answer is not REFUSED:
                # A domain with lines: the answer of the client's line, and its data's prefix as the ECS scope.
                mine, other, line_scope = compiled.lined.resolve(table.locator.locate(query.ecs, client))
                answer = (mine if compiled.own_type(query.qtype) else other) or compiled.nodata
                if query.ecs is not None and query.ecs.source:
                    scope = line_scope or query.ecs.source
            elif compiled is not None and compiled.by_region is not None and answer is compiled.answer:
                # The answer depends on where the client is: look it up, and say so in the ECS scope.
                region = table.regions.locate(query.ecs, client)
                answer = compiled.by_region.get(region, answer)
                scope = query.ecs.source if query.ecs is not None else 0
        else:
            answer = REFUSED
        limit = wire.MAX_TCP if tcp else wire.udp_limit(query)
        return _render(qid, rd, query, answer.pick(), limit, scope)


def _render(qid: bytes, rd: int, query: wire.Query, v: Variant, limit: int, scope: int) -> bytes:
    """Assemble a reply; if it exceeds ``limit``, send it truncated (TC, no records)."""
    if not query.edns:
        head, body, opt = v[rd], v[2], b""
    elif query.ecs is None:
        head, body, opt = v[3 + rd], v[2], wire.OPT
    else:
        head, body, opt = v[3 + rd], v[2], wire.opt_rr(0, query.ecs.option(scope))
    if wire.HEADER_LEN + len(query.question) + len(body) + len(opt) <= limit:
        return qid + head + query.question + body + opt
    tc_head = wire.header_tail(flags=head[0] | wire.TC, rcode=head[1], ancount=0, arcount=1 if query.edns else 0)
    return qid + tc_head + query.question + opt


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
