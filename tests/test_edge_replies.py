"""The reply cache the batch UDP path reads before the responder: what goes in, what empties it, counts, RRL.

Real packets on a real socket: a cached reply must be byte for byte the responder's (with the
query's own ID), and never outlive the answer it was built from.
"""

from __future__ import annotations

import asyncio
import socket

import dns.flags
import dns.message
import dns.rcode
import pytest

from services.edge import mmsg
from services.edge.responder import Responder
from services.edge.rrl import Limiter
from services.edge.server import DnsListener
from services.edge.stats import EdgeCollector, QueryCounts
from services.edge.table import AnswerTable
from tests.support import free_port
from tests.test_edge_core import answer_set, group

pytestmark = pytest.mark.skipif(mmsg.load() is None, reason="recvmmsg/sendmmsg unavailable here")


def _query(qid: int, name: str, *, edns: bool = False) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=0 if edns else False)
    q.id = qid
    return q.to_wire()


def _ask_blocking(port: int, packets: list[bytes]) -> list[bytes]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        out = []
        for p in packets:
            s.sendto(p, ("127.0.0.1", port))
            out.append(s.recv(4096))
        return out


async def _ask(port: int, packets: list[bytes]) -> list[bytes]:
    """Send each packet and wait for its reply, one after the other (off the loop the listener runs on)."""
    return await asyncio.to_thread(_ask_blocking, port, packets)


def _addresses(reply: bytes) -> list[str]:
    return sorted(rr.to_text() for rrset in dns.message.from_wire(reply).answer for rr in rrset)


async def _serving(table: AnswerTable, **kw: object) -> tuple[DnsListener, Responder, int]:
    responder = Responder(table, kw.pop("counts", None))  # type: ignore[arg-type]
    port = free_port()
    listener = DnsListener(responder, "127.0.0.1", port, **kw)  # type: ignore[arg-type]
    await listener.start()
    assert listener.udp_path == "batch"
    return listener, responder, port


async def test_a_cached_reply_is_the_responders_own_with_each_querys_id() -> None:
    table = AnswerTable()
    table.apply(answer_set("a.example.com", "A", group("10.0.0.1")))
    listener, responder, port = await _serving(table)
    try:
        packets = [_query(i, "a.example.com", edns=i % 2 == 1) for i in range(1, 9)]
        replies = await _ask(port, packets)
        assert len(responder.reply_cache()) == 2  # one per query shape: with and without EDNS
        for p, r in zip(packets, replies, strict=True):
            assert r == responder.answer(p)  # the same bytes the responder builds
            assert r[:2] == p[:2]
    finally:
        await listener.stop()


async def test_a_new_answer_empties_the_cache_at_once() -> None:
    table = AnswerTable()
    table.apply(answer_set("a.example.com", "A", group("10.0.0.1")))
    listener, _, port = await _serving(table)
    try:
        assert _addresses((await _ask(port, [_query(1, "a.example.com")] * 3))[-1]) == ["10.0.0.1"]
        table.apply(answer_set("a.example.com", "A", group("10.0.0.2")))
        assert _addresses((await _ask(port, [_query(2, "a.example.com")]))[0]) == ["10.0.0.2"]
        table.remove("a.example.com")
        assert dns.message.from_wire((await _ask(port, [_query(3, "a.example.com")]))[0]).rcode() == dns.rcode.REFUSED
    finally:
        await listener.stop()


async def test_rotating_and_weighted_answers_are_never_cached() -> None:
    table = AnswerTable()
    table.apply(answer_set("r.example.com", "A", group("10.0.0.1", "10.0.0.2", rotate=True)))
    table.apply(answer_set("w.example.com", "A", group("10.0.1.1", "10.0.1.2", record_weights=[1, 1])))
    listener, responder, port = await _serving(table)
    try:
        rotated = {
            tuple(dns.message.from_wire(r).answer[0].to_text().split("\n"))
            for r in (await _ask(port, [_query(i, "r.example.com") for i in range(6)]))
        }
        weighted = {tuple(_addresses(r)) for r in (await _ask(port, [_query(i, "w.example.com") for i in range(6)]))}
        assert len(rotated) == 2 and len(weighted) == 2  # both orders, both records: still served per query
        assert len(responder.reply_cache()) == 0
    finally:
        await listener.stop()


def _answered(counts: QueryCounts, table: AnswerTable, domain: str) -> float:
    """gtm_edge_queries_total{domain, type="A", rcode="NOERROR"} as the metrics endpoint would export it."""
    for family in EdgeCollector(counts, table).collect():
        if family.name == "gtm_edge_queries":
            for s in family.samples:
                if s.labels == {"domain": domain, "type": "A", "rcode": "NOERROR"}:
                    return s.value
    return 0.0


async def test_cached_replies_are_counted_in_the_metrics() -> None:
    table = AnswerTable()
    table.apply(answer_set("a.example.com", "A", group("10.0.0.1")))
    counts = QueryCounts()
    listener, _, port = await _serving(table, counts=counts)
    try:
        await _ask(port, [_query(i, "a.example.com") for i in range(10)])
        assert _answered(counts, table, "a.example.com") == 10
        table.apply(answer_set("a.example.com", "A", group("10.0.0.2")))  # emptying it keeps its counts
        await _ask(port, [_query(99, "a.example.com")])
        assert _answered(counts, table, "a.example.com") == 11
    finally:
        await listener.stop()


async def test_the_rate_limit_applies_to_cached_replies() -> None:
    table = AnswerTable()
    table.apply(answer_set("a.example.com", "A", group("10.0.0.1")))
    limiter = Limiter(rate=5, slip=1)  # 127.0.0.0/8 not exempt here; every limited reply slips (TC)
    listener, _, port = await _serving(table, limiter=limiter)
    try:
        replies = await _ask(port, [_query(i, "a.example.com") for i in range(12)])
        truncated = [r for r in replies if dns.message.from_wire(r).flags & dns.flags.TC]
        assert len(truncated) >= 6 and all(not dns.message.from_wire(r).answer for r in truncated)
    finally:
        await listener.stop()
